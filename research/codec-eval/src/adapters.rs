//! One decode entry point per (crate, protocol version, decode path).
//! Each adapter takes the raw bytes of one (possibly malformed) packet as it
//! would sit at the start of a connection's read buffer and reports what the
//! crate's public decoding API did with it.

use bytes::BytesMut;
use std::fmt::Debug;
use tokio_util::codec::Decoder;

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Decoded a packet (short Debug text).
    Ok(String),
    /// Returned an error (Debug text).
    Err(String),
    /// Asked for more bytes (Ok(None) / NotEnoughBytes / InsufficientBytes / EOF).
    Incomplete,
}

pub type DecFn = fn(&[u8]) -> Outcome;

/// Max packet size given to codecs that take one (0/None = unlimited).
/// The malformed-input table runs with `UNLIMITED`; the fuzz loop with 1 MiB so
/// that "claimed length" inputs do not make the loop reserve 256 MiB each time.
pub static mut MAX_SIZE: usize = 0;
fn max_size() -> usize {
    unsafe { MAX_SIZE }
}

fn short<T: Debug>(p: &T) -> String {
    let s: String = format!("{:?}", p)
        .chars()
        .map(|c| if c.is_control() { '·' } else { c })
        .collect();
    if s.len() > 160 {
        let mut end = 160;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

// ---------------------------------------------------------------- mqtt-proto
// Path A ("stream"): `Packet::decode(&[u8])`, the documented one-call API. It
// runs the async stream decoder over the slice (block_on) and does NOT bound
// reads to the remaining length.
pub fn mp_v3_stream(b: &[u8]) -> Outcome {
    match mqtt_proto::v3::Packet::decode(b) {
        Ok(Some(p)) => Outcome::Ok(short(&p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
pub fn mp_v5_stream(b: &[u8]) -> Outcome {
    match mqtt_proto::v5::Packet::decode(b) {
        Ok(Some(p)) => Outcome::Ok(short(&p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

// Path B ("poll"): `PollPacket`, the path the Akasa broker uses. For packets
// whose total length < 8 KiB it reads exactly remaining_len bytes into a Vec
// and runs `decode_buffer` on that body; larger ones use the stream decoder.
// Driven here with the real PollPacket future over a `&[u8]` reader; an EOF
// from the reader (end of the test input) is reported as "incomplete".
pub fn mp_v3_poll(b: &[u8]) -> Outcome {
    let mut state = mqtt_proto::v3::PollPacketState::default();
    let mut rd: &[u8] = b;
    let fut = mqtt_proto::v3::PollPacket::new(&mut state, &mut rd);
    match futures_lite::future::block_on(fut) {
        Ok((_total, _buf, p)) => Outcome::Ok(short(&p)),
        Err(e) if e.is_eof() => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
pub fn mp_v5_poll(b: &[u8]) -> Outcome {
    let mut state = mqtt_proto::v5::PollPacketState::default();
    let mut rd: &[u8] = b;
    let fut = mqtt_proto::v5::PollPacket::new(&mut state, &mut rd);
    match futures_lite::future::block_on(fut) {
        Ok((_total, _buf, p)) => Outcome::Ok(short(&p)),
        Err(e) if e.is_eof() => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

// --------------------------------------------------------------- rmqtt-codec
pub fn rm_v3(b: &[u8]) -> Outcome {
    let mut c = rmqtt_codec::v3::Codec::new(max_size() as u32);
    let mut buf = BytesMut::from(b);
    match c.decode(&mut buf) {
        Ok(Some((p, _))) => Outcome::Ok(short(&p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
pub fn rm_v5(b: &[u8]) -> Outcome {
    let mut c = rmqtt_codec::v5::Codec::new(max_size() as u32, 0);
    let mut buf = BytesMut::from(b);
    match c.decode(&mut buf) {
        Ok(Some((p, _))) => Outcome::Ok(short(&p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
/// rmqtt's version-detection codec, which a broker runs on the first bytes.
pub fn rm_version(b: &[u8]) -> Outcome {
    let mut c = rmqtt_codec::version::VersionCodec;
    let mut buf = BytesMut::from(b);
    match c.decode(&mut buf) {
        Ok(Some(v)) => Outcome::Ok(short(&v)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

// --------------------------------------------------------------- mqute-codec
fn mq_codec() -> mqute_codec::codec::PacketCodec {
    let m = max_size();
    let lim = if m == 0 { None } else { Some(m) };
    mqute_codec::codec::PacketCodec::new(lim, lim)
}
pub fn mq_v4(b: &[u8]) -> Outcome {
    let mut c = mq_codec();
    let mut buf = BytesMut::from(b);
    match c.decode(&mut buf) {
        Ok(Some(raw)) => match mqute_codec::protocol::v4::Packet::decode(raw) {
            Ok(p) => Outcome::Ok(short(&p)),
            Err(e) => Outcome::Err(short(&e)),
        },
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
pub fn mq_v5(b: &[u8]) -> Outcome {
    let mut c = mq_codec();
    let mut buf = BytesMut::from(b);
    match c.decode(&mut buf) {
        Ok(Some(raw)) => match mqute_codec::protocol::v5::Packet::decode(raw) {
            Ok(p) => Outcome::Ok(short(&p)),
            Err(e) => Outcome::Err(short(&e)),
        },
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

// ------------------------------------------------- mqttbytes 0.6 (reference)
fn mb_max() -> usize {
    let m = max_size();
    if m == 0 {
        usize::MAX
    } else {
        m
    }
}
pub fn mb_v4(b: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(b);
    match mqttbytes::v4::read(&mut buf, mb_max()) {
        Ok(p) => Outcome::Ok(short(&p)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}
pub fn mb_v5(b: &[u8]) -> Outcome {
    let mut buf = BytesMut::from(b);
    match mqttbytes::v5::read(&mut buf, mb_max()) {
        Ok(p) => Outcome::Ok(short(&p)),
        Err(mqttbytes::Error::InsufficientBytes(_)) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

// ------------------------------------------------- mqttrs 0.4.1 (current, 3.1.1)
pub fn mr_v4(b: &[u8]) -> Outcome {
    match mqttrs::decode_slice(b) {
        Ok(Some(p)) => Outcome::Ok(short(&p)),
        Ok(None) => Outcome::Incomplete,
        Err(e) => Outcome::Err(short(&e)),
    }
}

/// (name, version, function)
pub fn all() -> Vec<(&'static str, &'static str, DecFn)> {
    vec![
        ("mqtt-proto 0.4.0 Packet::decode (stream path)", "3.1.1", mp_v3_stream as DecFn),
        ("mqtt-proto 0.4.0 Packet::decode (stream path)", "5.0", mp_v5_stream),
        ("mqtt-proto 0.4.0 PollPacket (Akasa path)", "3.1.1", mp_v3_poll),
        ("mqtt-proto 0.4.0 PollPacket (Akasa path)", "5.0", mp_v5_poll),
        ("rmqtt-codec 0.3.1", "3.1.1", rm_v3),
        ("rmqtt-codec 0.3.1", "5.0", rm_v5),
        ("rmqtt-codec 0.3.1 VersionCodec", "any", rm_version),
        ("mqute-codec 0.4.2", "3.1.1", mq_v4),
        ("mqute-codec 0.4.2", "5.0", mq_v5),
        ("mqttbytes 0.6.0 (reference)", "3.1.1", mb_v4),
        ("mqttbytes 0.6.0 (reference)", "5.0", mb_v5),
        ("mqttrs 0.4.1 (current)", "3.1.1", mr_v4),
    ]
}
