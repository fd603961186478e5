//! Names of everything AstraMQ keeps in Redis.
//!
//! Every key carries its entity in a hash tag (`{...}`): a session's keys
//! share the slot of `{client id}`, a node's keys the slot of `{node id}`.
//! Each Lua script touches the keys of one entity only, so every script
//! runs unchanged on Redis Cluster. The only keys without an entity are the
//! cluster-wide `nodes` set, the route log, the retained hash, the
//! broadcast stream and the users hash; no script touches them together
//! with another key.

/// Prefix of every key; lets a Redis instance host other data.
const PREFIX: &str = "astramq";

/// A session's hash: owner, epoch, connected, persistent, will, expiry
/// (5.0 session expiry in seconds; empty for never), qbytes.
pub fn session(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}")
}

/// Every key of a session, in the order the session scripts take them:
/// session, subs, inflight, qos2, queue, seen.
pub fn session_keys(client_id: &str) -> [String; 6] {
    [
        session(client_id),
        subscriptions(client_id),
        inflight(client_id),
        incoming_qos2(client_id),
        queue(client_id),
        seen(client_id),
    ]
}

/// A session's subscriptions: filter → subscription record (the QoS digit,
/// then 5.0 options; see `crate::subscription`).
pub fn subscriptions(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:subs")
}

/// A persistent session's queue: a stream of encoded deliveries, oldest
/// first, each deleted once the client has acknowledged it.
pub fn queue(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:q")
}

/// A session's unacknowledged outgoing QoS 2 (and, once parked, QoS 1)
/// messages: packet id → stage mark and queue entry id.
pub fn inflight(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:inflight")
}

/// A session's incoming QoS 2 packet ids awaiting PUBREL: packet id →
/// `p:<publish id>` (written, fan-out maybe unfinished) or `d:<publish id>`
/// (fan-out done).
pub fn incoming_qos2(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:qos2")
}

/// QoS 2 publish ids already queued for a session (sorted set by time), so
/// a re-run of the same publish is not queued twice.
pub fn seen(client_id: &str) -> String {
    format!("{PREFIX}:s:{{{client_id}}}:seen")
}

/// Retained messages: topic → encoded message.
pub fn retained() -> String {
    format!("{PREFIX}:retained")
}

/// The cluster's users: user name → argon2id PHC hash. Written by
/// `astramq-node user add/remove --redis URL`, read by every node at each
/// login (never cached, so a removal holds at the next CONNECT).
pub fn users() -> String {
    format!("{PREFIX}:users")
}

/// Every node id that has joined and not been cleaned up after death.
pub fn nodes() -> String {
    format!("{PREFIX}:nodes")
}

/// A node's heartbeat, with a TTL: its absence means the node is dead.
pub fn node_alive(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:alive")
}

/// Set by the survivor that recovers a node: the node's inbox accepts no
/// more entries and the node, should it come back, must start afresh.
pub fn node_fenced(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:fenced")
}

/// The filters a node has at least one subscriber for.
pub fn node_routes(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:routes")
}

/// The client ids whose sessions a node owns (connected or offline).
pub fn node_clients(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:clients")
}

/// A node's inbox stream (routed mode publishes and control messages).
pub fn inbox(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:inbox")
}

/// A node's journal stream: QoS 1 publishes made on it for its connected
/// persistent sessions, served from memory (see [`crate::pin`]).
pub fn journal(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:journal")
}

/// Where a node has read the broadcast stream up to.
pub fn bus_cursor(node_id: &str) -> String {
    format!("{PREFIX}:n:{{{node_id}}}:bus-cursor")
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
    format!("{PREFIX}:n:{{{node_id}}}:recovery")
}

/// The retained messages' change log: a stream of topics that got their
/// first retained message or lost it (`s` sequence, `o` op, `t` topic),
/// which every node follows to keep its topic index in step. Its hash tag
/// is the retained hash's whole name, so both share one hash slot.
pub fn retained_log() -> String {
    format!("{{{PREFIX}:retained}}:log")
}

/// Counters of the retained messages (`bytes` stored, `seq` of the last
/// log entry), in the retained hash's slot.
pub fn retained_meta() -> String {
    format!("{{{PREFIX}:retained}}:meta")
}
