//! The codec's tests: both versions side by side, then what 5.0 adds.

use super::*;

const V311: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

fn parse_all(bytes: &[u8], protocol: Protocol) -> Result<(Incoming<'_>, usize)> {
    Ok(parse(bytes, 1 << 20, protocol)?.expect("a whole packet"))
}

#[test]
fn publish_round_trips_through_the_parser() {
    for protocol in [V311, V5] {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, protocol, b"a/b", 1, 7, &[9u8; 200]);
        let (packet, len) = parse_all(&buf, protocol).unwrap();
        assert_eq!(len, buf.len());
        assert_eq!(
            packet,
            Incoming::Publish {
                qos: 1,
                packet_id: 7,
                topic: b"a/b",
                payload: &[9u8; 200]
            },
            "{protocol:?}"
        );
    }
}

#[test]
fn partial_packets_wait_for_more_bytes() {
    for protocol in [V311, V5] {
        let mut buf = BytesMut::new();
        encode_publish(&mut buf, protocol, b"t", 0, 0, &[1u8; 300]);
        for cut in 0..buf.len() {
            assert!(
                parse(&buf[..cut], 1 << 20, protocol).unwrap().is_none(),
                "cut at {cut}"
            );
        }
    }
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    for protocol in [V311, V5] {
        let bad = |bytes: &[u8], limit| parse(bytes, limit, protocol).is_err();
        assert!(bad(&[0x30, 0x01, 0x00], 1024)); // topic length cut
        assert!(bad(&[0x30, 0x02, 0x00, 0x05], 1024)); // topic past end
        assert!(bad(&[0x40, 0x01, 0x00], 1024)); // PUBACK without id
        assert!(bad(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 1 << 30));
        assert!(bad(&[0x30, 0xFF, 0x7F], 100)); // over the limit
        assert!(bad(&[0xF0, 0x00], 100));
    }
    // 5.0: a property block longer than the packet.
    assert!(parse(&[0x30, 0x05, 0x00, 0x01, b't', 0x09, 0x00], 64, V5).is_err());
    assert!(parse(&[0x90, 0x04, 0x00, 0x01, 0x05, 0x00], 64, V5).is_err());
    assert!(parse(&[0x40, 0x04, 0x00, 0x01, 0x00, 0x03], 64, V5).is_err());
}

#[test]
fn acks_and_connack_parse() {
    let mut buf = BytesMut::new();
    encode_ack(&mut buf, PUBREL, 513);
    for protocol in [V311, V5] {
        assert_eq!(
            parse_all(&buf, protocol).unwrap(),
            (Incoming::PubRel(513), 4)
        );
    }
    assert_eq!(
        parse_all(&[0x20, 0x02, 0x00, 0x05], V311).unwrap(),
        (
            Incoming::ConnAck {
                return_code: 5,
                limits: ServerLimits::default()
            },
            4
        )
    );
    assert_eq!(
        parse_all(&[0x90, 0x04, 0x00, 0x01, 0x01, 0x80], V311)
            .unwrap()
            .0,
        Incoming::SubAck {
            return_codes: &[0x01, 0x80]
        }
    );
}

#[test]
fn v5_connect_and_subscribe_carry_property_blocks() {
    let mut buf = BytesMut::new();
    encode_connect(&mut buf, V5, "c1", 60, true);
    let head = [0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x02, 0, 60];
    assert_eq!(&buf[..], [&head[..], &[0, 0, 2, b'c', b'1']].concat());

    buf.clear();
    encode_connect(&mut buf, V5, "c1", 60, false);
    assert_eq!(buf[1], 20, "remaining length");
    assert_eq!(buf[9], 0x00, "Clean Start off");
    assert_eq!(&buf[12..18], [5, 0x11, 0x00, 0x00, 0x0E, 0x10]);

    buf.clear();
    encode_connect(&mut buf, V311, "c1", 60, true);
    assert_eq!(buf[1], 14);
    assert_eq!(buf[8], 4, "3.1.1 protocol level");
    assert_eq!(&buf[12..], [0, 2, b'c', b'1']);

    buf.clear();
    encode_subscribe(&mut buf, V5, 1, &["a/b".to_string()], 1);
    let bytes = [0x82, 9, 0, 1, 0, 0, 3, b'a', b'/', b'b', 1];
    assert_eq!(&buf[..], bytes);
    buf.clear();
    encode_subscribe(&mut buf, V311, 1, &["a/b".to_string()], 1);
    assert_eq!(&buf[..], [0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1]);
}

