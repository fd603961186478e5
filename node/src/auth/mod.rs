//! Authentication: which CONNECTs are let in.
//!
//! A CONNECT without a user name is anonymous: let in only with
//! `--allow-anonymous true`, else answered CONNACK 0x05 (not authorized).
//! A CONNECT with a user name must carry that user's password, checked
//! against an argon2id hash ([`hash`]) from, in this order:
//!
//! 1. the password file (`--password-file`, [`password_file`]), held in
//!    memory and replaced whole on SIGHUP ([`Authenticator::reload`]; a bad
//!    file keeps the old users);
//! 2. in a cluster, the Redis hash [`crate::redis_model::keys::users`],
//!    read at every login, so a user added or removed once holds on every
//!    node at its next CONNECT.
//!
//! A user in the file is never looked up in Redis. Anything else — unknown
//! user, wrong or missing password — is CONNACK 0x04; Redis unreachable is
//! 0x03. With anonymous clients allowed and no user source at all (no file,
//! no Redis) user names are not checked, as before authentication existed.
//!
//! Guarantees: a wrong password never passes (nothing about a verification
//! is cached); an unknown user costs one verification of a decoy hash, so
//! timing does not reveal which names exist; verifications run on blocking
//! threads, at most one per CPU at once, so the runtime never stalls on
//! them; repeated failures from one address are slowed ([`limiter`]). Passwords and
//! hashes are never logged. Not guaranteed: secrecy on the wire — without
//! TLS, passwords cross the network in clear (see `docs/security.md`).

pub mod admin;
pub mod hash;
pub mod limiter;
pub mod password_file;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use astramq_shared::log_text::untrusted;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use tokio::sync::Semaphore;

use crate::redis_model::keys;
use limiter::FailureLimiter;
use password_file::UserTable;

/// Authentication settings, resolved at start-up.
#[derive(Debug, Clone, Default)]
pub struct AuthOptions {
    /// Let clients without a user name in.
    pub allow_anonymous: bool,
    /// The password file, if one is configured.
    pub password_file: Option<PathBuf>,
    /// Its users as read at start-up (a malformed file refuses start-up).
    pub users: UserTable,
}

/// What a CONNECT's credentials earn it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Let in.
    Accepted,
    /// CONNACK 0x04: unknown user, wrong or missing password.
    BadCredentials,
    /// CONNACK 0x05: anonymous while anonymous clients are refused.
    NotAuthorized,
    /// CONNACK 0x03: the users in Redis could not be read.
    Unavailable,
}

/// Checks credentials; one per node, shared by every handshake.
pub struct Authenticator {
    /// Clients without a user name are let in.
    allow_anonymous: bool,
    /// The password file, re-read by [`Authenticator::reload`].
    password_file: Option<PathBuf>,
    /// The file's users; replaced whole, so a login sees one version.
    file_users: RwLock<Arc<UserTable>>,
    /// The cluster's Redis, where the shared users live; `None` alone.
    redis: Option<ConnectionManager>,
    /// Recent failures by client address (bounded).
    limiter: Mutex<FailureLimiter>,
    /// Verifications running at once: argon2 takes tens of milliseconds
    /// of CPU and 19 MiB each, so their number is bounded by the CPUs.
    verifiers: Arc<Semaphore>,
}

impl Authenticator {
    /// An authenticator with `options`, reading shared users from `redis`
    /// when the node is in a cluster.
    pub fn new(options: AuthOptions, redis: Option<ConnectionManager>) -> Authenticator {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Authenticator {
            allow_anonymous: options.allow_anonymous,
            password_file: options.password_file,
            file_users: RwLock::new(Arc::new(options.users)),
            redis,
            limiter: Mutex::new(FailureLimiter::default()),
            verifiers: Arc::new(Semaphore::new(cpus)),
        }
    }

    /// Lets everyone in, as tests of other subsystems need.
    pub fn anonymous() -> Authenticator {
        let options = AuthOptions {
            allow_anonymous: true,
            ..AuthOptions::default()
        };
        Authenticator::new(options, None)
    }

    /// Whether any user can log in at all (start-up warns when not).
    pub fn has_user_source(&self) -> bool {
        self.password_file.is_some() || self.redis.is_some()
    }

    /// Whether anonymous clients are let in.
    pub fn allows_anonymous(&self) -> bool {
        self.allow_anonymous
    }

