//! The end-of-run checks and the summary block.
//!
//! [`Report::violations`] lists every broken guarantee: an acknowledged
//! message a subscriber never received, a QoS 2 message delivered twice to
//! an application, a message on a topic the client did not subscribe to,
//! retained state differing between nodes (or older than the last
//! acknowledged retained publish), a panic in a node log, a node's RSS
//! above [`RSS_LIMIT_KIB`], or a drain that did not finish. The QoS 1
//! duplicate ratio and failover times are reported, not asserted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};

use super::faults::{FaultKind, InjectedFault};
use super::ledger::{Ledger, Verdict};
use crate::wire::{self, Connect};
use crate::{unique_id, RawClient};

/// Generous bound on a node's resident set size: 512 MiB.
pub const RSS_LIMIT_KIB: u64 = 512 * 1024;

/// How long a retained-state reader waits after the last retained message.
const RETAINED_QUIET: Duration = Duration::from_secs(1);

/// One subscriber's line of the summary.
#[derive(Debug, Clone)]
pub struct SubscriberLine {
    /// Its fixed client id.
    pub client_id: String,
    /// Subscription QoS.
    pub qos: u8,
    /// Whether it stalled its acks (full in-flight window).
    pub slow: bool,
    /// "sub@n1 pub@n2" at the start of the run.
    pub placement: String,
    /// Whether it started on its publisher's node.
    pub shares_publisher_node: bool,
    /// Acknowledged vs received.
    pub verdict: Verdict,
    /// Connections it opened over the run.
    pub connections: usize,
    /// Reconnects that found no session.
    pub sessions_lost: u32,
    /// Messages on topics it did not subscribe to.
    pub foreign: usize,
    /// When the first missing message was acknowledged (UTC, to find it
    /// in the node logs).
    pub first_missing_acked_at: Option<std::time::SystemTime>,
}

/// Retained messages as read from each node at the end.
#[derive(Debug, Clone, Default)]
pub struct RetainedCheck {
    /// Node id → topic → payload.
    pub per_node: BTreeMap<String, BTreeMap<String, String>>,
    /// Retained topic → highest acknowledged value.
    pub acked: BTreeMap<String, u64>,
}

/// Everything a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Seed of the fault schedule (`--seed` repeats it).
    pub seed: u64,
    /// Wall time of the whole run, startup included.
    pub wall: Duration,
    /// One line per subscriber.
    pub subscribers: Vec<SubscriberLine>,
    /// (topic, QoS, sent, acknowledged, connections) per publisher.
    pub publishers: Vec<(String, u8, u64, usize, u32)>,
    /// Every fault, in order.
    pub faults: Vec<InjectedFault>,
    /// Kill / freeze / partition to first delivery to an affected subscriber.
    pub failover: Vec<Duration>,
    /// The same times by the kind of fault that caused them.
    pub failover_by_kind: BTreeMap<FaultKind, Vec<Duration>>,
    /// Affected subscribers that got nothing after their fault.
    pub failover_unmeasured: usize,
    /// Retained state per node.
    pub retained: RetainedCheck,
    /// (node id, panic line).
    pub panics: Vec<(String, String)>,
    /// (node id, peak RSS in KiB, incarnations).
    pub nodes: Vec<(String, u64, usize)>,
    /// Whether every subscriber went quiet within the drain limit.
    pub drained: bool,
    /// Faults that could not be injected as planned, with the reason.
    pub notes: Vec<String>,
}

impl Report {
    /// Fills the subscriber lines and failover times from the ledger.
    pub fn judge_ledger(&mut self, ledger: &Ledger, placement: &BTreeMap<String, String>) {
        for (id, sub) in &ledger.subscribers {
            let acked = ledger
                .publishers
                .get(&sub.topic)
                .map(|p| p.acked.clone())
                .unwrap_or_default();
            let shown = placement.get(id).cloned().unwrap_or_else(|| "?".into());
            let verdict = Verdict::judge(&acked, &sub.deliveries);
            let first_missing_acked_at = verdict.missing.first().and_then(|seq| {
                let publisher = ledger.publishers.get(&sub.topic)?;
                publisher.acked_at.get(seq).copied()
            });
            self.subscribers.push(SubscriberLine {
                client_id: id.clone(),
                qos: sub.qos,
                slow: sub.slow,
                shares_publisher_node: shares_node(&shown),
                placement: shown,
                verdict,
                connections: sub.connections.len(),
                sessions_lost: sub.sessions_lost,
                foreign: sub.foreign.len(),
                first_missing_acked_at,
            });
        }
        for (topic, p) in &ledger.publishers {
            self.publishers
                .push((topic.clone(), p.qos, p.sent, p.acked.len(), p.connections));
        }
        self.measure_failover(ledger);
    }

