//! A publisher task: sends stamped PUBLISH packets at a fixed rate or flat
//! out, keeping at most `window` QoS 1/2 messages unacknowledged.
//!
//! Pacing: a 1 ms ticker releases `elapsed × rate` messages in total, so a
//! rate of 2,000/s goes out as 2 per tick. If the broker holds the window
//! shut, at most one window of backlog is kept (the rest is skipped, and the
//! report's send rate shows it) rather than bursting later.
//! Flat out at QoS 0 the socket's back-pressure is the only limit.
//!
//! Closed loop (`max_outstanding`): brokers acknowledge QoS 1 on receipt, so
//! a publisher's window does not slow it when subscribers fall behind and an
//! open-loop flat-out run measures an overloaded broker's queues. With a cap,
//! publishers also wait while the run's outstanding deliveries (expected −
//! delivered, over all clients) would exceed it. A lost message stays
//! outstanding, so use it where nothing is dropped (QoS 1/2).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::{Buf, Bytes};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

use crate::client::{Connection, MAX_PACKET};
use crate::mqtt::{self, Incoming};
use crate::probe;
use crate::subscriber::Shared;

/// Messages written per write at QoS 0 flat out.
const QOS0_BATCH: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    /// Publisher number, carried in the probe.
    pub index: u32,
    pub topic: Bytes,
    pub qos: u8,
    /// Payload size in bytes (at least [`probe::MIN_PAYLOAD`]).
    pub payload: usize,
    /// Messages per second, or `None` for flat out.
    pub rate: Option<f64>,
    /// Most QoS 1/2 messages awaiting acknowledgement (lowered to the
    /// broker's 5.0 Receive Maximum when that is smaller).
    pub window: usize,
    /// Deliveries one message to this topic should cause.
    pub fanout: u64,
    /// Cap on outstanding deliveries over the whole run, if closed loop.
    pub max_outstanding: Option<u64>,
}

pub async fn run(
    mut conn: Connection,
    config: Config,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    ensure!(
        config.qos <= conn.maximum_qos,
        "the broker accepts publishes up to QoS {} only",
        conn.maximum_qos
    );
    let window = config.window.min(usize::from(conn.receive_maximum));
    let mut payload = vec![0u8; config.payload];
    let mut packet_id: u16 = 0;
    let mut in_flight = 0usize;
    let started = Instant::now();
    // Messages the rate schedule has released so far.
    let mut released = 0u64;
    let backlog_cap = window.max(QOS0_BATCH) as u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);

    while !*stop.borrow() {
        // Created before the cap is checked, so no delivery can slip between.
        let progress = shared.progress.notified();
        tokio::pin!(progress);
        let mut n = if config.qos == 0 {
            QOS0_BATCH
        } else {
            window - in_flight
        };
        if let Some(rate) = config.rate {
            let scheduled = (started.elapsed().as_secs_f64() * rate) as u64;
            released = released.max(scheduled.saturating_sub(backlog_cap));
            n = n.min((scheduled - released) as usize);
        }
        let mut capped = false;
        if let (Some(cap), true) = (config.max_outstanding, config.fanout > 0) {
            let outstanding = shared
                .expected
                .load(Relaxed)
                .saturating_sub(shared.delivered.load(Relaxed));
            let room = (cap.saturating_sub(outstanding) / config.fanout) as usize;
            capped = n > 0 && room == 0;
            n = n.min(room);
        }
        if n > 0 {
            let now = probe::now_ns();
            for _ in 0..n {
                probe::stamp(&mut payload, now, config.index);
                packet_id = if packet_id == u16::MAX {
                    1
                } else {
                    packet_id + 1
                };
                mqtt::encode_publish(
                    &mut conn.wbuf,
                    conn.protocol,
                    &config.topic,
                    config.qos,
                    packet_id,
                    &payload,
                );
            }
            released += n as u64;
            if config.qos > 0 {
                in_flight += n;
            }
            shared.sent.fetch_add(n as u64, Relaxed);
            shared.expected.fetch_add(n as u64 * config.fanout, Relaxed);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                written = conn.flush() => written?,
            }
        }
        if config.qos == 0 && config.rate.is_none() && !capped {
            // Flat out: let the other clients on this thread run.
            tokio::task::yield_now().await;
            continue;
        }
        let mut got_bytes = false;
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            read = conn.fill(), if config.qos > 0 => { read?; got_bytes = true; }
            _ = ticker.tick(), if config.rate.is_some() => {}
            _ = &mut progress, if capped => {}
        }
        if got_bytes {
            in_flight = in_flight.saturating_sub(consume_acks(&mut conn, &shared)?);
            conn.flush().await?;
        }
    }
    conn.wbuf.clear();
    mqtt::encode_disconnect(&mut conn.wbuf);
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
    Ok(())
}

/// Handles acknowledgements; returns how many publishes completed.
/// PUBREC is answered with PUBREL (queued in the write buffer).
fn consume_acks(conn: &mut Connection, shared: &Shared) -> Result<usize> {
    let mut completed = 0;
    let mut used = 0;
    while let Some((packet, len)) = mqtt::parse(&conn.rbuf[used..], MAX_PACKET, conn.protocol)? {
        used += len;
        match packet {
            Incoming::PubAck(_) | Incoming::PubComp(_) => completed += 1,
            Incoming::PubRec(id) => mqtt::encode_ack(&mut conn.wbuf, mqtt::PUBREL, id),
            _ => {}
        }
    }
    conn.rbuf.advance(used);
    shared.acked.fetch_add(completed as u64, Relaxed);
    Ok(completed)
}
