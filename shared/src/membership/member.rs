//! What we know about one member, and how it travels as serf tags.
//!
//! Serf gossips a small string map per member (at most 512 bytes encoded).
//! The node id is serf's own node name; everything else is a tag:
//! `role`, `mqtt`, `metrics` (socket addresses, absent when unset) and `version`.
//!
//! An advertised address with an unspecified IP (`0.0.0.0:1883`, a broker
//! listening on all interfaces) is read as "this member's gossip IP, that
//! port", so brokers can advertise their listen address as is and peers
//! still get an address they can connect to.

use std::net::SocketAddr;

use serf::types::{Member, MemberStatus, SmolStr, Tags};

use super::{MembershipConfig, Role};

/// Tag keys; short because every gossip message about a member carries them.
const TAG_ROLE: &str = "role";
const TAG_MQTT: &str = "mqtt";
const TAG_METRICS: &str = "metrics";
const TAG_VERSION: &str = "version";

/// The software version every member advertises, so mixed-version clusters
/// are visible during rolling upgrades.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Liveness of a member as this process currently believes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MemberState {
    /// Answering probes; the only state counted in the live set.
    Alive,
    /// Announced a graceful leave that has not completed yet.
    Leaving,
    /// Left gracefully; kept as a tombstone until reaped.
    Left,
    /// Stopped answering probes and was declared dead by the cluster.
    Failed,
    /// A status this version does not know (kept for forward compatibility).
    Unknown,
}

impl From<MemberStatus> for MemberState {
    fn from(status: MemberStatus) -> Self {
        match status {
            MemberStatus::Alive => MemberState::Alive,
            MemberStatus::Leaving => MemberState::Leaving,
            MemberStatus::Left => MemberState::Left,
            MemberStatus::Failed => MemberState::Failed,
            _ => MemberState::Unknown,
        }
    }
}

/// One member as the rest of AstraMQ sees it: identity, what it serves and
/// whether it is alive. Plain data, cheap to clone into snapshots and events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's unique node id (its gossip name).
    pub node_id: String,
    /// Broker or proxy.
    pub role: Role,
    /// MQTT address clients (and the proxy) connect to, if it serves MQTT.
    pub mqtt_addr: Option<SocketAddr>,
    /// Prometheus scrape address, if it exposes metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// The member's software version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// The address it gossips on (as advertised to peers).
    pub gossip_addr: SocketAddr,
    /// Its liveness when this record was taken.
    pub state: MemberState,
}

/// Why a member's tags could not be read; the member is then ignored.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadTags {
    #[error("missing tag {0:?}")]
    Missing(&'static str),
    #[error("tag {key:?} has unreadable value {value:?}")]
    Unreadable { key: &'static str, value: String },
}

/// The tags this process advertises for itself.
pub(crate) fn local_tags(cfg: &MembershipConfig) -> Vec<(SmolStr, SmolStr)> {
    let mut tags = vec![
        (SmolStr::new(TAG_ROLE), SmolStr::new(cfg.role.as_str())),
        (SmolStr::new(TAG_VERSION), SmolStr::new(VERSION)),
    ];
    if let Some(addr) = cfg.mqtt_addr {
        tags.push((SmolStr::new(TAG_MQTT), SmolStr::new(addr.to_string())));
    }
    if let Some(addr) = cfg.metrics_addr {
        tags.push((SmolStr::new(TAG_METRICS), SmolStr::new(addr.to_string())));
    }
    tags
}

impl MemberInfo {
    /// Reads a serf member; fails when its tags are not ours to understand
    /// (another program on the gossip port, or a newer role).
    pub(crate) fn from_serf(member: &Member<SmolStr, SocketAddr>) -> Result<Self, BadTags> {
        Self::from_parts(
            member.node().id(),
            *member.node().address(),
            member.tags(),
            (*member.status()).into(),
        )
    }

    fn from_parts(
        node_id: &str,
        gossip_addr: SocketAddr,
        tags: &Tags,
        state: MemberState,
    ) -> Result<Self, BadTags> {
        let role = required(tags, TAG_ROLE)?;
        let role = role.parse::<Role>().map_err(|_| BadTags::Unreadable {
            key: TAG_ROLE,
            value: role.to_owned(),
        })?;
        Ok(MemberInfo {
            node_id: node_id.to_owned(),
            role,
            mqtt_addr: optional_addr(tags, TAG_MQTT, gossip_addr)?,
            metrics_addr: optional_addr(tags, TAG_METRICS, gossip_addr)?,
            version: tags
                .get(TAG_VERSION)
                .map(|v| v.to_string())
                .unwrap_or_default(),
            gossip_addr,
            state,
        })
    }
}

fn required<'t>(tags: &'t Tags, key: &'static str) -> Result<&'t str, BadTags> {
    tags.get(key)
        .map(|v| v.as_str())
        .ok_or(BadTags::Missing(key))
}

fn optional_addr(
    tags: &Tags,
    key: &'static str,
    gossip_addr: SocketAddr,
) -> Result<Option<SocketAddr>, BadTags> {
    let Some(value) = tags.get(key) else {
        return Ok(None);
    };
    let mut addr: SocketAddr = value.parse().map_err(|_| BadTags::Unreadable {
        key,
        value: value.to_string(),
    })?;
    if addr.ip().is_unspecified() {
        addr.set_ip(gossip_addr.ip());
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker_config() -> MembershipConfig {
        MembershipConfig {
            node_id: "n1".to_owned(),
            role: Role::Broker,
            gossip_listen: "127.0.0.1:7946".parse().unwrap(),
            join: Vec::new(),
            mqtt_addr: Some("127.0.0.1:1883".parse().unwrap()),
            metrics_addr: None,
            encryption_key: None,
        }
    }

    #[test]
    fn advertised_tags_read_back_as_the_same_member() {
        let cfg = broker_config();
        let tags: Tags = local_tags(&cfg).into_iter().collect();
        let info =
            MemberInfo::from_parts("n1", cfg.gossip_listen, &tags, MemberState::Alive).unwrap();
        assert_eq!(info.role, Role::Broker);
        assert_eq!(info.mqtt_addr, cfg.mqtt_addr);
        assert_eq!(info.metrics_addr, None);
        assert_eq!(info.version, VERSION);
        assert_eq!(info.gossip_addr, cfg.gossip_listen);
    }

    #[test]
    fn an_unspecified_ip_is_read_as_the_gossip_ip() {
        let tags: Tags = [("role", "broker"), ("mqtt", "0.0.0.0:1883")]
            .into_iter()
            .collect();
        let gossip = "10.0.0.7:7946".parse().unwrap();
        let info = MemberInfo::from_parts("n1", gossip, &tags, MemberState::Alive).unwrap();
        assert_eq!(info.mqtt_addr, Some("10.0.0.7:1883".parse().unwrap()));
    }

    #[test]
    fn members_with_foreign_tags_are_refused() {
        let addr = "127.0.0.1:1".parse().unwrap();
        let no_role: Tags = [("version", "1")].into_iter().collect();
        assert!(MemberInfo::from_parts("x", addr, &no_role, MemberState::Alive).is_err());
        let bad_addr: Tags = [("role", "broker"), ("mqtt", "nowhere")]
            .into_iter()
            .collect();
        assert!(MemberInfo::from_parts("x", addr, &bad_addr, MemberState::Alive).is_err());
    }
}
