//! `$SYS/broker/...`: broker statistics published as retained messages, as
//! Mosquitto does, so monitoring tools that read them work unchanged.
//!
//! A node alone publishes its statistics under `$SYS/broker/`. In a
//! cluster every node publishes its own under `$SYS/broker/<node-id>/`
//! (so nodes never overwrite each other), and the cluster-wide figures
//! under `$SYS/broker/`: the sum of every registered node's counters (as
//! last published, so up to one interval old), the retained-message count
//! and the version. A node removed from the cluster (recovered after its
//! death) has its per-node topics deleted by the next node to publish.
//!
//! Not guaranteed: statistics are best effort (a failed store write is not
//! retried); a total may mix figures from different rounds of different
//! nodes, and counts a dead node until its recovery.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::broker::Broker;
use crate::message::{Message, Qos};

/// Where every statistic lives.
const ROOT: &str = "$SYS/broker/";

/// The counters summed over nodes for the cluster-wide figures.
const SUMMED: [&str; 8] = [
    "clients/connected",
    "clients/total",
    "messages/received",
    "messages/sent",
    "messages/dropped",
    "bytes/received",
    "bytes/sent",
    "subscriptions/count",
];

/// Publishes the statistics every `interval` until the task is dropped.
pub async fn publish_periodically(broker: Arc<Broker>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let topics = match broker.cluster() {
            None => node_statistics(&broker, ROOT).await,
            Some(_) => cluster_statistics(&broker).await,
        };
        for (topic, value) in topics {
            publish(&broker, topic, Bytes::from(value)).await;
        }
    }
}

/// Publishes one retained statistic (an empty value deletes it).
async fn publish(broker: &Broker, topic: String, value: Bytes) {
    let message = Message::new(topic, value, Qos::AtMostOnce, true);
    // Statistics are best effort: a failed store write is not retried.
    let _ = broker.publish_and_wait(Arc::new(message)).await;
}

/// This node's statistics, each topic under `prefix`.
async fn node_statistics(broker: &Broker, prefix: &str) -> Vec<(String, String)> {
    let s = broker.stats();
    let counters = [
        ("clients/connected", s.clients_connected.get() as u64),
        ("clients/total", s.connections_total.get()),
        ("messages/received", s.received_total()),
        ("messages/sent", s.sent_total()),
        ("messages/dropped", s.dropped_total()),
        ("bytes/received", s.payload_bytes_received.get()),
        ("bytes/sent", s.payload_bytes_sent.get()),
        ("subscriptions/count", broker.subscription_count() as u64),
        ("uptime", broker.started().elapsed().as_secs()),
    ];
    let mut out: Vec<(String, String)> = counters
        .into_iter()
        .map(|(name, value)| (format!("{prefix}{name}"), value.to_string()))
        .collect();
    out.push((format!("{prefix}version"), version()));
    if prefix == ROOT {
        out.push(retained_count(broker).await);
    }
    out
}

fn version() -> String {
    format!("astramq {}", env!("CARGO_PKG_VERSION"))
}

async fn retained_count(broker: &Broker) -> (String, String) {
    let retained = broker.store().retained_count().await.unwrap_or(0);
    (
        format!("{ROOT}retained messages/count"),
        retained.to_string(),
    )
}

/// In a cluster: this node's statistics under its id, the cluster-wide
/// figures under the root, and empty values deleting the per-node topics
/// of nodes no longer registered.
async fn cluster_statistics(broker: &Broker) -> Vec<(String, String)> {
    let own = format!("{ROOT}{}/", broker.node_id());
    let mut out = node_statistics(broker, &own).await;
    let Some(registered) = registered_nodes(broker).await else {
        return out;
    };
    let me = broker.node_id().to_string();
    let mut totals: BTreeMap<&str, u64> = SUMMED.iter().map(|name| (*name, 0)).collect();
    // This node's figures as just taken, not as last stored.
    for (topic, value) in &out {
        let name = topic.strip_prefix(&own).unwrap_or_default();
        if let Some(total) = totals.get_mut(name) {
            *total += value.parse::<u64>().unwrap_or(0);
        }
    }
    let mut deletions = Vec::new();
    for ((node, name), value) in published_per_node(broker).await {
        if node == me {
            continue;
        }
        if !registered.contains(&node) {
            deletions.push((format!("{ROOT}{node}/{name}"), String::new()));
        } else if let Some(total) = totals.get_mut(name.as_str()) {
            *total += value.parse::<u64>().unwrap_or(0);
        }
    }
    out.extend(deletions);
    out.extend(
        totals
            .into_iter()
            .map(|(name, total)| (format!("{ROOT}{name}"), total.to_string())),
    );
    out.push((format!("{ROOT}version"), version()));
    out.push(retained_count(broker).await);
    out
}

async fn registered_nodes(broker: &Broker) -> Option<HashSet<String>> {
    let cluster = broker.cluster()?;
    match cluster.registered_nodes().await {
        Ok(nodes) => Some(nodes.into_iter().collect()),
        Err(error) => {
            tracing::debug!(%error, "cluster $SYS totals skipped this round");
            None
        }
    }
}

/// Every per-node statistic in the retained store: (node, name) → value.
/// Only the names this module publishes count, so a node id can never be
/// mistaken for the first level of a cluster-wide topic.
async fn published_per_node(broker: &Broker) -> BTreeMap<(String, String), String> {
    let mut names: Vec<&str> = SUMMED.to_vec();
    names.extend(["uptime", "version"]);
    let filters: Vec<String> = names.iter().map(|n| format!("{ROOT}+/{n}")).collect();
    let filters: Vec<&str> = filters.iter().map(String::as_str).collect();
    let Ok(retained) = broker.store().retained_matching(&filters).await else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    for message in retained {
        let Some(rest) = message.topic.strip_prefix(ROOT) else {
            continue;
        };
        let Some((node, name)) = rest.split_once('/') else {
            continue;
        };
        if names.contains(&name) {
            let value = String::from_utf8_lossy(&message.payload).into_owned();
            out.insert((node.to_string(), name.to_string()), value);
        }
    }
    out
}
