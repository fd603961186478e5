//! MQTT 5.0 properties (§2.2.2): an identifier byte, then a value whose
//! encoding the identifier fixes (§2.2.2.2, table 2-4).
//!
//! Properties are kept as an ordered list of `(identifier, value)` so that
//! tests can send what a well-behaved encoder never would (duplicates, a
//! property on the wrong packet) and can check that order and duplicates of
//! User Properties survive a trip through the broker (§3.3.2.3.7).

use anyhow::{anyhow, bail, ensure, Result};

/// Property identifiers, named as in §2.2.2.2.
pub mod id {
    /// Byte: 0 unspecified bytes, 1 UTF-8 payload (§3.3.2.3.2).
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    /// Four-byte integer, seconds (§3.3.2.3.3).
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    /// UTF-8 string (§3.3.2.3.9).
    pub const CONTENT_TYPE: u8 = 0x03;
    /// UTF-8 string, a topic name (§3.3.2.3.5).
    pub const RESPONSE_TOPIC: u8 = 0x08;
    /// Binary data (§3.3.2.3.6).
    pub const CORRELATION_DATA: u8 = 0x09;
    /// Variable byte integer, 1..268,435,455 (§3.8.2.1.2).
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    /// Four-byte integer, seconds (§3.1.2.11.2).
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    /// UTF-8 string (§3.2.2.3.7).
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    /// Two-byte integer, seconds (§3.2.2.3.14).
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    /// UTF-8 string (§3.1.2.11.9).
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    /// Binary data (§3.1.2.11.10).
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    /// Byte (§3.1.2.11.7).
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    /// Four-byte integer, seconds (§3.1.3.2.2).
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    /// Byte (§3.1.2.11.6).
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    /// UTF-8 string (§3.2.2.3.15).
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    /// UTF-8 string (§3.2.2.3.16).
    pub const SERVER_REFERENCE: u8 = 0x1C;
    /// UTF-8 string (§3.2.2.3.9 and others).
    pub const REASON_STRING: u8 = 0x1F;
    /// Two-byte integer (§3.1.2.11.3, §3.2.2.3.3).
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    /// Two-byte integer (§3.1.2.11.5, §3.2.2.3.8).
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    /// Two-byte integer (§3.3.2.3.4).
    pub const TOPIC_ALIAS: u8 = 0x23;
    /// Byte (§3.2.2.3.4).
    pub const MAXIMUM_QOS: u8 = 0x24;
    /// Byte (§3.2.2.3.5).
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    /// UTF-8 string pair (§3.3.2.3.7).
    pub const USER_PROPERTY: u8 = 0x26;
    /// Four-byte integer, bytes (§3.1.2.11.4, §3.2.2.3.6).
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    /// Byte (§3.2.2.3.11).
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    /// Byte (§3.2.2.3.12).
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    /// Byte (§3.2.2.3.13).
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

/// One property value, in the encoding its identifier prescribes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A single byte.
    Byte(u8),
    /// A two-byte big-endian integer.
    Two(u16),
    /// A four-byte big-endian integer.
    Four(u32),
    /// A variable byte integer (§1.5.5).
    Varint(u32),
    /// A length-prefixed UTF-8 string (§1.5.4), kept as raw bytes so tests
    /// can send invalid UTF-8.
    Text(Vec<u8>),
    /// Length-prefixed binary data (§1.5.6).
    Binary(Vec<u8>),
    /// A UTF-8 string pair (§1.5.7).
    Pair(String, String),
}

/// The encodings of table 2-4.
#[derive(Clone, Copy)]
enum Encoding {
    Byte,
    Two,
    Four,
    Varint,
    Text,
    Binary,
    Pair,
}

/// Which encoding property `id` uses, or `None` for an unknown identifier.
fn encoding(id: u8) -> Option<Encoding> {
    use id::*;
    Some(match id {
        PAYLOAD_FORMAT_INDICATOR
        | REQUEST_PROBLEM_INFORMATION
        | REQUEST_RESPONSE_INFORMATION
        | MAXIMUM_QOS
        | RETAIN_AVAILABLE
        | WILDCARD_SUBSCRIPTION_AVAILABLE
        | SUBSCRIPTION_IDENTIFIER_AVAILABLE
        | SHARED_SUBSCRIPTION_AVAILABLE => Encoding::Byte,
        SERVER_KEEP_ALIVE | RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM | TOPIC_ALIAS => Encoding::Two,
        MESSAGE_EXPIRY_INTERVAL
        | SESSION_EXPIRY_INTERVAL
        | WILL_DELAY_INTERVAL
        | MAXIMUM_PACKET_SIZE => Encoding::Four,
        SUBSCRIPTION_IDENTIFIER => Encoding::Varint,
        CONTENT_TYPE
        | RESPONSE_TOPIC
        | ASSIGNED_CLIENT_IDENTIFIER
        | AUTHENTICATION_METHOD
        | RESPONSE_INFORMATION
        | SERVER_REFERENCE
        | REASON_STRING => Encoding::Text,
        CORRELATION_DATA | AUTHENTICATION_DATA => Encoding::Binary,
        USER_PROPERTY => Encoding::Pair,
        _ => return None,
    })
}

