//! The decode path (shared CONNECT rules, wire checks, rmqtt-codec) on
//! known inputs, 3.1.1 and 5.0.

use std::num::{NonZeroU16, NonZeroU32};

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::{v3, v5};
use tokio_util::codec::{Decoder, Encoder};

use super::*;
use crate::message::Qos;
use crate::protocol::frame::parse_header;
use crate::protocol::ProtocolError;

fn first(raw: &[u8]) -> Result<Box<ConnectPacket>, ProtocolError> {
    let mut buf = BytesMut::from(raw);
    let header = parse_header(&buf, usize::MAX)?.expect("complete");
    decode_first(&header, &mut buf)
}

fn later(version: Version, raw: &[u8]) -> Result<Inbound, ProtocolError> {
    let mut buf = BytesMut::from(raw);
    let header = parse_header(&buf, usize::MAX)?.expect("complete");
    let packet = decode(version, &header, &mut buf);
    if packet.is_ok() {
        assert!(buf.is_empty(), "the whole packet was taken");
    }
    packet
}

/// Encodes a 5.0 packet with the codec's own encoder.
fn v5_bytes(packet: v5::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    v5::Codec::new(0, 0).encode(packet, &mut out).unwrap();
    out.to_vec()
}

const CONNECT_311: [u8; 14] = [
    0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
];

#[test]
fn decodes_publish_sharing_the_buffer() {
    let raw = [0x33, 0x07, 0x00, 0x01, b't', 0x00, 0x09, b'h', b'i'];
    let mut buf = BytesMut::from(&raw[..]);
    let start = buf.as_ptr() as usize;
    let header = parse_header(&buf, usize::MAX).unwrap().unwrap();
    let Inbound::Publish(p) = decode(Version::Mqtt311, &header, &mut buf).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(p.qos, Qos::AtLeastOnce);
    assert!(p.retain);
    assert_eq!(p.packet_id, Some(9));
    assert_eq!(&p.payload[..], b"hi");
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload not copied");
    assert!(p.properties.is_none());
}

#[test]
fn one_packet_is_taken_and_the_next_stays() {
    let mut buf = BytesMut::from(&[0x30, 0x03, 0x00, 0x01, b't', 0xC0, 0x00][..]);
    let header = parse_header(&buf, usize::MAX).unwrap().unwrap();
    assert!(matches!(
        decode(Version::Mqtt311, &header, &mut buf),
        Ok(Inbound::Publish(_))
    ));
    assert_eq!(&buf[..], &[0xC0, 0x00]);
}

#[test]
fn decodes_connect_with_will() {
    let mut raw = vec![
        0x10,
        0x17,
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0b0010_1110,
        0,
        30,
        0,
        1,
        b'c',
        0,
        1,
        b'w',
        0,
        3,
        b'b',
        b'y',
        b'e',
        0,
        0,
    ];
    // Trailing two bytes make the length wrong: must be refused.
    assert!(first(&raw).is_err());
    raw.truncate(23);
    raw[1] = 0x15;
    let c = first(&raw).unwrap();
    assert_eq!(c.version, Version::Mqtt311);
    let will = c.will.clone().unwrap();
    assert_eq!(will.topic, "w");
    assert_eq!(will.qos, Qos::AtLeastOnce);
    assert!(will.retain);
    assert_eq!(&will.payload[..], b"bye");
    assert_eq!(c.keep_alive, 30);
    assert!(c.v5.is_none());
}

#[test]
fn mqtt5_connect_is_served() {
    // Level 5, clean start, keep-alive 60, no properties, empty client id
    // (5.0 lets the server assign one).
    let raw = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60, 0, 0, 0,
    ];
    let c = first(&raw).unwrap();
    assert_eq!(c.version, Version::Mqtt5);
    assert!(c.clean_session);
    assert_eq!(c.client_id, "");
    assert_eq!(c.v5.as_ref().map(|v5| v5.session_expiry_interval), Some(0));
    // Level 6 is not served.
    let mut raw6 = raw;
    raw6[8] = 6;
    assert!(matches!(
        first(&raw6),
        Err(ProtocolError::UnsupportedProtocol { level: 6, .. })
    ));
}

