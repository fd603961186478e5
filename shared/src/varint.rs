//! MQTT's variable byte integer: the fixed header's remaining length (and,
//! in MQTT 5, property lengths). Seven bits a byte, least significant
//! first, the high bit set on every byte but the last; at most four bytes,
//! so at most 268,435,455 (MQTT 3.1.1 section 2.2.3).
//!
//! The node's framing (`node/src/protocol/frame.rs`) and the proxy's
//! CONNECT reader (`proxy/src/connect/`) both decode with [`decode`]; the
//! node encodes with [`encode`].

use bytes::BytesMut;

/// Most bytes a variable byte integer may take.
pub const MAX_BYTES: usize = 4;

/// Largest value four bytes encode.
pub const MAX_VALUE: usize = 268_435_455;

/// The integer ran on past [`MAX_BYTES`] bytes (a malformed packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("variable byte integer longer than four bytes")]
pub struct TooLong;

/// Decodes the integer at the start of `buf`: `Ok(Some((value, bytes it
/// took)))`, or `Ok(None)` when `buf` ends before its last byte.
pub fn decode(buf: &[u8]) -> Result<Option<(usize, usize)>, TooLong> {
    let mut value = 0usize;
    for (index, &byte) in buf.iter().take(MAX_BYTES).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * index);
        if byte & 0x80 == 0 {
            return Ok(Some((value, index + 1)));
        }
    }
    match buf.len() < MAX_BYTES {
        true => Ok(None),
        false => Err(TooLong),
    }
}

/// Appends the encoding of `value` (at most [`MAX_VALUE`]; a larger one
/// is the caller's bug and would not be read back).
pub fn encode(out: &mut BytesMut, mut value: usize) {
    debug_assert!(value <= MAX_VALUE, "{value} does not fit four bytes");
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.extend_from_slice(&[byte]);
        if value == 0 {
            break;
        }
    }
}

/// How many bytes [`encode`] writes for `value`.
pub fn encoded_len(value: usize) -> usize {
    match value {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_every_length_boundary() {
        for (value, len) in [
            (0usize, 1usize),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (2_097_151, 3),
            (2_097_152, 4),
            (MAX_VALUE, 4),
        ] {
            let mut out = BytesMut::new();
            encode(&mut out, value);
            assert_eq!(out.len(), len, "{value}");
            assert_eq!(encoded_len(value), len, "{value}");
            assert_eq!(decode(&out), Ok(Some((value, len))));
            for cut in 0..len {
                assert_eq!(decode(&out[..cut]), Ok(None), "{value} cut at {cut}");
            }
        }
    }

    #[test]
    fn matches_the_specification_examples() {
        assert_eq!(decode(&[0xC1, 0x02]), Ok(Some((321, 2))));
        assert_eq!(decode(&[0x80, 0x80, 0x40]), Ok(Some((1_048_576, 3))));
        assert_eq!(decode(&[0x00, 0xFF]), Ok(Some((0, 1))));
    }

    #[test]
    fn a_fifth_byte_is_malformed() {
        assert_eq!(decode(&[0xFF, 0xFF, 0xFF, 0xFF]), Err(TooLong));
        assert_eq!(decode(&[0xFF, 0xFF, 0xFF, 0xFF, 0x7F]), Err(TooLong));
    }
}
