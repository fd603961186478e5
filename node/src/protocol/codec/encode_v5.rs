//! What the node sends a 5.0 client, where it differs from 3.1.1.
//!
//! A PUBLISH carries a property block, acknowledgements carry reason
//! codes, SUBACK and UNSUBACK a property block and a reason code per
//! filter, and the server may send DISCONNECT. CONNACK goes through
//! `rmqtt-codec`'s 5.0 encoder (many properties, once per connection);
//! everything sent per message is written here without allocating, and
//! decoded back with the codec in the tests.
//!
//! A success acknowledgement with no properties is byte-identical in 3.1.1
//! and 5.0 (5.0 §3.4.2.1: the reason code may be left out when it is 0x00
//! and there are no properties), so those go through [`super::encode_ack`].

use std::num::NonZeroU16;

use bytes::{BufMut, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::v5;
use tokio_util::codec::Encoder;

use super::encode::{Ack, EncodeError, MAX_REMAINING_LENGTH};
use crate::message::{Properties, Qos};
use crate::protocol::frame::put_remaining_length;
use astramq_shared::varint;

/// 5.0 property identifiers the node writes (5.0 §2.2.2.2).
mod property {
    pub const PAYLOAD_FORMAT: u8 = 0x01;
    pub const MESSAGE_EXPIRY: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_ID: u8 = 0x0B;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const REASON_STRING: u8 = 0x1F;
    pub const USER_PROPERTY: u8 = 0x26;
}

/// What a 5.0 PUBLISH adds to the 3.1.1 fields.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublishV5<'a> {
    /// The message's properties as published (`None`: it has none).
    pub properties: Option<&'a Properties>,
    /// Seconds left of the message's expiry interval, when it has one.
    pub expiry_secs: Option<u32>,
    /// The identifiers of the subscriptions it matched (5.0 §3.3.2.3.8).
    pub subscription_ids: &'a [u32],
    /// The topic alias it sets or uses (5.0 §3.3.2.3.4).
    pub topic_alias: Option<u16>,
}

fn string_len(s: &str) -> Result<usize, EncodeError> {
    u16::try_from(s.len())
        .map(|_| 2 + s.len())
        .map_err(|_| EncodeError::invalid("string property longer than 65535 bytes"))
}

/// The length of a PUBLISH's property block (without its own length).
fn publish_properties_len(v5: &PublishV5<'_>) -> Result<usize, EncodeError> {
    let mut len = 0;
    if let Some(p) = v5.properties {
        if p.payload_is_utf8 {
            len += 2;
        }
        if let Some(t) = &p.content_type {
            len += 1 + string_len(t)?;
        }
        if let Some(t) = &p.response_topic {
            len += 1 + string_len(t)?;
        }
        if let Some(d) = &p.correlation_data {
            len += 1 + 2 + d.len();
            if d.len() > usize::from(u16::MAX) {
                return Err(EncodeError::invalid("correlation data over 65535 bytes"));
            }
        }
        for (k, v) in &p.user_properties {
            len += 1 + string_len(k)? + string_len(v)?;
        }
    }
    if v5.expiry_secs.is_some() {
        len += 5;
    }
    if v5.topic_alias.is_some() {
        len += 3;
    }
    for id in v5.subscription_ids {
        len += 1 + varint::encoded_len(*id as usize);
    }
    Ok(len)
}

