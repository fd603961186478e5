//! A minimal MQTT 3.1.1 client codec: only the packets a load generator
//! sends and receives, written straight into and parsed straight out of the
//! connection's buffers with no allocation per packet.
//!
//! It is independent of the broker's codec on purpose: the bench must measure
//! any broker the same way, and a shared codec bug must not hide on both sides.
//! Incoming packets are checked only as far as the bench needs to stay safe
//! (lengths are bounds-checked; anything unexpected is an error, never a panic).

use anyhow::{bail, ensure, Result};
use bytes::{BufMut, BytesMut};

/// Fixed-header first bytes of the packets the client sends.
pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
/// PUBREL has the reserved flags 0b0010.
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;

/// A packet received from the broker, borrowing from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    ConnAck {
        return_code: u8,
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
        return_codes: &'a [u8],
    },
    PingResp,
}

/// Appends the variable-length "remaining length" field.
fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

/// CONNECT with a client id, clean session, no will, no credentials.
pub fn encode_connect(buf: &mut BytesMut, client_id: &str, keep_alive: u16, clean_session: bool) {
    let remaining = 10 + 2 + client_id.len();
    buf.put_u8(0x10);
    put_remaining_length(buf, remaining);
    put_str(buf, b"MQTT");
    buf.put_u8(4);
    buf.put_u8(if clean_session { 0x02 } else { 0x00 });
    buf.put_u16(keep_alive);
    put_str(buf, client_id.as_bytes());
}

/// PUBLISH; `packet_id` is ignored for QoS 0.
pub fn encode_publish(buf: &mut BytesMut, topic: &[u8], qos: u8, packet_id: u16, payload: &[u8]) {
    let id_len = if qos > 0 { 2 } else { 0 };
    let remaining = 2 + topic.len() + id_len + payload.len();
    buf.reserve(5 + remaining);
    buf.put_u8(0x30 | (qos << 1));
    put_remaining_length(buf, remaining);
    put_str(buf, topic);
    if qos > 0 {
        buf.put_u16(packet_id);
    }
    buf.put_slice(payload);
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP (pass the first byte, e.g. [`PUBACK`]).
pub fn encode_ack(buf: &mut BytesMut, first_byte: u8, packet_id: u16) {
    buf.put_u8(first_byte);
    buf.put_u8(2);
    buf.put_u16(packet_id);
}

/// SUBSCRIBE to several filters at one QoS.
pub fn encode_subscribe(buf: &mut BytesMut, packet_id: u16, filters: &[String], qos: u8) {
    let remaining = 2 + filters.iter().map(|f| 2 + f.len() + 1).sum::<usize>();
    buf.put_u8(0x82);
    put_remaining_length(buf, remaining);
    buf.put_u16(packet_id);
    for filter in filters {
        put_str(buf, filter.as_bytes());
        buf.put_u8(qos);
    }
}

pub fn encode_pingreq(buf: &mut BytesMut) {
    buf.put_slice(&[0xC0, 0x00]);
}

pub fn encode_disconnect(buf: &mut BytesMut) {
    buf.put_slice(&[0xE0, 0x00]);
}

/// Parses the packet at the front of `buf`. Returns `Ok(None)` until a whole
/// packet is buffered, otherwise the packet and its length in bytes.
/// Packets larger than `max_len` are refused before they are buffered.
pub fn parse(buf: &[u8], max_len: usize) -> Result<Option<(Incoming<'_>, usize)>> {
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
    let packet = match first >> 4 {
        2 => {
            ensure!(body.len() == 2, "CONNACK of {} bytes", body.len());
            Incoming::ConnAck {
                return_code: body[1],
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
            let payload = body.get(at..).ok_or_else(|| short("PUBLISH payload"))?;
            Incoming::Publish {
                qos,
                packet_id,
                topic,
                payload,
            }
        }
        4 => Incoming::PubAck(u16_at(body, 0)?),
        5 => Incoming::PubRec(u16_at(body, 0)?),
        6 => Incoming::PubRel(u16_at(body, 0)?),
        7 => Incoming::PubComp(u16_at(body, 0)?),
        9 => {
            let return_codes = body.get(2..).ok_or_else(|| short("SUBACK"))?;
            Incoming::SubAck { return_codes }
        }
        13 => Incoming::PingResp,
        other => bail!("unexpected packet type {other} from the broker"),
    };
    Ok(Some((packet, total)))
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
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_through_the_parser() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, b"a/b", 1, 7, &[9u8; 200]);
        let (packet, len) = parse(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(
            packet,
            Incoming::Publish {
                qos: 1,
                packet_id: 7,
                topic: b"a/b",
                payload: &[9u8; 200]
            }
        );
    }

    #[test]
    fn partial_packets_wait_for_more_bytes() {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, b"t", 0, 0, &[1u8; 300]);
        for cut in 0..buf.len() {
            assert!(
                parse(&buf[..cut], 1 << 20).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn malformed_input_is_an_error_not_a_panic() {
        assert!(parse(&[0x30, 0x01, 0x00], 1024).is_err()); // topic length cut
        assert!(parse(&[0x30, 0x02, 0x00, 0x05], 1024).is_err()); // topic past end
        assert!(parse(&[0x40, 0x01, 0x00], 1024).is_err()); // PUBACK without id
        assert!(parse(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 1 << 30).is_err());
        assert!(parse(&[0x30, 0xFF, 0x7F], 100).is_err()); // over the limit
        assert!(parse(&[0xF0, 0x00], 100).is_err());
    }

    #[test]
    fn acks_and_connack_parse() {
        let mut buf = BytesMut::new();
        encode_ack(&mut buf, PUBREL, 513);
        assert_eq!(
            parse(&buf, 16).unwrap().unwrap(),
            (Incoming::PubRel(513), 4)
        );
        assert_eq!(
            parse(&[0x20, 0x02, 0x00, 0x05], 16).unwrap().unwrap(),
            (Incoming::ConnAck { return_code: 5 }, 4)
        );
        assert_eq!(
            parse(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x80], 16)
                .unwrap()
                .unwrap()
                .0,
            Incoming::SubAck {
                return_codes: &[0x01, 0x80]
            }
        );
    }
}
