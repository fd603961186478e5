//! What a 5.0 connection adds to a session: the limits its client set at
//! CONNECT (which the node obeys when it sends), the limits the node sets
//! (which it enforces on what it receives), inbound topic aliases, the
//! session expiry interval, and the reason codes the node answers with.
//!
//! Guaranteed (5.0 section in brackets): the node never has more QoS 1/2
//! PUBLISH in flight to the client than its Receive Maximum [3.3.4], never
//! sends a packet over its Maximum Packet Size (such a message is dropped
//! for this client and counted) [3.1.2.11.4], uses at most the client's
//! Topic Alias Maximum of aliases toward it (each topic named once, then
//! by its alias; re-sends after a reconnect carry the name) and resolves
//! the client's aliases up to [`TOPIC_ALIAS_MAXIMUM`] [3.3.2.3.4];
//! a client over the node's [`RECEIVE_MAXIMUM`] is disconnected with 0x93
//! [3.3.4]. Not done: enhanced authentication (any Authentication Method
//! is refused with CONNACK 0x8C), and shared subscriptions in a cluster (SUBACK 0x9E; announced as
//! unavailable in that node's CONNACK; served without a cluster, see
//! [`crate::router::shared`]).

use std::collections::HashMap;
use std::sync::Arc;

use crate::message::{unix_millis, Message, Properties};
use crate::protocol::codec::{ConnectV5, PublishProperties, PublishV5};

/// QoS 1/2 PUBLISH a 5.0 client may have unacknowledged toward the node
/// (CONNACK Receive Maximum); one more is DISCONNECT 0x93.
pub const RECEIVE_MAXIMUM: u16 = 1024;

/// Topic aliases a 5.0 client may set on this connection (CONNACK Topic
/// Alias Maximum). Each holds one topic name, within the topic limits.
pub const TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// 5.0 reason codes the session sends (5.0 §2.4).
pub mod reason {
    /// Success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// DISCONNECT from the client: publish the will anyway.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// UNSUBACK: the filter was not subscribed.
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED: u8 = 0x80;
    /// A packet that could not be parsed.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// A packet that breaks the protocol.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// The ACL denies it.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// The node is shutting down.
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// No packet within 1.5 × keep-alive.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Another connection took the session.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// A filter that is not valid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// A topic name that is not valid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// PUBREL for an id the node does not hold.
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    /// More unacknowledged QoS 1/2 PUBLISH than the Receive Maximum.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// A topic alias of 0, over the maximum, or not set.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// A packet over the node's maximum packet size.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// A limit of the node (subscriptions per client).
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format indicator 1 with a payload that is not UTF-8.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// SUBACK: `$share/...` filters are not served (in a cluster).
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
}

/// The limits a 5.0 client set at CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientLimits {
    /// QoS 1/2 PUBLISH it takes in flight.
    pub receive_maximum: u16,
    /// Largest packet it takes.
    pub maximum_packet_size: usize,
    /// Topic aliases it takes from the node (0: none).
    pub topic_alias_maximum: u16,
    /// Whether reason strings may go on acknowledgements.
    pub problem_information: bool,
}

impl ClientLimits {
    /// From the CONNECT's properties (absent ones have the standard's
    /// defaults: 65,535 in flight, no size limit, problem information on).
    pub fn from_connect(v5: &ConnectV5) -> ClientLimits {
        ClientLimits {
            receive_maximum: v5.receive_maximum.map_or(u16::MAX, |n| n.get()),
            maximum_packet_size: v5
                .maximum_packet_size
                .map_or(usize::MAX, |n| n.get() as usize),
            topic_alias_maximum: v5.topic_alias_maximum,
            problem_information: v5.request_problem_information,
        }
    }
}

/// A 5.0 connection's own state.
#[derive(Debug)]
pub struct SessionV5 {
    /// What the client set at CONNECT.
    pub client: ClientLimits,
    /// Seconds the session outlives the connection (`u32::MAX`: never
    /// expires); may be changed by the client's DISCONNECT.
    pub session_expiry: u32,
    /// True when the CONNECT's interval was 0: a DISCONNECT may not raise
    /// it (5.0 §3.14.2.2.2).
    pub expiry_was_zero: bool,
    /// Inbound topic aliases, index = alias − 1.
    aliases: Vec<Option<Arc<str>>>,
    /// Outbound topic aliases: the alias each topic has on this
    /// connection, and (index = alias − 1) the topic each alias stands for.
    out_aliases: HashMap<Arc<str>, u16>,
    out_topics: Vec<Arc<str>>,
    /// The alias given next when all are taken (the oldest one, reused).
    out_next: u16,
}