    fn measure_failover(&mut self, ledger: &Ledger) {
        for fault in self
            .faults
            .iter()
            .filter(|f| f.kind != FaultKind::RedisRestart)
        {
            for id in &fault.affected {
                let Some(sub) = ledger.subscribers.get(id) else {
                    continue;
                };
                let on_new_connection = sub
                    .connections
                    .iter()
                    .filter(|c| c.opened > fault.at)
                    .find_map(|c| c.first_delivery);
                let any_later = sub.delivery_times.iter().find(|t| **t > fault.at).copied();
                match on_new_connection.or(any_later) {
                    Some(served) => {
                        self.failover.push(served - fault.at);
                        let by_kind = self.failover_by_kind.entry(fault.kind).or_default();
                        by_kind.push(served - fault.at);
                    }
                    None => self.failover_unmeasured += 1,
                }
            }
        }
        self.failover.sort();
        self.failover_by_kind
            .values_mut()
            .for_each(|times| times.sort());
    }

    /// Every broken guarantee, one line each.
    pub fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        for s in &self.subscribers {
            if !s.verdict.missing.is_empty() {
                let since_epoch = s
                    .first_missing_acked_at
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                found.push(format!(
                    "{} (QoS {}): {} (first missing acknowledged at unix time {since_epoch:.3})",
                    s.client_id,
                    s.qos,
                    s.verdict.describe()
                ));
            }
            if s.qos == 2 && s.verdict.duplicates > 0 {
                found.push(format!(
                    "{}: {} QoS 2 duplicates reached the application",
                    s.client_id, s.verdict.duplicates
                ));
            }
            if s.foreign > 0 {
                found.push(format!(
                    "{}: {} messages on topics it did not subscribe to",
                    s.client_id, s.foreign
                ));
            }
        }
        found.extend(self.retained.violations());
        for (node, line) in &self.panics {
            found.push(format!("node {node} panicked: {line}"));
        }
        for (node, kib, _) in &self.nodes {
            if *kib > RSS_LIMIT_KIB {
                found.push(format!("node {node} RSS {} MiB > 512 MiB", kib / 1024));
            }
        }
        if !self.drained {
            found.push("subscribers were still receiving when the drain limit ran out".into());
        }
        found
    }

    /// Fails with the summary and the violations if there are any.
    pub fn assert_clean(&self) -> Result<()> {
        let violations = self.violations();
        if violations.is_empty() {
            return Ok(());
        }
        bail!(
            "{} guarantee(s) broken (summary above):\n  {}",
            violations.len(),
            violations.join("\n  ")
        )
    }

    /// The summary block, ready to paste into a closing note.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "=== AstraMQ chaos run (seed {}, {:.0?}) ===",
            self.seed, self.wall
        );
        self.write_faults(&mut out);
        self.write_publishers(&mut out);
        self.write_subscribers(&mut out);
        self.write_totals(&mut out);
        self.write_nodes(&mut out);
        let violations = self.violations();
        let _ = writeln!(out, "violations: {}", violations.len());
        for v in &violations {
            let _ = writeln!(out, "  - {v}");
        }
        out
    }

    fn write_faults(&self, out: &mut String) {
        let mut by_kind: BTreeMap<FaultKind, (usize, usize)> = BTreeMap::new();
        for f in &self.faults {
            let entry = by_kind.entry(f.kind).or_default();
            if f.skipped.is_some() {
                entry.1 += 1;
            } else {
                entry.0 += 1;
            }
        }
        let _ = writeln!(out, "faults injected:");
        for (kind, (done, skipped)) in by_kind {
            let _ = writeln!(out, "  {kind:<20} {done} (skipped {skipped})");
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
    }

    fn write_publishers(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "publishers (topic, QoS, sent, acknowledged, connections):"
        );
        for (topic, qos, sent, acked, conns) in &self.publishers {
            let _ = writeln!(out, "  {topic:<40} q{qos} {sent:>6} {acked:>6} {conns:>4}");
        }
    }

    fn write_subscribers(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "subscribers (id, QoS, slow, placement at start, result, connections, sessions lost):"
        );
        for s in &self.subscribers {
            let _ = writeln!(
                out,
                "  {:<28} q{} {:<4} {:<22} {}; conns {}; sessions lost {}",
                s.client_id,
                s.qos,
                if s.slow { "slow" } else { "fast" },
                s.placement,
                s.verdict.describe(),
                s.connections,
                s.sessions_lost
            );
        }
        let shared = self
            .subscribers
            .iter()
            .filter(|s| s.shares_publisher_node)
            .count();
        let _ = writeln!(
            out,
            "  placement: {shared} of {} subscribers started on their publisher's node",
            self.subscribers.len()
        );
    }

    fn write_totals(&self, out: &mut String) {
        let (q1_first, q1_dups) = self
            .subscribers
            .iter()
            .filter(|s| s.qos == 1)
            .fold((0, 0), |(n, d), s| {
                (n + s.verdict.received, d + s.verdict.duplicates)
            });
        let q2_dups: u64 = self
            .subscribers
            .iter()
            .filter(|s| s.qos == 2)
            .map(|s| s.verdict.duplicates)
            .sum();
        let lost: usize = self
            .subscribers
            .iter()
            .map(|s| s.verdict.missing.len())
            .sum();
        let ratio = if q1_first == 0 {
            0.0
        } else {
            q1_dups as f64 / q1_first as f64
        };
        let _ = writeln!(out, "acknowledged messages lost: {lost}");
        let _ = writeln!(
            out,
            "QoS 1 duplicates: {q1_dups} over {q1_first} messages (ratio {ratio:.4})"
        );
        let _ = writeln!(out, "QoS 2 duplicates at the application: {q2_dups}");
        let _ = writeln!(
            out,
            "failover (fault to first delivery, {} measured, {} unmeasured): p50 {} p99 {}",
            self.failover.len(),
            self.failover_unmeasured,
            percentile(&self.failover, 50),
            percentile(&self.failover, 99)
        );
        for (kind, times) in &self.failover_by_kind {
            let _ = writeln!(
                out,
                "  after {kind:?}: {} measured, p50 {} p99 {}",
                times.len(),
                percentile(times, 50),
                percentile(times, 99)
            );
        }
        let _ = writeln!(
            out,
            "retained state identical on every node: {} ({} topics)",
            self.retained.identical(),
            self.retained.acked.len()
        );
    }

    fn write_nodes(&self, out: &mut String) {
        let _ = writeln!(out, "nodes (id, peak RSS, incarnations):");
        for (node, kib, incarnations) in &self.nodes {
            let _ = writeln!(out, "  {node:<28} {:>5} MiB {incarnations}", kib / 1024);
        }
        let _ = writeln!(out, "panics in node logs: {}", self.panics.len());
    }
}

