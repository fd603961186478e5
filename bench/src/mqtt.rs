//! A minimal MQTT client codec, 3.1.1 and 5.0: only the packets a load
//! generator sends and receives, written straight into and parsed straight
//! out of the connection's buffers with no allocation per packet.
//!
//! It is independent of the broker's codec on purpose: the bench must measure
//! any broker the same way, and a shared codec bug must not hide on both sides.
//! Incoming packets are checked only as far as the bench needs to stay safe
//! (lengths are bounds-checked; anything unexpected is an error, never a panic).
//!
//! 5.0 differs from 3.1.1, for these packets, only by property blocks, the
//! reason codes on acknowledgements and the server's DISCONNECT; what is
//! specific to it lives in [`v5`]. Outgoing acknowledgements use the short
//! form (packet id only), which in 5.0 means success without properties.

mod v5;

use anyhow::{bail, ensure, Result};
use bytes::{BufMut, BytesMut};

pub use v5::ServerLimits;

/// Fixed-header first bytes of the packets the client sends.
pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
/// PUBREL has the reserved flags 0b0010.
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

/// The protocol version a connection speaks, fixed by its CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V311,
    V5,
}

impl Protocol {
    /// The CONNECT protocol level.
    fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }

    /// How it is written in reports: "3.1.1" or "5.0".
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5.0",
        }
    }
}

/// A packet received from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        /// 3.1.1 return code or 5.0 reason code; 0 is success in both.
        return_code: u8,
        limits: ServerLimits,
    },
    Publish {
        qos: u8,
        packet_id: u16,
        topic: &'a [u8],
        payload: &'a [u8],
    },
    PubAck(u16),
    PubRec(u16),
    PubRel(u16),
    PubComp(u16),
    SubAck {
        /// Granted QoS per filter, or a failure code (0x80 and up).
        return_codes: &'a [u8],
    },
    PingResp,
}

/// Appends the variable-length "remaining length" field.
fn put_remaining_length(buf: &mut BytesMut, len: usize) {
    v5::put_varint(buf, len);
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT with a client id, no will, no credentials. `clean_session` is
/// 3.1.1's Clean Session or 5.0's Clean Start; a 5.0 session that should
/// persist also asks for a Session Expiry Interval.
pub fn encode_connect(
    buf: &mut BytesMut,
    protocol: Protocol,
    client_id: &str,
    keep_alive: u16,
    clean_session: bool,
) {
    let properties: &[u8] = match protocol {
        Protocol::V311 => &[],
        Protocol::V5 => v5::connect_properties(!clean_session),
    };
    let remaining = 10 + properties.len() + 2 + client_id.len();
    buf.put_u8(0x10);
    put_remaining_length(buf, remaining);
    put_str(buf, b"MQTT");
    buf.put_u8(protocol.level());
    buf.put_u8(if clean_session { 0x02 } else { 0x00 });
    buf.put_u16(keep_alive);
    buf.put_slice(properties);
    put_str(buf, client_id.as_bytes());
}

/// PUBLISH; `packet_id` is ignored for QoS 0. In 5.0 with an empty
/// property block.
pub fn encode_publish(
    buf: &mut BytesMut,
    protocol: Protocol,
    topic: &[u8],
    qos: u8,
    packet_id: u16,
    payload: &[u8],
) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let properties_len = usize::from(protocol == Protocol::V5);
    let remaining = 2 + topic.len() + id_len + properties_len + payload.len();
    buf.reserve(5 + remaining);
    buf.put_u8(0x30 | (qos << 1));
    put_remaining_length(buf, remaining);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    if properties_len > 0 {
        buf.put_u8(0);
    }
    buf.put_slice(payload);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (pass the first byte, e.g. [`PUBACK`]).
/// The same bytes in both versions: 5.0 reads the short form as success.
pub fn encode_ack(buf: &mut BytesMut, first_byte: u8, packet_id: u16) {
    buf.put_u8(first_byte);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

/// SUBSCRIBE to several filters at one QoS. The 5.0 subscription options
/// byte holds the QoS where 3.1.1 has it, with the other options off.
pub fn encode_subscribe(
    buf: &mut BytesMut,
    protocol: Protocol,
    packet_id: u16,
    filters: &[String],
    qos: u8,
) {
    let properties_len = usize::from(protocol == Protocol::V5);
    let remaining = 2 + properties_len + filters.iter().map(|f| 2 + f.len() + 1).sum::<usize>();
    buf.put_u8(0x82);
    put_remaining_length(buf, remaining);
    buf.put_u16(packet_id);
    if properties_len > 0 {
        buf.put_u8(0);
    }
    for filter in filters {
        put_str(buf, filter.as_bytes());
        buf.put_u8(qos);
    }
}

pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0x00]);
}

