//! The Redis store: session state shared by every node of a cluster.
//!
//! What lives where:
//! - `astramq:s:{id}` (hash): owner node, fencing epoch, connected flag,
//!   persistent flag, and the will while connected (a survivor publishes it
//!   if the owner dies);
//! - `...:subs`: the subscriptions of a persistent session, written through
//!   on every SUBSCRIBE/UNSUBSCRIBE so they outlive the owner node;
//! - `...:queue`, `...:inflight`, `...:qos2`: what a parked session waits
//!   to receive, what it has not acknowledged, and incoming QoS 2 ids;
//! - `astramq:retained` (hash): topic → retained message.
//!
//! Claims, parks and discards are Lua scripts (see `redis_scripts`), each
//! checking the epoch in the same step as its write. A claim for a session
//! another node owns first asks that node (through its inbox) to let go
//! and, if the client is connected there, waits until it has parked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::redis_scripts as lua;
use super::{ClaimRequest, QueueOutcome, SessionClaim, SessionOwner, Store, StoreError};
use crate::cluster::metrics::{ClusterMetrics, RedisOp};
use crate::cluster::{keys, redis_value as rv, wire};
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::router::topic::filter_matches;
use crate::session::state::SessionState;

impl From<redis::RedisError> for StoreError {
    fn from(error: redis::RedisError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

impl From<wire::WireError> for StoreError {
    fn from(error: wire::WireError) -> StoreError {
        StoreError::Unavailable(error.to_string())
    }
}

/// Compiled scripts, loaded once and invoked by SHA.
struct Scripts {
    claim: Script,
    park: Script,
    discard: Script,
    enqueue: Script,
    drain: Script,
    update_subscriptions: Script,
}

/// Sessions and retained messages in Redis.
pub struct RedisStore {
    connection: ConnectionManager,
    metrics: Arc<ClusterMetrics>,
    node_id: Arc<str>,
    max_queued: usize,
    /// How long a claim waits for another node to park a connected session.
    takeover_timeout: Duration,
    scripts: Scripts,
}

impl RedisStore {
    /// A store over `connection` for node `node_id`.
    pub fn new(
        connection: ConnectionManager,
        metrics: Arc<ClusterMetrics>,
        node_id: Arc<str>,
        max_queued: usize,
        takeover_timeout: Duration,
    ) -> RedisStore {
        RedisStore {
            connection,
            metrics,
            node_id,
            max_queued,
            takeover_timeout,
            scripts: Scripts {
                claim: Script::new(lua::CLAIM),
                park: Script::new(lua::PARK),
                discard: Script::new(lua::DISCARD),
                enqueue: Script::new(lua::ENQUEUE),
                drain: Script::new(lua::DRAIN),
                update_subscriptions: Script::new(lua::UPDATE_SUBSCRIPTIONS),
            },
        }
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
                crate::cluster::bus::send_release(&mut con, &owner, client_id).await?;
                told = Some(owner.clone());
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

fn session_keys(client_id: &str) -> [String; 5] {
    [
        keys::session(client_id),
        keys::subscriptions(client_id),
        keys::inflight(client_id),
        keys::incoming_qos2(client_id),
        keys::queue(client_id),
    ]
}

/// Reads the state part of a CLAIM reply.
fn previous_state(parts: &[Value]) -> Result<SessionState, StoreError> {
    let mut state = SessionState::default();
    let subs = rv::bulk_list(parts.get(3))?;
    for pair in subs.chunks_exact(2) {
        let filter = String::from_utf8(pair[0].to_vec())
            .map_err(|_| StoreError::Unavailable("invalid filter in Redis".into()))?;
        let qos = rv::parse_u64(&pair[1]).and_then(|q| Qos::from_bits(q as u8));
        state
            .subscriptions
            .insert(filter, qos.unwrap_or(Qos::AtMostOnce));
    }
    for record in rv::bulk_list(parts.get(4))? {
        state.outgoing.push(wire::decode_inflight(record)?);
    }
    state.outgoing.sort_by_key(|e| e.packet_id);
    for id in rv::bulk_list(parts.get(5))? {
        if let Some(id) = rv::parse_u64(&id) {
            state.incoming_qos2.push(id as u16);
        }
    }
    for record in rv::bulk_list(parts.get(6))? {
        state.pending.push_back(wire::decode_delivery(record)?);
    }
    Ok(state)
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
        let mut invocation = self.scripts.claim.prepare_invoke();
        for key in session_keys(client_id) {
            invocation.key(key);
        }
        invocation
            .key(keys::node_clients(&self.node_id))
            .arg(&*self.node_id)
            .arg(if request.clean_session { "1" } else { "0" })
            .arg(will.as_ref())
            .arg(&**client_id);
        let reply: Value = self
            .metrics
            .timed(RedisOp::Claim, invocation.invoke_async(&mut self.con()))
            .await?;
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
        added: &[(String, Qos)],
        removed: &[String],
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.update_subscriptions.prepare_invoke();
        invocation
            .key(keys::session(&owner.client_id))
            .key(keys::subscriptions(&owner.client_id))
            .arg(owner.epoch)
            .arg(added.len());
        for (filter, qos) in added {
            invocation.arg(filter).arg(qos.as_u8());
        }
        for filter in removed {
            invocation.arg(filter);
        }
        let _: Value = self
            .metrics
            .timed(RedisOp::Session, invocation.invoke_async(&mut self.con()))
            .await?;
        Ok(())
    }

    async fn drain_offline(&self, owner: &SessionOwner) -> Result<Vec<Delivery>, StoreError> {
        let mut invocation = self.scripts.drain.prepare_invoke();
        invocation
            .key(keys::session(&owner.client_id))
            .key(keys::queue(&owner.client_id))
            .arg(owner.epoch);
        let mut con = self.con();
        let drained = invocation.invoke_async(&mut con);
        let reply: Value = self.metrics.timed(RedisOp::Session, drained).await?;
        rv::bulk_list(Some(&reply))?
            .into_iter()
            .map(|r| wire::decode_delivery(r).map_err(StoreError::from))
            .collect()
    }

    async fn park_session(
        &self,
        owner: &SessionOwner,
        state: SessionState,
    ) -> Result<(), StoreError> {
        let mut invocation = self.scripts.park.prepare_invoke();
        for key in session_keys(&owner.client_id) {
            invocation.key(key);
        }
        invocation.arg(owner.epoch).arg(state.subscriptions.len());
        for (filter, qos) in &state.subscriptions {
            invocation.arg(filter).arg(qos.as_u8());
        }
        invocation.arg(state.outgoing.len());
        for entry in &state.outgoing {
            invocation
                .arg(entry.packet_id)
                .arg(wire::encode_inflight(entry).as_ref());
        }
        invocation.arg(state.incoming_qos2.len());
        for id in &state.incoming_qos2 {
            invocation.arg(*id);
        }
        invocation.arg(state.pending.len());
        for delivery in &state.pending {
            invocation.arg(wire::encode_delivery(delivery).as_ref());
        }
        let parked: i64 = self
            .metrics
            .timed(RedisOp::Park, invocation.invoke_async(&mut self.con()))
            .await?;
        if parked == 0 {
            tracing::debug!(client_id = %owner.client_id, "park skipped: session owned elsewhere now");
        }
        Ok(())
    }

    async fn discard_session(&self, owner: &SessionOwner) -> Result<(), StoreError> {
        let mut invocation = self.scripts.discard.prepare_invoke();
        for key in session_keys(&owner.client_id) {
            invocation.key(key);
        }
        invocation
            .key(keys::node_clients(&self.node_id))
            .arg(owner.epoch)
            .arg(&*owner.client_id);
        let mut con = self.con();
        let discarded = invocation.invoke_async::<Value>(&mut con);
        self.metrics.timed(RedisOp::Session, discarded).await?;
        Ok(())
    }

    async fn enqueue_offline(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError> {
        let mut invocation = self.scripts.enqueue.prepare_invoke();
        invocation.arg(self.max_queued);
        for (client_id, delivery) in &batch {
            invocation
                .key(keys::session(client_id))
                .key(keys::queue(client_id))
                .arg(delivery.qos.as_u8())
                .arg(wire::encode_delivery(delivery).as_ref());
        }
        let counts: Vec<i64> = self
            .metrics
            .timed(RedisOp::Enqueue, invocation.invoke_async(&mut self.con()))
            .await?;
        let count = |i: usize| counts.get(i).copied().unwrap_or(0) as usize;
        Ok(QueueOutcome {
            queued: count(0),
            dropped_queue_full: count(1),
            dropped_qos0: count(2),
            no_session: count(3),
        })
    }

    async fn set_retained(&self, message: Arc<Message>) -> Result<(), StoreError> {
        let cmd = if message.payload.is_empty() {
            let mut c = redis::cmd("HDEL");
            c.arg(keys::retained()).arg(&*message.topic);
            c
        } else {
            let mut c = redis::cmd("HSET");
            c.arg(keys::retained())
                .arg(&*message.topic)
                .arg(wire::encode_message(&message).as_ref());
            c
        };
        let _: Value = self
            .metrics
            .timed(RedisOp::Retained, cmd.query_async(&mut self.con()))
            .await?;
        Ok(())
    }

    async fn retained_matching(&self, filters: &[&str]) -> Result<Vec<Arc<Message>>, StoreError> {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(keys::retained());
        let all: Value = self
            .metrics
            .timed(RedisOp::Retained, cmd.query_async(&mut self.con()))
            .await?;
        let flat = rv::bulk_list(Some(&all))?;
        let mut out = Vec::new();
        for pair in flat.chunks_exact(2) {
            let topic = String::from_utf8_lossy(&pair[0]);
            if filters.iter().any(|f| filter_matches(f, &topic)) {
                out.push(Arc::new(wire::decode_message(pair[1].clone())?));
            }
        }
        Ok(out)
    }

    async fn retained_count(&self) -> Result<usize, StoreError> {
        let n: usize = redis::cmd("HLEN")
            .arg(keys::retained())
            .query_async(&mut self.con())
            .await?;
        Ok(n)
    }
}
