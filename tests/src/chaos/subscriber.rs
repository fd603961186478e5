//! A persistent subscriber that survives faults: it connects through the
//! proxy with clean session = false and a fixed client id, reconnects
//! whenever its connection fails or goes silent, and records every
//! application delivery in the [`Ledger`](super::ledger::Ledger).
//!
//! A slow subscriber withholds every acknowledgement (PUBACK, PUBREC,
//! PUBCOMP) during stall periods, so its in-flight window fills and the
//! node queues the rest; the held acks go out when the stall ends (or are
//! dropped with the connection, in which case the broker must re-send).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use tokio::sync::watch;

use super::ledger::{lock, SharedLedger};
use super::receiver::{sequence_number, Arrival, Receiver};
use super::Phase;
use crate::wire::{self, kind, Connect, Publish};
use crate::RawClient;

/// How often the subscriber looks at its timers between packets.
const TICK: Duration = Duration::from_millis(100);

/// PINGREQ period: keeps the connection's liveness visible to both sides.
const PING_EVERY: Duration = Duration::from_millis(500);

/// A connection silent for this long (no PINGRESP either) is abandoned:
/// its node is frozen or cut off.
const SILENCE_LIMIT: Duration = super::GIVE_UP_AFTER;

/// Pause before a new connection attempt.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(200);

/// Keep-alive announced in CONNECT, in seconds.
const KEEP_ALIVE_SECS: u16 = 5;

/// Length of a slow subscriber's stall-and-release cycle, and the part of
/// it spent stalled.
const STALL_CYCLE: Duration = Duration::from_secs(8);
const STALL_FOR: Duration = Duration::from_secs(4);

/// Who a subscriber is and how it behaves.
#[derive(Debug, Clone)]
pub struct SubscriberSpec {
    /// Fixed client id (the session's name).
    pub client_id: String,
    /// The one topic it subscribes to.
    pub topic: String,
    /// Subscription QoS (1 or 2).
    pub qos: u8,
    /// Whether it stalls its acks periodically.
    pub slow: bool,
    /// Shift of its stall cycle, so slow subscribers do not stall in step.
    pub stall_offset: Duration,
}

/// Runs until `phase` is [`Phase::Stop`], reconnecting as often as needed.
pub async fn run(
    spec: SubscriberSpec,
    addr: SocketAddr,
    ledger: SharedLedger,
    phase: watch::Receiver<Phase>,
) {
    let started = Instant::now();
    let mut receiver = Receiver::default();
    while *phase.borrow() != Phase::Stop {
        let mut session = Session {
            spec: &spec,
            ledger: &ledger,
            phase: &phase,
            started,
            receiver: &mut receiver,
        };
        // Any failure means "connect again"; the ledger shows the effects.
        let _ = session.connect_and_serve(addr).await;
        tokio::time::sleep(RECONNECT_BACKOFF).await;
    }
}

/// One connection's worth of work.
struct Session<'a> {
    spec: &'a SubscriberSpec,
    ledger: &'a SharedLedger,
    phase: &'a watch::Receiver<Phase>,
    started: Instant,
    receiver: &'a mut Receiver,
}

impl Session<'_> {
    async fn connect_and_serve(&mut self, addr: SocketAddr) -> Result<()> {
        let connect = Connect::new(&self.spec.client_id)
            .with_clean_session(false)
            .with_keep_alive(KEEP_ALIVE_SECS);
        // A node that accepts the connection but never answers (frozen,
        // and still listed by the proxy) is given up on like a silent one.
        let (mut conn, ack) =
            tokio::time::timeout(SILENCE_LIMIT, RawClient::handshake(addr, &connect))
                .await
                .map_err(|_| anyhow::anyhow!("no CONNACK within {SILENCE_LIMIT:?}"))??;
        if ack.code != 0 {
            bail!("CONNACK refused with code {}", ack.code);
        }
        if !ack.session_present {
            self.receiver.session_lost();
            conn.subscribe(1, &[(&self.spec.topic, self.spec.qos)])
                .await?;
        }
        lock(self.ledger).subscriber_connected(&self.spec.client_id, ack.session_present);
        self.serve(&mut conn).await
    }

    /// Handles packets until the connection fails, goes silent, or the run
    /// stops.
    async fn serve(&mut self, conn: &mut RawClient) -> Result<()> {
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut last_heard = Instant::now();
        let mut last_ping = Instant::now();
        loop {
            if *self.phase.borrow() == Phase::Stop {
                let _ = conn.send(&wire::disconnect()).await;
                return Ok(());
            }
            if let Some(packet) = conn.recv_for(TICK).await? {
                last_heard = Instant::now();
                if let Some(answer) = self.handle(&packet) {
                    held.push(answer);
                }
            }
            if !self.stalled() && !held.is_empty() {
                conn.send(&held.concat()).await?;
                held.clear();
            }
            if last_ping.elapsed() >= PING_EVERY {
                conn.send(&wire::pingreq()).await?;
                last_ping = Instant::now();
            }
            if last_heard.elapsed() >= SILENCE_LIMIT {
                bail!("connection silent for {SILENCE_LIMIT:?}");
            }
        }
    }

    /// Records a delivery and returns the packet that answers `packet`.
    fn handle(&mut self, packet: &wire::RawPacket) -> Option<Vec<u8>> {
        if packet.kind() == kind::PUBREL {
            let id = packet.ack_id(kind::PUBREL).ok()?;
            return Some(self.receiver.on_pubrel(id));
        }
        let publish = packet.publish().ok()?;
        self.record(&publish);
        Receiver::ack_for(&publish)
    }

    fn record(&mut self, publish: &Publish) {
        if self.receiver.on_publish(publish) == Arrival::SameQos2Message {
            return;
        }
        let topic = publish.topic_str();
        // A payload that is no sequence number still counts as a foreign
        // delivery when its topic is not ours.
        let seq = sequence_number(&publish.payload).unwrap_or(u64::MAX);
        lock(self.ledger).delivered(&self.spec.client_id, &topic, seq);
    }

    /// Whether a slow subscriber is in the stalled part of its cycle (never
    /// while draining).
    fn stalled(&self) -> bool {
        if !self.spec.slow || *self.phase.borrow() != Phase::Running {
            return false;
        }
        let at = self.started.elapsed() + self.spec.stall_offset;
        let cycle = STALL_CYCLE.as_millis();
        at.as_millis() % cycle < STALL_FOR.as_millis()
    }
}
