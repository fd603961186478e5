//! A publisher that survives faults: one message in flight at a time, the
//! sequence number as payload, and a record in the ledger of exactly the
//! ones the broker acknowledged (PUBACK / PUBREC).
//!
//! On any failure (connection lost, no acknowledgement within
//! [`ACK_LIMIT`]) it reconnects (clean session) and goes on with the next
//! sequence number: an unacknowledged message is never re-sent, so it may
//! be lost or delivered, and the checker ignores it. Every
//! [`PublisherSpec::retain_every`]-th message is followed by a retained
//! QoS 1 publish of the same number on the publisher's retained topic.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::sync::watch;

use super::ledger::{lock, SharedLedger};
use super::Phase;
use crate::wire::{self, kind, Connect, Publish};
use crate::RawClient;

/// How long a publish (or the CONNACK) may wait for its answer.
const ACK_LIMIT: Duration = super::GIVE_UP_AFTER;

/// Pause before a new connection attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// Who a publisher is and how fast it goes.
#[derive(Debug, Clone)]
pub struct PublisherSpec {
    /// Its client id (clean session).
    pub client_id: String,
    /// The topic its numbered messages go to.
    pub topic: String,
    /// The topic of its retained messages.
    pub retained_topic: String,
    /// QoS of its numbered messages (1 or 2).
    pub qos: u8,
    /// Pause between two messages.
    pub interval: Duration,
    /// A retained publish follows every this many messages.
    pub retain_every: u64,
}

/// Publishes until `phase` leaves [`Phase::Running`].
pub async fn run(
    spec: PublisherSpec,
    addr: SocketAddr,
    ledger: SharedLedger,
    phase: watch::Receiver<Phase>,
) {
    let mut next_seq = 1;
    while *phase.borrow() == Phase::Running {
        let _ = publish_on_one_connection(&spec, addr, &ledger, &phase, &mut next_seq).await;
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

async fn publish_on_one_connection(
    spec: &PublisherSpec,
    addr: SocketAddr,
    ledger: &SharedLedger,
    phase: &watch::Receiver<Phase>,
    next_seq: &mut u64,
) -> Result<()> {
    let connect = Connect::new(&spec.client_id).with_keep_alive(10);
    let (mut conn, ack) = tokio::time::timeout(ACK_LIMIT, RawClient::handshake(addr, &connect))
        .await
        .map_err(|_| anyhow::anyhow!("no CONNACK within {ACK_LIMIT:?}"))??;
    if ack.code != 0 {
        bail!("CONNACK refused with code {}", ack.code);
    }
    lock(ledger).publisher(&spec.topic, spec.qos).connections += 1;
    while *phase.borrow() == Phase::Running {
        let seq = *next_seq;
        *next_seq += 1;
        lock(ledger).publisher(&spec.topic, spec.qos).sent += 1;
        publish(&mut conn, &spec.topic, spec.qos, seq, false).await?;
        lock(ledger)
            .publisher(&spec.topic, spec.qos)
            .acknowledged(seq);
        if seq.is_multiple_of(spec.retain_every) {
            publish(&mut conn, &spec.retained_topic, 1, seq, true).await?;
            let mut ledger = lock(ledger);
            let last = ledger
                .retained_acked
                .entry(spec.retained_topic.clone())
                .or_default();
            *last = (*last).max(seq);
        }
        tokio::time::sleep(spec.interval).await;
    }
    let _ = conn.send(&wire::disconnect()).await;
    Ok(())
}

/// Sends one message with payload `seq` and completes its exchange.
/// Returns once it is acknowledged; fails (so the caller reconnects) if it
/// is not.
async fn publish(conn: &mut RawClient, topic: &str, qos: u8, seq: u64, retain: bool) -> Result<()> {
    let id = packet_id(seq);
    let mut message = Publish::new(topic, qos, seq.to_string().as_bytes()).with_packet_id(id);
    if retain {
        message = message.with_retain();
    }
    conn.send(&message.encode()).await?;
    let first_ack = if qos == 2 { kind::PUBREC } else { kind::PUBACK };
    if !await_ack(conn, first_ack, id).await? {
        bail!("no acknowledgement of seq {seq} within {ACK_LIMIT:?}");
    }
    if qos == 2 {
        conn.send(&wire::pubrel(id)).await?;
        // Acknowledged already (PUBREC): the broker owns the message even if
        // PUBCOMP never comes; a dead connection shows on the next publish.
        await_ack(conn, kind::PUBCOMP, id).await?;
    }
    Ok(())
}

/// Waits up to [`ACK_LIMIT`] for an acknowledgement of type `ack_kind` for
/// `id`, skipping anything else.
async fn await_ack(conn: &mut RawClient, ack_kind: u8, id: u16) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + ACK_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(packet) = conn.recv_for(left).await? else {
            return Ok(false);
        };
        if packet.kind() == ack_kind && packet.ack_id(ack_kind).ok() == Some(id) {
            return Ok(true);
        }
    }
}

/// Packet ids cycle through 1..=65535 (0 is not a valid id).
fn packet_id(seq: u64) -> u16 {
    (seq % 65_535) as u16 + 1
}
