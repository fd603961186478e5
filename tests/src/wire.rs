//! Hand-encoded MQTT 3.1.1 packets and a minimal decoder.
//!
//! Written from the specification, independently of the node's codec (and of
//! `mqttrs`, which the node uses), so that an encoding bug shared by both
//! sides cannot make a broken exchange look correct. Builders produce valid
//! packets by default and expose knobs (reserved flags, protocol level, DUP,
//! raw topic bytes) so tests can produce precisely the invalid ones they need.

use std::fmt;

use anyhow::{anyhow, ensure, Result};

/// Control packet types (the high nibble of the first byte).
pub mod kind {
    /// Client request to connect.
    pub const CONNECT: u8 = 1;
    /// Connect acknowledgement.
    pub const CONNACK: u8 = 2;
    /// Application message.
    pub const PUBLISH: u8 = 3;
    /// QoS 1 acknowledgement.
    pub const PUBACK: u8 = 4;
    /// QoS 2, step 1: publish received.
    pub const PUBREC: u8 = 5;
    /// QoS 2, step 2: publish release.
    pub const PUBREL: u8 = 6;
    /// QoS 2, step 3: publish complete.
    pub const PUBCOMP: u8 = 7;
    /// Subscribe request.
    pub const SUBSCRIBE: u8 = 8;
    /// Subscribe acknowledgement.
    pub const SUBACK: u8 = 9;
    /// Unsubscribe request.
    pub const UNSUBSCRIBE: u8 = 10;
    /// Unsubscribe acknowledgement.
    pub const UNSUBACK: u8 = 11;
    /// Ping request.
    pub const PINGREQ: u8 = 12;
    /// Ping response.
    pub const PINGRESP: u8 = 13;
    /// Client is disconnecting cleanly.
    pub const DISCONNECT: u8 = 14;
}

/// Encodes a remaining-length value as the spec's variable-length integer.
pub fn remaining_length(mut len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(4);
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            return out;
        }
    }
}

/// Frames `body` behind a fixed header with the given first byte.
pub fn frame(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first_byte];
    out.extend(remaining_length(body.len()));
    out.extend_from_slice(body);
    out
}

/// Appends a length-prefixed string or binary field.
pub fn put_field(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = u16::try_from(bytes.len()).expect("MQTT fields are at most 65535 bytes");
    out.extend(len.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A last-will message carried in CONNECT.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic the node publishes the will to.
    pub topic: String,
    /// The will's payload.
    pub payload: Vec<u8>,
    /// QoS the will is published at.
    pub qos: u8,
    /// Whether the will is stored as a retained message.
    pub retain: bool,
}

impl Will {
    /// A QoS 0, non-retained will.
    pub fn new(topic: &str, payload: &[u8]) -> Self {
        Self {
            topic: topic.to_owned(),
            payload: payload.to_vec(),
            qos: 0,
            retain: false,
        }
    }
}

/// A CONNECT packet builder; [`Connect::new`] gives a valid MQTT 3.1.1 one.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Protocol name: "MQTT" for 3.1.1, "MQIsdp" for 3.1.
    pub protocol_name: String,
    /// Protocol level: 4 for 3.1.1, 3 for 3.1.
    pub level: u8,
    /// Client identifier (may be empty).
    pub client_id: String,
    /// Clean-session flag; `false` asks for a persistent session.
    pub clean_session: bool,
    /// Keep-alive in seconds (0 disables it).
    pub keep_alive: u16,
    /// Optional last will.
    pub will: Option<Will>,
    /// Sets the reserved flag bit 0, which the spec requires to be zero.
    pub reserved_flag: bool,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password (binary in MQTT); sent after the user name. A
    /// password without a user name is a protocol violation tests may send.
    pub password: Option<Vec<u8>>,
}

impl Connect {
    /// A clean-session MQTT 3.1.1 CONNECT with a 60 s keep-alive.
    pub fn new(client_id: &str) -> Self {
        Self {
            protocol_name: "MQTT".to_owned(),
            level: 4,
            client_id: client_id.to_owned(),
            clean_session: true,
            keep_alive: 60,
            will: None,
            reserved_flag: false,
            username: None,
            password: None,
        }
    }

    /// Sets the keep-alive interval in seconds.
    pub fn with_keep_alive(mut self, seconds: u16) -> Self {
        self.keep_alive = seconds;
        self
    }

    /// Sets the clean-session flag.
    pub fn with_clean_session(mut self, clean: bool) -> Self {
        self.clean_session = clean;
        self
    }

    /// Sets the protocol name and level.
    pub fn with_protocol(mut self, name: &str, level: u8) -> Self {
        self.protocol_name = name.to_owned();
        self.level = level;
        self
    }

    /// Attaches a last will.
    pub fn with_will(mut self, will: Will) -> Self {
        self.will = Some(will);
        self
    }

    /// Sets a user name.
    pub fn with_username(mut self, username: &str) -> Self {
        self.username = Some(username.to_owned());
        self
    }

    /// Sets a password.
    pub fn with_password(mut self, password: &[u8]) -> Self {
        self.password = Some(password.to_vec());
        self
    }

