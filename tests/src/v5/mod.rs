//! MQTT 5.0 on the wire, hand-encoded from the OASIS standard and written
//! independently of the node's codec (rmqtt-codec), as [`crate::wire`] is
//! for 3.1.1: a bug shared by an encoder and a decoder cannot then make a
//! broken exchange look right.
//!
//! - [`props`]: properties (§2.2.2) and variable byte integers (§1.5.5).
//! - [`packet`]: CONNECT, PUBLISH, acks, SUBSCRIBE, UNSUBSCRIBE and
//!   DISCONNECT builders; a decoder for what a server sends.
//! - [`client`]: [`Client5`], a byte-level client that never acks on its own.
//! - [`sample`]: the application properties tests publish, and their check.

pub mod client;
pub mod packet;
pub mod props;
pub mod sample;

pub use client::Client5;
pub use packet::{sub, Ack5, ConnAck5, Connect5, Disconnect5, Packet5, Publish5, SubAck5, Will5};
pub use props::{id, Properties, Value};
pub use sample::{application_properties, check_application_properties};

/// Reason codes of §2.4 used by the tests.
pub mod reason {
    /// Success / Granted QoS 0 / Normal disconnection.
    pub const SUCCESS: u8 = 0x00;
    /// Granted QoS 1.
    pub const GRANTED_QOS_1: u8 = 0x01;
    /// Granted QoS 2.
    pub const GRANTED_QOS_2: u8 = 0x02;
    /// Disconnect with Will Message.
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    /// No matching subscribers (PUBACK, PUBREC).
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed Packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol Error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep Alive timeout.
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over.
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic Filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Receive Maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic Alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
}
