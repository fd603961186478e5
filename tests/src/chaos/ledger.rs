//! [`Ledger`]: what publishers had acknowledged and what subscribers'
//! applications received, and the verdict comparing the two.
//!
//! A message counts as acknowledged only when its publisher got PUBACK
//! (QoS 1) or PUBREC (QoS 2): from then on the broker owns it and must
//! deliver it to every matching persistent session. Messages never
//! acknowledged may be lost or delivered; they are ignored, except that a
//! QoS 2 message may still reach the application at most once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// The ledger shared by every workload task.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// Locks the ledger; a poisoned lock (a panicked task) still yields it, the
/// data being plain records.
pub fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What one publisher got acknowledged.
#[derive(Debug, Default)]
pub struct PublisherRecord {
    /// QoS it publishes at.
    pub qos: u8,
    /// Sequence numbers sent at least once.
    pub sent: u64,
    /// Sequence numbers acknowledged (PUBACK / PUBREC).
    pub acked: BTreeSet<u64>,
    /// When each was acknowledged (wall clock, to find it in node logs).
    pub acked_at: BTreeMap<u64, std::time::SystemTime>,
    /// Connections it opened.
    pub connections: u32,
}

/// One connection of a subscriber.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionRecord {
    /// When the CONNACK accepted it.
    pub opened: Instant,
    /// The first application message on it.
    pub first_delivery: Option<Instant>,
}

/// What one subscriber's application received.
#[derive(Debug, Default)]
pub struct SubscriberRecord {
    /// The one topic it subscribed to (its publisher's).
    pub topic: String,
    /// Subscription QoS.
    pub qos: u8,
    /// Whether it delays its acks (full in-flight window).
    pub slow: bool,
    /// Sequence number → times delivered to the application.
    pub deliveries: BTreeMap<u64, u32>,
    /// Topics of messages it got without subscribing to them.
    pub foreign: Vec<String>,
    /// Its connections, in order.
    pub connections: Vec<ConnectionRecord>,
    /// Reconnects on which the broker had no session for it.
    pub sessions_lost: u32,
    /// Every delivery's time, for failover measurements.
    pub delivery_times: Vec<Instant>,
}

/// Everything recorded during a run.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Publisher topic → record.
    pub publishers: BTreeMap<String, PublisherRecord>,
    /// Subscriber client id → record.
    pub subscribers: BTreeMap<String, SubscriberRecord>,
    /// Retained topic → highest acknowledged value published to it.
    pub retained_acked: BTreeMap<String, u64>,
}

impl PublisherRecord {
    /// Records that `seq` was acknowledged now.
    pub fn acknowledged(&mut self, seq: u64) {
        self.acked.insert(seq);
        self.acked_at.insert(seq, std::time::SystemTime::now());
    }
}

impl Ledger {
    /// Registers a subscriber before it connects.
    pub fn add_subscriber(&mut self, client_id: &str, topic: &str, qos: u8, slow: bool) {
        self.subscribers.insert(
            client_id.to_owned(),
            SubscriberRecord {
                topic: topic.to_owned(),
                qos,
                slow,
                ..SubscriberRecord::default()
            },
        );
    }

    /// A subscriber's connection was accepted.
    pub fn subscriber_connected(&mut self, client_id: &str, session_present: bool) {
        let Some(sub) = self.subscribers.get_mut(client_id) else {
            return;
        };
        if !session_present && !sub.connections.is_empty() {
            sub.sessions_lost += 1;
        }
        sub.connections.push(ConnectionRecord {
            opened: Instant::now(),
            first_delivery: None,
        });
    }

    /// A subscriber's application received `seq` on `topic`.
    pub fn delivered(&mut self, client_id: &str, topic: &str, seq: u64) {
        let Some(sub) = self.subscribers.get_mut(client_id) else {
            return;
        };
        if topic != sub.topic {
            sub.foreign.push(topic.to_owned());
            return;
        }
        let now = Instant::now();
        *sub.deliveries.entry(seq).or_default() += 1;
        sub.delivery_times.push(now);
        if let Some(connection) = sub.connections.last_mut() {
            connection.first_delivery.get_or_insert(now);
        }
    }