#[test]
fn the_shared_rules_decide_the_connect_answers() {
    // Empty client id without a clean session: CONNACK 0x02.
    let raw = [
        0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x00, 0, 60, 0, 0,
    ];
    assert!(matches!(
        first(&raw),
        Err(ProtocolError::IdentifierRejected(_))
    ));
    // Password without a user name (the codec alone accepts it).
    let raw = [
        0x10, 0x10, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x42, 0, 60, 0, 0, 0, 2, b'p', b'w',
    ];
    assert!(matches!(first(&raw), Err(ProtocolError::Malformed { .. })));
    // The inputs that made mqttrs panic.
    for raw in [
        &[0x10, 0x06, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54][..],
        &[0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04][..],
        &[0x10, 0x02, 0x00, 0x00][..],
    ] {
        assert!(first(raw).is_err(), "{raw:02X?}");
    }
    // A first packet that is not a CONNECT.
    assert!(first(&[0xC0, 0x00]).is_err());
    assert_eq!(first(&CONNECT_311).unwrap().client_id, "");
}

#[test]
fn a_second_connect_decodes_as_connect() {
    assert!(matches!(
        later(Version::Mqtt311, &CONNECT_311),
        Ok(Inbound::Connect(_))
    ));
}

/// The rules wire_check and the codec both enforce: the codec refuses each
/// by itself (so wire_check is not the only line for them).
#[test]
fn the_codec_alone_refuses_what_it_claims_to() {
    for raw in [
        &[0x40, 0x02, 0x00, 0x00][..],               // packet id 0
        &[0x82, 0x02, 0x00, 0x01][..],               // SUBSCRIBE, no filter
        &[0xA2, 0x02, 0x00, 0x01][..],               // UNSUBSCRIBE, no filter
        &[0x30, 0x04, 0x00, 0x02, 0xC3, 0x28][..],   // invalid UTF-8 topic
        &[0x36, 0x05, 0x00, 0x01, b't', 0x00, 0x01], // QoS 3
        &[0x41, 0x02, 0x00, 0x01][..],               // PUBACK reserved flags
        &[0x30, 0x02, 0x00, 0x05][..],               // topic past the end
        &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a'], // filter without QoS
    ] {
        let mut buf = BytesMut::from(raw);
        let got = v3::Codec::new(1024).decode(&mut buf);
        assert!(got.is_err(), "codec accepted {raw:02X?}: {got:?}");
        assert!(later(Version::Mqtt311, raw).is_err());
    }
}

/// docs/mqtt5-codec.md "Conditions": what the codec accepts and the node
/// must refuse itself, one case each.
#[test]
fn the_conditions_the_node_enforces() {
    // 3.1.1 SUBSCRIBE option byte with a reserved bit: the codec masks it.
    let raw = [0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'a', 0x04];
    assert!(v3::Codec::new(1024)
        .decode(&mut BytesMut::from(&raw[..]))
        .is_ok());
    assert!(later(Version::Mqtt311, &raw).is_err());
    // U+0000 in a 5.0 PUBLISH topic.
    let raw = [0x30, 0x05, 0x00, 0x02, b'a', 0x00, 0x00];
    assert!(v5::Codec::new(1024, 0)
        .decode(&mut BytesMut::from(&raw[..]))
        .is_ok());
    assert!(later(Version::Mqtt5, &raw).is_err());
    // A 5.0 PUBLISH from a client with a subscription identifier.
    let raw = v5_bytes(v5::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
        dup: false,
        retain: false,
        qos: rmqtt_codec::types::QoS::AtMostOnce,
        topic: ByteString::from_static("a"),
        packet_id: None,
        payload: Bytes::from_static(b"x"),
        properties: Some(PublishProperties {
            subscription_ids: vec![NonZeroU32::new(3).unwrap()],
            ..Default::default()
        }),
    })));
    assert!(later(Version::Mqtt5, &raw).is_err());
    // 5.0 No Local on a shared subscription.
    let raw = v5_bytes(v5::Packet::Subscribe(v5::Subscribe {
        packet_id: NonZeroU16::new(1).unwrap(),
        id: None,
        user_properties: Vec::new(),
        topic_filters: vec![(
            ByteString::from_static("$share/g/a"),
            SubscriptionOptions {
                no_local: true,
                ..Default::default()
            },
        )],
    }));
    assert!(later(Version::Mqtt5, &raw).is_err());
    // 5.0 will QoS without the will flag: the shared rules (tested there
    // for every level) refuse it before the codec sees it.
    let raw = [
        0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x0A, 0, 60, 0, 0, 0,
    ];
    assert!(astramq_shared::mqtt_connect::parse_connect_for(&raw, &[5]).is_err());
}