/// DISCONNECT; in 5.0 the empty form means "normal disconnection".
pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0x00]);
}

/// Parses the packet at the front of `buf`. Returns `Ok(None)` until a whole
/// packet is buffered, otherwise the packet and its length in bytes.
/// Packets larger than `max_len` are refused before they are buffered.
///
/// In 5.0 an acknowledgement with a failure reason code (0x80 and up) and a
/// DISCONNECT from the server are errors too: both end the client, since the
/// bench's counts assume every publish is taken.
pub fn parse(
    buf: &[u8],
    max_len: usize,
    protocol: Protocol,
) -> Result<Option<(Incoming<'_>, usize)>> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let mut remaining = 0usize;
    let mut header_len = 1;
    loop {
        let Some(&byte) = buf.get(header_len) else {
            return Ok(None);
        };
        remaining |= ((byte & 0x7F) as usize) << (7 * (header_len - 1));
        header_len += 1;
        if byte & 0x80 == 0 {
            break;
        }
        ensure!(header_len <= 4, "remaining length longer than 4 bytes");
    }
    let total = header_len + remaining;
    ensure!(
        total <= max_len,
        "packet of {total} bytes exceeds the {max_len}-byte limit"
    );
    let Some(body) = buf.get(header_len..total) else {
        return Ok(None);
    };
    let v5 = protocol == Protocol::V5;
    let packet = match first >> 4 {
        // A broker without 5.0 may refuse it with 3.1.1's CONNACK 0x01
        // (unacceptable protocol version), which has no property block.
        2 if v5 && !(body.len() == 2 && body[1] == 0x01) => {
            ensure!(body.len() >= 3, "CONNACK of {} bytes", body.len());
            Incoming::ConnAck {
                return_code: body[1],
                limits: v5::server_limits(&body[2..])?,
            }
        }
        2 => {
            ensure!(body.len() == 2, "CONNACK of {} bytes", body.len());
            Incoming::ConnAck {
                return_code: body[1],
                limits: ServerLimits::default(),
            }
        }
        3 => {
            let qos = (first >> 1) & 3;
            ensure!(qos < 3, "PUBLISH with QoS 3");
            let topic_len = u16_at(body, 0)? as usize;
            let topic = body
                .get(2..2 + topic_len)
                .ok_or_else(|| short("PUBLISH topic"))?;
            let mut at = 2 + topic_len;
            let mut packet_id = 0;
            if qos > 0 {
                packet_id = u16_at(body, at)?;
                at += 2;
            }
            if v5 {
                at = v5::skip_properties(body, at)?;
            }
            let payload = body.get(at..).ok_or_else(|| short("PUBLISH payload"))?;
            Incoming::Publish {
                qos,
                packet_id,
                topic,
                payload,
            }
        }
        4 => Incoming::PubAck(ack(body, v5, "PUBACK")?),
        5 => Incoming::PubRec(ack(body, v5, "PUBREC")?),
        6 => Incoming::PubRel(ack(body, v5, "PUBREL")?),
        7 => Incoming::PubComp(ack(body, v5, "PUBCOMP")?),
        9 => {
            let codes_at = if v5 { v5::skip_properties(body, 2)? } else { 2 };
            let return_codes = body.get(codes_at..).ok_or_else(|| short("SUBACK"))?;
            Incoming::SubAck { return_codes }
        }
        13 => Incoming::PingResp,
        14 if v5 => {
            let reason = body.first().copied().unwrap_or(0);
            bail!(
                "the broker sent DISCONNECT, reason 0x{reason:02X} ({})",
                v5::reason_name(reason)
            )
        }
        other => bail!("unexpected packet type {other} from the broker"),
    };
    Ok(Some((packet, total)))
}

/// The packet id of an acknowledgement. A 5.0 one may go on with a reason
/// code and a property block; a failure reason is an error.
fn ack(body: &[u8], v5: bool, name: &str) -> Result<u16> {
    let packet_id = u16_at(body, 0)?;
    if v5 && body.len() > 2 {
        let reason = body[2];
        if body.len() > 3 {
            v5::skip_properties(body, 3)?;
        }
        ensure!(
            reason < 0x80,
            "{name} for packet {packet_id} refused it: reason 0x{reason:02X} ({})",
            v5::reason_name(reason)
        );
    }
    Ok(packet_id)
}

fn u16_at(body: &[u8], at: usize) -> Result<u16> {
    match body.get(at..at + 2) {
        Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
        None => Err(short("packet id or length")),
    }
}

fn short(what: &str) -> anyhow::Error {
    anyhow::anyhow!("truncated {what}")
}

#[cfg(test)]
mod tests;
