//! MQTT 5.0 control packets, encoded and decoded from the standard's
//! layouts (§3.1–§3.15), independently of the node's codec.
//!
//! Builders produce valid packets by default; their fields are public so a
//! test can produce precisely the invalid packet it needs. Decoding is of
//! the packets a server sends, from [`RawPacket`]s read by
//! [`crate::RawClient`].

use std::fmt;

use anyhow::{bail, ensure, Result};

use super::props::{id, put_field, take, take_field, Properties};
use crate::wire::{frame, kind, RawPacket};

/// A will message carried in a 5.0 CONNECT (§3.1.3.2, §3.1.3.3).
#[derive(Debug, Clone)]
pub struct Will5 {
    /// Will Topic.
    pub topic: String,
    /// Will Payload.
    pub payload: Vec<u8>,
    /// Will QoS.
    pub qos: u8,
    /// Will Retain.
    pub retain: bool,
    /// Will Properties (delay, content type, user properties, ...).
    pub props: Properties,
}

impl Will5 {
    /// A QoS 0, non-retained will without properties.
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        Self {
            topic: topic.into(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
            props: Properties::new(),
        }
    }

    /// Sets the Will Properties.
    pub fn with_props(mut self, props: Properties) -> Self {
        self.props = props;
        self
    }

    /// Sets the will's QoS.
    pub fn with_qos(mut self, qos: u8) -> Self {
        self.qos = qos;
        self
    }
}

/// A 5.0 CONNECT (§3.1); [`Connect5::new`] gives a valid one.
#[derive(Debug, Clone)]
pub struct Connect5 {
    /// Protocol level, 5 unless a test says otherwise.
    pub level: u8,
    /// Client Identifier (may be empty: the server assigns one).
    pub client_id: String,
    /// Clean Start (§3.1.2.4).
    pub clean_start: bool,
    /// Keep Alive in seconds.
    pub keep_alive: u16,
    /// CONNECT Properties.
    pub props: Properties,
    /// Optional will.
    pub will: Option<Will5>,
    /// Optional User Name.
    pub username: Option<String>,
    /// Optional Password.
    pub password: Option<Vec<u8>>,
}

impl Connect5 {
    /// Clean Start, keep-alive 60 s, no properties (Session Expiry 0).
    pub fn new(client_id: &str) -> Self {
        Self {
            level: 5,
            client_id: client_id.into(),
            clean_start: true,
            keep_alive: 60,
            props: Properties::new(),
            will: None,
            username: None,
            password: None,
        }
    }

    /// Sets Clean Start.
    pub fn clean_start(mut self, clean: bool) -> Self {
        self.clean_start = clean;
        self
    }

    /// Sets Keep Alive.
    pub fn keep_alive(mut self, seconds: u16) -> Self {
        self.keep_alive = seconds;
        self
    }

    /// Adds a Session Expiry Interval property.
    pub fn session_expiry(mut self, seconds: u32) -> Self {
        self.props = self.props.four(id::SESSION_EXPIRY_INTERVAL, seconds);
        self
    }

    /// Replaces the CONNECT Properties.
    pub fn props(mut self, props: Properties) -> Self {
        self.props = props;
        self
    }

    /// Attaches a will.
    pub fn will(mut self, will: Will5) -> Self {
        self.will = Some(will);
        self
    }

    /// Sets a user name and password.
    pub fn credentials(mut self, username: &str, password: &str) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.as_bytes().to_vec());
        self
    }

    /// The Connect Flags byte (§3.1.2.3).
    fn flags(&self) -> u8 {
        let mut flags = u8::from(self.clean_start) << 1;
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3) | (u8::from(will.retain) << 5);
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        flags
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_field(&mut body, b"MQTT");
        body.push(self.level);
        body.push(self.flags());
        body.extend(self.keep_alive.to_be_bytes());
        body.extend(self.props.encode());
        put_field(&mut body, self.client_id.as_bytes());
        if let Some(will) = &self.will {
            body.extend(will.props.encode());
            put_field(&mut body, will.topic.as_bytes());
            put_field(&mut body, &will.payload);
        }
        if let Some(username) = &self.username {
            put_field(&mut body, username.as_bytes());
        }
        if let Some(password) = &self.password {
            put_field(&mut body, password);
        }
        frame(0x10, &body)
    }
}