    /// Sets a user name and password.
    pub fn with_credentials(self, username: &str, password: &str) -> Self {
        self.with_username(username)
            .with_password(password.as_bytes())
    }

    /// Sets the reserved flag bit (a protocol violation).
    pub fn with_reserved_flag(mut self) -> Self {
        self.reserved_flag = true;
        self
    }

    /// The connect-flags byte.
    fn flags(&self) -> u8 {
        let mut flags = u8::from(self.reserved_flag);
        flags |= u8::from(self.clean_session) << 1;
        if let Some(will) = &self.will {
            flags |= 0x04 | (will.qos << 3) | (u8::from(will.retain) << 5);
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        flags
    }

    /// Encodes the packet.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        put_field(&mut body, self.protocol_name.as_bytes());
        body.push(self.level);
        body.push(self.flags());
        body.extend(self.keep_alive.to_be_bytes());
        put_field(&mut body, self.client_id.as_bytes());
        if let Some(will) = &self.will {
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

/// A PUBLISH packet, both for sending and as decoded from the node.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    /// Topic name bytes (bytes, so tests can send invalid UTF-8).
    pub topic: Vec<u8>,
    /// Application payload.
    pub payload: Vec<u8>,
    /// QoS 0, 1 or 2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag (a re-delivery).
    pub dup: bool,
    /// Packet identifier; only present on the wire for QoS > 0.
    pub packet_id: u16,
}

impl Publish {
    /// A non-retained, first-delivery publish; QoS > 0 gets packet id 1.
    pub fn new(topic: &str, qos: u8, payload: &[u8]) -> Self {
        Self {
            topic: topic.as_bytes().to_vec(),
            payload: payload.to_vec(),
            qos,
            retain: false,
            dup: false,
            packet_id: 1,
        }
    }

    /// Sets the packet identifier.
    pub fn with_packet_id(mut self, id: u16) -> Self {
        self.packet_id = id;
        self
    }

    /// Sets the DUP flag.
    pub fn with_dup(mut self) -> Self {
        self.dup = true;
        self
    }

    /// Sets the RETAIN flag.
    pub fn with_retain(mut self) -> Self {
        self.retain = true;
        self
    }

    /// Replaces the topic with raw bytes (e.g. invalid UTF-8).
    pub fn with_topic_bytes(mut self, topic: &[u8]) -> Self {
        self.topic = topic.to_vec();
        self
    }

    /// The topic as text (lossy), for assertions and messages.
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
        body.extend_from_slice(&self.payload);
        frame(first, &body)
    }
}

impl fmt::Debug for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "PUBLISH(topic={:?}, qos={}, retain={}, dup={}, id={}, payload={:?})",
            self.topic_str(),
            self.qos,
            self.retain,
            self.dup,
            self.packet_id,
            String::from_utf8_lossy(&self.payload)
        )
    }
}

/// A two-byte acknowledgement packet (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK).
fn ack(first_byte: u8, id: u16) -> Vec<u8> {
    frame(first_byte, &id.to_be_bytes())
}

/// PUBACK for `id`.
pub fn puback(id: u16) -> Vec<u8> {
    ack(0x40, id)
}

/// PUBREC for `id`.
pub fn pubrec(id: u16) -> Vec<u8> {
    ack(0x50, id)
}

/// PUBREL for `id` (its fixed-header flags must be 0b0010).
pub fn pubrel(id: u16) -> Vec<u8> {
    ack(0x62, id)
}

/// PUBCOMP for `id`.
pub fn pubcomp(id: u16) -> Vec<u8> {
    ack(0x70, id)
}

/// SUBSCRIBE with the given `(filter, requested QoS)` pairs.
pub fn subscribe(id: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for (filter, qos) in filters {
        put_field(&mut body, filter.as_bytes());
        body.push(*qos);
    }
    frame(0x82, &body)
}

/// UNSUBSCRIBE for the given filters.
pub fn unsubscribe(id: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for filter in filters {
        put_field(&mut body, filter.as_bytes());
    }
    frame(0xA2, &body)
}

/// PINGREQ.
pub fn pingreq() -> Vec<u8> {
    vec![0xC0, 0x00]
}

/// DISCONNECT.
pub fn disconnect() -> Vec<u8> {
    vec![0xE0, 0x00]
}

/// A decoded CONNACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Session-present flag.
    pub session_present: bool,
    /// Return code (0 = accepted).
    pub code: u8,
}

/// One packet read from the node: the first byte and the undecoded body.
///
/// Kept raw so that tests can assert on exact bytes and flags; the typed
/// accessors decode only what a test asks for.
#[derive(Clone, PartialEq, Eq)]
pub struct RawPacket {
    /// Packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Variable header and payload.
    pub body: Vec<u8>,
}

impl RawPacket {
    /// The packet type, one of [`kind`].
    pub fn kind(&self) -> u8 {
        self.first_byte >> 4
    }

