//! Admission: whether the proxy takes a new client socket at all.
//!
//! Decided the moment pingora hands over an accepted socket, before a byte
//! is read from it, against three limits:
//!
//! - `--max-connections`: client sockets held at once, whatever their
//!   stage (waiting for CONNECT, dialling, relaying). Each costs a file
//!   descriptor and, once relayed, two 16 KiB buffers and a node socket.
//! - `--max-connections-per-ip`: the same, per client address; IPv6
//!   addresses are counted per /64 (one host usually owns a whole /64, so
//!   per-address counting would not bound it). IPv4-mapped IPv6 addresses
//!   count as their IPv4 address.
//! - `--max-connection-rate`: new sockets per second, a token bucket that
//!   holds one second's worth (so a burst of that many is admitted at once,
//!   then one per 1/rate seconds).
//!
//! The caps are checked first, so a client held back by a cap spends no
//! token: one address at its own cap cannot use up the rate everyone
//! shares. A refused socket is closed at once, without an answer (nothing
//! has been read, and a CONNACK would cost what the limit is there to
//! save), and counted in `astramq_proxy_rejects_total{reason}` under
//! [`Refusal::reason`].
//!
//! An admitted socket holds a [`Permit`] until it is closed; dropping the
//! permit gives its slots back. The per-address map holds only addresses
//! with a socket open, so its size is bounded by `--max-connections`.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

/// The three limits, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Client sockets held at once.
    pub max_connections: usize,
    /// Client sockets held at once per address (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// New client sockets per second (token bucket of one second).
    pub max_connection_rate: u32,
}

/// Why a new socket was refused; one `reason` label value each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `--max-connections` sockets are already held.
    #[error("connection cap reached")]
    Connections,
    /// The client's address already holds `--max-connections-per-ip`.
    #[error("per-address connection cap reached")]
    ConnectionsPerIp,
    /// More than `--max-connection-rate` new sockets this second.
    #[error("new-connection rate exceeded")]
    ConnectionRate,
}

impl Refusal {
    /// Every refusal, for pre-registering the metric series.
    pub const ALL: [Refusal; 3] = [
        Refusal::Connections,
        Refusal::ConnectionsPerIp,
        Refusal::ConnectionRate,
    ];

    /// The `reason` label value: the limit's flag without `max-`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Connections => "connections",
            Refusal::ConnectionsPerIp => "connections_per_ip",
            Refusal::ConnectionRate => "connection_rate",
        }
    }
}

/// Shared by every connection of the listening service.
pub struct Admission {
    /// What is allowed.
    limits: AdmissionLimits,
    /// Client sockets admitted and not yet closed.
    open: AtomicUsize,
    /// Open sockets per client key ([`client_key`]); an entry is removed
    /// when its count drops to zero.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// The new-connection rate.
    bucket: Mutex<TokenBucket>,
}

/// One admitted socket's share of the limits, given back on drop.
#[must_use = "dropping the permit gives the slot back at once"]
pub struct Permit<'a> {
    /// Whose counters to lower.
    admission: &'a Admission,
    /// The per-address entry this permit counts in, once it does.
    key: Option<IpAddr>,
}