/// A 5.0 PUBLISH (§3.3), for sending and as decoded from the node.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish5 {
    /// Topic Name bytes (empty with a Topic Alias, §3.3.2.3.4).
    pub topic: Vec<u8>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN.
    pub retain: bool,
    /// DUP.
    pub dup: bool,
    /// Packet Identifier (on the wire only for QoS > 0).
    pub packet_id: u16,
    /// PUBLISH Properties.
    pub props: Properties,
    /// Payload.
    pub payload: Vec<u8>,
}

impl Publish5 {
    /// A first-delivery, non-retained publish; QoS > 0 gets packet id 1.
    pub fn new(topic: &str, qos: u8, payload: &[u8]) -> Self {
        Self {
            topic: topic.as_bytes().to_vec(),
            qos,
            retain: false,
            dup: false,
            packet_id: 1,
            props: Properties::new(),
            payload: payload.to_vec(),
        }
    }

    /// Sets the Packet Identifier.
    pub fn id(mut self, packet_id: u16) -> Self {
        self.packet_id = packet_id;
        self
    }

    /// Sets RETAIN.
    pub fn retain(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Replaces the properties.
    pub fn props(mut self, props: Properties) -> Self {
        self.props = props;
        self
    }

    /// The topic as text (lossy).
    pub fn topic_str(&self) -> String {
        String::from_utf8_lossy(&self.topic).into_owned()
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let first = 0x30 | (u8::from(self.dup) << 3) | (self.qos << 1) | u8::from(self.retain);
        let mut body = Vec::new();
        put_field(&mut body, &self.topic);
        if self.qos > 0 {
            body.extend(self.packet_id.to_be_bytes());
        }
        body.extend(self.props.encode());
        body.extend_from_slice(&self.payload);
        frame(first, &body)
    }

    /// Decodes a PUBLISH.
    pub fn decode(packet: &RawPacket) -> Result<Self> {
        packet.expect_kind(kind::PUBLISH)?;
        let flags = packet.first_byte & 0x0F;
        let qos = (flags >> 1) & 0x03;
        ensure!(qos < 3, "PUBLISH with QoS 3: {packet:?}");
        let body = &packet.body;
        let mut at = 0;
        let topic = take_field(body, &mut at)?;
        let mut packet_id = 0;
        if qos > 0 {
            let b = take(body, &mut at, 2)?;
            packet_id = u16::from_be_bytes([b[0], b[1]]);
        }
        let props = Properties::decode(body, &mut at)?;
        Ok(Self {
            topic,
            qos,
            retain: flags & 1 == 1,
            dup: flags & 0x08 != 0,
            packet_id,
            props,
            payload: body[at..].to_vec(),
        })
    }
}

impl fmt::Debug for Publish5 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PUBLISH5(topic={:?}, qos={}, retain={}, dup={}, id={}, props={:?}, payload={:?})",
            self.topic_str(),
            self.qos,
            self.retain,
            self.dup,
            self.packet_id,
            self.props.0,
            String::from_utf8_lossy(&self.payload)
        )
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (§3.4–§3.7) with a reason code and
/// properties; the short forms of §3.4.2.1 when they are 0x00 and empty.
pub fn ack(packet_kind: u8, packet_id: u16, reason: u8, props: &Properties) -> Vec<u8> {
    let flags = if packet_kind == kind::PUBREL { 0x02 } else { 0 };
    let mut body = packet_id.to_be_bytes().to_vec();
    if reason != 0 || !props.is_empty() {
        body.push(reason);
    }
    if !props.is_empty() {
        body.extend(props.encode());
    }
    frame((packet_kind << 4) | flags, &body)
}

/// PUBACK 0x00 for `packet_id`.
pub fn puback(packet_id: u16) -> Vec<u8> {
    ack(kind::PUBACK, packet_id, 0, &Properties::new())
}

/// PUBREL 0x00 for `packet_id`.
pub fn pubrel(packet_id: u16) -> Vec<u8> {
    ack(kind::PUBREL, packet_id, 0, &Properties::new())
}

