//! What a persistent session is made of, in the form the store keeps while
//! its client is away.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use crate::message::{ClientId, Delivery, QueueId};
use crate::subscription::Subscription;

/// Where an outgoing QoS 1/2 message stands in its handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutgoingStage {
    /// QoS 1 sent, waiting for PUBACK.
    AwaitingPuback,
    /// QoS 2 sent, waiting for PUBREC.
    AwaitingPubrec,
    /// PUBREL sent, waiting for PUBCOMP.
    AwaitingPubcomp,
}

/// One unacknowledged outgoing message.
#[derive(Debug, Clone, PartialEq)]
pub struct OutgoingInflight {
    /// The packet id the client knows it by.
    pub packet_id: u16,
    /// What was sent.
    pub delivery: Delivery,
    /// How far the handshake got.
    pub stage: OutgoingStage,
}

/// Everything of a clean-session=0 session that must survive its
/// connection: what it subscribed to, what it has not acknowledged, and
/// what waits to be sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionState {
    /// Filter → what the client subscribed with.
    pub subscriptions: HashMap<String, Subscription>,
    /// Sent but not fully acknowledged, oldest first; re-sent with DUP on
    /// resume (MQTT-4.4.0-1).
    pub outgoing: Vec<OutgoingInflight>,
    /// Incoming QoS 2 packet ids that got PUBREC (or may have) but not yet
    /// PUBREL: a re-sent PUBLISH with one of them is not delivered again.
    pub incoming_qos2: Vec<(u16, IncomingQos2)>,
    /// Deliveries not yet sent, oldest first.
    pub pending: VecDeque<Delivery>,
    /// 5.0: seconds the parked session is kept before it expires; `None`
    /// keeps it until a client claims it (3.1.1, or 0xFFFFFFFF). Used when
    /// parking (Redis keys get it as their TTL), not read back.
    pub expiry: Option<u32>,
}

/// An incoming QoS 2 message between its PUBLISH and its PUBREL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingQos2 {
    /// The cluster-unique id its fan-out used (cluster only): a re-run of
    /// an unfinished fan-out uses it again, so nobody gets it twice.
    pub publish_id: Option<Arc<str>>,
    /// True once its fan-out is known to be complete; a re-sent PUBLISH is
    /// then only acknowledged again.
    pub fanned_out: bool,
}

/// What a connected persistent session has done since its last report:
/// recorded before the matching packet leaves (QoS 2 stages), or soon
/// after (acknowledged entries), so a survivor resumes from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// In-flight records to write: packet id, stage, queue entry.
    pub stages: Vec<(u16, OutgoingStage, QueueId)>,
    /// Packet ids whose in-flight records are done with.
    pub completed: Vec<u16>,
    /// Queue entries the client has acknowledged, each with its size
    /// against the queue's byte bound (`limits::queue::queued_size`).
    pub acknowledged: Vec<(QueueId, usize)>,
}

impl Progress {
    /// True when there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty() && self.completed.is_empty() && self.acknowledged.is_empty()
    }

    /// True when a packet waits on this report (a stage must be recorded
    /// before its packet leaves).
    pub fn gates_output(&self) -> bool {
        !self.stages.is_empty()
    }
}

/// Proof that this node owns a session: checked on every write to it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionOwner {
    /// The session's client id.
    pub client_id: ClientId,
    /// Increases on every claim; writes with an older epoch are ignored.
    pub epoch: u64,
}