    /// Checks a CONNECT's credentials from `ip`. May wait for a
    /// verification slot and, after a failure, for the failure limiter.
    pub async fn check(
        &self,
        username: Option<&str>,
        password: Option<&Bytes>,
        ip: IpAddr,
    ) -> Verdict {
        let Some(name) = username else {
            // A password without a user name never gets here: the codec
            // refuses it as a protocol violation (MQTT-3.1.2-22).
            return if self.allow_anonymous {
                Verdict::Accepted
            } else {
                Verdict::NotAuthorized
            };
        };
        if self.allow_anonymous && !self.has_user_source() {
            return Verdict::Accepted;
        }
        let stored = match self.stored_hash(name).await {
            Ok(stored) => stored,
            Err(error) => {
                tracing::warn!(%error, user = %untrusted(name), "users in Redis unreadable; login refused");
                return Verdict::Unavailable;
            }
        };
        let matched = match password {
            Some(password) => {
                let known = stored.is_some();
                let hash = stored.unwrap_or_else(|| hash::decoy().to_owned());
                self.verify(hash, password.clone()).await && known
            }
            None => false,
        };
        if matched {
            return Verdict::Accepted;
        }
        let delay = self.lock_limiter().failed(ip, Instant::now());
        tracing::info!(user = %untrusted(name), %ip, ?delay, "login failed");
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Verdict::BadCredentials
    }

    /// Re-reads the password file (on SIGHUP). A file that cannot be read
    /// or has a malformed line changes nothing: the old users stay.
    pub fn reload(&self) {
        let Some(path) = &self.password_file else {
            tracing::info!("SIGHUP: no password file to reload");
            return;
        };
        match UserTable::load(path) {
            Ok(users) => {
                tracing::info!(path = %path.display(), users = users.len(), "password file reloaded");
                let mut current = self.file_users.write().unwrap_or_else(|e| e.into_inner());
                *current = Arc::new(users);
            }
            Err(error) => {
                tracing::warn!(%error, "password file not reloaded; keeping the previous users");
            }
        }
    }

    /// The user's hash: from the file, else from Redis.
    async fn stored_hash(&self, name: &str) -> redis::RedisResult<Option<String>> {
        let from_file = self
            .file_users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .hash(name)
            .map(str::to_owned);
        if from_file.is_some() {
            return Ok(from_file);
        }
        let Some(redis) = &self.redis else {
            return Ok(None);
        };
        let mut con = redis.clone();
        redis::cmd("HGET")
            .arg(keys::users())
            .arg(name)
            .query_async(&mut con)
            .await
    }

    /// Runs one argon2 verification on a blocking thread, holding a slot.
    async fn verify(&self, hash: String, password: Bytes) -> bool {
        let Ok(_slot) = self.verifiers.clone().acquire_owned().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || hash::verify(&hash, &password))
            .await
            .unwrap_or(false)
    }

    fn lock_limiter(&self) -> std::sync::MutexGuard<'_, FailureLimiter> {
        self.limiter.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn with_alice(allow_anonymous: bool) -> Authenticator {
        let hash = hash::hash_password(b"wonderland").unwrap();
        let options = AuthOptions {
            allow_anonymous,
            password_file: Some(PathBuf::from("/nonexistent")),
            users: UserTable::parse(&format!("alice:{hash}\n")).unwrap(),
        };
        Authenticator::new(options, None)
    }

    #[tokio::test]
    async fn credentials_decide_and_anonymous_follows_the_setting() {
        let right = Bytes::from_static(b"wonderland");
        let wrong = Bytes::from_static(b"wrong");
        let auth = with_alice(false);
        let check = |user, password| auth.check(user, password, IP);
        assert_eq!(check(Some("alice"), Some(&right)).await, Verdict::Accepted);
        assert_eq!(
            check(Some("alice"), Some(&wrong)).await,
            Verdict::BadCredentials
        );
        assert_eq!(check(Some("alice"), None).await, Verdict::BadCredentials);
        assert_eq!(
            check(Some("bob"), Some(&right)).await,
            Verdict::BadCredentials
        );
        assert_eq!(check(None, None).await, Verdict::NotAuthorized);
        let open = with_alice(true);
        assert_eq!(open.check(None, None, IP).await, Verdict::Accepted);
        // A user source exists: user names are still checked.
        assert_eq!(
            open.check(Some("alice"), Some(&wrong), IP).await,
            Verdict::BadCredentials
        );
        // No user source and anonymous allowed: names are not checked.
        let anyone = Authenticator::anonymous();
        assert_eq!(anyone.check(Some("x"), None, IP).await, Verdict::Accepted);
    }

    #[tokio::test]
    async fn a_failed_reload_keeps_the_old_users() {
        let auth = with_alice(false);
        auth.reload();
        let pw = Bytes::from_static(b"wonderland");
        assert_eq!(
            auth.check(Some("alice"), Some(&pw), IP).await,
            Verdict::Accepted
        );
    }
}
