//! Admission limits a node applies before a client gets a session:
//! connections per IP address, new connections per second, sessions, and
//! the keep-alive a client is held to; and the bound of what one session
//! may have queued.
//!
//! - [`per_ip`]: counts open connections per address; a guard gives the
//!   slot back when the connection ends, however it ends.
//! - [`rate`]: a token bucket of new connections per second for the node;
//!   when it is empty the listener stops accepting until it refills.
//! - [`sessions`]: `max-sessions`, reserved atomically per handshake.
//! - [`keep_alive`]: the server maximum and the default for keep-alive 0.
//! - [`queue`]: messages and bytes queued per session.
//!
//! Guarantees: a connection refused here is closed before any byte of it
//! is read (no CONNECT is parsed, nothing is allocated for it beyond the
//! accepted socket). Connections from `--trusted-proxies` carry many
//! clients each and are not counted per IP (bound those at the proxy); the
//! rate counts every accepted connection. The rate never refuses: beyond
//! it connections wait in the kernel's listen backlog (4096) and are
//! accepted as the bucket refills, as EMQX's acceptors do, so a burst (a
//! proxy's reconnect storm, a fleet after an outage) is slowed, not turned
//! away. Not guaranteed: fairness between addresses when the rate limit is
//! hit (first come, first served), nor what the kernel does when the
//! backlog itself is full (it drops the SYN; the client retries).

pub mod keep_alive;
pub mod per_ip;
pub mod queue;
pub mod rate;
pub mod sessions;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use per_ip::{IpSlot, PerIpCounts};
use rate::TokenBucket;

/// Why a new connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAdmitted {
    /// `max-connections-per-ip` connections from this address are open.
    PerIp,
}

/// The per-IP and rate limits of one listener.
pub struct Admission {
    /// Open connections per client address.
    per_ip: PerIpCounts,
    /// New connections per second; `None` when unlimited.
    rate: Option<Mutex<TokenBucket>>,
    /// Addresses not counted per IP (trusted load balancers).
    exempt: Vec<IpAddr>,
}

impl Admission {
    /// Limits of `max_per_ip` connections per address (0: unlimited) and
    /// `max_rate` new connections per second (0: unlimited).
    pub fn new(max_per_ip: usize, max_rate: u32, exempt: Vec<IpAddr>) -> Admission {
        Admission {
            per_ip: PerIpCounts::new(max_per_ip),
            rate: (max_rate > 0).then(|| Mutex::new(TokenBucket::new(max_rate, Instant::now()))),
            exempt,
        }
    }

    /// Takes the rate's token for the next connection to accept, or says
    /// how long to wait before asking again (the listener does not accept
    /// meanwhile).
    pub fn next_accept(&self, now: Instant) -> Result<(), Duration> {
        match &self.rate {
            Some(rate) => rate
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_or_wait(now),
            None => Ok(()),
        }
    }

    /// Admits an accepted connection from `ip`, or says which limit
    /// refuses it. The returned slot must live as long as the connection.
    pub fn admit(&self, ip: IpAddr) -> Result<Option<IpSlot>, NotAdmitted> {
        if self.exempt.contains(&ip) {
            return Ok(None);
        }
        self.per_ip.acquire(ip).map_err(|_| NotAdmitted::PerIp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_come_back_and_proxies_are_exempt() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let admission = Admission::new(1, 0, vec![proxy]);
        let slot = admission.admit(client).unwrap();
        assert_eq!(admission.admit(client).err(), Some(NotAdmitted::PerIp));
        drop(slot);
        assert!(admission.admit(client).is_ok());
        for _ in 0..3 {
            assert!(admission.admit(proxy).unwrap().is_none());
        }
    }

    #[test]
    fn beyond_the_burst_the_rate_says_wait() {
        let now = Instant::now();
        let admission = Admission::new(0, 2, Vec::new());
        assert_eq!(admission.next_accept(now), Ok(()));
        assert_eq!(admission.next_accept(now), Ok(()));
        assert_eq!(admission.next_accept(now), Err(Duration::from_millis(500)));
        let unlimited = Admission::new(0, 0, Vec::new());
        assert!((0..10_000).all(|_| unlimited.next_accept(now).is_ok()));
    }
}
