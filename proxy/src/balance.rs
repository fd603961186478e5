//! Backend selection: in which order to try the live brokers for a client.
//!
//! Knows nothing about sockets or membership: given the current backend
//! list (a snapshot), the client id and each backend's active connection
//! count, it returns every backend once, best first. The caller dials them
//! in that order and stops at the first that answers, so "if the chosen
//! node refuses or times out, try the next" falls out of the order.
//!
//! - `round-robin` (default): a shared counter picks the first choice; the
//!   rest follow in list order. Spreads new connections evenly.
//! - `client-id`: Ketama consistent hashing (pingora's
//!   [`KetamaHashing`]) on the client id, so a client reconnects to the
//!   same broker while that broker lives, and when one leaves or dies only
//!   its clients move. Fallbacks are the next distinct backends on the
//!   ring, so they are stable too. The ring is keyed by broker *address*
//!   (pingora's ring hashes addresses), so a broker that restarts on
//!   another port is a new point on the ring. An empty client id (the
//!   broker assigns one) carries no identity and is spread round-robin.
//! - `least-connections`: fewest active proxied connections first; ties
//!   are broken round-robin so a burst does not all land on one broker.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use pingora_load_balancing::selection::consistent::KetamaHashing;
use pingora_load_balancing::selection::{BackendIter, BackendSelection};

use crate::backends::Backend;

/// How the first-choice backend is picked (`--balance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Each new connection goes to the next backend in turn.
    #[default]
    RoundRobin,
    /// Consistent hashing on the client id (Ketama).
    ClientId,
    /// The backend with the fewest active connections through this proxy.
    LeastConnections,
}

/// Orders backends for new connections; shared by all connections.
pub struct Balancer {
    /// The configured strategy.
    strategy: Strategy,
    /// Round-robin position (also the tie-breaker of the other strategies).
    next: AtomicUsize,
    /// The hash ring for the backend snapshot it was built from; rebuilt
    /// lazily when a connection sees a newer snapshot (membership changes
    /// are rare, connections are not).
    ring: ArcSwapOption<Ring>,
}

/// A Ketama ring and the exact snapshot it describes.
struct Ring {
    backends: Arc<Vec<Backend>>,
    ketama: Arc<KetamaHashing>,
}

impl Balancer {
    /// A balancer using `strategy`.
    pub fn new(strategy: Strategy) -> Self {
        Balancer {
            strategy,
            next: AtomicUsize::new(0),
            ring: ArcSwapOption::empty(),
        }
    }

    /// Indices into `backends`, each exactly once, in the order to try them.
    /// `active` gives a backend's current connection count (used by
    /// `least-connections` only).
    pub fn order(
        &self,
        backends: &Arc<Vec<Backend>>,
        client_id: &str,
        active: impl Fn(&Backend) -> i64,
    ) -> Vec<usize> {
        let n = backends.len();
        if n == 0 {
            return Vec::new();
        }
        match self.strategy {
            Strategy::RoundRobin => self.round_robin(n),
            Strategy::ClientId if client_id.is_empty() => self.round_robin(n),
            Strategy::ClientId => self.by_hash(backends, client_id.as_bytes()),
            Strategy::LeastConnections => {
                let mut order = self.round_robin(n);
                // Stable sort: equal loads keep the rotated order.
                order.sort_by_key(|&i| active(&backends[i]));
                order
            }
        }
    }

