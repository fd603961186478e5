//! The broker's internal message model.
//!
//! A [`Message`] is created once when a PUBLISH arrives and shared by every
//! subscriber that receives it (`Arc<Message>`); its payload is a slice of the
//! connection's read buffer (`bytes::Bytes`), so fan-out copies nothing.
//! The model already carries what MQTT 5.0 adds (expiry, content type, user
//! properties, ...) so the 5.0 codec can fill it in without reshaping the
//! router, the sessions or the store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::pin::Pin;

/// A client identifier, shared cheaply between the registry, the router and
/// the store.
pub type ClientId = Arc<str>;

/// MQTT quality of service; ordered so that `min`/`max` give the delivery
/// level of a subscription and the strongest of overlapping subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Qos {
    /// Fire and forget.
    AtMostOnce = 0,
    /// Acknowledged with PUBACK; may be delivered twice.
    AtLeastOnce = 1,
    /// Four-step handshake; delivered exactly once.
    ExactlyOnce = 2,
}

impl Qos {
    /// Reads the two QoS bits of a fixed header or a SUBSCRIBE option byte.
    pub fn from_bits(bits: u8) -> Option<Qos> {
        match bits {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    /// The QoS as the protocol numbers it.
    pub fn as_u8(self) -> u8 {
        self as u8
    }
}

/// The properties MQTT 5.0 attaches to a PUBLISH. Boxed inside [`Message`]
/// so 3.1.1 messages, which never have them, stay small.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// Wall-clock expiry (ms since the Unix epoch): a message past it is
    /// dropped instead of delivered. Wall clock, not `Instant`, because the
    /// message may cross nodes through Redis.
    pub expires_at_ms: Option<u64>,
    /// Payload format indicator: true when the payload is UTF-8 text.
    pub payload_is_utf8: bool,
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Request/response: where the receiver should answer.
    pub response_topic: Option<String>,
    /// Request/response: opaque data echoed in the answer.
    pub correlation_data: Option<Bytes>,
    /// Application-defined key/value pairs, in order, duplicates allowed.
    pub user_properties: Vec<(String, String)>,
}

/// One application message as published, shared by all its deliveries.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The topic name it was published to (never contains wildcards).
    pub topic: Arc<str>,
    /// The application payload, shared with the frame it arrived in.
    pub payload: Bytes,
    /// The QoS it was published with; each delivery uses at most this.
    pub qos: Qos,
    /// Whether the publisher asked the broker to retain it.
    pub retain: bool,
    /// MQTT 5.0 properties; `None` for 3.1.1 messages.
    pub properties: Option<Box<Properties>>,
    /// Cluster-unique id of a QoS 2 publish, given when its publisher's
    /// node first records it. A re-run of the same publish (after a node
    /// died mid-write) carries the same id, so each session's queue and
    /// each node's memory can refuse the second copy: exactly once.
    pub publish_id: Option<Arc<str>>,
    /// The publishing client, set only when it has a 5.0 No Local
    /// subscription (which must not match its own messages); `None`
    /// otherwise, so most messages do not carry it across Redis.
    pub publisher: Option<ClientId>,
}

impl Message {
    /// A message without 5.0 properties, as 3.1.1 clients publish them.
    pub fn new(topic: impl Into<Arc<str>>, payload: Bytes, qos: Qos, retain: bool) -> Message {
        Message {
            topic: topic.into(),
            payload,
            qos,
            retain,
            properties: None,
            publish_id: None,
            publisher: None,
        }
    }

    /// True when the message carries an expiry that has passed.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.properties
            .as_ref()
            .and_then(|p| p.expires_at_ms)
            .is_some_and(|at| at <= now_ms)
    }
}

/// Milliseconds since the Unix epoch, for expiry checks.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One message on its way to one subscriber: the shared message plus what
/// is specific to this delivery.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The shared message.
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS of the best matching subscription).
    pub qos: Qos,
    /// Set only when the delivery answers a SUBSCRIBE with a retained
    /// message; normal forwarding always clears it (MQTT-3.3.1-9).
    pub retain: bool,
    /// 5.0 Subscription Identifiers of the subscriptions it matched (sent
    /// in the PUBLISH); empty for most deliveries (no allocation).
    pub subscription_ids: Vec<u32>,
    /// For a delivery through a shared subscription, its group
    /// (`$share/{group}/{filter}`): handed to another member if this one
    /// leaves before acknowledging it. Not kept in Redis (shared
    /// subscriptions are served on one node only).
    pub shared: Option<Arc<str>>,
    /// Where the delivery sits in its persistent session's queue in Redis
    /// (a stream entry id); the entry is deleted when the client has
    /// acknowledged it. `None` for deliveries that live only in memory
    /// (QoS 0, clean sessions, the embedded store).
    pub queued: Option<QueueId>,
    /// The journal or inbox entry that holds this delivery in Redis while
    /// it is served from memory (see [`crate::pin`]); `None` otherwise.
    pub pin: Option<Pin>,
}

/// The id of a delivery's entry in its session's queue.
pub type QueueId = Arc<str>;

impl Delivery {
    /// A normal forward of `message` to a subscription granted `granted`.
    pub fn forward(message: Arc<Message>, granted: Qos) -> Delivery {
        let qos = message.qos.min(granted);
        Delivery {
            message,
            qos,
            retain: false,
            subscription_ids: Vec::new(),
            shared: None,
            queued: None,
            pin: None,
        }
    }

    /// A retained message sent because a new subscription matched it.
    pub fn retained(message: Arc<Message>, granted: Qos) -> Delivery {
        let qos = message.qos.min(granted);
        Delivery {
            message,
            qos,
            retain: true,
            subscription_ids: Vec::new(),
            shared: None,
            queued: None,
            pin: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_qos_is_the_minimum_of_publish_and_subscription() {
        let msg = Arc::new(Message::new("t", Bytes::new(), Qos::AtLeastOnce, true));
        assert_eq!(
            Delivery::forward(msg.clone(), Qos::ExactlyOnce).qos,
            Qos::AtLeastOnce
        );
        assert_eq!(
            Delivery::forward(msg.clone(), Qos::AtMostOnce).qos,
            Qos::AtMostOnce
        );
        assert!(!Delivery::forward(msg.clone(), Qos::ExactlyOnce).retain);
        assert!(Delivery::retained(msg, Qos::ExactlyOnce).retain);
    }

    #[test]
    fn expiry_is_checked_against_wall_clock() {
        let mut msg = Message::new("t", Bytes::new(), Qos::AtMostOnce, false);
        assert!(!msg.is_expired(u64::MAX));
        msg.properties = Some(Box::new(Properties {
            expires_at_ms: Some(100),
            ..Properties::default()
        }));
        assert!(msg.is_expired(100));
        assert!(!msg.is_expired(99));
    }
}
