//! Why membership can fail to start: each variant names the step that failed
//! and carries its cause, so a broker or proxy can log one line and exit.

use std::net::SocketAddr;

/// Errors from [`Membership::start`](super::Membership::start).
///
/// Joining the seeds is deliberately *not* an error: if no seed answers yet,
/// [`Membership`](super::Membership) keeps retrying in the background, so
/// the order in which processes start does not matter.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// The configured gossip key is neither 16/24/32 bytes of base64 nor of hex.
    /// Refused up front: a typo must not silently fall back to plaintext gossip.
    #[error("invalid gossip encryption key: {reason}")]
    InvalidKey {
        /// What was wrong with the key (never the key itself).
        reason: String,
    },
    /// The node id is empty or too long for a gossip node name.
    #[error("invalid node id {node_id:?}: {reason}")]
    InvalidNodeId {
        /// The rejected id.
        node_id: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Serf could not bind its UDP/TCP port or start its background tasks.
    #[error("cannot start gossip on {addr}")]
    Start {
        /// The `--gossip-listen` address that failed.
        addr: SocketAddr,
        /// The underlying serf/memberlist error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
