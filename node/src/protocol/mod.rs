//! MQTT on the wire: bytes in, packets out, and back.
//!
//! The codec is `mqttrs` 0.4.1, which panics or reads past a packet's end
//! on several malformed inputs. So it is never handed raw network bytes:
//!
//! 1. [`frame`] parses the fixed header and remaining length itself and
//!    refuses a packet over the configured maximum *before* buffering it;
//! 2. [`wire_check`] walks exactly one packet's bytes with bounds checks and
//!    enforces the MQTT 3.1.1 rules mqttrs does not (reserved flags, empty
//!    SUBSCRIBE, U+0000 in strings, ...);
//! 3. only then does [`codec`] hand that one packet to mqttrs and turn the
//!    borrowed result into owned [`codec::Inbound`] values whose payloads
//!    share the frame's buffer.
//!
//! A 5.0 codec will live beside this one behind the same `Inbound` type.

pub mod codec;
pub mod frame;
pub mod proxy_header;
pub mod wire_check;

pub use codec::{decode, Inbound, PublishPacket};
pub use frame::{FrameError, FrameHeader};

/// Why a packet from a client was refused. Every variant closes the
/// offending connection; only [`ProtocolError::UnsupportedProtocol`] is
/// answered first (CONNACK 0x01).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// The fixed header could not be framed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The packet's body breaks the 3.1.1 wire format.
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
}

/// Random input through the whole inbound path (framing, validation,
/// mqttrs): whatever the bytes, the result is a packet or an error, never a
/// panic.
#[cfg(test)]
mod never_panics {
    use bytes::Bytes;
    use proptest::prelude::*;

    use super::decode;
    use super::frame::parse_header;

    /// Frames and decodes every packet in `input` until it runs out or errs.
    fn decode_all(input: &[u8]) {
        let mut rest = Bytes::copy_from_slice(input);
        while let Ok(Some(header)) = parse_header(&rest, 1 << 16) {
            if rest.len() < header.packet_len() {
                return;
            }
            let frame = rest.split_to(header.packet_len());
            let _ = decode(&header, &frame);
        }
    }

    /// A fixed header of any type and flags, a correct remaining length and
    /// a random body: reaches mqttrs far more often than raw noise.
    fn framed_packet() -> impl Strategy<Value = Vec<u8>> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(first, body)| {
            let mut packet = bytes::BytesMut::new();
            packet.extend_from_slice(&[first]);
            super::frame::put_remaining_length(&mut packet, body.len());
            packet.extend_from_slice(&body);
            packet.to_vec()
        })
    }

    /// A CONNECT-shaped prefix followed by random fields.
    fn connect_like() -> impl Strategy<Value = Vec<u8>> {
        (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)).prop_map(|(flags, tail)| {
            let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags];
            body.extend_from_slice(&tail);
            let mut packet = bytes::BytesMut::new();
            packet.extend_from_slice(&[0x10]);
            super::frame::put_remaining_length(&mut packet, body.len());
            packet.extend_from_slice(&body);
            packet.to_vec()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn random_bytes(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            decode_all(&input);
        }

        #[test]
        fn random_bodies(packets in proptest::collection::vec(framed_packet(), 1..4)) {
            decode_all(&packets.concat());
        }

        #[test]
        fn random_connects(packet in connect_like()) {
            decode_all(&packet);
        }
    }
}