    /// The last time any subscriber's application received a message.
    pub fn last_delivery(&self) -> Option<Instant> {
        self.subscribers
            .values()
            .filter_map(|s| s.delivery_times.last().copied())
            .max()
    }

    /// Whether every subscriber has received every acknowledged message
    /// of its topic (the drain can end early).
    pub fn nothing_missing(&self) -> bool {
        self.subscribers.values().all(|sub| {
            self.publishers
                .get(&sub.topic)
                .is_none_or(|p| p.acked.iter().all(|seq| sub.deliveries.contains_key(seq)))
        })
    }

    /// A publisher's record, created on first use.
    pub fn publisher(&mut self, topic: &str, qos: u8) -> &mut PublisherRecord {
        let record = self.publishers.entry(topic.to_owned()).or_default();
        record.qos = qos;
        record
    }
}

/// How one subscriber's deliveries compare with what was acknowledged.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    /// Acknowledged messages on its topic.
    pub acked: usize,
    /// Acknowledged messages it received at least once.
    pub received: usize,
    /// Acknowledged messages it never received.
    pub missing: BTreeSet<u64>,
    /// Deliveries beyond the first of any message.
    pub duplicates: u64,
    /// Messages delivered more than once.
    pub duplicated: BTreeSet<u64>,
}

impl Verdict {
    /// Compares deliveries (seq → times received) with the acknowledged set.
    pub fn judge(acked: &BTreeSet<u64>, deliveries: &BTreeMap<u64, u32>) -> Self {
        let missing: BTreeSet<u64> = acked
            .iter()
            .filter(|seq| !deliveries.contains_key(seq))
            .copied()
            .collect();
        let duplicated: BTreeSet<u64> = deliveries
            .iter()
            .filter(|(_, times)| **times > 1)
            .map(|(seq, _)| *seq)
            .collect();
        Self {
            acked: acked.len(),
            received: acked.len() - missing.len(),
            missing,
            duplicates: deliveries.values().map(|t| u64::from(t - 1)).sum(),
            duplicated,
        }
    }

    /// "received 32 of 200 acknowledged messages; missing seq 33..200".
    pub fn describe(&self) -> String {
        let mut text = format!(
            "received {} of {} acknowledged messages",
            self.received, self.acked
        );
        if !self.missing.is_empty() {
            let _ = write!(text, "; missing seq {}", ranges(&self.missing));
        }
        if self.duplicates > 0 {
            let _ = write!(
                text,
                "; {} duplicate deliveries (seq {})",
                self.duplicates,
                ranges(&self.duplicated)
            );
        }
        text
    }
}

/// Compresses a set of numbers into ranges: `1..3, 7, 9..12` (inclusive),
/// shortened after 20 ranges so a message stays readable.
pub fn ranges(numbers: &BTreeSet<u64>) -> String {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    for &n in numbers {
        match spans.last_mut() {
            Some((_, end)) if *end + 1 == n => *end = n,
            _ => spans.push((n, n)),
        }
    }
    let shown: Vec<String> = spans
        .iter()
        .take(20)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}..{b}")
            }
        })
        .collect();
    let mut text = shown.join(", ");
    if spans.len() > 20 {
        let _ = write!(text, ", ... ({} ranges in all)", spans.len());
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_compress_runs() {
        let set: BTreeSet<u64> = [1, 2, 3, 7, 9, 10].into_iter().collect();
        assert_eq!(ranges(&set), "1..3, 7, 9..10");
    }

    #[test]
    fn verdict_names_the_missing_and_the_duplicated() {
        let acked: BTreeSet<u64> = (1..=5).collect();
        let deliveries: BTreeMap<u64, u32> = [(1, 1), (2, 3), (6, 1)].into_iter().collect();
        let verdict = Verdict::judge(&acked, &deliveries);
        assert_eq!(
            verdict.describe(),
            "received 2 of 5 acknowledged messages; missing seq 3..5; \
             2 duplicate deliveries (seq 2)"
        );
    }
}
