//! A token bucket: at most `rate` events per second on average, with
//! bursts of up to `rate`.
//!
//! Pure: the caller passes the time, so tests need no clock. Tokens are
//! kept in millitokens (integer arithmetic, no drift).

use std::time::Instant;

/// Millitokens per token.
const MILLI: u64 = 1000;

/// The bucket's state.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens added per second (also the capacity).
    rate: u64,
    /// Millitokens available.
    available: u64,
    /// When `available` was last brought up to date.
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket of `rate` tokens per second.
    pub fn new(rate: u32, now: Instant) -> TokenBucket {
        let rate = u64::from(rate.max(1));
        TokenBucket {
            rate,
            available: rate * MILLI,
            updated: now,
        }
    }

    /// Takes one token if there is one at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed_ms = now.saturating_duration_since(self.updated).as_millis();
        let refill = u64::try_from(elapsed_ms)
            .unwrap_or(u64::MAX)
            .saturating_mul(self.rate);
        if refill > 0 {
            self.available = self.available.saturating_add(refill).min(self.rate * MILLI);
            self.updated = now;
        }
        if self.available < MILLI {
            return false;
        }
        self.available -= MILLI;
        true
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bursts_up_to_the_rate_then_refills_over_time() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, start);
        assert_eq!((0..15).filter(|_| bucket.take(start)).count(), 10);
        // 100 ms later: one token back.
        let later = start + Duration::from_millis(100);
        assert!(bucket.take(later));
        assert!(!bucket.take(later));
        // Long idle: never more than the capacity.
        let much_later = later + Duration::from_secs(3600);
        assert_eq!((0..15).filter(|_| bucket.take(much_later)).count(), 10);
    }

    #[test]
    fn a_clock_going_backwards_adds_nothing() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut bucket = TokenBucket::new(1, start);
        assert!(bucket.take(start));
        assert!(!bucket.take(start - Duration::from_millis(500)));
    }
}