/// Encodes `value` as a variable byte integer (§1.5.5).
pub fn varint(value: u32) -> Vec<u8> {
    crate::wire::remaining_length(value as usize)
}

/// Decodes a variable byte integer at the front of `buf`: the value and the
/// bytes it used. At most four bytes (§1.5.5).
pub fn read_varint(buf: &[u8]) -> Result<(u32, usize)> {
    let mut value = 0u32;
    for (i, &byte) in buf.iter().take(4).enumerate() {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    bail!("variable byte integer truncated or longer than 4 bytes: {buf:02x?}")
}

/// Appends a two-byte length and `bytes` (§1.5.4, §1.5.6): the same
/// field as 3.1.1's.
pub(crate) use crate::wire::put_field;

/// Reads a two-byte length and that many bytes from `buf` at `*at`.
pub(crate) fn take_field(buf: &[u8], at: &mut usize) -> Result<Vec<u8>> {
    let len = take(buf, at, 2)?;
    let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
    Ok(take(buf, at, len)?.to_vec())
}

/// `n` bytes from `buf` at `*at`, advancing `*at`.
pub(crate) fn take<'a>(buf: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8]> {
    let bytes = buf
        .get(*at..*at + n)
        .ok_or_else(|| anyhow!("{n} bytes wanted at offset {at} of {buf:02x?}"))?;
    *at += n;
    Ok(bytes)
}

/// A UTF-8 field as text.
fn text(bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| anyhow!("a UTF-8 field is not UTF-8: {e}"))
}

/// A property list in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(pub Vec<(u8, Value)>);

impl Properties {
    /// No properties.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends property `id` with `value` (no check that they match).
    pub fn with(mut self, id: u8, value: Value) -> Self {
        self.0.push((id, value));
        self
    }

    /// Appends a byte property.
    pub fn byte(self, id: u8, value: u8) -> Self {
        self.with(id, Value::Byte(value))
    }

    /// Appends a two-byte integer property.
    pub fn two(self, id: u8, value: u16) -> Self {
        self.with(id, Value::Two(value))
    }

    /// Appends a four-byte integer property.
    pub fn four(self, id: u8, value: u32) -> Self {
        self.with(id, Value::Four(value))
    }

    /// Appends a variable-byte-integer property.
    pub fn varint(self, id: u8, value: u32) -> Self {
        self.with(id, Value::Varint(value))
    }

    /// Appends a UTF-8 string property.
    pub fn text(self, id: u8, value: &str) -> Self {
        self.with(id, Value::Text(value.as_bytes().to_vec()))
    }

    /// Appends a binary-data property.
    pub fn binary(self, id: u8, value: &[u8]) -> Self {
        self.with(id, Value::Binary(value.to_vec()))
    }

    /// Appends a User Property.
    pub fn user(self, key: &str, value: &str) -> Self {
        self.with(id::USER_PROPERTY, Value::Pair(key.into(), value.into()))
    }

    /// The first value of property `id`.
    pub fn get(&self, id: u8) -> Option<&Value> {
        self.0.iter().find(|(i, _)| *i == id).map(|(_, v)| v)
    }

    /// How many times property `id` occurs.
    pub fn count(&self, id: u8) -> usize {
        self.0.iter().filter(|(i, _)| *i == id).count()
    }

    /// The first byte property `id`.
    pub fn get_byte(&self, id: u8) -> Option<u8> {
        match self.get(id)? {
            Value::Byte(v) => Some(*v),
            _ => None,
        }
    }

    /// The first two-byte integer property `id`.
    pub fn get_two(&self, id: u8) -> Option<u16> {
        match self.get(id)? {
            Value::Two(v) => Some(*v),
            _ => None,
        }
    }

    /// The first four-byte integer property `id`.
    pub fn get_four(&self, id: u8) -> Option<u32> {
        match self.get(id)? {
            Value::Four(v) => Some(*v),
            _ => None,
        }
    }

    /// The first UTF-8 string property `id`, lossily as text.
    pub fn get_text(&self, id: u8) -> Option<String> {
        match self.get(id)? {
            Value::Text(v) => Some(String::from_utf8_lossy(v).into_owned()),
            _ => None,
        }
    }

