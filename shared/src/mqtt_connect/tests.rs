//! The CONNECT rule set against valid, invalid and random input.

use proptest::prelude::*;

use super::*;

/// Encodes a CONNECT from its parts (independently of the parser).
fn connect(name: &[u8], level: u8, flags: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend((name.len() as u16).to_be_bytes());
    body.extend(name);
    body.push(level);
    body.push(flags);
    body.extend(60u16.to_be_bytes());
    for field in payload {
        body.extend((field.len() as u16).to_be_bytes());
        body.extend(*field);
    }
    frame(0x10, &body)
}

/// A packet: first byte, remaining length, body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = bytes::BytesMut::from(&[first][..]);
    crate::varint::encode(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

/// A 5.0 CONNECT: properties (receive maximum 16) before the client id.
fn connect_v5(flags: u8, id: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend([0, 4]);
    body.extend(b"MQTT");
    body.extend([5, flags, 0, 30, 3, 0x21, 0x00, 0x10]);
    body.extend((id.len() as u16).to_be_bytes());
    body.extend(id);
    frame(0x10, &body)
}

#[test]
fn a_minimal_3_1_1_connect_gives_its_client_id() {
    let info = parse_connect(&connect(b"MQTT", 4, 0x02, &[b"sensor-1"])).unwrap();
    assert_eq!(info.client_id, "sensor-1");
    assert_eq!(info.username, None);
    assert!(info.clean_session);
    assert_eq!((info.level, info.keep_alive), (4, 60));
}

#[test]
fn will_username_and_password_are_walked_over() {
    let flags = 0x04 | 0x08 | 0x20 | 0x80 | 0x40;
    let bytes = connect(
        b"MQTT",
        4,
        flags,
        &[b"c", b"will/t", b"bye", b"alice", b"secret"],
    );
    let info = parse_connect(&bytes).unwrap();
    assert_eq!(info.client_id, "c");
    assert_eq!(info.username.as_deref(), Some("alice"));
    assert!(!info.clean_session);
}

#[test]
fn mqtt_3_1_and_5_0_are_accepted() {
    assert!(parse_connect(&connect(b"MQIsdp", 3, 0x02, &[b"old"])).is_ok());
    let v5 = connect_v5(0x02, b"v5");
    let info = parse_connect(&v5).unwrap();
    assert_eq!((info.level, info.client_id.as_str()), (5, "v5"));
    // 5.0 allows an empty id without clean start (the server assigns one).
    assert!(parse_connect(&connect_v5(0x00, b"")).is_ok());
    // A known level that is not accepted is answered 0x01.
    let refused = parse_connect_for(&v5, &[3, 4]).unwrap_err();
    assert_eq!(
        refused,
        ConnectError::UnsupportedLevel {
            name: "MQTT",
            level: 5
        }
    );
    assert_eq!(refused.connack_code(), Some(0x01));
}

#[test]
fn protocol_violations_close_without_an_answer() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (connect(b"MQTT", 4, 0x03, &[b"c"]), "reserved flag"),
        (connect(b"MQTT", 4, 0x18, &[b"c"]), "will QoS without will"),
        (
            connect(b"MQTT", 4, 0x22, &[b"c"]),
            "will retain without will",
        ),
        (connect(b"MQTT", 4, 0x1C, &[b"c", b"t", b"p"]), "will QoS 3"),
        (
            connect(b"MQTT", 4, 0x42, &[b"c", b"pw"]),
            "password without user",
        ),
        (
            connect(b"MQTT", 4, 0x02, &[b"c", b"extra"]),
            "trailing bytes",
        ),
        (connect(b"MQTT", 4, 0x02, &[&[0xC3, 0x28]]), "bad UTF-8 id"),
        (connect(b"MQTT", 4, 0x02, &[b"a\0b"]), "NUL in id"),
        (connect(b"HTTP", 4, 0x02, &[b"c"]), "unknown protocol"),
        (
            connect(b"MQTT", 4, 0x06, &[b"c", b"a/#", b"p"]),
            "wildcard will topic",
        ),
        (
            connect(b"MQTT", 4, 0x06, &[b"c", b"", b"p"]),
            "empty will topic",
        ),
        (vec![0x11, 0x00], "reserved fixed-header flags"),
        (vec![0x10, 0x06, 0, 4, b'M', b'Q', b'T', b'T'], "truncated"),
        (
            vec![0x10, 0x07, 0, 4, b'M', b'Q', b'T', b'T', 4],
            "no flags",
        ),
    ];
    for (bytes, what) in cases {
        let got = parse_connect(&bytes);
        assert!(
            matches!(
                got,
                Err(ConnectError::Malformed(_) | ConnectError::NotConnect(_))
            ),
            "{what}: {got:?}"
        );
        assert_eq!(got.unwrap_err().connack_code(), None, "{what}");
    }
}

#[test]
fn unknown_levels_are_answered_0x01() {
    for (name, level) in [(&b"MQTT"[..], 6), (b"MQTT", 3), (b"MQIsdp", 4)] {
        let got = parse_connect(&connect(name, level, 0x02, &[b"c"])).unwrap_err();
        assert_eq!(got.connack_code(), Some(0x01), "{name:?} {level}");
    }
}

#[test]
fn client_id_rules_are_answered_0x02() {
    for bytes in [
        connect(b"MQTT", 4, 0x00, &[b""]),
        connect(b"MQIsdp", 3, 0x02, &[b""]),
        connect(b"MQIsdp", 3, 0x02, &[&[b'x'; 24]]),
    ] {
        let got = parse_connect(&bytes).unwrap_err();
        assert_eq!(got.connack_code(), Some(0x02), "{got:?}");
    }
    assert!(parse_connect(&connect(b"MQTT", 4, 0x02, &[b""])).is_ok());
    assert!(parse_connect(&connect(b"MQIsdp", 3, 0x02, &[&[b'x'; 23]])).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Random bytes never panic the parser.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_connect_for(&bytes, &[3, 4, 5]);
    }

    /// Random bodies behind a valid CONNECT header never panic either.
    #[test]
    fn random_connect_bodies_never_panic(level in 3u8..6, flags in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 10];
        body.extend(tail);
        let _ = parse_connect_for(&frame(0x10, &body), &[3, 4, 5]);
    }

    /// Every valid 3.1.1 CONNECT parses back to its client id and user.
    #[test]
    fn valid_connects_round_trip(id in "[a-zA-Z0-9/_-]{0,64}", user in proptest::option::of("[a-z]{1,16}")) {
        let mut fields: Vec<&[u8]> = vec![id.as_bytes()];
        let mut flags = 0x02;
        if let Some(user) = &user {
            flags |= 0x80;
            fields.push(user.as_bytes());
        }
        let info = parse_connect(&connect(b"MQTT", 4, flags, &fields)).unwrap();
        prop_assert_eq!(info.client_id, id);
        prop_assert_eq!(info.username, user);
    }
}