    /// Splits one complete packet off the front of `buf`.
    ///
    /// Returns `Ok(None)` when more bytes are needed, and the packet with the
    /// number of bytes it used otherwise.
    pub fn parse(buf: &[u8]) -> Result<Option<(RawPacket, usize)>> {
        let Some(&first_byte) = buf.first() else {
            return Ok(None);
        };
        let mut len = 0usize;
        for (i, &byte) in buf.iter().skip(1).take(4).enumerate() {
            len += usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                let start = i + 2;
                if buf.len() < start + len {
                    return Ok(None);
                }
                let body = buf[start..start + len].to_vec();
                return Ok(Some((RawPacket { first_byte, body }, start + len)));
            }
        }
        ensure!(
            buf.len() < 5,
            "node sent a remaining length longer than 4 bytes"
        );
        Ok(None)
    }

    /// Fails unless this packet is of type `expected`.
    pub fn expect_kind(&self, expected: u8) -> Result<&Self> {
        ensure!(
            self.kind() == expected,
            "expected packet type {expected}, got {self:?}"
        );
        Ok(self)
    }

    /// Decodes a CONNACK.
    pub fn connack(&self) -> Result<ConnAck> {
        self.expect_kind(kind::CONNACK)?;
        ensure!(
            self.body.len() == 2,
            "CONNACK body must be 2 bytes: {self:?}"
        );
        Ok(ConnAck {
            session_present: self.body[0] & 1 == 1,
            code: self.body[1],
        })
    }

    /// The packet identifier of an acknowledgement of type `expected`.
    pub fn ack_id(&self, expected: u8) -> Result<u16> {
        self.expect_kind(expected)?;
        ensure!(self.body.len() == 2, "ack body must be 2 bytes: {self:?}");
        Ok(u16::from_be_bytes([self.body[0], self.body[1]]))
    }

    /// Decodes a SUBACK into its packet id and per-filter return codes.
    pub fn suback(&self) -> Result<(u16, Vec<u8>)> {
        self.expect_kind(kind::SUBACK)?;
        ensure!(self.body.len() >= 3, "SUBACK too short: {self:?}");
        let id = u16::from_be_bytes([self.body[0], self.body[1]]);
        Ok((id, self.body[2..].to_vec()))
    }

    /// Decodes a PUBLISH.
    pub fn publish(&self) -> Result<Publish> {
        self.expect_kind(kind::PUBLISH)?;
        let flags = self.first_byte & 0x0F;
        let qos = (flags >> 1) & 0x03;
        let body = &self.body;
        ensure!(body.len() >= 2, "PUBLISH too short: {self:?}");
        let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let mut at = 2 + topic_len;
        ensure!(
            body.len() >= at,
            "PUBLISH topic runs past the packet: {self:?}"
        );
        let topic = body[2..at].to_vec();
        let mut packet_id = 0;
        if qos > 0 {
            let id = body
                .get(at..at + 2)
                .ok_or_else(|| anyhow!("PUBLISH without id"))?;
            packet_id = u16::from_be_bytes([id[0], id[1]]);
            at += 2;
        }
        Ok(Publish {
            topic,
            payload: body[at..].to_vec(),
            qos,
            retain: flags & 1 == 1,
            dup: flags & 0x08 != 0,
            packet_id,
        })
    }
}

impl fmt::Debug for RawPacket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only a PUBLISH is decoded: `publish()` on another kind fails with
        // a message that formats this packet, which would recurse.
        if self.kind() == kind::PUBLISH {
            if let Ok(publish) = self.publish() {
                return publish.fmt(f);
            }
        }
        write!(
            f,
            "packet(type={}, first_byte={:#04x}, body={:02x?})",
            self.kind(),
            self.first_byte,
            self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_matches_spec_examples() {
        assert_eq!(remaining_length(0), [0x00]);
        assert_eq!(remaining_length(127), [0x7F]);
        assert_eq!(remaining_length(128), [0x80, 0x01]);
        assert_eq!(remaining_length(16_383), [0xFF, 0x7F]);
        assert_eq!(remaining_length(1_048_576), [0x80, 0x80, 0x40]);
    }

    #[test]
    fn connect_encodes_like_the_spec_example() {
        let bytes = Connect::new("a").with_keep_alive(10).encode();
        assert_eq!(
            bytes,
            [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 10, 0, 1, b'a']
        );
    }

    #[test]
    fn publish_round_trips_through_the_decoder() {
        let sent = Publish::new("a/b", 2, b"hi")
            .with_packet_id(7)
            .with_dup()
            .with_retain();
        let bytes = sent.encode();
        let (packet, used) = RawPacket::parse(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(packet.publish().unwrap(), sent);
    }

    #[test]
    fn a_non_publish_formats_without_recursing() {
        let (pingresp, _) = RawPacket::parse(&[0xD0, 0x00]).unwrap().unwrap();
        assert!(pingresp.publish().is_err());
        assert!(format!("{pingresp:?}").contains("type=13"));
    }

    #[test]
    fn parse_waits_for_a_complete_packet() {
        assert!(RawPacket::parse(&[0x30, 0x05, 0x00]).unwrap().is_none());
        assert!(RawPacket::parse(&[0x30, 0x80]).unwrap().is_none());
    }
}
