//! What the node sends a 3.1/3.1.1 client, and the PUBLISH of both
//! versions (a 5.0 one adds its property block, see [`super::encode_v5`]).
//!
//! Acknowledgements, CONNACK, SUBACK and PINGRESP go through
//! `rmqtt-codec`'s 3.1.1 `Encoder` (none of them allocates). PUBLISH is
//! written here: the codec's encoder takes an owned packet (a boxed
//! `Publish` with an owned topic), which would cost two allocations and a
//! topic copy per delivery, where this costs none. Its output is decoded
//! back with the codec in the tests below.

use std::num::NonZeroU16;

use astramq_shared::varint;
use bytes::{BufMut, BytesMut};
use rmqtt_codec::v3;
use tokio_util::codec::Encoder;

use super::encode_v5::{publish_v5_remaining, put_publish_v5_properties, PublishV5};
use super::packets::Version;
use crate::message::Qos;
use crate::protocol::frame::put_remaining_length;

/// Why a CONNECT is refused; the CONNACK says it in the client's
/// protocol version (the mapping is shared with the proxy).
pub use astramq_shared::mqtt_connect::Refusal as ConnackRefusal;

/// Why encoding failed: a packet the protocol cannot express (a packet id
/// of 0, a length over 256 MiB), or one larger than the client accepts.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The protocol cannot express the packet.
    #[error("cannot encode packet: {0}")]
    Invalid(String),
    /// Larger than the client's Maximum Packet Size (5.0 §3.1.2.11.4);
    /// nothing was written.
    #[error("packet of {0} bytes is over the client's maximum packet size")]
    TooLarge(usize),
}

impl EncodeError {
    pub(super) fn invalid(why: &str) -> EncodeError {
        EncodeError::Invalid(why.to_owned())
    }

    pub(super) fn invalid_owned(why: String) -> EncodeError {
        EncodeError::Invalid(why)
    }
}

/// Appends `packet` with the codec's 3.1.1 encoder.
fn encode(packet: v3::Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    v3::Codec::new(0).encode(packet, out).map_err(|e| {
        out.truncate(start);
        EncodeError::invalid_owned(e.to_string())
    })
}

/// Largest remaining length MQTT can express (MQTT-2.2.3).
pub(super) const MAX_REMAINING_LENGTH: usize = 268_435_455;

fn pid(id: u16) -> Result<NonZeroU16, EncodeError> {
    NonZeroU16::new(id).ok_or_else(|| EncodeError::invalid("packet identifier 0"))
}

/// Appends a 3.1/3.1.1 CONNACK that accepts the connection (a 5.0 one
/// is [`super::encode_connack_v5`]).
pub fn encode_connack(out: &mut BytesMut, session_present: bool) {
    let packet = v3::Packet::ConnectAck(v3::ConnectAck {
        return_code: v3::ConnectAckReason::ConnectionAccepted,
        session_present,
    });
    // A CONNACK cannot fail to encode: four fixed bytes.
    let _ = encode(packet, out);
}

/// Appends a CONNACK that refuses a client of `version` (3.1.1 form for
/// 3.1/3.1.1, 5.0 form with an empty property block for 5.0).
pub fn encode_connack_refusal(out: &mut BytesMut, version: Version, refusal: ConnackRefusal) {
    out.extend_from_slice(&refusal.connack(version.level()));
}

/// One PUBLISH to a subscriber, as [`encode_publish`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingPublish<'a> {
    /// The topic name.
    pub topic: &'a str,
    /// The application payload.
    pub payload: &'a [u8],
    /// The delivery's QoS.
    pub qos: Qos,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    /// A re-delivery (never set on QoS 0).
    pub dup: bool,
    /// The retain flag of this delivery.
    pub retain: bool,
    /// `Some` on a 5.0 connection: the property block to write.
    pub v5: Option<PublishV5<'a>>,
    /// Largest packet the client accepts (`usize::MAX`: no limit).
    pub max_packet: usize,
}