fn put_string(out: &mut BytesMut, s: &str) {
    // Lengths were checked by `publish_properties_len`.
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn put_publish_properties(out: &mut BytesMut, v5: &PublishV5<'_>) {
    if let Some(p) = v5.properties {
        if p.payload_is_utf8 {
            out.put_u8(property::PAYLOAD_FORMAT);
            out.put_u8(1);
        }
        if let Some(t) = &p.content_type {
            out.put_u8(property::CONTENT_TYPE);
            put_string(out, t);
        }
        if let Some(t) = &p.response_topic {
            out.put_u8(property::RESPONSE_TOPIC);
            put_string(out, t);
        }
        if let Some(d) = &p.correlation_data {
            out.put_u8(property::CORRELATION_DATA);
            out.put_u16(d.len() as u16);
            out.put_slice(d);
        }
        for (k, v) in &p.user_properties {
            out.put_u8(property::USER_PROPERTY);
            put_string(out, k);
            put_string(out, v);
        }
    }
    if let Some(secs) = v5.expiry_secs {
        out.put_u8(property::MESSAGE_EXPIRY);
        out.put_u32(secs);
    }
    if let Some(alias) = v5.topic_alias {
        out.put_u8(property::TOPIC_ALIAS);
        out.put_u16(alias);
    }
    for id in v5.subscription_ids {
        out.put_u8(property::SUBSCRIPTION_ID);
        varint::encode(out, *id as usize);
    }
}

/// The size of a 5.0 PUBLISH's variable header and payload, property
/// block included (the remaining length).
pub fn publish_v5_remaining(
    topic: &str,
    payload_len: usize,
    qos: Qos,
    v5: &PublishV5<'_>,
) -> Result<(usize, usize), EncodeError> {
    let properties = publish_properties_len(v5)?;
    let id_len = if qos == Qos::AtMostOnce { 0 } else { 2 };
    let remaining =
        2 + topic.len() + id_len + varint::encoded_len(properties) + properties + payload_len;
    Ok((remaining, properties))
}

/// The whole size of a 5.0 PUBLISH (`None`: the protocol cannot express
/// it), to check it against the client's Maximum Packet Size before it is
/// given a packet id.
pub fn publish_v5_len(
    topic: &str,
    payload_len: usize,
    qos: Qos,
    v5: &PublishV5<'_>,
) -> Option<usize> {
    let (remaining, _) = publish_v5_remaining(topic, payload_len, qos, v5).ok()?;
    (remaining <= MAX_REMAINING_LENGTH).then(|| 1 + varint::encoded_len(remaining) + remaining)
}

/// Writes the part of a 5.0 PUBLISH after its packet id: the property
/// block (`properties` bytes long, from [`publish_v5_remaining`]).
pub(super) fn put_publish_v5_properties(out: &mut BytesMut, properties: usize, v5: &PublishV5<'_>) {
    varint::encode(out, properties);
    put_publish_properties(out, v5);
}

/// Appends a 5.0 acknowledgement with a reason code (and, when the client
/// did not refuse problem information, a reason string). A success code
/// without a string is written in the short form 3.1.1 also uses.
pub fn encode_ack_v5(
    out: &mut BytesMut,
    ack: Ack,
    packet_id: u16,
    reason_code: u8,
    reason: Option<&str>,
) -> Result<(), EncodeError> {
    if reason_code == 0 && reason.is_none() && ack != Ack::Unsuback {
        return super::encode_ack(out, ack, packet_id);
    }
    let packet_id =
        NonZeroU16::new(packet_id).ok_or_else(|| EncodeError::invalid("packet identifier 0"))?;
    let first = match ack {
        Ack::Puback => 0x40,
        Ack::Pubrec => 0x50,
        Ack::Pubrel => 0x62,
        Ack::Pubcomp => 0x70,
        Ack::Unsuback => return encode_unsuback_v5(out, packet_id.get(), &[reason_code]),
    };
    let properties = reason.map_or(Ok(0), |r| string_len(r).map(|l| 1 + l))?;
    let remaining = 3 + varint::encoded_len(properties) + properties;
    out.reserve(2 + remaining);
    out.put_u8(first);
    put_remaining_length(out, remaining);
    out.put_u16(packet_id.get());
    out.put_u8(reason_code);
    varint::encode(out, properties);
    if let Some(reason) = reason {
        out.put_u8(property::REASON_STRING);
        put_string(out, reason);
    }
    Ok(())
}

/// Appends a 5.0 SUBACK or UNSUBACK: packet id, an empty property block,
/// one reason code per filter.
fn encode_per_filter(
    out: &mut BytesMut,
    first: u8,
    packet_id: u16,
    codes: &[u8],
) -> Result<(), EncodeError> {
    if packet_id == 0 {
        return Err(EncodeError::invalid("packet identifier 0"));
    }
    let remaining = 3 + codes.len();
    if remaining > MAX_REMAINING_LENGTH {
        return Err(EncodeError::invalid("too many reason codes"));
    }
    out.reserve(5 + remaining);
    out.put_u8(first);
    put_remaining_length(out, remaining);
    out.put_u16(packet_id);
    out.put_u8(0);
    out.put_slice(codes);
    Ok(())
}

/// Appends a 5.0 SUBACK with one reason code per filter (the granted QoS,
/// or a failure code of 0x80 and above).
pub fn encode_suback_v5(
    out: &mut BytesMut,
    packet_id: u16,
    codes: &[u8],
) -> Result<(), EncodeError> {
    encode_per_filter(out, 0x90, packet_id, codes)
}

/// Appends a 5.0 UNSUBACK with one reason code per filter (0x00 success,
/// 0x11 no subscription existed, 0x80 and above a failure).
pub fn encode_unsuback_v5(
    out: &mut BytesMut,
    packet_id: u16,
    codes: &[u8],
) -> Result<(), EncodeError> {
    encode_per_filter(out, 0xB0, packet_id, codes)
}

/// Appends a server DISCONNECT with `reason_code` (5.0 §3.14.2.1) and,
/// when given, a reason string.
pub fn encode_disconnect_v5(out: &mut BytesMut, reason_code: u8, reason: Option<&str>) {
    let reason = reason.filter(|r| r.len() <= usize::from(u16::MAX));
    let properties = reason.map_or(0, |r| 3 + r.len());
    out.put_u8(0xE0);
    put_remaining_length(out, 1 + varint::encoded_len(properties) + properties);
    out.put_u8(reason_code);
    varint::encode(out, properties);
    if let Some(reason) = reason {
        out.put_u8(property::REASON_STRING);
        put_string(out, reason);
    }
}

/// What a 5.0 CONNACK says (5.0 §3.2.2.3); the fields are the node's
/// values, not the client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnackV5 {
    /// 0x00 success, or a refusal reason code.
    pub reason_code: u8,
    /// Whether a session was resumed.
    pub session_present: bool,
    /// The session expiry interval the server uses, when it differs from
    /// the client's request.
    pub session_expiry_interval: Option<u32>,
    /// How many QoS 1/2 PUBLISH the node takes in flight from the client.
    pub receive_maximum: u16,
    /// Largest packet the node accepts.
    pub maximum_packet_size: u32,
    /// The identifier the node gave a client that sent an empty one.
    pub assigned_client_id: Option<String>,
    /// Topic aliases the node accepts from the client.
    pub topic_alias_maximum: u16,
    /// Whether wildcard subscriptions are served.
    pub wildcard_subscription_available: bool,
    /// Whether subscription identifiers are served.
    pub subscription_identifiers_available: bool,
    /// Whether shared subscriptions are served.
    pub shared_subscription_available: bool,
    /// The keep-alive the node uses, when it differs from the client's.
    pub server_keep_alive: Option<u16>,
    /// Why a refusal, for a client that did not refuse problem information.
    pub reason_string: Option<String>,
}