/// How a PUBLISH to the client names its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundTopic {
    /// Send the topic name (false: the alias alone stands for it).
    pub with_name: bool,
    /// The alias the PUBLISH carries, setting it (with the name) or using it.
    pub alias: Option<u16>,
}

/// Why an inbound topic alias cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasError {
    /// 0 or over [`TOPIC_ALIAS_MAXIMUM`].
    OutOfRange,
    /// An empty topic with an alias that was never set.
    Unknown,
}

impl SessionV5 {
    /// The state of a new 5.0 connection.
    pub fn new(client: ClientLimits, session_expiry: u32) -> SessionV5 {
        SessionV5 {
            client,
            session_expiry,
            expiry_was_zero: session_expiry == 0,
            aliases: Vec::new(),
            out_aliases: HashMap::new(),
            out_topics: Vec::new(),
            out_next: 0,
        }
    }

    /// How the next PUBLISH of `topic` names it, within the client's Topic
    /// Alias Maximum (5.0 §3.3.2.3.4): a topic sent before goes by its
    /// alias alone; a new one gets an alias (with its name), the next free
    /// one or, all taken, the oldest one again. Call only for a PUBLISH
    /// that is written.
    pub fn outbound_topic(&mut self, topic: &Arc<str>) -> OutboundTopic {
        let max = self.client.topic_alias_maximum;
        if max == 0 {
            return OutboundTopic {
                with_name: true,
                alias: None,
            };
        }
        if let Some(&alias) = self.out_aliases.get(topic) {
            return OutboundTopic {
                with_name: false,
                alias: Some(alias),
            };
        }
        let alias = if self.out_topics.len() < usize::from(max) {
            self.out_topics.push(topic.clone());
            self.out_topics.len() as u16
        } else {
            let alias = self.out_next % max + 1;
            self.out_next = alias % max;
            let slot = usize::from(alias - 1);
            let old = std::mem::replace(&mut self.out_topics[slot], topic.clone());
            self.out_aliases.remove(&old);
            alias
        };
        self.out_aliases.insert(topic.clone(), alias);
        OutboundTopic {
            with_name: true,
            alias: Some(alias),
        }
    }

    /// The topic of an inbound PUBLISH: its topic name (setting `alias`
    /// to it, when given) or, when the name is empty, the topic `alias`
    /// stands for.
    pub fn resolve_alias(
        &mut self,
        topic: String,
        alias: Option<u16>,
    ) -> Result<String, AliasError> {
        let Some(alias) = alias else {
            return Ok(topic);
        };
        if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
            return Err(AliasError::OutOfRange);
        }
        let slot = usize::from(alias - 1);
        if topic.is_empty() {
            return match self.aliases.get(slot) {
                Some(Some(topic)) => Ok(topic.to_string()),
                _ => Err(AliasError::Unknown),
            };
        }
        if self.aliases.len() <= slot {
            self.aliases.resize(slot + 1, None);
        }
        self.aliases[slot] = Some(topic.as_str().into());
        Ok(topic)
    }
}

/// Longest Reason String the node sends, in bytes.
const MAX_REASON_STRING: usize = 200;

