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
use astramq_shared::metrics::MemberCount;
use tokio::sync::broadcast::error::RecvError;

use crate::cluster::Cluster;
use crate::config::GossipOptions;

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

/// Follows membership events until membership stops: keeps
/// `astramq_membership_members` current and wakes dead-node detection on a
/// failure.
pub async fn follow(
    membership: Membership,
    cluster: Option<Arc<Cluster>>,
    node_id: String,
    mut members: MemberCount,
) {
    let mut events = membership.subscribe();
    members.seed(&node_id, Role::Broker, &membership);
    loop {
        match events.recv().await {
            Ok(event) => {
                members.apply(&event);
                if let (MemberEvent::Failed(_), Some(cluster)) = (&event, &cluster) {
                    cluster.check_liveness_now();
                }
            }
            Err(RecvError::Lagged(_)) => members.seed(&node_id, Role::Broker, &membership),
            Err(RecvError::Closed) => {
                tracing::error!(
                    "gossip membership stopped; this node is no longer announced to proxies"
                );
                members.clear();
                return;
            }
        }
    }
}
