//! The node's side of gossip membership.
//!
//! The node announces itself (role `broker`, its MQTT and metrics
//! addresses) so proxies route clients to it, and listens for failures: a
//! member reported `failed` makes the cluster look for dead nodes at once
//! instead of at its next heartbeat check. Redis stays the arbiter of death
//! (see `cluster::liveness`): gossip only makes it faster.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use astramq_shared::membership::{MemberEvent, Membership, MembershipConfig, Role};
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::Cluster;
use crate::config::GossipOptions;
use crate::stats::Stats;

/// Joins the gossip cluster as a broker reachable at `mqtt_addr`.
pub async fn join(
    node_id: &str,
    options: &GossipOptions,
    mqtt_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<Membership> {
    Membership::start(MembershipConfig {
        node_id: node_id.to_owned(),
        role: Role::Broker,
        gossip_listen: options.listen,
        join: options.join.clone(),
        mqtt_addr: Some(mqtt_addr),
        metrics_addr,
        encryption_key: options.key.clone(),
    })
    .await
    .context("starting gossip membership")
}

/// Follows membership events until membership stops: keeps the member
/// gauge current and wakes dead-node detection on a failure.
pub async fn follow(
    membership: Membership,
    cluster: Option<Arc<Cluster>>,
    stats: Arc<GossipGauge>,
) {
    let mut events = membership.subscribe();
    stats.set(&membership);
    loop {
        match events.recv().await {
            Ok(event) => {
                stats.set(&membership);
                if let (MemberEvent::Failed(_), Some(cluster)) = (&event, &cluster) {
                    cluster.check_liveness_now();
                }
            }
            Err(RecvError::Lagged(_)) => stats.set(&membership),
            Err(RecvError::Closed) => {
                tracing::error!(
                    "gossip membership stopped; this node is no longer announced to proxies"
                );
                stats.clear();
                return;
            }
        }
    }
}

/// `astramq_membership_members`: live brokers as this node sees them.
pub struct GossipGauge {
    alive: prometheus::IntGauge,
}

impl GossipGauge {
    /// Registers the gauge with the node's metrics.
    pub fn new(stats: &Stats) -> GossipGauge {
        let members = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "astramq_membership_members",
                "Cluster members known through gossip, by state.",
            ),
            &["state"],
        )
        .expect("valid metric");
        stats
            .registry
            .register(Box::new(members.clone()))
            .expect("metric registered once");
        GossipGauge {
            alive: members.with_label_values(&["alive"]),
        }
    }

    fn set(&self, membership: &Membership) {
        self.alive.set(membership.live_brokers().len() as i64);
    }

    fn clear(&self) {
        self.alive.set(0);
    }
}