/// `text` as a Reason String: at most [`MAX_REASON_STRING`] bytes, cut at
/// a character boundary.
pub fn reason_string(text: &str) -> &str {
    let mut end = text.len().min(MAX_REASON_STRING);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The node's message properties from a 5.0 PUBLISH's (or will's), with
/// the expiry interval turned into a wall-clock deadline.
pub fn message_properties(p: &PublishProperties) -> Properties {
    Properties {
        expires_at_ms: p
            .message_expiry_interval
            .map(|secs| unix_millis().saturating_add(u64::from(secs.get()) * 1000)),
        payload_is_utf8: p.is_utf8_payload,
        content_type: p.content_type.as_ref().map(|s| s.to_string()),
        response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
        correlation_data: p.correlation_data.clone(),
        user_properties: p
            .user_properties
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// What a 5.0 PUBLISH of `message` carries: its properties, and its
/// expiry interval as the seconds left now (rounded up, at least 1: a
/// message is dropped, not sent, once its expiry has passed).
pub fn outgoing_properties<'a>(
    message: &'a Message,
    subscription_ids: &'a [u32],
    now_ms: u64,
) -> PublishV5<'a> {
    let properties = message.properties.as_deref();
    let expiry_secs = properties.and_then(|p| p.expires_at_ms).map(|at| {
        let left = at.saturating_sub(now_ms);
        u32::try_from(left.div_ceil(1000).max(1)).unwrap_or(u32::MAX)
    });
    PublishV5 {
        properties,
        expiry_secs,
        subscription_ids,
        topic_alias: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn session() -> SessionV5 {
        let client = ClientLimits {
            receive_maximum: 10,
            maximum_packet_size: 1000,
            topic_alias_maximum: 2,
            problem_information: true,
        };
        SessionV5::new(client, 0)
    }

    #[test]
    fn an_alias_is_set_by_a_topic_and_used_by_an_empty_one() {
        let mut s = session();
        assert_eq!(s.resolve_alias("a/b".into(), Some(3)), Ok("a/b".into()));
        assert_eq!(s.resolve_alias(String::new(), Some(3)), Ok("a/b".into()));
        assert_eq!(s.resolve_alias("c".into(), Some(3)), Ok("c".into()));
        assert_eq!(s.resolve_alias(String::new(), Some(3)), Ok("c".into()));
        assert_eq!(
            s.resolve_alias(String::new(), Some(2)),
            Err(AliasError::Unknown)
        );
        assert_eq!(
            s.resolve_alias("x".into(), Some(0)),
            Err(AliasError::OutOfRange)
        );
        let over = TOPIC_ALIAS_MAXIMUM + 1;
        assert_eq!(
            s.resolve_alias("x".into(), Some(over)),
            Err(AliasError::OutOfRange)
        );
        assert_eq!(s.resolve_alias("plain".into(), None), Ok("plain".into()));
    }

    #[test]
    fn outbound_aliases_are_set_once_then_used_and_reused_oldest_first() {
        let mut s = session();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        let set = |alias| OutboundTopic {
            with_name: true,
            alias: Some(alias),
        };
        let used = |alias| OutboundTopic {
            with_name: false,
            alias: Some(alias),
        };
        assert_eq!(s.outbound_topic(&a), set(1));
        assert_eq!(s.outbound_topic(&a), used(1));
        assert_eq!(s.outbound_topic(&b), set(2));
        // Both taken: c takes the oldest (1, a's); a then takes 2.
        assert_eq!(s.outbound_topic(&c), set(1));
        assert_eq!(s.outbound_topic(&c), used(1));
        assert_eq!(s.outbound_topic(&a), set(2));
        assert_eq!(s.outbound_topic(&b), set(1));
        let mut none = session();
        none.client.topic_alias_maximum = 0;
        assert_eq!(
            none.outbound_topic(&a),
            OutboundTopic {
                with_name: true,
                alias: None
            }
        );
    }

    #[test]
    fn reason_strings_are_cut_at_a_character_boundary() {
        assert_eq!(reason_string("short"), "short");
        let long = "é".repeat(150); // 300 bytes
        let cut = reason_string(&long);
        assert_eq!(cut.len(), 200);
        assert!(cut.chars().all(|c| c == 'é'));
        let odd = format!("x{long}"); // a 2-byte char across byte 200
        assert_eq!(reason_string(&odd).len(), 199);
    }

    #[test]
    fn expiry_is_sent_as_the_seconds_left() {
        let mut message = Message::new("t", Bytes::new(), crate::message::Qos::AtMostOnce, false);
        message.properties = Some(Box::new(Properties {
            expires_at_ms: Some(10_500),
            ..Properties::default()
        }));
        assert_eq!(
            outgoing_properties(&message, &[], 1_000).expiry_secs,
            Some(10)
        );
        assert_eq!(
            outgoing_properties(&message, &[], 10_400).expiry_secs,
            Some(1)
        );
        let plain = Message::new("t", Bytes::new(), crate::message::Qos::AtMostOnce, false);
        assert_eq!(outgoing_properties(&plain, &[], 0).expiry_secs, None);
    }
}