#[test]
fn v5_publish_from_the_broker_skips_its_properties() {
    // QoS 1, topic "t", id 9, properties: Message Expiry 60, Subscription
    // Identifier 300 (a two-byte varint); payload "hi".
    let props = [0x02, 0, 0, 0, 60, 0x0B, 0xAC, 0x02];
    let mut bytes = vec![
        0x32,
        (2 + 1 + 2 + 1 + props.len() + 2) as u8,
        0,
        1,
        b't',
        0,
        9,
    ];
    bytes.push(props.len() as u8);
    bytes.extend_from_slice(&props);
    bytes.extend_from_slice(b"hi");
    assert_eq!(
        parse_all(&bytes, V5).unwrap(),
        (
            Incoming::Publish {
                qos: 1,
                packet_id: 9,
                topic: b"t",
                payload: b"hi"
            },
            bytes.len()
        )
    );
    // QoS 0: the block follows the topic.
    let qos0 = [0x30, 0x06, 0, 1, b't', 0, b'h', b'i'];
    let (packet, _) = parse_all(&qos0, V5).unwrap();
    assert!(matches!(packet, Incoming::Publish { payload: b"hi", .. }));
}

#[test]
fn v5_acks_carry_reason_codes_and_failures_are_errors() {
    let ok: [&[u8]; 4] = [
        &[0x40, 0x02, 0x01, 0x02],
        &[0x40, 0x03, 0x01, 0x02, 0x10], // no matching subscribers: still success
        &[0x40, 0x04, 0x01, 0x02, 0x00, 0x00],
        &[
            0x40, 0x0A, 0x01, 0x02, 0x00, 0x06, 0x1F, 0, 3, b'a', b'b', b'c',
        ],
    ];
    for bytes in ok {
        assert_eq!(parse_all(bytes, V5).unwrap().0, Incoming::PubAck(0x0102));
    }
    let refused = parse_all(&[0x40, 0x03, 0x01, 0x02, 0x97], V5).unwrap_err();
    assert!(refused.to_string().contains("quota exceeded"), "{refused}");
    assert!(parse_all(&[0x70, 0x03, 0x00, 0x01, 0x92], V5).is_err());
}

#[test]
fn v5_connack_suback_and_disconnect() {
    let connack = [0x20, 0x06, 0x00, 0x00, 0x03, 0x21, 0x00, 0x0A];
    assert_eq!(
        parse_all(&connack, V5).unwrap().0,
        Incoming::ConnAck {
            return_code: 0,
            limits: ServerLimits {
                receive_maximum: Some(10),
                ..ServerLimits::default()
            }
        }
    );
    let refused = parse_all(&[0x20, 0x03, 0x00, 0x84, 0x00], V5).unwrap().0;
    assert!(matches!(
        refused,
        Incoming::ConnAck {
            return_code: 0x84,
            ..
        }
    ));
    assert!(
        parse_all(&[0x20, 0x02, 0x00, 0x00], V5).is_err(),
        "no property block"
    );
    let old = parse_all(&[0x20, 0x02, 0x00, 0x01], V5).unwrap().0;
    assert!(
        matches!(
            old,
            Incoming::ConnAck {
                return_code: 0x01,
                ..
            }
        ),
        "a 3.1.1 broker's refusal of 5.0"
    );

    let suback = [0x90, 0x09, 0x00, 0x01, 0x04, 0x1F, 0, 1, b'x', 0x01, 0x87];
    assert_eq!(
        parse_all(&suback, V5).unwrap().0,
        Incoming::SubAck {
            return_codes: &[0x01, 0x87]
        }
    );

    let disconnect = parse_all(&[0xE0, 0x02, 0x8E, 0x00], V5).unwrap_err();
    assert!(
        disconnect.to_string().contains("session taken over"),
        "{disconnect}"
    );
    assert!(parse_all(&[0xE0, 0x00], V311).is_err());
}
