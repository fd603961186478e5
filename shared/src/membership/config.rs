//! What a process tells membership about itself: who it is, what it serves,
//! where it gossips and whom it asks to get in.

use std::{fmt, net::SocketAddr, str::FromStr};

use super::MembershipError;

/// What a member does in the cluster; carried as the `role` tag so each side
/// can pick the members it cares about (the proxy wants brokers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An `astramq-node` MQTT broker: serves clients, counts as a backend.
    Broker,
    /// An `astramq-proxy`: routes clients to brokers, never a backend itself.
    Proxy,
}

impl Role {
    /// The tag value and log spelling (`broker` / `proxy`), kept stable
    /// because other members and log parsers read it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Broker => "broker",
            Role::Proxy => "proxy",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses the tag value; an unknown role (from a newer version) is an error
/// so the caller can skip that member instead of guessing.
impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "broker" => Ok(Role::Broker),
            "proxy" => Ok(Role::Proxy),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

/// A `role` tag this version does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown member role {0:?}")]
pub struct UnknownRole(pub String);

/// Everything [`Membership::start`](super::Membership::start) needs; built by
/// the binaries from their command line.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// Unique, stable name of this process in the cluster (the gossip node
    /// name). Restarting with the same id makes the member rejoin as itself;
    /// two live processes with one id make serf shut one of them down.
    /// No whitespace (it appears in `member=<id>` log lines), at most 128 bytes.
    pub node_id: String,
    /// Whether this process is a broker or a proxy.
    pub role: Role,
    /// UDP and TCP address gossip binds (one port for both; `--gossip-listen`).
    /// When the IP is unspecified (`0.0.0.0`), a private interface address is
    /// advertised to peers.
    pub gossip_listen: SocketAddr,
    /// Seed gossip addresses to join (`--join`). Empty starts a new cluster.
    /// Any one reachable seed is enough; our own address is ignored.
    pub join: Vec<SocketAddr>,
    /// Where MQTT clients reach this member (brokers), advertised as a tag so
    /// proxies can route to it. Pass the bound address (the real port when
    /// listening on port 0). An unspecified IP (`0.0.0.0`) is read by peers
    /// as this member's gossip IP.
    pub mqtt_addr: Option<SocketAddr>,
    /// Where Prometheus can scrape this member, advertised for discovery
    /// (same rule for an unspecified IP).
    pub metrics_addr: Option<SocketAddr>,
    /// Shared gossip key (`--gossip-key`): 16, 24 or 32 bytes (AES-128/192/256)
    /// written as standard base64 (e.g. `openssl rand -base64 32`) or as hex
    /// (32, 48 or 64 hex digits; a string of only hex digits of those lengths
    /// is read as hex). `None` (the default) gossips in plaintext. With a key,
    /// members without the same key are refused in both directions.
    pub encryption_key: Option<String>,
}

impl MembershipConfig {
    /// Longest accepted node id; keeps gossip packets and log lines small.
    pub const MAX_NODE_ID_LEN: usize = 128;

    /// Checks the node id before anything binds, so a bad id fails at start
    /// with a clear message rather than as an unparseable log line later.
    pub(crate) fn validate_node_id(&self) -> Result<(), MembershipError> {
        let reason = if self.node_id.is_empty() {
            "must not be empty"
        } else if self.node_id.len() > Self::MAX_NODE_ID_LEN {
            "longer than 128 bytes"
        } else if self
            .node_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            "must not contain whitespace or control characters"
        } else {
            return Ok(());
        };
        Err(MembershipError::InvalidNodeId {
            node_id: self.node_id.clone(),
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: &str) -> MembershipConfig {
        MembershipConfig {
            node_id: node_id.to_owned(),
            role: Role::Broker,
            gossip_listen: "127.0.0.1:0".parse().unwrap(),
            join: Vec::new(),
            mqtt_addr: None,
            metrics_addr: None,
            encryption_key: None,
        }
    }

    #[test]
    fn role_round_trips_through_its_tag_spelling() {
        for role in [Role::Broker, Role::Proxy] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!(
            "router".parse::<Role>(),
            Err(UnknownRole("router".to_owned()))
        );
    }

    #[test]
    fn node_ids_that_would_break_log_lines_are_refused() {
        assert!(config("node-1").validate_node_id().is_ok());
        for bad in ["", "node 1", "node\t1", "a\nb", &"x".repeat(129)] {
            assert!(config(bad).validate_node_id().is_err(), "{bad:?}");
        }
    }
}
