//! Password hashes: argon2id in PHC string form
//! (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//!
//! New hashes use the `argon2` crate's defaults (19 MiB, 2 passes, 1 lane:
//! OWASP's minimum for argon2id) and a random 16-byte salt. A stored hash
//! is verified with the parameters it names, within bounds, so a hash
//! planted in the password file or Redis cannot make one CONNECT allocate
//! gigabytes or run for minutes.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params};
use std::sync::LazyLock;

/// Largest memory cost accepted in a stored hash, in KiB (256 MiB).
const MAX_MEMORY_KIB: u32 = 256 * 1024;

/// Most passes accepted in a stored hash.
const MAX_PASSES: u32 = 16;

/// Most lanes accepted in a stored hash.
const MAX_LANES: u32 = 16;

/// Hashes `password` with argon2id and a fresh random salt.
pub fn hash_password(password: &[u8]) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut rand_core::OsRng);
    let hash = Argon2::default()
        .hash_password(password, &salt)
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `hash`. CPU-heavy (tens of
/// milliseconds): call it from a blocking thread. A hash that does not
/// parse, is not argon2id, or asks for more than the bounds above never
/// matches.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    let Ok(parsed) = PasswordHash::new(hash) else {
        return false;
    };
    if parsed.algorithm != Algorithm::Argon2id.ident() {
        return false;
    }
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    if params.m_cost() > MAX_MEMORY_KIB
        || params.t_cost() > MAX_PASSES
        || params.p_cost() > MAX_LANES
    {
        return false;
    }
    Argon2::default().verify_password(password, &parsed).is_ok()
}

/// A valid hash of a password nobody knows, verified when the user name is
/// unknown, so an unknown user costs as much time as a wrong password and
/// the answer's timing does not tell which user names exist.
/// Computed once, at the first login of an unknown user.
pub fn decoy() -> &'static str {
    static DECOY: LazyLock<String> = LazyLock::new(|| {
        // Fixed salt: this hash protects nothing, it only has to cost the same.
        let salt = SaltString::encode_b64(b"astramq-decoy-salt").expect("a valid salt");
        Argon2::default()
            .hash_password(b"astramq: no such user", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    &DECOY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only() {
        let hash = hash_password(b"s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$v=19$"));
        assert!(verify(&hash, b"s3cret"));
        assert!(!verify(&hash, b"s3cre"));
        assert!(!verify(&hash, b""));
        // Two hashes of one password differ (random salts).
        assert_ne!(hash, hash_password(b"s3cret").unwrap());
    }

    #[test]
    fn odd_hashes_never_match() {
        assert!(!verify("plaintext", b"plaintext"));
        assert!(!verify("", b""));
        let argon2i = "$argon2i$v=19$m=16,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(!verify(argon2i, b"x"));
        let huge = "$argon2id$v=19$m=4194304,t=2,p=1$c29tZXNhbHQ$aGFzaGhhc2hoYXNo";
        assert!(!verify(huge, b"x"));
        assert!(!decoy().is_empty());
        assert!(!verify(decoy(), b""));
    }
}