/// PUBREC 0x00 for `packet_id`.
pub fn pubrec(packet_id: u16) -> Vec<u8> {
    ack(kind::PUBREC, packet_id, 0, &Properties::new())
}

/// PUBCOMP 0x00 for `packet_id`.
pub fn pubcomp(packet_id: u16) -> Vec<u8> {
    ack(kind::PUBCOMP, packet_id, 0, &Properties::new())
}

/// Subscription Options bits (§3.8.3.1), to OR with the maximum QoS.
pub mod sub {
    /// No Local (bit 2).
    pub const NO_LOCAL: u8 = 0x04;
    /// Retain As Published (bit 3).
    pub const RETAIN_AS_PUBLISHED: u8 = 0x08;

    /// Retain Handling 0, 1 or 2 (bits 4–5).
    pub const fn retain_handling(value: u8) -> u8 {
        value << 4
    }
}

/// SUBSCRIBE (§3.8) with `(filter, options)` pairs; `options` is the
/// maximum QoS ORed with [`sub`] bits.
pub fn subscribe(packet_id: u16, props: &Properties, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend(props.encode());
    for (filter, options) in filters {
        put_field(&mut body, filter.as_bytes());
        body.push(*options);
    }
    frame(0x82, &body)
}

/// UNSUBSCRIBE (§3.10).
pub fn unsubscribe(packet_id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = packet_id.to_be_bytes().to_vec();
    body.extend(Properties::new().encode());
    for filter in filters {
        put_field(&mut body, filter.as_bytes());
    }
    frame(0xA2, &body)
}

/// DISCONNECT (§3.14) with a reason code and properties (the two-byte
/// form when both are the defaults, §3.14.2.1).
pub fn disconnect(reason: u8, props: &Properties) -> Vec<u8> {
    let mut body = Vec::new();
    if reason != 0 || !props.is_empty() {
        body.push(reason);
    }
    if !props.is_empty() {
        body.extend(props.encode());
    }
    frame(0xE0, &body)
}

/// A decoded CONNACK (§3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck5 {
    /// Session Present (§3.2.2.1.1).
    pub session_present: bool,
    /// Connect Reason Code (§3.2.2.2).
    pub reason: u8,
    /// CONNACK Properties.
    pub props: Properties,
}

/// A decoded PUBACK, PUBREC, PUBREL or PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack5 {
    /// Packet type, one of [`kind`].
    pub kind: u8,
    /// Packet Identifier.
    pub packet_id: u16,
    /// Reason Code (0x00 when the packet used the short form).
    pub reason: u8,
    /// Properties.
    pub props: Properties,
}

/// A decoded SUBACK or UNSUBACK (§3.9, §3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck5 {
    /// Packet Identifier.
    pub packet_id: u16,
    /// Properties.
    pub props: Properties,
    /// One Reason Code per filter, in order.
    pub reasons: Vec<u8>,
}

/// A decoded DISCONNECT or AUTH (§3.14, §3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect5 {
    /// Reason Code (0x00 when absent).
    pub reason: u8,
    /// Properties.
    pub props: Properties,
}

/// A packet a 5.0 server sends, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet5 {
    /// CONNACK.
    ConnAck(ConnAck5),
    /// PUBLISH.
    Publish(Publish5),
    /// PUBACK, PUBREC, PUBREL or PUBCOMP.
    Ack(Ack5),
    /// SUBACK.
    SubAck(SubAck5),
    /// UNSUBACK.
    UnsubAck(SubAck5),
    /// PINGRESP.
    PingResp,
    /// DISCONNECT.
    Disconnect(Disconnect5),
    /// AUTH.
    Auth(Disconnect5),
}

