//! The packets a client sends, as the session layer sees them.
//!
//! Every field that both 3.1.1 and 5.0 have is a plain field; what only 5.0
//! has is in a boxed `v5`/`properties` field that is `None` for 3.1/3.1.1
//! (so a 3.1.1 packet pays one pointer for it, no allocation). The 5.0
//! property structs of `rmqtt-codec` are re-exported where they fit as they
//! are ([`PublishProperties`], [`SubscriptionOptions`], [`UserProperties`]).
//! Nothing here says what the node does with a property: see docs/mqtt.md
//! for which 5.0 features are served.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::Bytes;

pub use rmqtt_codec::v5::{PublishProperties, RetainHandling, SubscriptionOptions, UserProperties};

use crate::message::Qos;

/// The protocol version a connection speaks, from its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1 (`MQIsdp`, level 3).
    Mqtt31,
    /// MQTT 3.1.1 (`MQTT`, level 4).
    Mqtt311,
    /// MQTT 5.0 (`MQTT`, level 5).
    Mqtt5,
}

impl Version {
    /// The version of a CONNECT's protocol level, if it is one we decode.
    pub fn from_level(level: u8) -> Option<Version> {
        match level {
            3 => Some(Version::Mqtt31),
            4 => Some(Version::Mqtt311),
            5 => Some(Version::Mqtt5),
            _ => None,
        }
    }

    /// The protocol level byte of the CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::Mqtt31 => 3,
            Version::Mqtt311 => 4,
            Version::Mqtt5 => 5,
        }
    }

    /// Whether packets carry reason codes and properties.
    pub fn is_v5(self) -> bool {
        self == Version::Mqtt5
    }
}

/// A packet a client may send, owned and ready for the session.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// The first packet of every connection (boxed: it is large and rare).
    Connect(Box<ConnectPacket>),
    /// An application message from the client.
    Publish(PublishPacket),
    /// QoS 1 acknowledgement of an outgoing message.
    Puback(AckPacket),
    /// QoS 2 step 1 for an outgoing message.
    Pubrec(AckPacket),
    /// QoS 2 step 2 for an incoming message.
    Pubrel(AckPacket),
    /// QoS 2 step 3 for an outgoing message.
    Pubcomp(AckPacket),
    /// New subscriptions: (filter, requested QoS).
    Subscribe {
        /// Echoed in the SUBACK.
        packet_id: u16,
        /// Filters with their requested QoS, in order.
        filters: Vec<(String, Qos)>,
        /// 5.0 only: options and properties.
        v5: Option<Box<SubscribeV5>>,
    },
    /// Subscriptions to remove.
    Unsubscribe {
        /// Echoed in the UNSUBACK.
        packet_id: u16,
        /// Filters to remove.
        filters: Vec<String>,
    },
    /// Keep-alive probe.
    Pingreq,
    /// Clean end of the connection.
    Disconnect(DisconnectPacket),
    /// 5.0 enhanced authentication exchange.
    Auth(AuthPacket),
}

/// A PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckPacket {
    /// The packet it acknowledges.
    pub packet_id: u16,
    /// 5.0 reason code; 0x00 (success) on 3.1.1, which has none.
    pub reason_code: u8,
}

impl AckPacket {
    /// A 3.1.1 acknowledgement (no reason code).
    pub fn success(packet_id: u16) -> AckPacket {
        AckPacket {
            packet_id,
            reason_code: 0,
        }
    }
}

/// A DISCONNECT from the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DisconnectPacket {
    /// 5.0 reason code (0x04: publish the will anyway); 0x00 on 3.1.1.
    pub reason_code: u8,
    /// 5.0: a new session expiry interval, in seconds.
    pub session_expiry_interval: Option<u32>,
}

/// A 5.0 AUTH packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPacket {
    /// 0x00 success, 0x18 continue, 0x19 re-authenticate.
    pub reason_code: u8,
    /// The authentication method.
    pub method: Option<String>,
    /// Method-specific data.
    pub data: Option<Bytes>,
}

/// What a 5.0 SUBSCRIBE adds to the filters and QoS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeV5 {
    /// The Subscription Identifier property.
    pub subscription_id: Option<NonZeroU32>,
    /// User properties, in order.
    pub user_properties: UserProperties,
    /// Each filter's options (no local, retain as published, retain
    /// handling), in the order of the filters.
    pub options: Vec<SubscriptionOptions>,
}

