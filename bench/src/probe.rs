//! The probe in each payload: a magic number, the send time and the
//! publisher's index, so a subscriber can measure end-to-end latency
//! without any side channel. Publishers and subscribers run in the same
//! process, so one monotonic clock serves both ends.
//!
//! Layout (little endian): `[0..4]` magic, `[4..12]` send time in ns since
//! [`now_ns`]'s origin, `[12..16]` publisher index; the rest is padding.

use std::sync::OnceLock;
use std::time::Instant;

/// "ASTB": tells bench payloads from anything else a wildcard might match.
const MAGIC: u32 = 0x4254_5341;

/// Smallest payload that carries a probe.
pub const MIN_PAYLOAD: usize = 16;

static ORIGIN: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds on the process-wide monotonic clock.
pub fn now_ns() -> u64 {
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Writes the probe into the head of `payload` (at least [`MIN_PAYLOAD`] bytes).
pub fn stamp(payload: &mut [u8], sent_ns: u64, publisher: u32) {
    payload[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    payload[4..12].copy_from_slice(&sent_ns.to_le_bytes());
    payload[12..16].copy_from_slice(&publisher.to_le_bytes());
}

/// The send time of a bench payload, or `None` for a foreign message.
pub fn sent_ns(payload: &[u8]) -> Option<u64> {
    let head = payload.get(0..MIN_PAYLOAD)?;
    if head[0..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let mut time = [0u8; 8];
    time.copy_from_slice(&head[4..12]);
    Some(u64::from_le_bytes(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_round_trips_and_foreign_payloads_are_ignored() {
        let mut payload = [0u8; 64];
        stamp(&mut payload, 123_456_789, 7);
        assert_eq!(sent_ns(&payload), Some(123_456_789));
        assert_eq!(sent_ns(b"hello world, not a probe"), None);
        assert_eq!(sent_ns(&payload[..8]), None);
    }
}
