//! The keep-alive a client is held to (MQTT 3.1.1 section 3.1.2.10).
//!
//! 3.1.1 cannot tell a client to use another keep-alive, so the server
//! maximum is simply the timeout: a client that asked for more is closed
//! after 1.5 × the maximum of silence. A client asking for 0 (no
//! keep-alive) is held to the configured default, so a silent, half-open
//! connection is eventually closed; a default of 0 keeps the protocol's
//! "never".

use std::time::Duration;

/// Server maximum and default for keep-alive 0, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlivePolicy {
    /// Largest keep-alive honoured.
    pub max_secs: u16,
    /// Used when a client asks for 0; 0 disables the timeout.
    pub default_secs: u16,
}

impl Default for KeepAlivePolicy {
    fn default() -> KeepAlivePolicy {
        KeepAlivePolicy {
            max_secs: u16::MAX,
            default_secs: 3600,
        }
    }
}

/// What the policy makes of a client's keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepAlive {
    /// Silence after which the connection is closed; `None`: never.
    pub timeout: Option<Duration>,
    /// The keep-alive in seconds the client is held to (what a 5.0
    /// CONNACK's Server Keep Alive says when it differs from the ask).
    pub secs: u16,
    /// True when the client asked for more than the maximum.
    pub clamped: bool,
}

impl KeepAlivePolicy {
    /// The timeout for a client that asked for `asked` seconds: 1.5 × the
    /// keep-alive it is held to (MQTT-3.1.2-24).
    pub fn apply(&self, asked: u16) -> KeepAlive {
        let (secs, clamped) = match asked {
            0 => (self.default_secs, false),
            n if n > self.max_secs => (self.max_secs, true),
            n => (n, false),
        };
        KeepAlive {
            timeout: (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500)),
            secs,
            clamped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_to_the_maximum_and_zero_gets_the_default() {
        let policy = KeepAlivePolicy {
            max_secs: 60,
            default_secs: 10,
        };
        assert_eq!(
            policy.apply(30),
            KeepAlive {
                timeout: Some(Duration::from_secs(45)),
                secs: 30,
                clamped: false
            }
        );
        assert_eq!(
            policy.apply(600),
            KeepAlive {
                timeout: Some(Duration::from_secs(90)),
                secs: 60,
                clamped: true
            }
        );
        assert_eq!(policy.apply(0).timeout, Some(Duration::from_secs(15)));
        assert_eq!(policy.apply(0).secs, 10);
        let never = KeepAlivePolicy {
            default_secs: 0,
            ..policy
        };
        assert_eq!(never.apply(0).timeout, None);
    }
}