    /// All indices, starting at the next position of the shared counter.
    fn round_robin(&self, n: usize) -> Vec<usize> {
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|k| (start + k) % n).collect()
    }

    /// Walks the Ketama ring from the key's point, keeping each backend the
    /// first time it appears.
    fn by_hash(&self, backends: &Arc<Vec<Backend>>, key: &[u8]) -> Vec<usize> {
        let ring = self.ring_for(backends);
        let n = backends.len();
        let mut order = Vec::with_capacity(n);
        let mut iter = ring.ketama.iter(key);
        // The ring has 160 points per backend and the iterator wraps around
        // forever: bound the walk, then append whatever it did not reach.
        for _ in 0..n * 160 {
            let Some(point) = iter.next() else { break };
            let Some(addr) = point.addr.as_inet() else {
                continue;
            };
            if let Some(i) = backends.iter().position(|b| b.mqtt_addr == *addr) {
                if !order.contains(&i) {
                    order.push(i);
                    if order.len() == n {
                        return order;
                    }
                }
            }
        }
        order.extend((0..n).filter(|i| !order.contains(i)).collect::<Vec<_>>());
        order
    }

    /// The ring for this snapshot, building it if the snapshot is new.
    fn ring_for(&self, backends: &Arc<Vec<Backend>>) -> Arc<Ring> {
        if let Some(ring) = self.ring.load_full() {
            if Arc::ptr_eq(&ring.backends, backends) {
                return ring;
            }
        }
        let points: BTreeSet<_> = backends
            .iter()
            .filter_map(|b| pingora_load_balancing::Backend::new(&b.mqtt_addr.to_string()).ok())
            .collect();
        let ring = Arc::new(Ring {
            backends: backends.clone(),
            ketama: Arc::new(KetamaHashing::build(&points)),
        });
        self.ring.store(Some(ring.clone()));
        ring
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn backends(ports: &[u16]) -> Arc<Vec<Backend>> {
        Arc::new(
            ports
                .iter()
                .map(|p| Backend {
                    node_id: format!("n{p}"),
                    mqtt_addr: format!("127.0.0.1:{p}").parse().unwrap(),
                })
                .collect(),
        )
    }

    fn first(b: &Balancer, set: &Arc<Vec<Backend>>, id: &str) -> String {
        set[b.order(set, id, |_| 0)[0]].node_id.clone()
    }

    #[test]
    fn every_order_lists_each_backend_once() {
        let set = backends(&[1, 2, 3, 4]);
        for strategy in [
            Strategy::RoundRobin,
            Strategy::ClientId,
            Strategy::LeastConnections,
        ] {
            let b = Balancer::new(strategy);
            for id in ["", "a", "client-7", "x/y"] {
                let mut order = b.order(&set, id, |_| 0);
                order.sort();
                assert_eq!(order, [0, 1, 2, 3], "{strategy:?} {id:?}");
            }
        }
        assert!(Balancer::new(Strategy::ClientId)
            .order(&backends(&[]), "a", |_| 0)
            .is_empty());
    }

    #[test]
    fn round_robin_spreads_evenly() {
        let set = backends(&[1, 2, 3]);
        let b = Balancer::new(Strategy::RoundRobin);
        let mut counts = HashMap::new();
        for _ in 0..30 {
            *counts.entry(first(&b, &set, "same")).or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), [10, 10, 10]);
    }

    #[test]
    fn client_id_hashing_is_sticky_and_moves_only_the_dead_nodes_clients() {
        let three = backends(&[1, 2, 3]);
        let b = Balancer::new(Strategy::ClientId);
        let ids: Vec<String> = (0..200).map(|i| format!("client-{i}")).collect();
        let before: Vec<String> = ids.iter().map(|id| first(&b, &three, id)).collect();
        // Sticky: the same id lands on the same backend every time.
        for (id, node) in ids.iter().zip(&before) {
            assert_eq!(&first(&b, &three, id), node);
        }
        // Roughly even: every backend gets a fair share of 200 ids.
        for node in ["n1", "n2", "n3"] {
            let share = before.iter().filter(|n| *n == node).count();
            assert!((30..=110).contains(&share), "{node} got {share}");
        }
        // n2 dies: only its clients move, the others stay put.
        let two = backends(&[1, 3]);
        for (id, old) in ids.iter().zip(&before) {
            let new = first(&b, &two, id);
            if old != "n2" {
                assert_eq!(&new, old, "{id} moved although its node lives");
            }
        }
        // The fallback order is the ring order: with n2 gone, its clients
        // land on what was their second choice.
        for (id, old) in ids.iter().zip(&before) {
            if old == "n2" {
                let order = b.order(&three, id, |_| 0);
                assert_eq!(three[order[1]].node_id, first(&b, &two, id));
            }
        }
    }

    #[test]
    fn an_empty_client_id_is_spread_round_robin() {
        let set = backends(&[1, 2, 3]);
        let b = Balancer::new(Strategy::ClientId);
        let firsts: BTreeSet<String> = (0..3).map(|_| first(&b, &set, "")).collect();
        assert_eq!(firsts.len(), 3);
    }

    #[test]
    fn least_connections_prefers_the_idlest_and_rotates_ties() {
        let set = backends(&[1, 2, 3]);
        let b = Balancer::new(Strategy::LeastConnections);
        let load: HashMap<&str, i64> = [("n1", 5), ("n2", 0), ("n3", 2)].into();
        let order = b.order(&set, "c", |be| load[be.node_id.as_str()]);
        let names: Vec<_> = order.iter().map(|&i| set[i].node_id.as_str()).collect();
        assert_eq!(names, ["n2", "n3", "n1"]);
        let firsts: BTreeSet<String> = (0..3)
            .map(|_| set[b.order(&set, "c", |_| 0)[0]].node_id.clone())
            .collect();
        assert_eq!(firsts.len(), 3, "ties must rotate");
    }
}
