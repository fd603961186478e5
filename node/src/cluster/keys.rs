//! Names of everything AstraMQ keeps in Redis.
//!
//! Per-session keys carry the client id in a hash tag (`{...}`), so one
//! session's keys share a Redis Cluster slot and a Lua script may touch
//! them all when the store moves to Redis Cluster.

/// Prefix of every key; lets a Redis instance host other data.
const PREFIX: &str = "astramq";

/// A session's hash: owner, epoch, connected, clean, will.
pub fn session(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}")
}

/// A session's subscriptions: filter → QoS.
pub fn subscriptions(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:subs")
}

/// A session's offline queue (list of encoded deliveries, oldest first).
pub fn queue(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:queue")
}

/// A session's unacknowledged outgoing messages: packet id → record.
pub fn inflight(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:inflight")
}

/// A session's incoming QoS 2 ids awaiting PUBREL.
pub fn incoming_qos2(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:qos2")
}

/// Retained messages: topic → encoded message.
pub fn retained() -> String {
    format!("{PREFIX}:retained")
}

/// Every node id that has joined and not been cleaned up after death.
pub fn nodes() -> String {
    format!("{PREFIX}:nodes")
}

/// A node's heartbeat, with a TTL: its absence means the node is dead.
pub fn node_alive(node_id: &str) -> String {
    format!("{PREFIX}:node:{node_id}:alive")
}

/// The filters a node has at least one subscriber for.
pub fn node_routes(node_id: &str) -> String {
    format!("{PREFIX}:node:{node_id}:routes")
}

/// The client ids whose sessions a node owns (connected or offline).
pub fn node_clients(node_id: &str) -> String {
    format!("{PREFIX}:node:{node_id}:clients")
}

/// A node's inbox stream (routed mode publishes and control messages).
pub fn inbox(node_id: &str) -> String {
    format!("{PREFIX}:inbox:{node_id}")
}

/// Where a node has read the broadcast stream up to.
pub fn bus_cursor(node_id: &str) -> String {
    format!("{PREFIX}:node:{node_id}:bus-cursor")
}

/// The single cluster-wide stream of broadcast mode.
pub fn bus() -> String {
    format!("{PREFIX}:bus")
}

/// Changes to any node's route set, tailed by every node.
pub fn route_log() -> String {
    format!("{PREFIX}:routes:log")
}

/// Held by the one survivor that cleans up after a dead node.
pub fn recovery_lock(node_id: &str) -> String {
    format!("{PREFIX}:recovery:{node_id}")
}