impl RetainedCheck {
    /// Whether every node returned the same retained messages.
    pub fn identical(&self) -> bool {
        let mut views = self.per_node.values();
        let first = views.next();
        views.all(|v| Some(v) == first)
    }

    fn violations(&self) -> Vec<String> {
        let mut found = Vec::new();
        if !self.identical() {
            found.push(format!(
                "retained state differs between nodes: {:?}",
                self.per_node
            ));
        }
        for (node, view) in &self.per_node {
            for (topic, acked) in &self.acked {
                let value = view.get(topic).and_then(|v| v.parse::<u64>().ok());
                if value.is_none_or(|v| v < *acked) {
                    found.push(format!(
                        "node {node}: retained {topic} is {value:?}, older than the acknowledged {acked}"
                    ));
                }
            }
        }
        found
    }
}

/// Reads every retained message under `filter` from the node at `addr`.
pub async fn read_retained(addr: SocketAddr, filter: &str) -> Result<BTreeMap<String, String>> {
    let (mut conn, _) = RawClient::connected(addr, &Connect::new(&unique_id("retained"))).await?;
    conn.subscribe(1, &[(filter, 1)]).await?;
    let mut found = BTreeMap::new();
    while let Some(packet) = conn.recv_for(RETAINED_QUIET).await? {
        let Ok(publish) = packet.publish() else {
            continue;
        };
        if publish.qos == 1 {
            conn.send(&wire::puback(publish.packet_id)).await?;
        }
        if publish.retain {
            let payload = String::from_utf8_lossy(&publish.payload).into_owned();
            found.insert(publish.topic_str(), payload);
        }
    }
    let _ = conn.send(&wire::disconnect()).await;
    Ok(found)
}

/// "sub@n1 pub@n1" names one node twice.
fn shares_node(placement: &str) -> bool {
    let mut nodes = placement
        .split(' ')
        .filter_map(|p| p.split_once('@').map(|(_, n)| n));
    matches!((nodes.next(), nodes.next()), (Some(a), Some(b)) if a == b && a != "?")
}

/// The `p`-th percentile of sorted durations, or "-" if there are none.
fn percentile(sorted: &[Duration], p: usize) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let index = ((sorted.len() - 1) * p).div_ceil(100);
    format!("{:.2?}", sorted[index.min(sorted.len() - 1)])
}
