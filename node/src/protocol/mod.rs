//! MQTT on the wire: bytes in, packets out, and back.
//!
//! The codec is `rmqtt-codec` 0.3.1 (3.1, 3.1.1 and 5.0; chosen in
//! docs/mqtt5-codec.md). It is bounds checked and did not panic in the
//! evaluation's 215 million fuzz inputs, but it is still not handed raw
//! network bytes:
//!
//! 1. [`frame`] parses the fixed header and remaining length itself and
//!    refuses a packet over the configured maximum *before* buffering it
//!    (the codec is then given the packet's own size as its limit, never
//!    0, which it would take as "unlimited");
//! 2. a CONNECT is checked by the rule set shared with the proxy
//!    ([`astramq_shared::mqtt_connect`]), which also picks the codec by
//!    protocol level; [`wire_check`] walks every other 3.1/3.1.1 packet
//!    for the rules the codec skips (reserved SUBSCRIBE option bits,
//!    U+0000, DUP on QoS 0, ...); 5.0 packets get the fixed-header flag
//!    check before and the codec-skipped 5.0 rules after decoding;
//! 3. [`codec`] splits exactly one packet off the read buffer, decodes it
//!    and turns it into owned [`codec::Inbound`] values whose payloads
//!    share that buffer. 5.0 properties ride in boxed fields that are
//!    `None` on 3.1/3.1.1 connections.
//!
//! What the node sends is written by [`codec`]'s `encode_*` functions, in
//! the connection's version (3.1.1 form, or 5.0 with reason codes and
//! properties; docs/mqtt.md lists what of 5.0 is served).

pub mod codec;
pub mod frame;
pub mod proxy_header;
pub mod wire_check;

pub use codec::{decode, decode_first, Inbound, PublishPacket, Version};
pub use frame::{FrameError, FrameHeader};

/// Why a packet from a client was refused. Every variant closes the
/// offending connection; only [`ProtocolError::UnsupportedProtocol`]
/// (CONNACK 0x01) and [`ProtocolError::IdentifierRejected`] (0x02) are
/// answered first.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The fixed header could not be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The packet's body breaks the wire format.
    #[error("malformed {packet} packet: {reason}")]
    Malformed {
        /// Which packet type was being read.
        packet: &'static str,
        /// What was wrong, for the log.
        reason: &'static str,
    },
    /// A CONNECT for a protocol name/level this node does not speak.
    #[error("unsupported protocol {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name the client sent.
        name: String,
        /// The protocol level the client sent.
        level: u8,
    },
    /// A CONNECT whose client identifier the protocol does not allow
    /// (empty without a clean session, or over 23 bytes in 3.1).
    #[error("client identifier rejected: {0}")]
    IdentifierRejected(&'static str),
    /// A 5.0 packet that is well formed but breaks a rule the standard
    /// names with its own reason code (0x82 protocol error, 0x94 topic
    /// alias invalid) rather than 0x81 (malformed).
    #[error("{packet} breaks the protocol: {reason}")]
    Violation {
        /// Which packet type was being read.
        packet: &'static str,
        /// What was wrong, for the log.
        reason: &'static str,
        /// The 5.0 reason code of the server's DISCONNECT.
        code: u8,
    },
}

/// Random input through the whole inbound path (framing, validation,
/// the shared CONNECT rules, rmqtt-codec for 3.1.1 and 5.0): whatever the
/// bytes, the result is a packet or an error, never a panic.
#[cfg(test)]
mod never_panics {
    use bytes::BytesMut;
    use proptest::prelude::*;

    use super::frame::parse_header;
    use super::{decode, decode_first, Version};

