//! The Redis store: session state shared by every node of a cluster.
//!
//! What lives where:
//! - `astramq:s:{id}` (hash): owner node, fencing epoch, connected flag,
//!   persistent flag, and the will while connected (a survivor publishes it
//!   if the owner dies);
//! - `...:subs`: the subscriptions of a persistent session, written through
//!   on every SUBSCRIBE/UNSUBSCRIBE so they outlive the owner node;
//! - `...:q` (stream): **every QoS 1/2 delivery to a persistent session
//!   that its client has not acknowledged**, connected or not, within the
//!   session's bound of entries and bytes (the bytes counted in the
//!   session hash, see `redis_model::queue`). It is
//!   written before the publisher is acknowledged and an entry is deleted
//!   only after the client acknowledged it, so whoever owns the session
//!   next — after a disconnect, a takeover or the owner's death — delivers
//!   from it;
//! - `...:inflight`: packet id → stage and queue entry of outgoing QoS 2
//!   messages (written before the PUBLISH or PUBREL leaves), and of QoS 1
//!   messages once parked;
//! - `...:qos2`: incoming QoS 2 packet ids between PUBREC and PUBREL;
//!   `...:seen`: QoS 2 publish ids already queued (exactly once);
//! - `astramq:retained` (hash): topic → retained message, with its
//!   counters and change log; every node indexes the topics
//!   ([`crate::retained::redis`]).
//!
//! Claims, parks and discards are Lua scripts (see `redis_model::scripts`), each
//! checking the epoch in the same step as its write; no claim deletes a
//! queued message. A claim for a session another node owns first asks that
//! node (through its inbox) to let go and, if the client is connected
//! there, waits until it has parked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::Value;