/// Appends a PUBLISH to a subscriber; one over `max_packet` is not
/// written ([`EncodeError::TooLarge`]).
pub fn encode_publish(out: &mut BytesMut, p: &OutgoingPublish<'_>) -> Result<(), EncodeError> {
    let packet_id = match (p.qos, p.packet_id) {
        (Qos::AtMostOnce, _) => None,
        (_, Some(id)) => Some(pid(id)?),
        (_, None) => return Err(EncodeError::invalid("QoS 1/2 PUBLISH without packet id")),
    };
    let topic_len = u16::try_from(p.topic.len())
        .map_err(|_| EncodeError::invalid("topic longer than 65535 bytes"))?;
    let (remaining, properties) = match &p.v5 {
        None => (
            2 + p.topic.len() + packet_id.map_or(0, |_| 2) + p.payload.len(),
            None,
        ),
        Some(v5) => {
            let (remaining, properties) =
                publish_v5_remaining(p.topic, p.payload.len(), p.qos, v5)?;
            (remaining, Some((properties, v5)))
        }
    };
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::invalid("PUBLISH over 256 MiB"));
    }
    let packet_len = 1 + varint::encoded_len(remaining) + remaining;
    if packet_len > p.max_packet {
        return Err(EncodeError::TooLarge(packet_len));
    }
    let mut first = 0x30 | (p.qos.as_u8() << 1);
    if p.dup && p.qos != Qos::AtMostOnce {
        first |= 0b1000;
    }
    if p.retain {
        first |= 0b0001;
    }
    out.reserve(packet_len);
    out.put_u8(first);
    put_remaining_length(out, remaining);
    out.put_u16(topic_len);
    out.put_slice(p.topic.as_bytes());
    if let Some(id) = packet_id {
        out.put_u16(id.get());
    }
    if let Some((properties, v5)) = properties {
        put_publish_v5_properties(out, properties, v5);
    }
    out.put_slice(p.payload);
    Ok(())
}

/// The acknowledgements that carry only a packet id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// QoS 1 done.
    Puback,
    /// QoS 2 received.
    Pubrec,
    /// QoS 2 released.
    Pubrel,
    /// QoS 2 complete.
    Pubcomp,
    /// Unsubscribe done.
    Unsuback,
}

/// Appends an acknowledgement for `packet_id`.
pub fn encode_ack(out: &mut BytesMut, ack: Ack, packet_id: u16) -> Result<(), EncodeError> {
    let packet_id = pid(packet_id)?;
    let packet = match ack {
        Ack::Puback => v3::Packet::PublishAck { packet_id },
        Ack::Pubrec => v3::Packet::PublishReceived { packet_id },
        Ack::Pubrel => v3::Packet::PublishRelease { packet_id },
        Ack::Pubcomp => v3::Packet::PublishComplete { packet_id },
        Ack::Unsuback => v3::Packet::UnsubscribeAck { packet_id },
    };
    encode(packet, out)
}

/// Appends a SUBACK; `granted` holds `Some(qos)` or `None` for 0x80.
pub fn encode_suback(
    out: &mut BytesMut,
    packet_id: u16,
    granted: &[Option<Qos>],
) -> Result<(), EncodeError> {
    use rmqtt_codec::types::QoS;
    let status = granted
        .iter()
        .map(|g| match g {
            Some(Qos::AtMostOnce) => v3::SubscribeReturnCode::Success(QoS::AtMostOnce),
            Some(Qos::AtLeastOnce) => v3::SubscribeReturnCode::Success(QoS::AtLeastOnce),
            Some(Qos::ExactlyOnce) => v3::SubscribeReturnCode::Success(QoS::ExactlyOnce),
            None => v3::SubscribeReturnCode::Failure,
        })
        .collect();
    let packet = v3::Packet::SubscribeAck {
        packet_id: pid(packet_id)?,
        status,
    };
    encode(packet, out)
}

