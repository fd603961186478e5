//! The CONNECT reader against valid, invalid and random input.

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
    astramq_shared::varint::encode(&mut out, body.len());
    out.extend_from_slice(body);
    out.to_vec()
}

fn parse_all(bytes: &[u8]) -> Result<ConnectInfo, Reject> {
    match frame_len(bytes, 65536)? {
        Some(len) => parse_connect(&bytes[..len]),
        None => Err(Reject::Malformed("incomplete (test)")),
    }
}

// The rule set itself is tested in `astramq_shared::mqtt_connect`; these
// check that the proxy applies it and maps each refusal.

#[test]
fn a_minimal_3_1_1_connect_gives_its_client_id() {
    let bytes = connect(b"MQTT", 4, 0x02, &[b"sensor-1"]);
    let info = parse_all(&bytes).unwrap();
    assert_eq!(info.client_id, "sensor-1");
    assert!(info.clean_session);
    assert_eq!((info.level, info.keep_alive), (4, 60));
}

#[test]
fn refusals_map_to_the_nodes_answers() {
    // 3.1 and 5.0 are served, as by a node; 5.0 is routed on its client id.
    assert!(parse_all(&connect(b"MQIsdp", 3, 0x02, &[b"old"])).is_ok());
    let mut body = Vec::new();
    body.extend([0, 4]);
    body.extend(b"MQTT");
    body.extend([5, 0x02, 0, 30, 3, 0x21, 0x00, 0x10]);
    body.extend([0, 2]);
    body.extend(b"v5");
    let v5 = parse_all(&frame(0x10, &body)).unwrap();
    assert_eq!((v5.level, v5.client_id.as_str()), (5, "v5"));
    let mut v6 = frame(0x10, &body);
    v6[8] = 6;
    let v6 = parse_all(&v6).unwrap_err();
    assert_eq!(v6, Reject::UnsupportedLevel(6));
    assert_eq!(v6.connack_code(), Some(0x01));
    let empty_id = parse_all(&connect(b"MQTT", 4, 0x00, &[b""])).unwrap_err();
    assert!(matches!(empty_id, Reject::IdentifierRejected(_)));
    assert_eq!(empty_id.connack_code(), Some(0x02));
    let reserved = parse_all(&connect(b"MQTT", 4, 0x03, &[b"c"])).unwrap_err();
    assert!(matches!(reserved, Reject::Malformed(_)));
    assert_eq!(reserved.connack_code(), None);
}

#[test]
fn an_unknown_level_is_unsupported_not_garbage() {
    let bytes = connect(b"MQTT", 6, 0x02, &[b"c"]);
    assert_eq!(parse_all(&bytes), Err(Reject::UnsupportedLevel(6)));
}

/// The inputs that make mqttrs 0.4.1 panic (TECHNOTES) are refused.
#[test]
fn inputs_that_panic_mqttrs_are_refused() {
    let truncated_after_name = [0x10, 0x06, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54];
    let missing_flags = [0x10, 0x07, 0x00, 0x04, 0x4D, 0x51, 0x54, 0x54, 0x04];
    for bytes in [&truncated_after_name[..], &missing_flags[..]] {
        assert!(matches!(parse_all(bytes), Err(Reject::Malformed(_))));
    }
    let publish = [
        0x30, 0x02, 0x00, 0x05, 0x61, 0x62, 0x63, 0x64, 0x65, 0xC0, 0x00,
    ];
    assert_eq!(frame_len(&publish, 100), Err(Reject::NotConnect(0x30)));
}

#[test]
fn framing_waits_for_more_and_refuses_early() {
    let bytes = connect(b"MQTT", 4, 0x02, &[b"client"]);
    for cut in 0..bytes.len() {
        assert_eq!(frame_len(&bytes[..cut], 65536), Ok(None), "cut at {cut}");
    }
    assert_eq!(frame_len(&bytes, 65536), Ok(Some(bytes.len())));
    // Over the limit: refused from the header alone.
    assert_eq!(
        frame_len(&[0x10, 0xFF, 0x7F], 1000),
        Err(Reject::TooLarge(16386))
    );
    assert_eq!(
        frame_len(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF], usize::MAX),
        Err(Reject::Malformed("remaining length longer than 4 bytes"))
    );
    assert_eq!(
        frame_len(b"GET / HTTP/1.1\r\n", 100),
        Err(Reject::NotConnect(b'G'))
    );
}