#[test]
fn v5_packets_decode_with_their_properties() {
    let publish = v5_bytes(v5::Packet::Publish(Box::new(rmqtt_codec::types::Publish {
        dup: false,
        retain: true,
        qos: rmqtt_codec::types::QoS::AtLeastOnce,
        topic: ByteString::from_static("sensors/1"),
        packet_id: NonZeroU16::new(7),
        payload: Bytes::from_static(b"21.5"),
        properties: Some(PublishProperties {
            message_expiry_interval: NonZeroU32::new(3600),
            content_type: Some(ByteString::from_static("text/plain")),
            user_properties: vec![("k".into(), "v".into())],
            is_utf8_payload: true,
            ..Default::default()
        }),
    })));
    let Inbound::Publish(p) = later(Version::Mqtt5, &publish).unwrap() else {
        panic!("not a publish")
    };
    assert_eq!(
        (p.topic.as_str(), p.packet_id, p.retain),
        ("sensors/1", Some(7), true)
    );
    let props = p.properties.unwrap();
    assert_eq!(props.message_expiry_interval, NonZeroU32::new(3600));
    assert!(props.is_utf8_payload);
    assert_eq!(props.user_properties.len(), 1);

    let puback = v5_bytes(v5::Packet::PublishAck(v5::PublishAck {
        packet_id: NonZeroU16::new(7).unwrap(),
        reason_code: v5::PublishAckReason::NoMatchingSubscribers,
        properties: Vec::new(),
        reason_string: None,
    }));
    assert_eq!(
        later(Version::Mqtt5, &puback).unwrap(),
        Inbound::Puback(AckPacket {
            packet_id: 7,
            reason_code: 0x10
        })
    );
    // A 5.0 ack may omit its reason code (then 0x00).
    assert_eq!(
        later(Version::Mqtt5, &[0x62, 0x02, 0x00, 0x05]).unwrap(),
        Inbound::Pubrel(AckPacket::success(5))
    );

    let subscribe = v5_bytes(v5::Packet::Subscribe(v5::Subscribe {
        packet_id: NonZeroU16::new(2).unwrap(),
        id: NonZeroU32::new(9),
        user_properties: Vec::new(),
        topic_filters: vec![(
            ByteString::from_static("a/+"),
            SubscriptionOptions {
                qos: rmqtt_codec::types::QoS::ExactlyOnce,
                no_local: true,
                retain_as_published: true,
                retain_handling: RetainHandling::AtSubscribeNew,
            },
        )],
    }));
    let Inbound::Subscribe {
        packet_id,
        filters,
        v5,
    } = later(Version::Mqtt5, &subscribe).unwrap()
    else {
        panic!("not a subscribe")
    };
    assert_eq!(packet_id, 2);
    assert_eq!(filters, vec![("a/+".to_owned(), Qos::ExactlyOnce)]);
    let v5 = v5.unwrap();
    assert_eq!(v5.subscription_id, NonZeroU32::new(9));
    assert!(v5.options[0].no_local && v5.options[0].retain_as_published);

    // DISCONNECT with reason 0x04 (publish the will) and a bare one.
    assert_eq!(
        later(Version::Mqtt5, &[0xE0, 0x02, 0x04, 0x00]).unwrap(),
        Inbound::Disconnect(DisconnectPacket {
            reason_code: 0x04,
            session_expiry_interval: None
        })
    );
    assert_eq!(
        later(Version::Mqtt5, &[0xE0, 0x00]).unwrap(),
        Inbound::Disconnect(DisconnectPacket::default())
    );
    assert!(matches!(
        later(Version::Mqtt5, &[0xF0, 0x00]),
        Ok(Inbound::Auth(_))
    ));
    assert_eq!(
        later(Version::Mqtt5, &[0xC0, 0x00]).unwrap(),
        Inbound::Pingreq
    );
}