impl Admission {
    /// No socket open yet, the rate bucket full.
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            bucket: Mutex::new(TokenBucket::full(
                limits.max_connection_rate,
                Instant::now(),
            )),
        }
    }

    /// Admits or refuses a socket from `peer` (`None` when the address is
    /// unknown: it then counts towards the total cap and the rate only).
    pub fn admit(&self, peer: Option<IpAddr>) -> Result<Permit<'_>, Refusal> {
        self.admit_at(peer, Instant::now())
    }

    /// [`Admission::admit`] at a given time (for tests).
    fn admit_at(&self, peer: Option<IpAddr>, now: Instant) -> Result<Permit<'_>, Refusal> {
        let max = self.limits.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .map_err(|_| Refusal::Connections)?;
        // From here on, dropping `permit` undoes what it holds.
        let mut permit = Permit {
            admission: self,
            key: None,
        };
        if let Some(ip) = peer {
            let key = client_key(ip);
            let mut per_ip = lock(&self.per_ip);
            let count = per_ip.entry(key).or_insert(0);
            if *count >= self.limits.max_connections_per_ip {
                if *count == 0 {
                    per_ip.remove(&key); // only when the cap is 0, which config refuses
                }
                return Err(Refusal::ConnectionsPerIp);
            }
            *count += 1;
            permit.key = Some(key);
        }
        if !lock(&self.bucket).take(now) {
            return Err(Refusal::ConnectionRate);
        }
        Ok(permit)
    }

    /// Client sockets held now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Addresses (IPv6: /64s) with a socket open now.
    pub fn addresses(&self) -> usize {
        lock(&self.per_ip).len()
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key {
            let mut per_ip = lock(&self.admission.per_ip);
            if let Some(count) = per_ip.get_mut(&key) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&key);
                }
            }
        }
        self.admission.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a client address is counted under: IPv4 as it is (an IPv4-mapped
/// IPv6 address as its IPv4 address), IPv6 by its /64 prefix.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// The counters stay consistent under a poisoned lock (every critical
/// section is a few integer updates), so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A token bucket refilled at `rate` tokens per second, holding at most
/// `rate` (one second's worth).
struct TokenBucket {
    /// Tokens added per second, and the most the bucket holds.
    rate: f64,
    /// Tokens now (fractional: refilled continuously).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    at: Instant,
}

impl TokenBucket {
    fn full(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        TokenBucket {
            rate,
            tokens: rate,
            at: now,
        }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_ip: usize, rate: u32) -> AdmissionLimits {
        AdmissionLimits {
            max_connections: total,
            max_connections_per_ip: per_ip,
            max_connection_rate: rate,
        }
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn the_total_cap_refuses_beyond_it_and_a_closed_socket_frees_its_slot() {
        let admission = Admission::new(limits(2, 10, 1000));
        let a = admission.admit(ip("10.0.0.1")).unwrap();
        let _b = admission.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.3")).err(),
            Some(Refusal::Connections)
        );
        assert_eq!(admission.open(), 2);
        drop(a);
        assert_eq!(admission.open(), 1);
        let _c = admission.admit(ip("10.0.0.3")).unwrap();
        assert_eq!(admission.open(), 2);
    }

    #[test]
    fn the_per_address_cap_holds_back_only_that_address() {
        let admission = Admission::new(limits(100, 2, 1000));
        let first = admission.admit(ip("10.0.0.1")).unwrap();
        let _second = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            admission.admit(ip("10.0.0.1")).err(),
            Some(Refusal::ConnectionsPerIp)
        );
        let _other = admission.admit(ip("10.0.0.2")).unwrap();
        // The refused attempt gave its total slot back.
        assert_eq!(admission.open(), 3);
        drop(first);
        let _again = admission.admit(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn the_address_map_forgets_addresses_with_nothing_open() {
        let admission = Admission::new(limits(10_000, 10, 1_000_000));
        for i in 0..1000u32 {
            let permit = admission
                .admit(Some(IpAddr::from(i.to_be_bytes())))
                .unwrap();
            drop(permit);
        }
        assert_eq!(admission.addresses(), 0);
        assert_eq!(admission.open(), 0);
        let _held = admission.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(admission.addresses(), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let admission = Admission::new(limits(100, 1, 1000));
        let _a = admission.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            admission.admit(ip("2001:db8:1:2:ffff::9")).err(),
            Some(Refusal::ConnectionsPerIp),
            "same /64"
        );
        let _b = admission.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = admission.admit(ip("192.0.2.7")).unwrap();
        assert_eq!(
            admission.admit(ip("::ffff:192.0.2.7")).err(),
            Some(Refusal::ConnectionsPerIp)
        );
        assert_eq!(
            client_key("2001:db8:1:2:3:4:5:6".parse().unwrap()),
            "2001:db8:1:2::".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_unknown_address_counts_towards_the_total_only() {
        let admission = Admission::new(limits(2, 1, 1000));
        let _a = admission.admit(None).unwrap();
        let _b = admission.admit(None).unwrap();
        assert_eq!(admission.admit(None).err(), Some(Refusal::Connections));
        assert_eq!(admission.addresses(), 0);
    }

    #[test]
    fn the_rate_admits_one_seconds_burst_then_refills_continuously() {
        let admission = Admission::new(limits(1000, 1000, 10));
        let start = Instant::now();
        let mut held = Vec::new();
        for _ in 0..10 {
            held.push(admission.admit_at(ip("10.0.0.1"), start).unwrap());
        }
        assert_eq!(
            admission.admit_at(ip("10.0.0.1"), start).err(),
            Some(Refusal::ConnectionRate)
        );
        // A refused attempt holds nothing.
        assert_eq!(admission.open(), 10);
        // 10/s: one token per 100 ms.
        let later = start + Duration::from_millis(150);
        held.push(admission.admit_at(ip("10.0.0.2"), later).unwrap());
        assert_eq!(
            admission.admit_at(ip("10.0.0.2"), later).err(),
            Some(Refusal::ConnectionRate)
        );
        // Never more than one second's worth, however long it was idle.
        let idle = start + Duration::from_secs(60);
        let burst = (0..20)
            .filter(|_| match admission.admit_at(ip("10.0.0.3"), idle) {
                Ok(permit) => {
                    held.push(permit);
                    true
                }
                Err(_) => false,
            })
            .count();
        assert_eq!(burst, 10);
    }

    #[test]
    fn a_capped_client_spends_no_token() {
        let admission = Admission::new(limits(1000, 1, 2));
        let now = Instant::now();
        let _held = admission.admit_at(ip("10.0.0.1"), now).unwrap();
        for _ in 0..100 {
            assert_eq!(
                admission.admit_at(ip("10.0.0.1"), now).err(),
                Some(Refusal::ConnectionsPerIp)
            );
        }
        // The second token is still there for someone else.
        let _other = admission.admit_at(ip("10.0.0.2"), now).unwrap();
    }

    #[test]
    fn time_going_backwards_adds_no_tokens() {
        let mut bucket = TokenBucket::full(1, Instant::now() + Duration::from_secs(5));
        assert!(bucket.take(Instant::now()));
        assert!(!bucket.take(Instant::now()));
    }
}
