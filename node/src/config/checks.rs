//! Start-up checks of the settings: values that would make the node
//! misbehave later (a zero interval panics inside a timer task, a zero
//! timeout refuses every client) are refused before anything starts, with
//! the setting's name in the message. `main` exits with code 2 on them.
//!
//! Checked: every value that is given, against the smallest (and, where
//! the protocol sets one, largest) value that makes sense; the password
//! file, which must be readable and well-formed (the message names the
//! malformed line); the ACL file, likewise (the message names the rule or
//! the TOML position); the TLS files, which must be readable, valid PEM and
//! fit together (the message names the setting and the file); the Redis
//! URL and its TLS files (`redis_model::endpoint` says what is refused).
//! Not checked: whether addresses can be bound or Redis reached, or whether
//! Redis accepts the credentials (start-up reports those).

use std::net::SocketAddr;
use std::sync::Arc;

use astramq_shared::tls::{ServerTls, TlsFiles};

use super::{
    AclOptions, Settings, TlsListen, DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_TTL_MS,
};
use crate::acl::Rules;
use crate::auth::password_file::UserTable;
use crate::redis_model::endpoint::{RedisEndpoint, RedisTlsFiles};
use crate::router::topic::MAX_TOPIC_LEN;

/// Shortest client id a 3.1.1 server must accept (MQTT-3.1.3-5).
const MIN_CLIENT_ID_LENGTH: u64 = 23;

/// A setting whose value makes no sense.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{setting}: {problem}")]
pub struct InvalidSetting {
    /// The flag name (the TOML key), without `--`.
    pub setting: &'static str,
    /// What is wrong with its value.
    pub problem: String,
}

/// Refuses `value` of `setting` unless it lies in `min..=max`.
fn within(
    setting: &'static str,
    value: Option<impl TryInto<u64>>,
    min: u64,
    max: u64,
) -> Result<(), InvalidSetting> {
    let Some(value) = value else {
        return Ok(());
    };
    let value: u64 = value.try_into().unwrap_or(u64::MAX);
    if (min..=max).contains(&value) {
        return Ok(());
    }
    let problem = if max == u64::MAX {
        format!("{value} is too small; it must be at least {min}")
    } else {
        format!("{value} is out of range; it must be between {min} and {max}")
    };
    Err(InvalidSetting { setting, problem })
}

/// Refuses `value` of `setting` when it is below `min`.
fn at_least(
    setting: &'static str,
    value: Option<impl TryInto<u64>>,
    min: u64,
) -> Result<(), InvalidSetting> {
    within(setting, value, min, u64::MAX)
}

/// A node id names Redis keys (inside a `{hash tag}`) and `$SYS` topic
/// levels: 1 to 64 ASCII letters, digits, `.`, `_` or `-`.
fn check_node_id(id: &str) -> Result<(), InvalidSetting> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if (1..=64).contains(&id.len()) && id.chars().all(allowed) {
        return Ok(());
    }
    Err(InvalidSetting {
        setting: "node-id",
        problem: format!(
            "{id:?} must be 1 to 64 ASCII letters, digits, '.', '_' or '-' \
             (it names Redis keys and $SYS topics)"
        ),
    })
}

