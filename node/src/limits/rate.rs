//! A token bucket: at most `rate` events per second on average, with
//! bursts of up to `rate`.
//!
//! Pure: the caller passes the time, so tests need no clock. Tokens are
//! kept in millitokens (integer arithmetic, no drift).

use std::time::{Duration, Instant};

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
        self.refill(now);
        if self.available < MILLI {
            return false;
        }
        self.available -= MILLI;
        true
    }

    /// Takes one token if there is one at `now`; otherwise how long until
    /// there is (at least 1 ms).
    pub fn take_or_wait(&mut self, now: Instant) -> Result<(), Duration> {
        if self.take(now) {
            return Ok(());
        }
        let missing = MILLI - self.available;
        Err(Duration::from_millis(missing.div_ceil(self.rate).max(1)))
    }

    /// Adds the tokens earned since the last update, in whole milliseconds
    /// (the fraction of a millisecond is kept for the next update).
    fn refill(&mut self, now: Instant) {
        let elapsed_ms = now.saturating_duration_since(self.updated).as_millis();
        let elapsed_ms = u64::try_from(elapsed_ms).unwrap_or(u64::MAX);
        if elapsed_ms == 0 {
            return;
        }
        let refill = elapsed_ms.saturating_mul(self.rate);
        self.available = self.available.saturating_add(refill).min(self.rate * MILLI);
        self.updated = if self.available == self.rate * MILLI {
            now
        } else {
            self.updated + Duration::from_millis(elapsed_ms)
        };
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn an_empty_bucket_says_how_long_until_the_next_token() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4, start);
        for _ in 0..4 {
            assert_eq!(bucket.take_or_wait(start), Ok(()));
        }
        // Four per second: the next token in 250 ms.
        assert_eq!(bucket.take_or_wait(start), Err(Duration::from_millis(250)));
        let later = start + Duration::from_millis(100);
        assert_eq!(bucket.take_or_wait(later), Err(Duration::from_millis(150)));
        assert_eq!(
            bucket.take_or_wait(start + Duration::from_millis(250)),
            Ok(())
        );
    }

    #[test]
    fn fractions_of_a_millisecond_are_not_lost() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(1000, start);
        while bucket.take(start) {}
        // 1.9 ms then 0.2 ms: 2 ms in all, two tokens (not one).
        let t1 = start + Duration::from_micros(1900);
        let t2 = start + Duration::from_micros(2100);
        assert!(bucket.take(t1));
        assert!(!bucket.take(t1));
        assert!(bucket.take(t2));
    }
}
