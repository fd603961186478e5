//! Reading the shared gossip key from configuration text.
//!
//! Two spellings are accepted because operators generate keys both ways:
//! standard base64 (`openssl rand -base64 32`, `serf keygen`) and hex
//! (`openssl rand -hex 32`). A string made only of hex digits with a hex key
//! length (32, 48, 64) is read as hex; anything else as base64. The key is
//! never echoed back in errors or logs.

use serf::types::SecretKey;

use super::MembershipError;

/// Decodes a 16/24/32-byte key (AES-128/192/256) from hex or base64.
pub(crate) fn parse_key(text: &str) -> Result<SecretKey, MembershipError> {
    let text = text.trim();
    let invalid = |reason: &str| MembershipError::InvalidKey {
        reason: reason.to_owned(),
    };
    let is_hex = matches!(text.len(), 32 | 48 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit());
    if is_hex {
        let bytes = decode_hex(text).ok_or_else(|| invalid("malformed hex"))?;
        return SecretKey::try_from(bytes.as_slice())
            .map_err(|_| invalid("hex key must be 16, 24 or 32 bytes"));
    }
    text.parse::<SecretKey>().map_err(|_| {
        invalid("expected 16, 24 or 32 bytes as standard base64 (24, 32 or 44 chars) or hex (32, 48 or 64 digits)")
    })
}

/// Plain hex decoding; `None` on an odd length or a non-hex digit.
fn decode_hex(text: &str) -> Option<Vec<u8>> {
    let pairs = text.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| {
            let digits = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(digits, 16).ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_keys_of_each_aes_size_parse() {
        let k128 = "AAECAwQFBgcICQoLDA0ODw==";
        let k256 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        assert!(matches!(parse_key(k128), Ok(SecretKey::Aes128(_))));
        assert!(matches!(parse_key(k256), Ok(SecretKey::Aes256(k)) if k[31] == 31));
        assert!(matches!(
            parse_key(&SecretKey::random_aes192().to_base64()),
            Ok(SecretKey::Aes192(_))
        ));
    }

    #[test]
    fn hex_keys_parse_to_the_same_bytes() {
        let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
        let from_hex = parse_key(&hex).unwrap();
        let from_b64 = parse_key("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(from_hex, from_b64);
        assert!(matches!(
            parse_key(&"Ab".repeat(16)),
            Ok(SecretKey::Aes128(_))
        ));
    }

    #[test]
    fn wrong_lengths_and_garbage_are_refused_without_echoing_the_key() {
        for bad in [
            "",
            "secret",
            "AAECAwQFBgcICQoLDA0O",
            &"ab".repeat(20),
            "!!!!",
        ] {
            let err = parse_key(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !err.contains(bad), "{err}");
        }
    }
}