/// Checks every given setting; the first problem found is returned.
pub fn check(s: &Settings) -> Result<(), InvalidSetting> {
    at_least("redis-timeout-ms", s.redis_timeout_ms, 1)?;
    at_least("stream-maxlen", s.stream_maxlen, 1)?;
    within("forward-linger-ms", s.forward_linger_ms, 0, 100)?;
    if let Some(id) = &s.node_id {
        check_node_id(id)?;
    }
    at_least("heartbeat-interval-ms", s.heartbeat_interval_ms, 1)?;
    at_least("heartbeat-ttl-ms", s.heartbeat_ttl_ms, 1)?;
    let interval = s
        .heartbeat_interval_ms
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL_MS);
    let ttl = s.heartbeat_ttl_ms.unwrap_or(DEFAULT_HEARTBEAT_TTL_MS);
    if ttl <= interval {
        return Err(InvalidSetting {
            setting: "heartbeat-ttl-ms",
            problem: format!(
                "{ttl} must be greater than heartbeat-interval-ms ({interval}), \
                 or every node is declared dead between two heartbeats"
            ),
        });
    }
    at_least("max-packet-size", s.max_packet_size, 16)?;
    within("max-inflight", s.max_inflight, 1, 65_535)?;
    at_least("max-queued-messages", s.max_queued_messages, 1)?;
    at_least("max-connections", s.max_connections, 1)?;
    within(
        "max-topic-length",
        s.max_topic_length,
        1,
        MAX_TOPIC_LEN as u64,
    )?;
    at_least("max-topic-levels", s.max_topic_levels, 1)?;
    at_least(
        "max-client-id-length",
        s.max_client_id_length,
        MIN_CLIENT_ID_LENGTH,
    )?;
    at_least(
        "max-subscriptions-per-client",
        s.max_subscriptions_per_client,
        1,
    )?;
    at_least("max-retained-messages", s.max_retained_messages, 1)?;
    at_least("max-retained-bytes", s.max_retained_bytes, 1)?;
    at_least("max-retained-payload", s.max_retained_payload, 1)?;
    at_least("max-sessions", s.max_sessions, 1)?;
    at_least(
        "max-queued-bytes-per-session",
        s.max_queued_bytes_per_session,
        1,
    )?;
    at_least("max-keep-alive", s.max_keep_alive, 1)?;
    at_least("connect-timeout", s.connect_timeout, 1)?;
    at_least("write-timeout", s.write_timeout, 1)?;
    at_least("threads", s.threads, 1)?;
    Ok(())
}

/// Reads the ACL file, if one is given: a file that cannot be read or
/// parsed refuses start-up.
pub fn acl_file(s: &Settings) -> Result<Option<AclOptions>, InvalidSetting> {
    let Some(path) = &s.acl_file else {
        return Ok(None);
    };
    let rules = Rules::load(path).map_err(|error| InvalidSetting {
        setting: "acl-file",
        problem: error.to_string(),
    })?;
    Ok(Some(AclOptions {
        path: path.clone(),
        rules,
    }))
}

/// Reads the password file, if one is given: a file that cannot be read
/// or has a malformed line refuses start-up.
pub fn password_file(s: &Settings) -> Result<UserTable, InvalidSetting> {
    let Some(path) = &s.password_file else {
        return Ok(UserTable::default());
    };
    UserTable::load(path).map_err(|error| InvalidSetting {
        setting: "password-file",
        problem: error.to_string(),
    })
}

/// Loads the TLS files when `--tls-listen` or `--wss-listen` is given
/// (one configuration, shared by both listeners and reloaded once);
/// refuses TLS files without either and either listener without them.
pub fn tls(s: &Settings) -> Result<(Option<TlsListen>, Option<TlsListen>), InvalidSetting> {
    let listener = match (s.tls_listen, s.wss_listen) {
        (Some(_), _) => "--tls-listen",
        (None, Some(_)) => "--wss-listen",
        (None, None) => {
            let given = [
                ("tls-cert", s.tls_cert.is_some()),
                ("tls-key", s.tls_key.is_some()),
                ("tls-client-ca", s.tls_client_ca.is_some()),
            ];
            return match given.iter().find(|(_, given)| *given) {
                Some((setting, _)) => Err(InvalidSetting {
                    setting,
                    problem: "given without --tls-listen or --wss-listen".to_owned(),
                }),
                None => Ok((None, None)),
            };
        }
    };
    let required = |setting: &'static str, path: &Option<std::path::PathBuf>| {
        path.clone().ok_or_else(|| InvalidSetting {
            setting,
            problem: format!("required with {listener}"),
        })
    };
    let files = TlsFiles {
        cert: required("tls-cert", &s.tls_cert)?,
        key: required("tls-key", &s.tls_key)?,
        client_ca: s.tls_client_ca.clone(),
    };
    let tls = Arc::new(ServerTls::load(files).map_err(|error| InvalidSetting {
        setting: error.setting,
        problem: format!("{}: {}", error.path, error.problem),
    })?);
    let listen = |listen: Option<SocketAddr>| {
        listen.map(|listen| TlsListen {
            listen,
            tls: tls.clone(),
        })
    };
    Ok((listen(s.tls_listen), listen(s.wss_listen)))
}

