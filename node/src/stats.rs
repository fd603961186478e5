//! Counters of what the broker did, read by `$SYS` (and metrics later).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Monotonic counters and gauges, updated lock-free on the hot path.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections accepted by the listener.
    pub connections_total: AtomicU64,
    /// Sessions currently connected.
    pub clients_connected: AtomicU64,
    /// PUBLISH packets received from clients.
    pub messages_received: AtomicU64,
    /// PUBLISH packets sent to clients (re-sends included).
    pub messages_sent: AtomicU64,
    /// Payload bytes received in PUBLISH packets.
    pub payload_bytes_received: AtomicU64,
    /// Payload bytes sent in PUBLISH packets.
    pub payload_bytes_sent: AtomicU64,
    /// Deliveries dropped because a session's queue was full.
    pub dropped_queue_full: AtomicU64,
    /// QoS 0 deliveries not kept for offline sessions.
    pub dropped_qos0_offline: AtomicU64,
    /// Deliveries dropped because their message expired.
    pub dropped_expired: AtomicU64,
    /// Published messages no subscription matched.
    pub unrouted: AtomicU64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: AtomicU64,
}

impl Stats {
    /// Adds `n` to `counter`.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Subtracts `n` from gauge `counter`.
    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Relaxed);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Relaxed)
    }

    /// All drops, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        Self::get(&self.dropped_queue_full)
            + Self::get(&self.dropped_qos0_offline)
            + Self::get(&self.dropped_expired)
    }
}
