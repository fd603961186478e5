//! What the node sends a 3.1/3.1.1 client.
//!
//! Acknowledgements, CONNACK, SUBACK and PINGRESP go through
//! `rmqtt-codec`'s 3.1.1 `Encoder` (none of them allocates). PUBLISH is
//! written here: the codec's encoder takes an owned packet (a boxed
//! `Publish` with an owned topic), which would cost two allocations and a
//! topic copy per delivery, where this costs none. Its output is decoded
//! back with the codec in the tests below.

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};
use rmqtt_codec::v3;
use tokio_util::codec::Encoder;

use crate::message::Qos;
use crate::protocol::frame::put_remaining_length;

/// CONNACK return codes of MQTT 3.1.1 (3.2.2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnackCode {
    /// Connection accepted.
    Accepted,
    /// The protocol level is not supported (0x01).
    UnacceptableProtocol,
    /// The client identifier is not allowed (0x02).
    IdentifierRejected,
    /// The broker cannot serve the client now (0x03).
    ServerUnavailable,
    /// Unknown user, wrong password, or a user name without one (0x04).
    BadUserNameOrPassword,
    /// No credentials while anonymous clients are refused (0x05).
    NotAuthorized,
}

/// Why encoding failed: only a packet the protocol cannot express
/// (a packet id of 0, a length over 256 MiB) does.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode packet: {0}")]
pub struct EncodeError(String);

/// Appends `packet` with the codec's 3.1.1 encoder.
fn encode(packet: v3::Packet, out: &mut BytesMut) -> Result<(), EncodeError> {
    let start = out.len();
    v3::Codec::new(0).encode(packet, out).map_err(|e| {
        out.truncate(start);
        EncodeError(e.to_string())
    })
}

/// Largest remaining length MQTT can express (MQTT-2.2.3).
const MAX_REMAINING_LENGTH: usize = 268_435_455;

fn pid(id: u16) -> Result<NonZeroU16, EncodeError> {
    NonZeroU16::new(id).ok_or_else(|| EncodeError("packet identifier 0".into()))
}

/// Appends a CONNACK.
pub fn encode_connack(out: &mut BytesMut, session_present: bool, code: ConnackCode) {
    use v3::ConnectAckReason as Reason;
    let return_code = match code {
        ConnackCode::Accepted => Reason::ConnectionAccepted,
        ConnackCode::UnacceptableProtocol => Reason::UnacceptableProtocolVersion,
        ConnackCode::IdentifierRejected => Reason::IdentifierRejected,
        ConnackCode::ServerUnavailable => Reason::ServiceUnavailable,
        ConnackCode::BadUserNameOrPassword => Reason::BadUserNameOrPassword,
        ConnackCode::NotAuthorized => Reason::NotAuthorized,
    };
    let packet = v3::Packet::ConnectAck(v3::ConnectAck {
        return_code,
        session_present,
    });
    // A CONNACK cannot fail to encode: four fixed bytes.
    let _ = encode(packet, out);
}

/// Appends a PUBLISH to a subscriber.
pub fn encode_publish(
    out: &mut BytesMut,
    topic: &str,
    payload: &[u8],
    qos: Qos,
    packet_id: Option<u16>,
    dup: bool,
    retain: bool,
) -> Result<(), EncodeError> {
    let packet_id = match (qos, packet_id) {
        (Qos::AtMostOnce, _) => None,
        (_, Some(id)) => Some(pid(id)?),
        (_, None) => return Err(EncodeError("QoS 1/2 PUBLISH without packet id".into())),
    };
    let topic_len = u16::try_from(topic.len())
        .map_err(|_| EncodeError("topic longer than 65535 bytes".into()))?;
    let remaining = 2 + topic.len() + packet_id.map_or(0, |_| 2) + payload.len();
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError("PUBLISH over 256 MiB".into()));
    }
    let mut first = 0x30 | (qos.as_u8() << 1);
    if dup && qos != Qos::AtMostOnce {
        first |= 0b1000;
    }
    if retain {
        first |= 0b0001;
    }
    out.reserve(5 + remaining);
    out.put_u8(first);
    put_remaining_length(out, remaining);
    out.put_u16(topic_len);
    out.put_slice(topic.as_bytes());
    if let Some(id) = packet_id {
        out.put_u16(id.get());
    }
    out.put_slice(payload);
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
            encode_publish(&mut out, "a/b", b"payload", qos, id, dup, retain).unwrap();
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
                encode_publish(
                    &mut out,
                    "a/b",
                    b"x",
                    Qos::ExactlyOnce,
                    Some(3),
                    true,
                    false,
                )
                .unwrap();
                out[0]
            },
            0x3C
        );
        let mut out = BytesMut::new();
        assert!(encode_publish(&mut out, "t", b"", Qos::AtLeastOnce, None, false, false).is_err());
        assert!(
            encode_publish(&mut out, "t", b"", Qos::AtLeastOnce, Some(0), false, false).is_err()
        );
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
        encode_connack(&mut out, true, ConnackCode::Accepted);
        encode_connack(&mut out, false, ConnackCode::UnacceptableProtocol);
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
