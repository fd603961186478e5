//! Hand-built wire bytes: the malformed cases of the brief, the
//! forbidden-by-spec cases, and a corpus of valid packets of every type
//! (3.1.1: 14 types, 5.0: 15 types) used as fuzz seeds.

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02X}", x)).collect::<Vec<_>>().join(" ")
}

pub fn unhex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect()
}

pub fn var_int(mut n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
    out
}

pub fn frame(ctrl: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ctrl];
    v.extend(var_int(body.len()));
    v.extend_from_slice(body);
    v
}

fn s(x: &str) -> Vec<u8> {
    bin(x.as_bytes())
}
fn bin(x: &[u8]) -> Vec<u8> {
    let mut v = (x.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(x);
    v
}
fn props(p: &[u8]) -> Vec<u8> {
    let mut v = var_int(p.len());
    v.extend_from_slice(p);
    v
}
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub struct Case {
    pub id: &'static str,
    pub what: &'static str,
    pub bytes: Vec<u8>,
}

/// Malformed inputs from the brief. Each is fed to the 3.1.1 and the 5.0
/// decoder of every crate; the cases marked 5.0-only are meaningful only there.
pub fn malformed() -> Vec<Case> {
    vec![
        Case { id: "M1", what: "CONNECT truncated after protocol name", bytes: unhex("10 06 00 04 4D 51 54 54") },
        Case { id: "M1+", what: "M1 followed by a PINGREQ (C0 00)", bytes: unhex("10 06 00 04 4D 51 54 54 C0 00") },
        Case { id: "M2", what: "CONNECT missing flags/keep-alive", bytes: unhex("10 07 00 04 4D 51 54 54 04") },
        Case { id: "M2+", what: "M2 followed by a PINGREQ (C0 00)", bytes: unhex("10 07 00 04 4D 51 54 54 04 C0 00") },
        Case { id: "M2v5", what: "M2 with level 5", bytes: unhex("10 07 00 04 4D 51 54 54 05") },
        Case { id: "M3", what: "PUBLISH topic length runs past remaining length (then PINGREQ)", bytes: unhex("30 02 00 05 61 62 63 64 65 C0 00") },
        Case { id: "M4", what: "SUBSCRIBE last filter has no QoS byte", bytes: unhex("82 05 00 01 00 01 61") },
        Case { id: "M4v5", what: "5.0 SUBSCRIBE (with empty property length) last filter has no options byte", bytes: unhex("82 06 00 01 00 00 01 61") },
        Case { id: "M5", what: "remaining length with 5 continuation bytes", bytes: unhex("10 FF FF FF FF 7F") },
        Case { id: "M6", what: "5.0 CONNECT property length 0x20 > packet", bytes: unhex("10 0D 00 04 4D 51 54 54 05 02 00 3C 20 00 00") },
        Case { id: "M7", what: "5.0 PUBLISH with two payload-format-indicator properties", bytes: unhex("30 0C 00 03 61 2F 62 04 01 01 01 01 68 69") },
        Case { id: "M8", what: "5.0 PUBLISH user property key is invalid UTF-8 (FF)", bytes: unhex("30 0F 00 03 61 2F 62 07 26 00 01 FF 00 01 76 68 69") },
        Case { id: "M9", what: "header claims 268,435,455 bytes, nothing follows", bytes: unhex("30 FF FF FF 7F") },
        Case { id: "M9b", what: "PUBLISH QoS2 header claims 268,424,189 bytes; topic 'x' and packet id follow, then nothing", bytes: unhex("34 FD A7 FF 7F 00 01 78 12 34") },
        Case { id: "M10", what: "PUBLISH QoS 3 (both QoS bits)", bytes: unhex("36 07 00 03 61 2F 62 00 01") },
        Case { id: "M11", what: "PUBLISH QoS1 packet id 0 (3.1.1 layout)", bytes: unhex("32 07 00 03 61 2F 62 00 00") },
        Case { id: "M12", what: "5.0 CONNECT with two session-expiry properties", bytes: unhex("10 19 00 04 4D 51 54 54 05 02 00 3C 0A 11 00 00 00 01 11 00 00 00 02 00 02 63 31") },
        Case { id: "M13", what: "5.0 PUBLISH with a CONNECT-only property (0x11 session expiry)", bytes: unhex("30 0D 00 03 61 2F 62 05 11 00 00 00 01 68 69") },
    ]
}

/// Spec-forbidden but well-framed inputs (check: does the decoder accept them?)
pub fn forbidden() -> Vec<(Case, &'static str)> {
    vec![
        (Case { id: "F1", what: "SUBSCRIBE with no filters", bytes: unhex("82 02 00 01") }, "3.1.1"),
        (Case { id: "F1", what: "SUBSCRIBE with no filters", bytes: unhex("82 03 00 01 00") }, "5.0"),
        (Case { id: "F2", what: "CONNECT reserved flag (bit 0) set", bytes: unhex("10 0E 00 04 4D 51 54 54 04 03 00 3C 00 02 63 31") }, "3.1.1"),
        (Case { id: "F2", what: "CONNECT reserved flag (bit 0) set", bytes: unhex("10 0F 00 04 4D 51 54 54 05 03 00 3C 00 00 02 63 31") }, "5.0"),
        (Case { id: "F3", what: "will QoS 1 without will flag", bytes: unhex("10 0E 00 04 4D 51 54 54 04 0A 00 3C 00 02 63 31") }, "3.1.1"),
        (Case { id: "F3", what: "will QoS 1 without will flag", bytes: unhex("10 0F 00 04 4D 51 54 54 05 0A 00 3C 00 00 02 63 31") }, "5.0"),
        (Case { id: "F4", what: "password flag without username flag (3.1.1 only)", bytes: unhex("10 12 00 04 4D 51 54 54 04 42 00 3C 00 02 63 31 00 02 70 77") }, "3.1.1"),
        (Case { id: "F5", what: "PUBLISH topic with wildcard 'a/#'", bytes: unhex("30 07 00 03 61 2F 23 68 69") }, "3.1.1"),
        (Case { id: "F5", what: "PUBLISH topic with wildcard 'a/#'", bytes: unhex("30 08 00 03 61 2F 23 00 68 69") }, "5.0"),
        (Case { id: "F6", what: "CONNECT with trailing garbage after client id", bytes: unhex("10 10 00 04 4D 51 54 54 04 02 00 3C 00 02 63 31 AA BB") }, "3.1.1"),
        (Case { id: "F6", what: "CONNECT with trailing garbage after client id", bytes: unhex("10 11 00 04 4D 51 54 54 05 02 00 3C 00 00 02 63 31 AA BB") }, "5.0"),
        (Case { id: "F7", what: "UNSUBSCRIBE with no filters", bytes: unhex("A2 02 00 01") }, "3.1.1"),
        (Case { id: "F7", what: "UNSUBSCRIBE with no filters", bytes: unhex("A2 03 00 01 00") }, "5.0"),
        (Case { id: "F8", what: "SUBSCRIBE QoS byte 3", bytes: unhex("82 06 00 01 00 01 61 03") }, "3.1.1"),
        (Case { id: "F8", what: "SUBSCRIBE options with reserved bits 0xC0 set", bytes: unhex("82 07 00 01 00 00 01 61 C1") }, "5.0"),
        (Case { id: "F9", what: "PUBLISH topic with U+0000", bytes: unhex("30 07 00 03 61 00 62 68 69") }, "3.1.1"),
        (Case { id: "F9", what: "PUBLISH topic with U+0000", bytes: unhex("30 08 00 03 61 00 62 00 68 69") }, "5.0"),
        (Case { id: "F10", what: "PUBLISH payload-format=1 but payload not UTF-8", bytes: unhex("30 0A 00 03 61 2F 62 02 01 01 FF FE") }, "5.0"),
        (Case { id: "F11", what: "PUBLISH topic alias 0", bytes: unhex("30 0B 00 03 61 2F 62 03 23 00 00 68 69") }, "5.0"),
        (Case { id: "F12", what: "CONNECT receive-maximum 0", bytes: unhex("10 12 00 04 4D 51 54 54 05 02 00 3C 03 21 00 00 00 02 63 31") }, "5.0"),
        (Case { id: "F13", what: "PUBACK reason code 0x8E (valid only in DISCONNECT)", bytes: unhex("40 03 00 01 8E") }, "5.0"),
        (Case { id: "F14", what: "PUBLISH from client carrying a subscription identifier (MQTT-3.3.4-6)", bytes: unhex("30 09 00 03 61 2F 62 02 0B 01 68") }, "5.0"),
        (Case { id: "F15", what: "SUBSCRIBE to a shared subscription with No Local set (MQTT-3.8.3-4)", bytes: unhex("82 11 00 01 00 00 0B 24 73 68 61 72 65 2F 67 2F 74 6F 05") }, "5.0"),
    ]
}

// ------------------------------------------------------------ valid corpora
pub fn valid_v3() -> Vec<Vec<u8>> {
    let connect_full = cat(&[
        &s("MQTT"), &[4u8, 0b1110_1110], &60u16.to_be_bytes(), &s("client-1"),
        &s("will/topic"), &bin(b"bye"), &s("user"), &bin(b"pass"),
    ]);
    vec![
        frame(0x10, &connect_full),
        frame(0x10, &cat(&[&s("MQTT"), &[4u8, 0x02], &30u16.to_be_bytes(), &s("c")])),
        frame(0x20, &[0x01, 0x00]),
        frame(0x30, &cat(&[&s("a/b"), b"hello"])),
        frame(0x3B, &cat(&[&s("sensors/device-01/tx"), &[0, 7], &[0x55; 20]])),
        frame(0x34, &cat(&[&s("x"), &[0x12, 0x34]])),
        frame(0x40, &[0, 1]),
        frame(0x50, &[0, 2]),
        frame(0x62, &[0, 3]),
        frame(0x70, &[0, 4]),
        frame(0x82, &cat(&[&[0, 5], &s("a/+"), &[1], &s("#"), &[2], &s("$share/g/x"), &[0]])),
        frame(0x90, &[0, 5, 0x00, 0x01, 0x80]),
        frame(0xA2, &cat(&[&[0, 6], &s("a/+"), &s("b")])),
        frame(0xB0, &[0, 6]),
        vec![0xC0, 0],
        vec![0xD0, 0],
        vec![0xE0, 0],
    ]
}

pub fn valid_v5() -> Vec<Vec<u8>> {
    let user = cat(&[&[0x26u8], &s("k"), &s("v")]);
    let connect_props = cat(&[
        &[0x11u8, 0, 0, 0x0E, 0x10], &[0x21, 0, 10], &[0x27, 0, 1, 0, 0], &[0x22, 0, 5],
        &[0x19, 1], &[0x17, 0], &user, &cat(&[&[0x15u8], &s("SCRAM")]), &cat(&[&[0x16u8], &bin(b"dd")]),
    ]);
    let will_props = cat(&[&[0x18u8, 0, 0, 0, 5], &[0x01, 1], &[0x02, 0, 0, 0, 9],
        &cat(&[&[0x03u8], &s("text/plain")]), &cat(&[&[0x08u8], &s("resp/t")]),
        &cat(&[&[0x09u8], &bin(b"cd")]), &user]);
    let connect_full = cat(&[
        &s("MQTT"), &[5u8, 0b1110_1110], &60u16.to_be_bytes(), &props(&connect_props), &s("client-1"),
        &props(&will_props), &s("will/topic"), &bin(b"bye"), &s("user"), &bin(b"pass"),
    ]);
    let connack_props = cat(&[
        &[0x11u8, 0, 0, 0, 30], &[0x21, 0, 20], &[0x24, 1], &[0x25, 1], &[0x27, 0, 0, 16, 0],
        &cat(&[&[0x12u8], &s("assigned")]), &[0x22, 0, 8], &cat(&[&[0x1Fu8], &s("reason")]), &user,
        &[0x28, 1], &[0x29, 1], &[0x2A, 1], &[0x13, 0, 30], &cat(&[&[0x1Au8], &s("info")]),
        &cat(&[&[0x1Cu8], &s("other")]), &cat(&[&[0x15u8], &s("SCRAM")]), &cat(&[&[0x16u8], &bin(b"x")]),
    ]);
    let pub_props = cat(&[&[0x01u8, 1], &[0x02, 0, 0, 0x0E, 0x10], &[0x23, 0, 3],
        &cat(&[&[0x08u8], &s("r/t")]), &cat(&[&[0x09u8], &bin(b"c")]), &user, &[0x0B, 0x81, 0x01],
        &cat(&[&[0x03u8], &s("text/plain")])]);
    let ack_props = cat(&[&cat(&[&[0x1Fu8], &s("why")]), &user]);
    let sub_props = cat(&[&[0x0Bu8, 7], &user]);
    let disc_props = cat(&[&[0x11u8, 0, 0, 0, 0], &cat(&[&[0x1Fu8], &s("bye")]), &user,
        &cat(&[&[0x1Cu8], &s("srv")])]);
    let auth_props = cat(&[&cat(&[&[0x15u8], &s("SCRAM")]), &cat(&[&[0x16u8], &bin(b"dd")]),
        &cat(&[&[0x1Fu8], &s("r")]), &user]);
    vec![
        frame(0x10, &connect_full),
        frame(0x10, &cat(&[&s("MQTT"), &[5u8, 0x02], &30u16.to_be_bytes(), &[0], &s("c")])),
        frame(0x20, &cat(&[&[0x01u8, 0x00], &props(&connack_props)])),
        frame(0x20, &[0x00, 0x87, 0x00]),
        frame(0x30, &cat(&[&s("a/b"), &[0], b"hello"])),
        frame(0x3B, &cat(&[&s("sensors/device-01/tx"), &[0, 7], &props(&pub_props), &[0x55; 20]])),
        frame(0x34, &cat(&[&s(""), &[0x12, 0x34], &props(&[0x23, 0, 3]), b"p"])),
        frame(0x40, &[0, 1]),
        frame(0x40, &cat(&[&[0u8, 1, 0x10], &props(&ack_props)])),
        frame(0x50, &cat(&[&[0u8, 2, 0x80], &props(&ack_props)])),
        frame(0x62, &cat(&[&[0u8, 3, 0x92], &props(&ack_props)])),
        frame(0x70, &cat(&[&[0u8, 4, 0x00], &props(&ack_props)])),
        frame(0x82, &cat(&[&[0u8, 5], &props(&sub_props), &s("a/+"), &[0b0010_1101], &s("$share/g/#"), &[2]])),
        frame(0x90, &cat(&[&[0u8, 5], &props(&ack_props), &[0x00, 0x01, 0x02, 0x80, 0x9E]])),
        frame(0xA2, &cat(&[&[0u8, 6], &props(&user), &s("a/+"), &s("b")])),
        frame(0xB0, &cat(&[&[0u8, 6], &props(&ack_props), &[0x00, 0x11]])),
        vec![0xC0, 0],
        vec![0xD0, 0],
        vec![0xE0, 0],
        frame(0xE0, &cat(&[&[0x04u8], &props(&disc_props)])),
        vec![0xF0, 0],
        frame(0xF0, &cat(&[&[0x18u8], &props(&auth_props)])),
    ]
}

/// Benchmark packets: PUBLISH QoS 1, 20-byte topic, packet id 1, 64-byte payload.
pub const TOPIC: &str = "sensors/device-01/tx";
pub const PAYLOAD: [u8; 64] = [b'x'; 64];
pub fn bench_v3() -> Vec<u8> {
    frame(0x32, &cat(&[&s(TOPIC), &[0, 1], &PAYLOAD]))
}
/// 5.0 adds two properties: message expiry interval 3600 and one user property
/// ("key1" = "value1").
pub fn bench_v5() -> Vec<u8> {
    let p = cat(&[&[0x02u8, 0, 0, 0x0E, 0x10], &cat(&[&[0x26u8], &s("key1"), &s("value1")])]);
    frame(0x32, &cat(&[&s(TOPIC), &[0, 1], &props(&p), &PAYLOAD]))
}
