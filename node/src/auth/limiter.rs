//! Slowing down password guessing: failed logins are counted per client
//! address, and once an address has failed [`FREE_FAILURES`] times within
//! [`WINDOW`], the CONNACK of each further failure from it is held back —
//! [`FIRST_DELAY`], doubling with every further failure, at most
//! [`MAX_DELAY`]. Successful logins are never delayed, so other clients
//! behind the same address (NAT) are not punished for one misconfigured
//! client, and a success does not reset the count (an attacker with one
//! valid account cannot use it to start over). [`WINDOW`] without a
//! failure forgets the address.
//!
//! The table is bounded ([`MAX_ADDRESSES`]): when it is full, expired
//! entries are dropped, and if none has expired the address whose last
//! failure is oldest makes room. So a flood from many addresses costs a
//! fixed amount of memory, and at worst lets an old address start over.
//!
//! What it does not do: stop an attacker who spreads guesses over many
//! addresses, or who waits out the delay on many connections at once (the
//! per-IP connection limit and the bounded verification pool cap that).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures an address may have within the window before it is slowed.
pub const FREE_FAILURES: u32 = 5;

/// How long a failure is remembered (from the address's last failure).
pub const WINDOW: Duration = Duration::from_secs(60);

/// The delay after the first failure beyond [`FREE_FAILURES`].
pub const FIRST_DELAY: Duration = Duration::from_millis(200);

/// The longest delay.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// Addresses remembered at once.
pub const MAX_ADDRESSES: usize = 10_000;

/// One address's recent failures.
#[derive(Debug, Clone, Copy)]
struct Failures {
    /// Failures since the window (re)started.
    count: u32,
    /// When the last one happened.
    last: Instant,
}

/// Recent login failures by address; see the module docs for the numbers.
#[derive(Debug)]
pub struct FailureLimiter {
    /// Address → its failures; never more than `capacity` entries.
    failures: HashMap<IpAddr, Failures>,
    /// The bound on `failures` ([`MAX_ADDRESSES`] outside tests).
    capacity: usize,
}

impl Default for FailureLimiter {
    fn default() -> FailureLimiter {
        FailureLimiter::with_capacity(MAX_ADDRESSES)
    }
}

impl FailureLimiter {
    /// A limiter remembering at most `capacity` addresses.
    pub fn with_capacity(capacity: usize) -> FailureLimiter {
        FailureLimiter {
            failures: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Counts a failed login from `ip` and returns how long its CONNACK
    /// is held back.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Duration {
        self.count(ip, now);
        self.delay(ip, now)
    }

    /// The delay `ip`'s failures so far earn.
    fn delay(&self, ip: IpAddr, now: Instant) -> Duration {
        let Some(f) = self.failures.get(&ip) else {
            return Duration::ZERO;
        };
        if now.duration_since(f.last) >= WINDOW || f.count <= FREE_FAILURES {
            return Duration::ZERO;
        }
        let doublings = (f.count - FREE_FAILURES - 1).min(16);
        FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
    }

    fn count(&mut self, ip: IpAddr, now: Instant) {
        if !self.failures.contains_key(&ip) && self.failures.len() >= self.capacity {
            self.make_room(now);
        }
        let entry = self.failures.entry(ip).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= WINDOW {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.failures.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.failures.is_empty()
    }

    /// Drops expired entries, or else the one whose last failure is oldest.
    fn make_room(&mut self, now: Instant) {
        self.failures
            .retain(|_, f| now.duration_since(f.last) < WINDOW);
        if self.failures.len() < self.capacity {
            return;
        }
        let oldest = self
            .failures
            .iter()
            .min_by_key(|(_, f)| f.last)
            .map(|(ip, _)| *ip);
        if let Some(ip) = oldest {
            self.failures.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn a_burst_is_slowed_with_a_growing_bounded_delay() {
        let mut limiter = FailureLimiter::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(limiter.failed(ip(1), now), Duration::ZERO);
        }
        assert_eq!(limiter.failed(ip(1), now), FIRST_DELAY);
        assert_eq!(limiter.failed(ip(1), now), FIRST_DELAY * 2);
        assert_eq!(limiter.failed(ip(1), now), FIRST_DELAY * 4);
        for _ in 0..100 {
            limiter.failed(ip(1), now);
        }
        assert_eq!(limiter.failed(ip(1), now), MAX_DELAY);
        // Other addresses are not affected.
        assert_eq!(limiter.failed(ip(2), now), Duration::ZERO);
    }

    #[test]
    fn failures_are_forgotten_after_the_window() {
        let mut limiter = FailureLimiter::default();
        let start = Instant::now();
        for _ in 0..10 {
            limiter.failed(ip(1), start);
        }
        assert!(limiter.failed(ip(1), start + WINDOW / 2) > Duration::ZERO);
        // A failure a whole window after the last one starts a new count.
        let later = start + WINDOW / 2 + WINDOW;
        assert_eq!(limiter.failed(ip(1), later), Duration::ZERO);
    }

    #[test]
    fn the_table_never_grows_past_its_capacity() {
        let mut limiter = FailureLimiter::with_capacity(3);
        let start = Instant::now();
        for i in 0..3u8 {
            let at = start + Duration::from_secs(u64::from(i));
            for _ in 0..10 {
                limiter.failed(ip(i), at);
            }
        }
        // Full and nothing expired: the oldest (ip 0) makes room.
        let at = start + Duration::from_secs(5);
        limiter.failed(ip(9), at);
        assert_eq!(limiter.len(), 3);
        assert_eq!(limiter.failed(ip(0), at), Duration::ZERO);
        assert!(limiter.failed(ip(2), at) > Duration::ZERO);
        // Expired entries are all dropped first.
        let much_later = start + WINDOW * 3;
        limiter.failed(ip(7), much_later);
        assert_eq!(limiter.len(), 1);
        for i in 0..=255u8 {
            limiter.failed(ip(i), much_later);
        }
        assert_eq!(limiter.len(), 3);
        assert!(!limiter.is_empty());
    }
}
