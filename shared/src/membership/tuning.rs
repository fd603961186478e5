//! The knobs: serf and memberlist options for a LAN or loopback cluster.
//!
//! Serf's defaults are tuned for large clusters (and memberlist's `lan()` has
//! its probe interval and timeout swapped against Go's), which detected a
//! `kill -9` in ~3 s and a hung process never. These values were measured on
//! loopback with four processes (see `shared/TECHNOTES.md`, serf section):
//! `kill -9` → failed in 0.9–1.1 s, SIGSTOP → failed in 1.1–1.2 s,
//! graceful leave and rejoin seen in under 0.2 s.
//!
//! | knob | value | serf default | why |
//! |---|---|---|---|
//! | base | `lan()` | `lan()` | `local()` (retransmit ×2) lost gossip in a 4-node cluster |
//! | `probe_interval` | 200 ms | 500 ms | each member probes a random peer this often |
//! | `probe_timeout` | 100 ms | 1 s | loopback/LAN round trips are far below this |
//! | `timeout` | 300 ms | 10 s | bounds the TCP fallback ping, which otherwise hides a hung peer for 10 s |
//! | `suspicion_mult` | 3 | 4 | suspicion lasts `3 · log10(n+1) · probe_interval`, shortened by confirmations |
//! | `gossip_interval` | 50 ms | 200 ms | state changes spread in a few tens of ms |
//! | `reap_interval` | 2 s | 15 s | how often dead and left members are checked for expiry |
//! | `reconnect_interval` | 1 s | 30 s | how often a failed member is retried while it may come back |
//! | `reconnect_timeout` | 6 s | 24 h | a failed member is forgotten (`reaped`) ~6–8 s after failing |
//! | `tombstone_timeout` | 6 s | 24 h | a left member is forgotten ~6–8 s after leaving |
//! | `leave_propagate_delay` | 500 ms | 1 s | a leaving member answers probes this long after announcing it |
//! | `broadcast_timeout` | 2 s | 5 s | upper bound on waiting for the leave message to go out |
//!
//! The price of the short timers is traffic (a probe per member every
//! 200 ms, gossip every 50 ms) that grows with cluster size: fine for tens of
//! members on a LAN, wrong across a WAN. The short reap timeouts mean a
//! partition longer than ~6 s is healed only by re-joining seeds (see
//! `seeds.rs`), not by serf's reconnect loop.

use std::time::Duration;

use serf::{
    types::{EncryptionAlgorithm, SecretKey},
    MemberlistOptions, Options,
};

use super::{member::local_tags, MembershipConfig};

/// Failure detection: how often each member probes one peer.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Failure detection: how long a direct UDP probe may take before indirect probes.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
/// Bound on TCP operations, including the fallback ping (gotcha: a hung peer).
pub const IO_TIMEOUT: Duration = Duration::from_millis(300);
/// Lifeguard suspicion multiplier (suspicion time before a member is failed).
pub const SUSPICION_MULT: usize = 3;
/// Dissemination: how often queued gossip is sent to random peers.
pub const GOSSIP_INTERVAL: Duration = Duration::from_millis(50);
/// How often failed and left members are checked for reaping.
pub const REAP_INTERVAL: Duration = Duration::from_secs(2);
/// How often serf tries to reconnect to failed members.
pub const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);
/// How long a failed member is remembered (and retried) before it is reaped.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a left member is remembered before it is reaped.
pub const TOMBSTONE_TIMEOUT: Duration = Duration::from_secs(6);
/// How long a leaving member keeps answering probes after announcing its leave.
pub const LEAVE_PROPAGATE_DELAY: Duration = Duration::from_millis(500);
/// Upper bound on waiting for the leave broadcast to be sent.
pub const BROADCAST_TIMEOUT: Duration = Duration::from_secs(2);

/// Serf options for this process: tuned timers, its tags, and encryption
/// when a key is given.
pub(crate) fn serf_options(cfg: &MembershipConfig, key: Option<SecretKey>) -> Options {
    Options::new()
        .with_memberlist_options(memberlist_options(key))
        .with_tags(local_tags(cfg).into_iter())
        .with_reap_interval(REAP_INTERVAL)
        .with_reconnect_interval(RECONNECT_INTERVAL)
        .with_reconnect_timeout(RECONNECT_TIMEOUT)
        .with_tombstone_timeout(TOMBSTONE_TIMEOUT)
        .with_leave_propagate_delay(LEAVE_PROPAGATE_DELAY)
        .with_broadcast_timeout(BROADCAST_TIMEOUT)
}

fn memberlist_options(key: Option<SecretKey>) -> MemberlistOptions {
    let opts = MemberlistOptions::lan()
        .with_probe_interval(PROBE_INTERVAL)
        .with_probe_timeout(PROBE_TIMEOUT)
        .with_timeout(IO_TIMEOUT)
        .with_suspicion_mult(SUSPICION_MULT)
        .with_gossip_interval(GOSSIP_INTERVAL);
    match key {
        None => opts,
        // The key alone leaves traffic in plaintext and lets keyless members
        // in: both verify flags are what make memberlist encrypt outgoing
        // messages and refuse unencrypted incoming ones (TECHNOTES gotcha 7).
        Some(key) => opts
            .with_primary_key(key)
            .with_encryption_algo(EncryptionAlgorithm::NoPadding)
            .with_gossip_verify_outgoing(true)
            .with_gossip_verify_incoming(true),
    }
}
