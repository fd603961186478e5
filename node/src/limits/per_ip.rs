//! Open connections per client address.
//!
//! Guarantees: the count of an address is exact (one mutex), never exceeds
//! the limit, and drops back when the [`IpSlot`] is dropped — however the
//! connection task ends, panics included. An address with no open
//! connection takes no memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections by address, bounded per address.
pub struct PerIpCounts {
    /// Address → open connections (absent when zero).
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Most connections per address; 0 for no limit.
    max: usize,
}

/// The address has as many open connections as the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("max-connections-per-ip reached")]
pub struct PerIpLimitReached;

/// One open connection's place in its address's count.
pub struct IpSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl PerIpCounts {
    /// Counts bounded by `max` per address (0: unbounded, not counted).
    pub fn new(max: usize) -> PerIpCounts {
        PerIpCounts {
            counts: Arc::default(),
            max,
        }
    }

    /// A slot for a new connection from `ip`, or `Err` at the limit; no
    /// slot (`Ok(None)`) when there is no limit.
    pub fn acquire(&self, ip: IpAddr) -> Result<Option<IpSlot>, PerIpLimitReached> {
        if self.max == 0 {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return Err(PerIpLimitReached);
        }
        *count += 1;
        Ok(Some(IpSlot {
            counts: self.counts.clone(),
            ip,
        }))
    }

    /// Open connections from `ip`.
    pub fn count(&self, ip: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(&ip).copied().unwrap_or(0)
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_released() {
        let counts = PerIpCounts::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = counts.acquire(ip).unwrap();
        let b = counts.acquire(ip).unwrap();
        assert!(counts.acquire(ip).is_err());
        assert!(counts.acquire("192.0.2.2".parse().unwrap()).is_ok());
        drop(a);
        assert_eq!(counts.count(ip), 1);
        drop(b);
        assert_eq!(counts.count(ip), 0);
        assert!(counts.counts.lock().unwrap().is_empty());
    }

    #[test]
    fn no_limit_counts_nothing() {
        let counts = PerIpCounts::new(0);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(counts.acquire(ip).unwrap().is_none());
        assert_eq!(counts.count(ip), 0);
    }
}
