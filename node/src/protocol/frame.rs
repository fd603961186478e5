//! The MQTT fixed header: packet type, flags and remaining length.
//!
//! Parsed here rather than by the codec so that a declared length over the
//! limit is refused as soon as its length bytes arrive, before the node
//! reserves or reads the rest of the packet, and so that a connection whose
//! first byte cannot start a CONNECT is refused on that byte alone.

use astramq_shared::varint;

/// A complete fixed header at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The first byte: packet type (high nibble) and flags (low nibble).
    pub first_byte: u8,
    /// Bytes taken by the first byte plus the remaining-length field.
    pub header_len: usize,
    /// Bytes of the packet after the fixed header.
    pub remaining_len: usize,
}

impl FrameHeader {
    /// The whole packet's size on the wire.
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Why a fixed header cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The remaining length used more than four bytes (MQTT-2.2.3).
    #[error("remaining length field longer than four bytes")]
    MalformedLength,
    /// A connection's first packet must be a CONNECT (MQTT-3.1.0-1), whose
    /// first byte is always [`CONNECT_FIRST_BYTE`]; this one is not (an HTTP
    /// request, TLS, a port scan).
    #[error("first packet is not a CONNECT (first byte {0:#04x})")]
    NotConnect(u8),
    /// The packet is larger than the node accepts.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Declared packet size.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
}

/// The first byte of every valid CONNECT: type 1, reserved flags 0
/// (MQTT-2.2.2-2).
pub const CONNECT_FIRST_BYTE: u8 = 0x10;

/// Refuses a connection's first bytes as soon as the first one shows they
/// cannot be a CONNECT. An empty buffer passes (nothing to judge yet).
pub fn check_connect_start(buf: &[u8]) -> Result<(), FrameError> {
    match buf.first() {
        Some(&byte) if byte != CONNECT_FIRST_BYTE => Err(FrameError::NotConnect(byte)),
        _ => Ok(()),
    }
}

/// Parses the fixed header at the start of `buf`.
///
/// `Ok(None)` means more bytes are needed to know the length. A packet
/// larger than `max_packet_size` is refused here, even when only its first
/// bytes have arrived.
pub fn parse_header(buf: &[u8], max_packet_size: usize) -> Result<Option<FrameHeader>, FrameError> {
    let Some((&first_byte, rest)) = buf.split_first() else {
        return Ok(None);
    };
    let Some((remaining_len, length_bytes)) =
        varint::decode(rest).map_err(|_| FrameError::MalformedLength)?
    else {
        return Ok(None);
    };
    let header = FrameHeader {
        first_byte,
        header_len: 1 + length_bytes,
        remaining_len,
    };
    if header.packet_len() > max_packet_size {
        return Err(FrameError::TooLarge {
            size: header.packet_len(),
            max: max_packet_size,
        });
    }
    Ok(Some(header))
}

/// Appends the remaining-length encoding of `len` (at most 268,435,455).
pub fn put_remaining_length(out: &mut bytes::BytesMut, len: usize) {
    varint::encode(out, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_more_bytes_until_length_is_complete() {
        assert_eq!(parse_header(&[], 100), Ok(None));
        assert_eq!(parse_header(&[0x30], 100), Ok(None));
        assert_eq!(parse_header(&[0x30, 0x80], 1000), Ok(None));
    }

    #[test]
    fn parses_multi_byte_lengths() {
        let h = parse_header(&[0x30, 0xC1, 0x02], 1 << 20).unwrap().unwrap();
        assert_eq!(h.remaining_len, 321);
        assert_eq!(h.header_len, 3);
        let h = parse_header(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(h.remaining_len, 268_435_455);
    }

    #[test]
    fn five_length_bytes_are_malformed() {
        assert_eq!(
            parse_header(&[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F], usize::MAX),
            Err(FrameError::MalformedLength)
        );
    }

    #[test]
    fn oversized_packet_is_refused_from_its_header_alone() {
        // Declares 1 MiB; only the header has arrived.
        let err = parse_header(&[0x30, 0x80, 0x80, 0x40], 1024).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max: 1024, .. }));
    }

    #[test]
    fn only_a_connect_byte_may_start_a_connection() {
        assert_eq!(check_connect_start(&[]), Ok(()));
        assert_eq!(check_connect_start(&[0x10]), Ok(()));
        assert_eq!(
            check_connect_start(b"GET / HTTP/1.1\r\n"),
            Err(FrameError::NotConnect(b'G'))
        );
        // A CONNECT type with reserved flags set, and a PUBLISH.
        assert_eq!(
            check_connect_start(&[0x11]),
            Err(FrameError::NotConnect(0x11))
        );
        assert_eq!(
            check_connect_start(&[0x30, 0x00]),
            Err(FrameError::NotConnect(0x30))
        );
    }

    #[test]
    fn remaining_length_round_trips() {
        for len in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            268_435_455,
        ] {
            let mut out = bytes::BytesMut::new();
            out.extend_from_slice(&[0x30]);
            put_remaining_length(&mut out, len);
            let h = parse_header(&out, usize::MAX).unwrap().unwrap();
            assert_eq!(h.remaining_len, len);
            assert_eq!(h.header_len, out.len());
        }
    }
}