#[test]
fn a_v5_connect_decodes_with_its_properties() {
    // Level 5 is not accepted by the shared rules yet; decode it the way
    // the node will once it is: the codec directly.
    let connect = v5_bytes(v5::Packet::Connect(Box::new(v5::Connect {
        clean_start: true,
        keep_alive: 30,
        session_expiry_interval_secs: 60,
        receive_max: NonZeroU16::new(10),
        max_packet_size: NonZeroU32::new(4096),
        topic_alias_max: 5,
        client_id: ByteString::from_static("c5"),
        ..Default::default()
    })));
    let mut buf = BytesMut::from(&connect[..]);
    let (packet, _) = v5::Codec::new(1024, 0).decode(&mut buf).unwrap().unwrap();
    let Ok(Inbound::Connect(c)) = super::decode::from_v5(packet) else {
        panic!("not a connect")
    };
    assert_eq!(
        (c.version, c.client_id.as_str(), c.keep_alive),
        (Version::Mqtt5, "c5", 30)
    );
    let v5 = c.v5.unwrap();
    assert_eq!(v5.session_expiry_interval, 60);
    assert_eq!(v5.receive_maximum, NonZeroU16::new(10));
    assert_eq!(v5.maximum_packet_size, NonZeroU32::new(4096));
    assert_eq!(v5.topic_alias_maximum, 5);
}

#[test]
fn v5_server_packets_from_a_client_are_refused() {
    for raw in [
        &[0x20, 0x03, 0x00, 0x00, 0x00][..],
        &[0xD0, 0x00],
        &[0x90, 0x04, 0x00, 0x01, 0x00, 0x00],
    ] {
        assert!(later(Version::Mqtt5, raw).is_err(), "{raw:02X?}");
    }
    // Reserved fixed-header flags.
    assert!(later(Version::Mqtt5, &[0xC1, 0x00]).is_err());
}

#[test]
fn protocol_errors_are_told_apart_from_malformed_packets() {
    let code = |raw: &[u8]| match later(Version::Mqtt5, raw) {
        Err(ProtocolError::Violation { code, .. }) => Some(code),
        Err(_) => None,
        Ok(packet) => panic!("accepted: {packet:?}"),
    };
    // PUBLISH QoS 0 "t", properties: Topic Alias 0.
    assert_eq!(code(&[0x30, 0x07, 0, 1, b't', 3, 0x23, 0, 0]), Some(0x94));
    // PUBLISH QoS 0 "t", properties: Subscription Identifier 1.
    assert_eq!(code(&[0x30, 0x06, 0, 1, b't', 2, 0x0B, 1]), Some(0x82));
    // SUBSCRIBE id 1, properties: Subscription Identifier 0, filter "t" QoS 0.
    assert_eq!(
        code(&[0x82, 0x09, 0, 1, 2, 0x0B, 0, 0, 1, b't', 0]),
        Some(0x82)
    );
    // A truncated property block is malformed, not a protocol error.
    assert_eq!(code(&[0x30, 0x06, 0, 1, b't', 3, 0x23, 0]), None);
}
