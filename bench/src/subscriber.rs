//! A subscriber task: reads deliveries, acknowledges QoS 1/2, counts bench
//! payloads and records their end-to-end latency during the timed window.
//! Also home of [`Shared`], the counters every client task updates.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::sync::{watch, Notify};

use crate::client::{Connection, MAX_PACKET};
use crate::mqtt::{self, Incoming, Protocol};
use crate::probe;

/// State shared by all client tasks of one run. Counters are bumped once
/// per batch (a write or a read), not per message.
pub struct Shared {
    /// True during the timed window: latencies are recorded only then.
    pub measuring: AtomicBool,
    /// PUBLISH packets written by publishers.
    pub sent: AtomicU64,
    /// QoS 1/2 publishes completed (PUBACK or PUBCOMP received).
    pub acked: AtomicU64,
    /// Deliveries the sends should cause (sum of each topic's audience).
    pub expected: AtomicU64,
    /// Bench payloads received by subscribers.
    pub delivered: AtomicU64,
    /// End-to-end latency in ns of deliveries received in the window.
    pub latency: Mutex<Histogram<u64>>,
    /// The cap on outstanding deliveries when publishers run closed loop
    /// (`--max-outstanding`).
    pub max_outstanding: Option<u64>,
    /// Wakes publishers blocked by the cap once outstanding deliveries fell
    /// to half of it: waking them in bulk, not per read, keeps a hundred
    /// publishers from stampeding after every small batch.
    pub progress: Notify,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub sent: u64,
    pub acked: u64,
    pub expected: u64,
    pub delivered: u64,
}

impl Counts {
    pub fn minus(&self, earlier: &Counts) -> Counts {
        Counts {
            sent: self.sent - earlier.sent,
            acked: self.acked - earlier.acked,
            expected: self.expected - earlier.expected,
            delivered: self.delivered - earlier.delivered,
        }
    }
}

impl Shared {
    pub fn new(max_outstanding: Option<u64>) -> Result<Shared> {
        Ok(Shared {
            measuring: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            // 1 ns .. 60 s at 3 significant digits.
            latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 3)?),
            max_outstanding,
            progress: Notify::new(),
        })
    }

    pub fn counts(&self) -> Counts {
        Counts {
            sent: self.sent.load(Relaxed),
            acked: self.acked.load(Relaxed),
            expected: self.expected.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
        }
    }
}

/// Runs until `stop` flips (or the connection fails).
pub async fn run(
    mut conn: Connection,
    shared: std::sync::Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    // Subscribers may only receive, so they must ping to stay alive.
    let period = Duration::from_secs(u64::from(conn.keep_alive.max(2)) / 2);
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = conn.fill() => { read?; }
            _ = ping.tick() => mqtt::encode_pingreq(&mut conn.wbuf),
        }
        let Connection {
            rbuf,
            wbuf,
            protocol,
            ..
        } = &mut conn;
        consume(rbuf, wbuf, *protocol, &shared)?;
        conn.flush().await?;
    }
    mqtt::encode_disconnect(&mut conn.wbuf);
    let _ = conn.flush().await;
    Ok(())
}

/// Handles every whole packet in `rbuf`, queueing acknowledgements in `wbuf`.
fn consume(
    rbuf: &mut BytesMut,
    wbuf: &mut BytesMut,
    protocol: Protocol,
    shared: &Shared,
) -> Result<()> {
    // One clock read per batch: the packets in it arrived together.
    let now = probe::now_ns();
    let mut latency = shared
        .measuring
        .load(Relaxed)
        .then(|| shared.latency.lock().expect("latency lock"));
    let mut delivered = 0;
    let mut used = 0;
    while let Some((packet, len)) = mqtt::parse(&rbuf[used..], MAX_PACKET, protocol)? {
        used += len;
        match packet {
            Incoming::Publish {
                qos,
                packet_id,
                payload,
                ..
            } => {
                if let Some(sent) = probe::sent_ns(payload) {
                    delivered += 1;
                    if let Some(histogram) = latency.as_mut() {
                        histogram.saturating_record(now.saturating_sub(sent).max(1));
                    }
                }
                match qos {
                    1 => mqtt::encode_ack(wbuf, mqtt::PUBACK, packet_id),
                    2 => mqtt::encode_ack(wbuf, mqtt::PUBREC, packet_id),
                    _ => {}
                }
            }
            Incoming::PubRel(packet_id) => mqtt::encode_ack(wbuf, mqtt::PUBCOMP, packet_id),
            _ => {}
        }
    }
    rbuf.advance(used);
    let total = shared.delivered.fetch_add(delivered, Relaxed) + delivered;
    if let (Some(cap), true) = (shared.max_outstanding, delivered > 0) {
        if shared.expected.load(Relaxed).saturating_sub(total) <= cap / 2 {
            shared.progress.notify_waiters();
        }
    }
    Ok(())
}