/// The CONNECT fields the broker acts on. Its `Debug` shows whether a
/// password is present, never the password.
#[derive(Clone, PartialEq)]
pub struct ConnectPacket {
    /// The protocol version the connection speaks from now on.
    pub version: Version,
    /// Client identifier; may be empty.
    pub client_id: String,
    /// Start fresh and forget the session on disconnect (5.0: clean start).
    pub clean_session: bool,
    /// Seconds; 0 disables keep-alive.
    pub keep_alive: u16,
    /// The message to publish if the client goes away uncleanly.
    pub will: Option<WillPacket>,
    /// The user name, checked by [`crate::auth`].
    pub username: Option<String>,
    /// The password (binary in MQTT), checked by [`crate::auth`]; never
    /// logged.
    pub password: Option<Bytes>,
    /// 5.0 only: the CONNECT properties.
    pub v5: Option<Box<ConnectV5>>,
}

impl std::fmt::Debug for ConnectPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPacket")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("clean_session", &self.clean_session)
            .field("keep_alive", &self.keep_alive)
            .field("will", &self.will)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("v5", &self.v5)
            .finish()
    }
}

/// The properties of a 5.0 CONNECT. Its `Debug` never shows the
/// authentication data.
#[derive(Clone, PartialEq)]
pub struct ConnectV5 {
    /// Seconds the session outlives the connection (0: ends with it).
    pub session_expiry_interval: u32,
    /// How many QoS 1/2 PUBLISH the client takes in flight.
    pub receive_maximum: Option<NonZeroU16>,
    /// Largest packet the client accepts.
    pub maximum_packet_size: Option<NonZeroU32>,
    /// Topic aliases the client accepts from the server.
    pub topic_alias_maximum: u16,
    /// Whether the client wants Response Information in the CONNACK.
    pub request_response_information: bool,
    /// Whether reason strings and user properties may be sent on errors.
    pub request_problem_information: bool,
    /// User properties, in order.
    pub user_properties: UserProperties,
    /// Enhanced authentication method.
    pub auth_method: Option<String>,
    /// Enhanced authentication data; never logged.
    pub auth_data: Option<Bytes>,
}

impl std::fmt::Debug for ConnectV5 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectV5")
            .field("session_expiry_interval", &self.session_expiry_interval)
            .field("receive_maximum", &self.receive_maximum)
            .field("maximum_packet_size", &self.maximum_packet_size)
            .field("topic_alias_maximum", &self.topic_alias_maximum)
            .field(
                "request_response_information",
                &self.request_response_information,
            )
            .field(
                "request_problem_information",
                &self.request_problem_information,
            )
            .field("user_properties", &self.user_properties.len())
            .field("auth_method", &self.auth_method)
            .field("auth_data", &self.auth_data.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A CONNECT's last will.
#[derive(Debug, Clone, PartialEq)]
pub struct WillPacket {
    /// Where the will is published.
    pub topic: String,
    /// The will payload.
    pub payload: Bytes,
    /// The will's QoS.
    pub qos: Qos,
    /// Whether the will is retained.
    pub retain: bool,
    /// 5.0 only: the will properties.
    pub v5: Option<Box<WillV5>>,
}

/// The properties of a 5.0 will.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WillV5 {
    /// Seconds to wait after the connection ends before publishing.
    pub delay_interval: Option<u32>,
    /// The message's properties (expiry, content type, response topic,
    /// correlation data, payload format, user properties).
    pub properties: PublishProperties,
}

/// An incoming PUBLISH; topic and payload share the frame's buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishPacket {
    /// A re-delivery of an earlier attempt.
    pub dup: bool,
    /// The publisher's QoS.
    pub qos: Qos,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// Retain flag as published.
    pub retain: bool,
    /// Topic name (not yet checked for wildcards; may be empty in 5.0 when
    /// a topic alias stands for it).
    pub topic: String,
    /// Payload, a slice of the frame.
    pub payload: Bytes,
    /// 5.0 only: the PUBLISH properties (never a Subscription Identifier:
    /// a client may not send one, and decoding refuses it).
    pub properties: Option<Box<PublishProperties>>,
}