/// Appends a 5.0 CONNACK.
pub fn encode_connack_v5(out: &mut BytesMut, connack: &ConnackV5) -> Result<(), EncodeError> {
    let reason_code = v5::ConnectAckReason::try_from(connack.reason_code)
        .map_err(|_| EncodeError::invalid("unknown CONNACK reason code"))?;
    let receive_max = NonZeroU16::new(connack.receive_maximum).unwrap_or(NonZeroU16::MAX);
    let packet = v5::ConnectAck {
        session_present: connack.session_present,
        reason_code,
        session_expiry_interval_secs: connack.session_expiry_interval,
        receive_max,
        max_qos: rmqtt_codec::types::QoS::ExactlyOnce,
        max_packet_size: Some(connack.maximum_packet_size),
        assigned_client_id: connack.assigned_client_id.clone().map(ByteString::from),
        topic_alias_max: connack.topic_alias_maximum,
        retain_available: true,
        wildcard_subscription_available: connack.wildcard_subscription_available,
        subscription_identifiers_available: connack.subscription_identifiers_available,
        shared_subscription_available: connack.shared_subscription_available,
        server_keepalive_sec: connack.server_keep_alive,
        reason_string: connack.reason_string.clone().map(ByteString::from),
        ..v5::ConnectAck::default()
    };
    let start = out.len();
    v5::Codec::new(0, 0)
        .encode(v5::Packet::ConnectAck(Box::new(packet)), out)
        .map_err(|e| {
            out.truncate(start);
            EncodeError::invalid_owned(e.to_string())
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::codec::{encode_publish, OutgoingPublish};
    use bytes::Bytes;
    use tokio_util::codec::Decoder;

    /// Decodes what was encoded with the codec's own 5.0 decoder (as a
    /// client would).
    fn decode_back(out: &BytesMut) -> v5::Packet {
        let mut buf = out.clone();
        let (packet, _) = v5::Codec::new(1 << 20, 0)
            .decode(&mut buf)
            .unwrap()
            .unwrap();
        assert!(buf.is_empty(), "one packet, nothing after it");
        packet
    }

    #[test]
    fn a_publish_carries_every_property() {
        let properties = Properties {
            expires_at_ms: Some(1),
            payload_is_utf8: true,
            content_type: Some("text/plain".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            user_properties: vec![("k".into(), "1".into()), ("k".into(), "2".into())],
        };
        let v5 = PublishV5 {
            properties: Some(&properties),
            expiry_secs: Some(7),
            subscription_ids: &[3, 200_000],
            topic_alias: Some(2),
        };
        let mut out = BytesMut::new();
        let publish = OutgoingPublish {
            topic: "a/b",
            payload: b"hello",
            qos: Qos::AtLeastOnce,
            packet_id: Some(9),
            dup: true,
            retain: false,
            v5: Some(v5),
            max_packet: usize::MAX,
        };
        encode_publish(&mut out, &publish).unwrap();
        assert_eq!(
            publish_v5_len("a/b", 5, Qos::AtLeastOnce, &v5),
            Some(out.len())
        );
        let v5::Packet::Publish(p) = decode_back(&out) else {
            panic!("not a publish")
        };
        assert_eq!((&p.topic[..], &p.payload[..]), ("a/b", &b"hello"[..]));
        assert_eq!(p.packet_id.map(|i| i.get()), Some(9));
        assert!(p.dup);
        let got = p.properties.as_ref().expect("properties");
        assert!(got.is_utf8_payload);
        assert_eq!(got.message_expiry_interval.map(|n| n.get()), Some(7));
        assert_eq!(got.content_type.as_deref(), Some("text/plain"));
        assert_eq!(got.response_topic.as_deref(), Some("reply/here"));
        assert_eq!(got.correlation_data.as_deref(), Some(&b"\x00\x01"[..]));
        let users: Vec<(&str, &str)> = got
            .user_properties
            .iter()
            .map(|(k, v)| (&k[..], &v[..]))
            .collect();
        assert_eq!(users, [("k", "1"), ("k", "2")]);
        let ids: Vec<u32> = got.subscription_ids.iter().map(|i| i.get()).collect();
        assert_eq!(ids, [3, 200_000]);
        assert_eq!(got.topic_alias.map(|a| a.get()), Some(2));
    }

    #[test]
    fn a_publish_without_properties_has_an_empty_block() {
        let mut out = BytesMut::new();
        let publish = OutgoingPublish {
            topic: "t",
            payload: b"x",
            qos: Qos::AtMostOnce,
            packet_id: None,
            dup: false,
            retain: true,
            v5: Some(PublishV5::default()),
            max_packet: usize::MAX,
        };
        encode_publish(&mut out, &publish).unwrap();
        assert_eq!(&out[..], &[0x31, 0x05, 0x00, 0x01, b't', 0x00, b'x']);
    }

    #[test]
    fn acknowledgements_carry_reason_codes() {
        let mut out = BytesMut::new();
        encode_ack_v5(&mut out, Ack::Puback, 5, 0x00, None).unwrap();
        assert_eq!(&out[..], &[0x40, 0x02, 0x00, 0x05], "success: short form");
        out.clear();
        encode_ack_v5(&mut out, Ack::Puback, 5, 0x87, None).unwrap();
        let v5::Packet::PublishAck(ack) = decode_back(&out) else {
            panic!("not a PUBACK")
        };
        assert_eq!(ack.reason_code, v5::PublishAckReason::NotAuthorized);
        out.clear();
        encode_ack_v5(&mut out, Ack::Pubcomp, 5, 0x92, Some("unknown id")).unwrap();
        let v5::Packet::PublishComplete(ack) = decode_back(&out) else {
            panic!("not a PUBCOMP")
        };
        assert_eq!(u8::from(ack.reason_code), 0x92);
        assert_eq!(ack.reason_string.as_deref(), Some("unknown id"));
    }

    #[test]
    fn suback_and_unsuback_have_a_code_per_filter() {
        let mut out = BytesMut::new();
        encode_suback_v5(&mut out, 3, &[0x01, 0x87, 0x8F]).unwrap();
        let v5::Packet::SubscribeAck(ack) = decode_back(&out) else {
            panic!("not a SUBACK")
        };
        let codes: Vec<u8> = ack.status.iter().map(|c| u8::from(*c)).collect();
        assert_eq!(codes, [0x01, 0x87, 0x8F]);
        out.clear();
        encode_unsuback_v5(&mut out, 3, &[0x00, 0x11]).unwrap();
        let v5::Packet::UnsubscribeAck(ack) = decode_back(&out) else {
            panic!("not an UNSUBACK")
        };
        let codes: Vec<u8> = ack.status.iter().map(|c| u8::from(*c)).collect();
        assert_eq!(codes, [0x00, 0x11]);
        assert!(encode_suback_v5(&mut out, 0, &[0]).is_err());
    }

    #[test]
    fn disconnect_and_connack_decode_back() {
        let mut out = BytesMut::new();
        encode_disconnect_v5(&mut out, 0x8E, None);
        assert_eq!(&out[..], &[0xE0, 0x02, 0x8E, 0x00]);
        out.clear();
        encode_disconnect_v5(&mut out, 0x82, Some("why"));
        let v5::Packet::Disconnect(d) = decode_back(&out) else {
            panic!("not a DISCONNECT")
        };
        assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError);
        assert_eq!(d.reason_string.as_deref(), Some("why"));
        out.clear();
        let connack = ConnackV5 {
            session_present: true,
            receive_maximum: 100,
            maximum_packet_size: 4096,
            assigned_client_id: Some("given".into()),
            topic_alias_maximum: 8,
            wildcard_subscription_available: true,
            server_keep_alive: Some(30),
            ..ConnackV5::default()
        };
        encode_connack_v5(&mut out, &connack).unwrap();
        let v5::Packet::ConnectAck(ack) = decode_back(&out) else {
            panic!("not a CONNACK")
        };
        assert!(ack.session_present);
        assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
        assert_eq!(ack.receive_max.get(), 100);
        assert_eq!(ack.max_packet_size, Some(4096));
        assert_eq!(ack.assigned_client_id.as_deref(), Some("given"));
        assert_eq!(ack.topic_alias_max, 8);
        assert_eq!(ack.server_keepalive_sec, Some(30));
        assert!(!ack.shared_subscription_available);
        assert!(!ack.subscription_identifiers_available);
    }

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::char::range('\u{1}', '\u{2FF}'), 0..12)
                .prop_map(|c| c.into_iter().collect())
        }

        prop_compose! {
            fn properties()(
                utf8 in any::<bool>(),
                content_type in proptest::option::of(text()),
                response_topic in proptest::option::of(text()),
                correlation in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
                users in proptest::collection::vec((text(), text()), 0..4),
            ) -> Properties {
                Properties {
                    expires_at_ms: None,
                    payload_is_utf8: utf8,
                    content_type,
                    response_topic,
                    correlation_data: correlation.map(Bytes::from),
                    user_properties: users,
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            /// Whatever the properties, the codec a client uses reads back
            /// what the node wrote, and the size check agrees with the
            /// bytes written.
            #[test]
            fn any_publish_decodes_back(
                p in properties(),
                expiry in proptest::option::of(1u32..),
                ids in proptest::collection::vec(1u32..=268_435_455, 0..3),
                qos in 0u8..3,
                payload in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let qos = Qos::from_bits(qos).unwrap();
                let v5 = PublishV5 { properties: Some(&p), expiry_secs: expiry, subscription_ids: &ids, topic_alias: None };
                let publish = OutgoingPublish {
                    topic: "t/1",
                    payload: &payload,
                    qos,
                    packet_id: (qos != Qos::AtMostOnce).then_some(7),
                    dup: false,
                    retain: false,
                    v5: Some(v5),
                    max_packet: usize::MAX,
                };
                let mut out = BytesMut::new();
                encode_publish(&mut out, &publish).unwrap();
                prop_assert_eq!(publish_v5_len("t/1", payload.len(), qos, &v5), Some(out.len()));
                let v5::Packet::Publish(got) = decode_back(&out) else {
                    panic!("not a publish")
                };
                prop_assert_eq!(&got.payload[..], &payload[..]);
                let got = got.properties.unwrap_or_default();
                prop_assert_eq!(got.is_utf8_payload, p.payload_is_utf8);
                prop_assert_eq!(got.content_type.as_deref(), p.content_type.as_deref());
                prop_assert_eq!(got.response_topic.as_deref(), p.response_topic.as_deref());
                prop_assert_eq!(got.correlation_data, p.correlation_data);
                prop_assert_eq!(got.message_expiry_interval.map(|n| n.get()), expiry);
                let users: Vec<(String, String)> = got
                    .user_properties
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                prop_assert_eq!(users, p.user_properties);
                let got_ids: Vec<u32> = got.subscription_ids.iter().map(|i| i.get()).collect();
                prop_assert_eq!(got_ids, ids);
            }
        }
    }
}
