//! What a persistent session is made of, in the form the store keeps while
//! its client is away.

use std::collections::{HashMap, VecDeque};

use crate::message::{Delivery, Qos};

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
    /// Filter → granted QoS.
    pub subscriptions: HashMap<String, Qos>,
    /// Sent but not fully acknowledged, oldest first; re-sent with DUP on
    /// resume (MQTT-4.4.0-1).
    pub outgoing: Vec<OutgoingInflight>,
    /// Incoming QoS 2 packet ids that got PUBREC but not yet PUBREL: a
    /// re-sent PUBLISH with one of them is not delivered again.
    pub incoming_qos2: Vec<u16>,
    /// Deliveries not yet sent, oldest first.
    pub pending: VecDeque<Delivery>,
}