impl Packet5 {
    /// Decodes one packet read from the node.
    pub fn decode(packet: &RawPacket) -> Result<Self> {
        let body = &packet.body;
        let mut at = 0;
        Ok(match packet.kind() {
            kind::CONNACK => {
                ensure!(
                    body.len() > 2,
                    "a CONNACK without a Property Length (3.1.1 framing), code {:#04x}: {packet:?}",
                    body.get(1).copied().unwrap_or(0)
                );
                let head = take(body, &mut at, 2)?;
                ensure!(
                    head[0] & 0xFE == 0,
                    "CONNACK reserved flags set: {packet:?}"
                );
                let (session_present, reason) = (head[0] == 1, head[1]);
                let props = Properties::decode(body, &mut at)?;
                Self::ConnAck(ConnAck5 {
                    session_present,
                    reason,
                    props,
                })
            }
            kind::PUBLISH => Self::Publish(Publish5::decode(packet)?),
            kind::PUBACK | kind::PUBREC | kind::PUBREL | kind::PUBCOMP => {
                let b = take(body, &mut at, 2)?;
                let packet_id = u16::from_be_bytes([b[0], b[1]]);
                let reason = body.get(2).copied().unwrap_or(0);
                at = 3;
                let props = if body.len() > 3 {
                    Properties::decode(body, &mut at)?
                } else {
                    Properties::new()
                };
                Self::Ack(Ack5 {
                    kind: packet.kind(),
                    packet_id,
                    reason,
                    props,
                })
            }
            kind::SUBACK | kind::UNSUBACK => {
                let b = take(body, &mut at, 2)?;
                let packet_id = u16::from_be_bytes([b[0], b[1]]);
                let props = Properties::decode(body, &mut at)?;
                let ack = SubAck5 {
                    packet_id,
                    props,
                    reasons: body[at..].to_vec(),
                };
                if packet.kind() == kind::SUBACK {
                    Self::SubAck(ack)
                } else {
                    Self::UnsubAck(ack)
                }
            }
            kind::PINGRESP => Self::PingResp,
            kind::DISCONNECT | 15 => {
                let reason = body.first().copied().unwrap_or(0);
                at = 1;
                let props = if body.len() > 1 {
                    Properties::decode(body, &mut at)?
                } else {
                    Properties::new()
                };
                let d = Disconnect5 { reason, props };
                if packet.kind() == kind::DISCONNECT {
                    Self::Disconnect(d)
                } else {
                    Self::Auth(d)
                }
            }
            other => bail!("a server does not send packet type {other}: {packet:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> RawPacket {
        let (packet, used) = RawPacket::parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        packet
    }

    #[test]
    fn connect_with_a_property_encodes_as_laid_out_in_3_1() {
        let bytes = Connect5::new("a").keep_alive(10).session_expiry(1).encode();
        assert_eq!(
            bytes,
            [
                0x10, 19, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 10, 5, 0x11, 0, 0, 0, 1, 0, 1,
                b'a'
            ]
        );
    }

    #[test]
    fn publish_round_trips() {
        let sent = Publish5::new("a/b", 1, b"hi")
            .id(9)
            .props(Properties::new().user("x", "y").two(id::TOPIC_ALIAS, 2));
        let decoded = Publish5::decode(&parse(&sent.encode())).unwrap();
        assert_eq!(decoded, sent);
    }

    #[test]
    fn short_and_long_acks_decode() {
        let short = Packet5::decode(&parse(&[0x40, 2, 0, 7])).unwrap();
        let long = Packet5::decode(&parse(&[0x40, 4, 0, 7, 0x87, 0])).unwrap();
        for (packet, reason) in [(short, 0), (long, 0x87)] {
            let Packet5::Ack(a) = packet else { panic!() };
            assert_eq!((a.packet_id, a.reason), (7, reason));
        }
    }

    #[test]
    fn connack_and_disconnect_decode() {
        let connack = Packet5::decode(&parse(&[0x20, 6, 1, 0, 3, 0x21, 0, 10])).unwrap();
        let Packet5::ConnAck(c) = connack else {
            panic!()
        };
        assert!(c.session_present);
        assert_eq!(c.props.get_two(id::RECEIVE_MAXIMUM), Some(10));
        let d = Packet5::decode(&parse(&[0xE0, 1, 0x8E])).unwrap();
        assert_eq!(
            d,
            Packet5::Disconnect(Disconnect5 {
                reason: 0x8E,
                props: Properties::new()
            })
        );
        assert_eq!(disconnect(0, &Properties::new()), [0xE0, 0]);
    }
}