use super::{ClaimRequest, QueueOutcome, SessionClaim, SessionOwner, Store, StoreError};
use crate::limits::queue::{QueueBound, QueueFull};
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::redis_model::inbox::send_drain;
use crate::redis_model::metrics::{ClusterMetrics, RedisOp};
use crate::redis_model::queue::{
    enqueue_cmd, parse_enqueue_reply, parse_enqueued, qos2_record_cmd, Enqueued,
};
use crate::redis_model::scripts::{evalsha, query_cmd, query_pipeline, Scripts};
use crate::redis_model::{keys, value as rv, wire};
use crate::retained::redis::{RedisRetained, RetainedError};
use crate::retained::{RetainOutcome, RetainedLimits};
use crate::session_state::{IncomingQos2, OutgoingInflight, Progress, SessionState};
use crate::subscription::Subscription;

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<rv::UnexpectedReply> for StoreError {
    fn from(error: rv::UnexpectedReply) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<RetainedError> for StoreError {
    fn from(error: RetainedError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<wire::WireError> for StoreError {
    fn from(error: wire::WireError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

/// Sessions and retained messages in Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    metrics: Arc<ClusterMetrics>,
    node_id: Arc<str>,
    /// Bound of each persistent session's queue.
    queue_bound: QueueBound,
    /// How long a claim waits for another node to park a connected session.
    takeover_timeout: Duration,
    scripts: Arc<Scripts>,
    /// Retained messages, with this node's index of their topics.
    retained: Arc<RedisRetained>,
}

impl RedisStore {
    /// A store over `connection` for node `node_id`.
    pub fn new(
        connection: ConnectionManager,
        metrics: Arc<ClusterMetrics>,
        node_id: Arc<str>,
        queue_bound: QueueBound,
        takeover_timeout: Duration,
        scripts: Arc<Scripts>,
        retained_limits: RetainedLimits,
    ) -> RedisStore {
        let retained = RedisRetained::new(connection.clone(), metrics.clone(), retained_limits);
        RedisStore {
            retained: Arc::new(retained),
            connection,
            metrics,
            node_id,
            queue_bound,
            takeover_timeout,
            scripts,
        }
    }

    /// The retained messages, to keep their index following Redis
    /// ([`RedisRetained::follow_periodically`]).
    pub fn retained(&self) -> Arc<RedisRetained> {
        self.retained.clone()
    }

    fn con(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// When another node owns the session: tell it to let go, and wait for
    /// its connected client (if any) to be parked there. The owner may
    /// change while we wait (a survivor adopting a dead owner's session):
    /// each new owner is told too.
    async fn release_from_other_owner(&self, client_id: &str) -> Result<(), StoreError> {
        let mut con = self.con();
        let session = keys::session(client_id);
        let deadline = Instant::now() + self.takeover_timeout;
        let mut told: Option<String> = None;
        loop {
            let (owner, connected): (Option<String>, Option<String>) = redis::cmd("HMGET")
                .arg(&session)
                .arg("owner")
                .arg("connected")
                .query_async(&mut con)
                .await?;
            let Some(owner) = owner.filter(|o| o.as_str() != &*self.node_id) else {
                return Ok(());
            };
            if told.as_deref() != Some(owner.as_str()) {
                crate::redis_model::inbox::send_release(&mut con, &owner, client_id).await?;
                told = Some(owner.clone());
            }
            // An owner without a heartbeat is dead or cut off: it cannot
            // park, and need not: everything the session has not had
            // acknowledged is in Redis already, and the old owner's writes
            // are fenced by the epoch this claim takes.
            let alive: bool = redis::cmd("EXISTS")
                .arg(keys::node_alive(&owner))
                .query_async(&mut con)
                .await?;
            if !alive {
                tracing::debug!(%client_id, %owner, "owner has no heartbeat; claiming without waiting");
                return Ok(());
            }
            if connected.as_deref() != Some("1") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(%client_id, %owner, "owner did not release the session in time; taking it over");
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl RedisStore {
    /// Runs one `ENQUEUE` per (client id, delivery) in one pipeline; the
    /// replies in the same order.
    async fn enqueue_all<'a>(
        &self,
        items: impl Iterator<Item = (&'a str, &'a Delivery)>,
    ) -> Result<Vec<Value>, StoreError> {
        let mut pipe = redis::pipe();
        for (client_id, delivery) in items {
            pipe.add_command(enqueue_cmd(
                &self.scripts,
                self.queue_bound,
                &self.node_id,
                client_id,
                delivery,
            ));
        }
        let mut con = self.con();
        let queued = query_pipeline::<Vec<Value>>(&self.scripts, &mut con, &pipe);
        Ok(self.metrics.timed(RedisOp::Enqueue, queued).await?)
    }
}

fn key_refs(keys: &[String]) -> Vec<&str> {
    keys.iter().map(String::as_str).collect()
}

fn parse_qos2_record(raw: &[u8]) -> IncomingQos2 {
    let text = String::from_utf8_lossy(raw);
    match text.split_once(':') {
        Some((mark, id)) if !id.is_empty() => IncomingQos2 {
            publish_id: Some(id.into()),
            fanned_out: mark == "d",
        },
        // An older or empty record: treat the message as delivered.
        _ => IncomingQos2 {
            publish_id: None,
            fanned_out: true,
        },
    }
}

/// Reads the state part of a CLAIM reply: the queue, with the entries the
/// client has in flight (by their in-flight records) set apart.
fn previous_state(parts: &[Value]) -> Result<SessionState, StoreError> {
    let mut state = SessionState::default();
    let subs = rv::bulk_list(parts.get(3))?;
    state.subscriptions = rv::subscriptions(&subs).into_iter().collect();
    let mut inflight = std::collections::HashMap::new();
    for pair in rv::bulk_list(parts.get(4))?.chunks_exact(2) {
        let Some(packet_id) = rv::parse_u64(&pair[0]).and_then(|id| u16::try_from(id).ok()) else {
            continue;
        };
        let (stage, queued) = wire::decode_inflight(&pair[1])?;
        inflight.insert(queued, (packet_id, stage));
    }
    for pair in rv::bulk_list(parts.get(5))?.chunks_exact(2) {
        if let Some(id) = rv::parse_u64(&pair[0]).and_then(|id| u16::try_from(id).ok()) {
            state.incoming_qos2.push((id, parse_qos2_record(&pair[1])));
        }
    }
    let entries = match parts.get(6) {
        Some(value) => rv::stream_entries(value)?,
        None => Vec::new(),
    };
    for entry in entries {
        let delivery = queued_delivery(&entry)?;
        match inflight.remove(entry.id.as_str()) {
            Some((packet_id, stage)) => state.outgoing.push(OutgoingInflight {
                packet_id,
                delivery,
                stage,
            }),
            None => state.pending.push_back(delivery),
        }
    }
    Ok(state)
}

/// A delivery read back from a session's queue, carrying its entry id.
fn queued_delivery(entry: &rv::StreamEntry) -> Result<Delivery, StoreError> {
    let raw = entry
        .get(b"d")
        .ok_or_else(|| StoreError::Unavailable("queue entry without delivery".into()))?;
    let mut delivery = wire::decode_delivery(raw.clone())?;
    delivery.queued = Some(entry.id.as_str().into());
    Ok(delivery)
}

#[async_trait]
impl Store for RedisStore {
    async fn claim_session(&self, request: &ClaimRequest) -> Result<SessionClaim, StoreError> {
        let client_id = &request.client_id;
        self.release_from_other_owner(client_id).await?;
        let will = request
            .will
            .as_ref()
            .map(|w| wire::encode_message(w))
            .unwrap_or_default();
        let session_keys = keys::session_keys(client_id);
        let mut claim = evalsha(&self.scripts.claim, &key_refs(&session_keys));
        claim
            .arg(&*self.node_id)
            .arg(if request.clean_start { "1" } else { "0" })
            .arg(will.as_ref())
            .arg(if request.persistent { "1" } else { "0" })
            .arg(
                request
                    .expiry
                    .map(|secs| secs.to_string())
                    .unwrap_or_default(),
            );
        // Listed as ours first: if this node dies before the claim, the
        // survivor finds the id, sees another owner, and leaves it be.
        let mut pipe = redis::pipe();
        pipe.cmd("SADD")
            .arg(keys::node_clients(&self.node_id))
            .arg(&**client_id)
            .ignore();
        pipe.add_command(claim);
        let mut con = self.con();
        let claimed = query_pipeline::<(Value,)>(&self.scripts, &mut con, &pipe);
        let (reply,) = self.metrics.timed(RedisOp::Claim, claimed).await?;
        let parts = rv::array(reply)?;
        let epoch = parts.first().and_then(rv::int).unwrap_or(0) as u64;
        let had_state = parts.get(2).and_then(rv::int) == Some(1);
        let previous = if had_state {
            Some(previous_state(&parts)?)
        } else {
            None
        };
        Ok(SessionClaim {
            owner: SessionOwner {
                client_id: client_id.clone(),
                epoch,
            },
            previous,
        })
    }

    async fn update_subscriptions(
        &self,
        owner: &SessionOwner,
        added: &[(String, Subscription)],
        removed: &[String],
    ) -> Result<(), StoreError> {
        let session = keys::session(&owner.client_id);
        let subs = keys::subscriptions(&owner.client_id);
        let mut cmd = evalsha(&self.scripts.update_subscriptions, &[&session, &subs]);
        cmd.arg(owner.epoch).arg(added.len());
        for (filter, subscription) in added {
            cmd.arg(filter).arg(subscription.to_record());
        }
        for filter in removed {
            cmd.arg(filter);
        }
        let mut con = self.con();
        let updated = query_cmd::<Value>(&self.scripts, &mut con, &cmd);
        self.metrics.timed(RedisOp::Session, updated).await?;
        Ok(())
    }

    async fn drain_offline(
        &self,
        owner: &SessionOwner,
        after: Option<&str>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(keys::queue(&owner.client_id)).arg(start).arg("+");
        let mut con = self.con();
        let read = cmd.query_async::<Value>(&mut con);
        let reply = self.metrics.timed(RedisOp::Session, read).await?;
        rv::stream_entries(&reply)?
            .iter()
            .map(queued_delivery)
            .collect()
    }

    async fn record_progress(
        &self,
        owner: &SessionOwner,
        progress: &Progress,
    ) -> Result<bool, StoreError> {
        if progress.is_empty() {
            return Ok(true);
        }
        let session = keys::session(&owner.client_id);
        let inflight = keys::inflight(&owner.client_id);
        let queue = keys::queue(&owner.client_id);
        let mut cmd = evalsha(
            &self.scripts.session_progress,
            &[&session, &inflight, &queue],
        );
        cmd.arg(owner.epoch).arg(progress.completed.len());
        for packet_id in &progress.completed {
            cmd.arg(*packet_id);
        }
        cmd.arg(progress.stages.len());
        for (packet_id, stage, queued) in &progress.stages {
            cmd.arg(*packet_id)
                .arg(wire::encode_inflight(*stage, queued));
        }
        for (queued, size) in &progress.acknowledged {
            cmd.arg(&**queued).arg(*size);
        }
        let mut con = self.con();
        let recorded = query_cmd::<i64>(&self.scripts, &mut con, &cmd);
        Ok(self.metrics.timed(RedisOp::Session, recorded).await? == 1)
    }

    async fn release_incoming_qos2(
        &self,
        owner: &SessionOwner,
        packet_ids: &[u16],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for packet_id in packet_ids {
            pipe.add_command(qos2_record_cmd(&self.scripts, owner, *packet_id, ""))
                .ignore();
        }
        let mut con = self.con();
        let released = query_pipeline::<()>(&self.scripts, &mut con, &pipe);
        self.metrics.timed(RedisOp::Session, released).await?;
        Ok(())
    }

    async fn park_session(
        &self,
        owner: &SessionOwner,
        state: SessionState,
    ) -> Result<(), StoreError> {
        let session_keys = keys::session_keys(&owner.client_id);
        let mut cmd = evalsha(&self.scripts.park, &key_refs(&session_keys));
        cmd.arg(owner.epoch).arg(state.subscriptions.len());
        for (filter, subscription) in &state.subscriptions {
            cmd.arg(filter).arg(subscription.to_record());
        }
        // Queued deliveries are in Redis already; the packet ids of QoS 1
        // messages in flight are kept so a resume re-sends them with
        // their original ids (QoS 2 stages were recorded as they changed).
        let in_flight: Vec<(u16, String)> = state
            .outgoing
            .iter()
            .filter_map(|entry| {
                let queued = entry.delivery.queued.as_deref()?;
                Some((entry.packet_id, wire::encode_inflight(entry.stage, queued)))
            })
            .collect();
        cmd.arg(in_flight.len());
        for (packet_id, record) in &in_flight {
            cmd.arg(*packet_id).arg(record);
        }
        cmd.arg(
            state
                .expiry
                .map(|secs| secs.to_string())
                .unwrap_or_default(),
        );
        let mut con = self.con();
        let parked = query_cmd::<i64>(&self.scripts, &mut con, &cmd);
        if self.metrics.timed(RedisOp::Park, parked).await? == 0 {
            tracing::debug!(client_id = %owner.client_id, "park skipped: session owned elsewhere now");
        }
        Ok(())
    }

    async fn discard_session(&self, owner: &SessionOwner) -> Result<bool, StoreError> {
        let session_keys = keys::session_keys(&owner.client_id);
        let mut discard = evalsha(&self.scripts.discard, &key_refs(&session_keys));
        discard.arg(owner.epoch);
        let mut pipe = redis::pipe();
        pipe.add_command(discard);
        let mut con = self.con();
        let discarded = query_pipeline::<(i64,)>(&self.scripts, &mut con, &pipe);
        let (discarded,) = self.metrics.timed(RedisOp::Session, discarded).await?;
        if discarded != 1 {
            // Claimed again meanwhile (here or elsewhere): its owner lists it.
            return Ok(false);
        }
        // Another slot than the session's keys: its own command, and only
        // once the session is gone (a newer claim of it here lists it again).
        let mut pipe = redis::pipe();
        pipe.cmd("SREM")
            .arg(keys::node_clients(&self.node_id))
            .arg(&*owner.client_id)
            .ignore();
        let removed = query_pipeline::<()>(&self.scripts, &mut con, &pipe);
        self.metrics.timed(RedisOp::Session, removed).await?;
        Ok(true)
    }

    async fn session_epoch(&self, client_id: &ClientId) -> Result<Option<u64>, StoreError> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(keys::session(client_id)).arg("epoch");
        let mut con = self.con();
        let read = cmd.query_async::<Option<u64>>(&mut con);
        Ok(self.metrics.timed(RedisOp::Session, read).await?)
    }

    async fn enqueue_offline(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError> {
        let mut outcome = QueueOutcome::default();
        if batch.is_empty() {
            return Ok(outcome);
        }
        let items = batch
            .iter()
            .map(|(client_id, delivery)| (&**client_id, delivery));
        for reply in &self.enqueue_all(items).await? {
            match parse_enqueued(reply) {
                Enqueued::Queued(_) | Enqueued::Duplicate => outcome.queued += 1,
                Enqueued::Full(QueueFull::Messages) => outcome.dropped_queue_full += 1,
                Enqueued::Full(QueueFull::Bytes) => outcome.dropped_queue_bytes += 1,
                Enqueued::Qos0 => outcome.dropped_qos0 += 1,
                Enqueued::NoSession => outcome.no_session += 1,
            }
        }
        Ok(outcome)
    }

    async fn queue_for_session(
        &self,
        client_id: &ClientId,
        mut deliveries: Vec<Delivery>,
    ) -> Result<Vec<Delivery>, StoreError> {
        let durable: Vec<usize> = (0..deliveries.len())
            .filter(|&i| deliveries[i].qos != Qos::AtMostOnce)
            .collect();
        if durable.is_empty() {
            return Ok(deliveries);
        }
        let items = durable.iter().map(|&i| (&**client_id, &deliveries[i]));
        let replies = self.enqueue_all(items).await?;
        let mut connected_elsewhere = None;
        for (&i, reply) in durable.iter().zip(&replies) {
            let (enqueued, owner) = parse_enqueue_reply(reply);
            if let Enqueued::Queued(id) = enqueued {
                deliveries[i].queued = Some(id);
            }
            connected_elsewhere = connected_elsewhere.or(owner);
        }
        if let Some(owner) = connected_elsewhere {
            // A session that moved on (its pinned deliveries spilled after
            // another node claimed it): that node must read its queue.
            if let Err(error) = send_drain(&mut self.con(), &owner, client_id).await {
                tracing::debug!(%error, %owner, "drain request not sent");
            }
        }
        Ok(deliveries)
    }

    async fn set_retained(&self, message: Arc<Message>) -> Result<RetainOutcome, StoreError> {
        Ok(self.retained.set(&message).await?)
    }

    async fn retained_matching(&self, filters: &[&str]) -> Result<Vec<Arc<Message>>, StoreError> {
        Ok(self.retained.matching(filters).await?)
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        let n: usize = redis::cmd("HLEN")
            .arg(keys::retained())
            .query_async(&mut self.con())
            .await?;
        Ok(n)
    }
}