#[tokio::test]
async fn read_connect_keeps_what_follows_the_connect() {
    let mut input = connect(b"MQTT", 4, 0x02, &[b"pipelined"]);
    let connect_len = input.len();
    input.extend([0xC0, 0x00]); // PINGREQ sent before CONNACK
    let mut reader = &input[..];
    let mut buf = Vec::new();
    let (info, len) = read_connect(&mut reader, &mut buf, 65536, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(info.client_id, "pipelined");
    assert_eq!(len, connect_len);
    assert_eq!(&buf[len..], &[0xC0, 0x00]);
}

#[tokio::test]
async fn read_connect_names_eof_and_silence() {
    let mut buf = Vec::new();
    let mut empty: &[u8] = &[];
    let got = read_connect(&mut empty, &mut buf, 100, Duration::from_secs(1)).await;
    assert_eq!(got, Err(Reject::Closed));

    let mut buf = Vec::new();
    let mut half: &[u8] = &[0x10, 0x10, 0x00];
    let got = read_connect(&mut half, &mut buf, 100, Duration::from_secs(1)).await;
    assert!(matches!(got, Err(Reject::Malformed(_))));

    let (mut silent, _keep_open) = tokio::io::duplex(64);
    let mut buf = Vec::new();
    let got = read_connect(&mut silent, &mut buf, 100, Duration::from_millis(50)).await;
    assert_eq!(got, Err(Reject::Timeout));
}

/// Junk is refused on its first byte while the client keeps the socket
/// open: the reader does not wait for more bytes or for the timeout.
#[tokio::test]
async fn read_connect_refuses_junk_at_once() {
    use tokio::io::AsyncWriteExt;
    for (junk, expected) in [
        (&b"GET / HTTP/1.1\r\n"[..], Reject::NotConnect(b'G')),
        (&[0xFF][..], Reject::NotConnect(0xFF)),
        // A TLS ClientHello starts 0x16: CONNECT's type with reserved flags.
        (
            &[0x16, 0x03, 0x01][..],
            Reject::Malformed("reserved fixed-header flags set"),
        ),
    ] {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(junk).await.unwrap();
        let mut buf = Vec::new();
        let started = std::time::Instant::now();
        let got = read_connect(&mut server, &mut buf, 65536, Duration::from_secs(30)).await;
        assert_eq!(got, Err(expected));
        assert!(started.elapsed() < Duration::from_secs(1));
        drop(client);
    }
}

/// A client that dribbles its CONNECT a byte at a time, each byte well
/// inside any idle timer, is still cut at the deadline: the timeout bounds
/// the whole CONNECT, and bytes arriving do not extend it.
#[tokio::test]
async fn a_dribbled_connect_is_cut_at_the_deadline() {
    use tokio::io::AsyncWriteExt;
    let connect = connect(b"MQTT", 4, 0x02, &[b"slowloris-client-id"]);
    let (mut client, mut server) = tokio::io::duplex(64);
    let dribble = tokio::spawn(async move {
        for byte in connect {
            if client.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
    });
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let got = read_connect(&mut server, &mut buf, 65536, Duration::from_millis(600)).await;
    assert_eq!(got, Err(Reject::Timeout));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "cut after {took:?}"
    );
    // About six of its 30-odd bytes had arrived: it was still sending.
    assert!((2..20).contains(&buf.len()), "read {} bytes", buf.len());
    dribble.abort();
}

/// What a slow or silent client makes the reader hold is about what it
/// sent, not a whole read chunk.
#[tokio::test]
async fn the_buffer_grows_with_what_arrived() {
    use tokio::io::AsyncWriteExt;
    let (mut client, mut server) = tokio::io::duplex(64);
    client.write_all(&[0x10, 0x7F, 0x00]).await.unwrap();
    let mut buf = Vec::new();
    let got = read_connect(&mut server, &mut buf, 65536, Duration::from_millis(50)).await;
    assert_eq!(got, Err(Reject::Timeout));
    assert_eq!(buf.len(), 3);
    assert!(buf.capacity() <= 512, "capacity {}", buf.capacity());

    // A large CONNECT still arrives whole, in chunks.
    let id = vec![b'x'; 20_000];
    let mut input = connect(b"MQTT", 4, 0x02, &[&id]);
    let total = input.len();
    input.extend([0xC0, 0x00]);
    let mut reader = &input[..];
    let mut buf = Vec::new();
    let (info, len) = read_connect(&mut reader, &mut buf, 65536, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!((info.client_id.len(), len), (20_000, total));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Random bytes never panic the reader, whatever the limit.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
        if let Ok(Some(len)) = frame_len(&bytes, max) {
            prop_assert!(len <= bytes.len() && len <= max);
            let _ = parse_connect(&bytes[..len]);
        }
        let _ = parse_connect(&bytes);
    }

    /// Random bodies behind a valid CONNECT header never panic either
    /// (this reaches the field parsers far more often than pure noise).
    #[test]
    fn random_connect_bodies_never_panic(level in 3u8..6, flags in any::<u8>(), tail in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags, 0, 10];
        body.extend(tail);
        let _ = parse_all(&frame(0x10, &body));
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
        let info = parse_all(&connect(b"MQTT", 4, flags, &fields)).unwrap();
        prop_assert_eq!(info.client_id, id);
        prop_assert_eq!(info.username, user);
    }
}