    /// Frames and decodes every packet in `input` until it runs out or
    /// errs, as the connection does: the first packet as a connection's
    /// first, the rest as `version`. Checks that each decode removes
    /// exactly its packet from the buffer.
    fn decode_all(input: &[u8], version: Version) {
        let mut buf = BytesMut::from(input);
        let mut first = true;
        while let Ok(Some(header)) = parse_header(&buf, 1 << 16) {
            if buf.len() < header.packet_len() {
                return;
            }
            let left = buf.len() - header.packet_len();
            let decoded = if first {
                decode_first(&header, &mut buf).map(|_| ())
            } else {
                decode(version, &header, &mut buf).map(|_| ())
            };
            if decoded.is_err() {
                return;
            }
            assert_eq!(
                buf.len(),
                left,
                "a decode took more or less than its packet"
            );
            first = false;
        }
    }

    /// Every version's decoder over the same input, first packet or not.
    fn decode_every_way(input: &[u8]) {
        for version in [Version::Mqtt311, Version::Mqtt5, Version::Mqtt31] {
            decode_all(input, version);
            // As later packets: behind a valid 3.1.1 CONNECT.
            let mut later = vec![
                0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60, 0, 0,
            ];
            later.extend_from_slice(input);
            decode_all(&later, version);
        }
    }

    /// A fixed header of any type and flags, a correct remaining length and
    /// a random body: reaches the codec far more often than raw noise.
    fn framed_packet() -> impl Strategy<Value = Vec<u8>> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(first, body)| {
            let mut packet = bytes::BytesMut::new();
            packet.extend_from_slice(&[first]);
            super::frame::put_remaining_length(&mut packet, body.len());
            packet.extend_from_slice(&body);
            packet.to_vec()
        })
    }

    /// A CONNECT-shaped prefix (any level 3 to 5) followed by random fields.
    fn connect_like() -> impl Strategy<Value = Vec<u8>> {
        (
            3u8..6,
            any::<u8>(),
            proptest::collection::vec(any::<u8>(), 0..40),
        )
            .prop_map(|(level, flags, tail)| {
                let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', level, flags];
                body.extend_from_slice(&tail);
                let mut packet = bytes::BytesMut::new();
                packet.extend_from_slice(&[0x10]);
                super::frame::put_remaining_length(&mut packet, body.len());
                packet.extend_from_slice(&body);
                packet.to_vec()
            })
    }

    /// A 5.0 packet of a type a client sends, with a valid header, a packet
    /// id where one goes, and then a property block of random bytes (with
    /// a correct length about half the time) and a random tail.
    fn v5_packet() -> impl Strategy<Value = Vec<u8>> {
        let first = prop::sample::select(vec![
            0x30u8, 0x32, 0x34, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0xA2, 0xE0, 0xF0,
        ]);
        (
            first,
            proptest::collection::vec(any::<u8>(), 0..24),
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..24),
        )
            .prop_map(|(first, props, fix_len, tail)| {
                let mut body = Vec::new();
                if first >> 4 == 3 {
                    body.extend_from_slice(&[0, 3, b'a', b'/', b'b']);
                }
                if first & 0x06 != 0 || matches!(first >> 4, 4..=10) {
                    body.extend_from_slice(&[0, 1]);
                }
                if matches!(first >> 4, 4..=7 | 14 | 15) {
                    body.push(0x00); // reason code
                }
                if fix_len {
                    body.push(props.len() as u8);
                }
                body.extend_from_slice(&props);
                body.extend_from_slice(&tail);
                let mut packet = bytes::BytesMut::new();
                packet.extend_from_slice(&[first]);
                super::frame::put_remaining_length(&mut packet, body.len());
                packet.extend_from_slice(&body);
                packet.to_vec()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn random_bytes(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_every_way(&input);
        }

        #[test]
        fn random_bodies(packets in proptest::collection::vec(framed_packet(), 1..4)) {
            decode_every_way(&packets.concat());
        }

        #[test]
        fn random_connects(packet in connect_like()) {
            decode_every_way(&packet);
        }

        #[test]
        fn random_v5_packets(packets in proptest::collection::vec(v5_packet(), 1..4)) {
            decode_every_way(&packets.concat());
        }
    }
}
