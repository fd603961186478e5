//! The proxy's backend set: the brokers it may send MQTT clients to.
//!
//! This is the membership adapter. It knows nothing about how a backend is
//! picked for a client (that is [`crate::balance`]); it only keeps an
//! up-to-date, lock-free snapshot of the live brokers' MQTT addresses, fed
//! by gossip membership events, with the static `--backends` list as the
//! fallback whenever gossip is off or knows no live broker.
//!
//! Draining falls out of this: a broker that leaves (gracefully or not) is
//! dropped from the snapshot, so no new client is sent to it, while the
//! connections already proxied to it are left alone to finish.

use std::{net::SocketAddr, sync::Arc};

use arc_swap::ArcSwap;
use astramq_shared::membership::{MemberInfo, Membership};
use tokio::sync::broadcast::error::RecvError;

/// One broker the proxy may route clients to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Backend {
    /// The broker's node id: stable across restarts, so a consistent-hash
    /// selector keeps clients on the same broker.
    pub node_id: String,
    /// Where the broker accepts MQTT connections.
    pub mqtt_addr: SocketAddr,
}

/// The live backends, replaced as a whole on every membership change so each
/// client connection reads a consistent list without locking.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// Sorted by node id; an `Arc` per version, swapped atomically.
    current: ArcSwap<Vec<Backend>>,
    /// The static `--backends` list, served while `current` is empty
    /// (no gossip, or gossip that has not found a broker yet).
    fallback: Arc<Vec<Backend>>,
}

/// What changed between two versions of the set, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BackendChange {
    /// Backends in the new set and not in the old one.
    pub added: Vec<Backend>,
    /// Backends in the old set and not in the new one.
    pub removed: Vec<Backend>,
}

impl BackendSet {
    /// A set that serves `addrs` (named by their address, since a static
    /// backend has no node id) until membership reports live brokers.
    pub fn with_fallback(addrs: &[SocketAddr]) -> Self {
        let mut fallback: Vec<Backend> = addrs
            .iter()
            .map(|addr| Backend {
                node_id: addr.to_string(),
                mqtt_addr: *addr,
            })
            .collect();
        fallback.sort();
        fallback.dedup();
        BackendSet {
            current: ArcSwap::default(),
            fallback: Arc::new(fallback),
        }
    }

    /// The backends to use now (cheap: one atomic load and an `Arc` clone):
    /// the live brokers, or the static fallback when there are none. The
    /// same `Arc` is returned until the set changes, so callers may cache
    /// work per snapshot (the hash ring does).
    pub fn snapshot(&self) -> Arc<Vec<Backend>> {
        let live = self.current.load_full();
        if live.is_empty() {
            self.fallback.clone()
        } else {
            live
        }
    }

    /// Replaces the set with the brokers that advertise an MQTT address
    /// (a broker without one cannot take clients) and reports the difference.
    pub fn replace(&self, brokers: &[MemberInfo]) -> BackendChange {
        let mut next: Vec<Backend> = brokers
            .iter()
            .filter_map(|m| {
                Some(Backend {
                    node_id: m.node_id.clone(),
                    mqtt_addr: m.mqtt_addr?,
                })
            })
            .collect();
        next.sort();
        let previous = self.current.swap(Arc::new(next.clone()));
        BackendChange {
            added: next
                .iter()
                .filter(|b| !previous.contains(b))
                .cloned()
                .collect(),
            removed: previous
                .iter()
                .filter(|b| !next.contains(b))
                .cloned()
                .collect(),
        }
    }
}

/// Keeps `set` equal to the live brokers until membership stops. Returns
/// when the event stream closes: after our own leave, or because gossip
/// shut itself down (the caller decides which).
pub async fn follow(membership: Membership, set: Arc<BackendSet>) {
    // Subscribe before the first read so no change falls between them.
    let mut events = membership.subscribe();
    loop {
        let change = set.replace(&membership.live_brokers());
        for b in &change.added {
            tracing::info!(node_id = %b.node_id, mqtt_addr = %b.mqtt_addr, "backend added");
        }
        for b in &change.removed {
            tracing::info!(node_id = %b.node_id, mqtt_addr = %b.mqtt_addr, "backend removed");
        }
        if change != BackendChange::default() {
            let snapshot = set.snapshot();
            let backends: Vec<&str> = snapshot.iter().map(|b| b.node_id.as_str()).collect();
            tracing::info!(count = backends.len(), ?backends, "backend set changed");
        }
        match events.recv().await {
            // Any event (or missed events) may change the set: re-read the snapshot.
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use astramq_shared::membership::{MemberState, Role};

    use super::*;

    fn broker(id: &str, mqtt: Option<&str>) -> MemberInfo {
        MemberInfo {
            node_id: id.to_owned(),
            role: Role::Broker,
            mqtt_addr: mqtt.map(|a| a.parse().unwrap()),
            metrics_addr: None,
            version: "0.1.0".to_owned(),
            gossip_addr: "127.0.0.1:7946".parse().unwrap(),
            state: MemberState::Alive,
        }
    }

    #[test]
    fn replace_reports_added_and_removed_backends() {
        let set = BackendSet::default();
        let change = set.replace(&[
            broker("b", Some("127.0.0.1:2")),
            broker("a", Some("127.0.0.1:1")),
        ]);
        assert_eq!(change.added.len(), 2);
        assert!(change.removed.is_empty());
        let ids: Vec<_> = set.snapshot().iter().map(|b| b.node_id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);

        let change = set.replace(&[
            broker("b", Some("127.0.0.1:2")),
            broker("c", Some("127.0.0.1:3")),
        ]);
        assert_eq!(
            change
                .added
                .iter()
                .map(|b| &b.node_id[..])
                .collect::<Vec<_>>(),
            ["c"]
        );
        assert_eq!(
            change
                .removed
                .iter()
                .map(|b| &b.node_id[..])
                .collect::<Vec<_>>(),
            ["a"]
        );

        assert_eq!(set.replace(&set_members(&set)), BackendChange::default());
    }

    #[test]
    fn the_static_list_serves_only_while_no_broker_is_live() {
        let set = BackendSet::with_fallback(&["127.0.0.1:9".parse().unwrap()]);
        assert_eq!(set.snapshot()[0].node_id, "127.0.0.1:9");
        set.replace(&[broker("a", Some("127.0.0.1:1"))]);
        assert_eq!(set.snapshot()[0].node_id, "a");
        set.replace(&[]);
        assert_eq!(set.snapshot()[0].node_id, "127.0.0.1:9");
    }

    #[test]
    fn brokers_without_an_mqtt_address_are_not_backends() {
        let set = BackendSet::default();
        set.replace(&[broker("a", None)]);
        assert!(set.snapshot().is_empty());
    }

    fn set_members(set: &BackendSet) -> Vec<MemberInfo> {
        set.snapshot()
            .iter()
            .map(|b| broker(&b.node_id, Some(&b.mqtt_addr.to_string())))
            .collect()
    }
}