/// Appends a PINGRESP.
pub fn encode_pingresp(out: &mut BytesMut) {
    // Cannot fail: two fixed bytes.
    let _ = encode(v3::Packet::PingResponse, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{decode, Inbound, Version};
    use crate::protocol::frame::parse_header;

    /// A 3.1.1 PUBLISH with no size limit.
    fn p311<'a>(
        topic: &'a str,
        payload: &'a [u8],
        qos: Qos,
        packet_id: Option<u16>,
        dup: bool,
        retain: bool,
    ) -> OutgoingPublish<'a> {
        OutgoingPublish {
            topic,
            payload,
            qos,
            packet_id,
            dup,
            retain,
            v5: None,
            max_packet: usize::MAX,
        }
    }

    /// Decodes what was encoded with the codec's own 3.1.1 decoder.
    fn decode_back(out: &BytesMut) -> v3::Packet {
        use tokio_util::codec::Decoder;
        let mut buf = out.clone();
        let (packet, _) = v3::Codec::new(1 << 20).decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "one packet, nothing after it");
        packet
    }

    #[test]
    fn encoded_publish_decodes_back() {
        for (qos, id, dup, retain) in [
            (Qos::AtMostOnce, None, false, false),
            (Qos::AtMostOnce, Some(4), true, true),
            (Qos::AtLeastOnce, Some(1), false, true),
            (Qos::ExactlyOnce, Some(65535), true, false),
        ] {
            let mut out = BytesMut::new();
            encode_publish(&mut out, &p311("a/b", b"payload", qos, id, dup, retain)).unwrap();
            let frame = out.clone().freeze();
            let header = parse_header(&frame, usize::MAX).unwrap().unwrap();
            assert_eq!(header.packet_len(), frame.len());
            let v3::Packet::Publish(p) = decode_back(&out) else {
                panic!("not a publish")
            };
            assert_eq!(&p.topic[..], "a/b");
            assert_eq!(&p.payload[..], b"payload");
            assert_eq!(p.qos.value(), qos.as_u8());
            assert_eq!(p.retain, retain);
            // DUP is never set on QoS 0 (MQTT-3.3.1-2).
            assert_eq!(p.dup, dup && qos != Qos::AtMostOnce);
            let expected_id = if qos == Qos::AtMostOnce { None } else { id };
            assert_eq!(p.packet_id.map(|i| i.get()), expected_id);
            // And the node's own decoder takes it too.
            let mut buf = out.clone();
            assert!(matches!(
                decode(Version::Mqtt311, &header, &mut buf),
                Ok(Inbound::Publish(_))
            ));
        }
        assert_eq!(
            {
                let mut out = BytesMut::new();
                let p = p311("a/b", b"x", Qos::ExactlyOnce, Some(3), true, false);
                encode_publish(&mut out, &p).unwrap();
                out[0]
            },
            0x3C
        );
        let mut out = BytesMut::new();
        let no_id = p311("t", b"", Qos::AtLeastOnce, None, false, false);
        assert!(encode_publish(&mut out, &no_id).is_err());
        let zero_id = p311("t", b"", Qos::AtLeastOnce, Some(0), false, false);
        assert!(encode_publish(&mut out, &zero_id).is_err());
        // 1 + 1 + 2 + 1 + 2 = 7 bytes: one byte over a limit of 6.
        let too_large = OutgoingPublish {
            max_packet: 6,
            ..p311("t", b"xy", Qos::AtMostOnce, None, false, false)
        };
        assert!(matches!(
            encode_publish(&mut out, &too_large),
            Err(EncodeError::TooLarge(7))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn suback_carries_failures() {
        let mut out = BytesMut::new();
        encode_suback(&mut out, 5, &[Some(Qos::AtLeastOnce), None]).unwrap();
        assert_eq!(&out[..], &[0x90, 0x04, 0x00, 0x05, 0x01, 0x80]);
    }

    #[test]
    fn fixed_packets_are_byte_exact() {
        let mut out = BytesMut::new();
        encode_connack(&mut out, true);
        encode_connack_refusal(
            &mut out,
            Version::Mqtt311,
            ConnackRefusal::UnsupportedProtocol,
        );
        encode_pingresp(&mut out);
        encode_ack(&mut out, Ack::Puback, 7).unwrap();
        encode_ack(&mut out, Ack::Pubrec, 7).unwrap();
        encode_ack(&mut out, Ack::Pubrel, 7).unwrap();
        encode_ack(&mut out, Ack::Pubcomp, 7).unwrap();
        encode_ack(&mut out, Ack::Unsuback, 7).unwrap();
        assert_eq!(
            &out[..],
            &[
                0x20, 0x02, 0x01, 0x00, 0x20, 0x02, 0x00, 0x01, 0xD0, 0x00, 0x40, 0x02, 0x00, 0x07,
                0x50, 0x02, 0x00, 0x07, 0x62, 0x02, 0x00, 0x07, 0x70, 0x02, 0x00, 0x07, 0xB0, 0x02,
                0x00, 0x07,
            ]
        );
        assert!(encode_ack(&mut out, Ack::Puback, 0).is_err());
    }
}