/// The Redis endpoint of `--redis` with `--redis-ca`, `--redis-cert` and
/// `--redis-key` (files read and checked now); `None` without `--redis`.
pub fn redis(s: &Settings) -> anyhow::Result<Option<RedisEndpoint>> {
    let files = RedisTlsFiles {
        ca: s.redis_ca.clone(),
        cert: s.redis_cert.clone(),
        key: s.redis_key.clone(),
    };
    let Some(url) = &s.redis else {
        if let Some(setting) = ["redis-ca", "redis-cert", "redis-key"]
            .into_iter()
            .zip([&files.ca, &files.cert, &files.key])
            .find_map(|(setting, file)| file.as_ref().map(|_| setting))
        {
            return Err(InvalidSetting {
                setting,
                problem: "given without --redis".to_owned(),
            }
            .into());
        }
        return Ok(None);
    };
    Ok(Some(RedisEndpoint::open(url, &files)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(s: Settings) -> &'static str {
        check(&s).expect_err("refused").setting
    }

    #[test]
    fn defaults_pass() {
        assert_eq!(check(&Settings::default()), Ok(()));
    }

    #[test]
    fn zero_intervals_timeouts_and_limits_are_refused() {
        let zero = |f: fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            problem(s)
        };
        assert_eq!(
            zero(|s| s.heartbeat_interval_ms = Some(0)),
            "heartbeat-interval-ms"
        );
        assert_eq!(zero(|s| s.redis_timeout_ms = Some(0)), "redis-timeout-ms");
        assert_eq!(zero(|s| s.connect_timeout = Some(0)), "connect-timeout");
        assert_eq!(zero(|s| s.write_timeout = Some(0)), "write-timeout");
        assert_eq!(zero(|s| s.threads = Some(0)), "threads");
        assert_eq!(zero(|s| s.max_topic_levels = Some(0)), "max-topic-levels");
        assert_eq!(zero(|s| s.max_sessions = Some(0)), "max-sessions");
        assert_eq!(zero(|s| s.max_keep_alive = Some(0)), "max-keep-alive");
        assert_eq!(
            zero(|s| s.max_retained_messages = Some(0)),
            "max-retained-messages"
        );
        assert_eq!(
            zero(|s| s.max_queued_bytes_per_session = Some(0)),
            "max-queued-bytes-per-session"
        );
        assert_eq!(zero(|s| s.max_topic_length = Some(0)), "max-topic-length");
        assert_eq!(
            zero(|s| s.max_subscriptions_per_client = Some(0)),
            "max-subscriptions-per-client"
        );
        assert_eq!(
            zero(|s| s.max_client_id_length = Some(22)),
            "max-client-id-length"
        );
        assert_eq!(
            zero(|s| s.max_topic_length = Some(65_536)),
            "max-topic-length"
        );
        assert_eq!(
            zero(|s| s.forward_linger_ms = Some(101)),
            "forward-linger-ms"
        );
        assert_eq!(zero(|s| s.node_id = Some("a/b".into())), "node-id");
        assert_eq!(zero(|s| s.node_id = Some(String::new())), "node-id");
    }

    #[test]
    fn ttl_must_exceed_the_interval() {
        let s = Settings {
            heartbeat_interval_ms: Some(1000),
            heartbeat_ttl_ms: Some(1000),
            ..Settings::default()
        };
        let err = check(&s).unwrap_err();
        assert_eq!(err.setting, "heartbeat-ttl-ms");
        assert!(err
            .to_string()
            .contains("greater than heartbeat-interval-ms"));
        // The default TTL (2000) against a longer interval.
        let s = Settings {
            heartbeat_interval_ms: Some(5000),
            ..Settings::default()
        };
        assert_eq!(problem(s), "heartbeat-ttl-ms");
    }
}