    /// The first binary property `id`.
    pub fn get_binary(&self, id: u8) -> Option<Vec<u8>> {
        match self.get(id)? {
            Value::Binary(v) => Some(v.clone()),
            _ => None,
        }
    }

    /// Every Subscription Identifier, in order.
    pub fn subscription_ids(&self) -> Vec<u32> {
        self.0
            .iter()
            .filter_map(|(i, v)| match (i, v) {
                (&id::SUBSCRIPTION_IDENTIFIER, Value::Varint(n)) => Some(*n),
                _ => None,
            })
            .collect()
    }

    /// Every User Property, in order, duplicates kept.
    pub fn users(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .filter_map(|(_, v)| match v {
                Value::Pair(k, v) => Some((k.clone(), v.clone())),
                _ => None,
            })
            .collect()
    }

    /// The encoded list: its variable-byte-integer length, then each property.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for (id, value) in &self.0 {
            body.push(*id);
            match value {
                Value::Byte(v) => body.push(*v),
                Value::Two(v) => body.extend(v.to_be_bytes()),
                Value::Four(v) => body.extend(v.to_be_bytes()),
                Value::Varint(v) => body.extend(varint(*v)),
                Value::Text(v) | Value::Binary(v) => put_field(&mut body, v),
                Value::Pair(k, v) => {
                    put_field(&mut body, k.as_bytes());
                    put_field(&mut body, v.as_bytes());
                }
            }
        }
        let mut out = varint(body.len() as u32);
        out.extend(body);
        out
    }

    /// Decodes a property list (length first) from `buf` at `*at`.
    pub fn decode(buf: &[u8], at: &mut usize) -> Result<Self> {
        let (len, used) = read_varint(&buf[(*at).min(buf.len())..])?;
        *at += used;
        let end = *at + len as usize;
        ensure!(
            end <= buf.len(),
            "property length {len} runs past the packet: {buf:02x?}"
        );
        let mut props = Vec::new();
        while *at < end {
            let id = take(buf, at, 1)?[0];
            let value = match encoding(id) {
                None => bail!("unknown property identifier {id:#04x} in {buf:02x?}"),
                Some(Encoding::Byte) => Value::Byte(take(buf, at, 1)?[0]),
                Some(Encoding::Two) => {
                    let b = take(buf, at, 2)?;
                    Value::Two(u16::from_be_bytes([b[0], b[1]]))
                }
                Some(Encoding::Four) => {
                    let b = take(buf, at, 4)?;
                    Value::Four(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                }
                Some(Encoding::Varint) => {
                    let (v, used) = read_varint(&buf[*at..end])?;
                    *at += used;
                    Value::Varint(v)
                }
                Some(Encoding::Text) => Value::Text(take_field(buf, at)?),
                Some(Encoding::Binary) => Value::Binary(take_field(buf, at)?),
                Some(Encoding::Pair) => {
                    let key = text(take_field(buf, at)?)?;
                    Value::Pair(key, text(take_field(buf, at)?)?)
                }
            };
            props.push((id, value));
        }
        ensure!(*at == end, "a property runs past the property length");
        Ok(Self(props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_spec_table() {
        for (value, bytes) in [
            (0u32, vec![0x00]),
            (127, vec![0x7F]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xFF, 0x7F]),
            (16_384, vec![0x80, 0x80, 0x01]),
            (268_435_455, vec![0xFF, 0xFF, 0xFF, 0x7F]),
        ] {
            assert_eq!(varint(value), bytes);
            assert_eq!(read_varint(&bytes).unwrap(), (value, bytes.len()));
        }
        assert!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF, 0x01]).is_err());
    }

    #[test]
    fn properties_round_trip_in_order_with_duplicates() {
        let props = Properties::new()
            .byte(id::PAYLOAD_FORMAT_INDICATOR, 1)
            .four(id::MESSAGE_EXPIRY_INTERVAL, 300)
            .user("k", "1")
            .text(id::CONTENT_TYPE, "text/plain")
            .user("k", "2")
            .binary(id::CORRELATION_DATA, &[0, 1, 255])
            .varint(id::SUBSCRIPTION_IDENTIFIER, 200)
            .two(id::TOPIC_ALIAS, 3);
        let bytes = props.encode();
        let mut at = 0;
        assert_eq!(Properties::decode(&bytes, &mut at).unwrap(), props);
        assert_eq!(at, bytes.len());
        assert_eq!(
            props.users(),
            [("k".into(), "1".into()), ("k".into(), "2".into())]
        );
    }

    #[test]
    fn a_user_property_encodes_as_two_strings() {
        let bytes = Properties::new().user("a", "bc").encode();
        assert_eq!(bytes, [8, 0x26, 0, 1, b'a', 0, 2, b'b', b'c']);
    }
}
