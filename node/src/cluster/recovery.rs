//! Taking over from a dead node.
//!
//! One survivor — whoever takes the node's recovery lock in Redis — does,
//! in this order:
//! 1. reads the dead node's sessions: a persistent one is **adopted** (this
//!    node becomes its owner, loads its subscriptions as an offline
//!    session, so from now on its messages are queued); a clean one is
//!    deleted; a client that was connected has its **will** published;
//! 2. drops the dead node's routes (every node reloads its route cache);
//! 3. after a short grace, for other nodes to stop routing to the dead
//!    node, queues the dead node's **unread** messages (its inbox — which
//!    holds only unread entries — or, in broadcast mode, the shared stream
//!    past its cursor) for the adopted sessions;
//! 4. deletes the dead node's keys and releases the lock.
//!
//! A node also runs this for its own previous run when it starts, which
//! reloads its offline sessions after a restart and cleans up after a crash.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;

use super::redis_value::{self as rv, StreamEntry};
use super::{keys, wire, Cluster, Mode};
use crate::broker::Broker;
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::router::SubscriptionTree;

/// How long the lock is held at most, should the survivor die mid-way.
const LOCK_TTL: Duration = Duration::from_secs(60);
/// Time for other nodes to apply the route drop before the inbox is read.
const ROUTE_GRACE: Duration = Duration::from_millis(250);
/// Entries read per XRANGE while draining a dead node's stream.
const DRAIN_PAGE: usize = 500;

/// Why a recovery did not complete (it is retried on the next check).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Redis failed mid-way.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A stored record could not be read.
    #[error(transparent)]
    Reply(#[from] rv::UnexpectedReply),
}

/// A session of the dead node, as read from Redis.
struct DeadSession {
    client_id: ClientId,
    persistent: bool,
    /// Set when the client was connected: it did not disconnect cleanly.
    will: Option<Message>,
}

/// Recovers `dead` if this node wins its lock (and it is still dead).
pub async fn recover(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    dead: &str,
) -> Result<(), RecoveryError> {
    let mut con = cluster.connection();
    let me = &*cluster.node_id;
    let locked: Value = redis::cmd("SET")
        .arg(keys::recovery_lock(dead))
        .arg(me)
        .arg("NX")
        .arg("PX")
        .arg(LOCK_TTL.as_millis() as u64)
        .query_async(&mut con)
        .await?;
    if !matches!(locked, Value::Okay) {
        return Ok(());
    }
    let result = recover_locked(cluster, broker, dead, &mut con).await;
    let _: redis::RedisResult<Value> = redis::cmd("DEL")
        .arg(keys::recovery_lock(dead))
        .query_async(&mut con)
        .await;
    result
}

async fn recover_locked(
    cluster: &Arc<Cluster>,
    broker: &Arc<Broker>,
    dead: &str,
    con: &mut ConnectionManager,
) -> Result<(), RecoveryError> {
    let me = &*cluster.node_id;
    let is_self = dead == me;
    if !is_self {
        let alive: bool = redis::cmd("EXISTS")
            .arg(keys::node_alive(dead))
            .query_async(con)
            .await?;
        if alive {
            return Ok(());
        }
        tracing::warn!(node = %dead, "node is dead: taking over its sessions");
    } else {
        // Our own previous run: its routes are rebuilt by the adoption below.
        drop_routes(con, dead).await?;
    }
    let sessions = read_sessions(con, dead).await?;
    let mut adopted = SubscriptionTree::default();
    let mut wills = Vec::new();
    for session in sessions {
        if let Some(will) = session.will {
            wills.push(will);
        }
        if session.persistent {
            adopt(cluster, broker, con, &session.client_id, &mut adopted).await?;
        } else {
            delete_session(con, &session.client_id).await?;
        }
    }
    if !is_self {
        drop_routes(con, dead).await?;
    }
    for will in wills {
        let _ = broker.publish_and_wait(Arc::new(will)).await;
    }
    if !adopted.is_empty() {
        tokio::time::sleep(ROUTE_GRACE).await;
        queue_unread(cluster, broker, con, dead, &adopted).await?;
    }
    let mut pipe = redis::pipe();
    pipe.cmd("DEL")
        .arg(keys::inbox(dead))
        .arg(keys::node_clients(dead))
        .arg(keys::bus_cursor(dead))
        .ignore();
    if !is_self {
        pipe.cmd("SREM").arg(keys::nodes()).arg(dead).ignore();
    }
    pipe.query_async::<()>(con).await?;
    if is_self {
        tracing::info!("state of this node's previous run taken over");
    } else {
        tracing::info!(node = %dead, "dead node recovered");
    }
    Ok(())
}

async fn drop_routes(con: &mut ConnectionManager, node: &str) -> Result<(), RecoveryError> {
    redis::cmd("DEL")
        .arg(keys::node_routes(node))
        .query_async::<Value>(con)
        .await?;
    super::routes::publish_drop(con, node).await?;
    Ok(())
}

/// The sessions the dead node owned.
async fn read_sessions(
    con: &mut ConnectionManager,
    dead: &str,
) -> Result<Vec<DeadSession>, RecoveryError> {
    let client_ids: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::node_clients(dead))
        .query_async(con)
        .await?;
    let mut out = Vec::with_capacity(client_ids.len());
    for client_id in client_ids {
        let fields: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(keys::session(&client_id))
            .arg("owner")
            .arg("persistent")
            .arg("connected")
            .arg("will")
            .query_async(con)
            .await?;
        let field = |i: usize| fields.get(i).cloned().flatten();
        if field(0).as_deref() != Some(dead.as_bytes()) {
            continue; // claimed by another node since
        }
        let connected = field(2).as_deref() == Some(b"1");
        let will = field(3)
            .filter(|w| connected && !w.is_empty())
            .and_then(|w| wire::decode_message(w.into()).ok());
        out.push(DeadSession {
            client_id: client_id.into(),
            persistent: field(1).as_deref() == Some(b"1"),
            will,
        });
    }
    Ok(out)
}

/// Makes this node the owner of an offline persistent session.
async fn adopt(
    cluster: &Cluster,
    broker: &Broker,
    con: &mut ConnectionManager,
    client_id: &ClientId,
    adopted: &mut SubscriptionTree,
) -> Result<(), RecoveryError> {
    let subs: Value = redis::cmd("HGETALL")
        .arg(keys::subscriptions(client_id))
        .query_async(con)
        .await?;
    let flat = rv::bulk_list(Some(&subs))?;
    let mut filters = Vec::new();
    for pair in flat.chunks_exact(2) {
        let filter = String::from_utf8_lossy(&pair[0]).into_owned();
        let qos = rv::parse_u64(&pair[1])
            .and_then(|q| Qos::from_bits(q as u8))
            .unwrap_or(Qos::AtMostOnce);
        adopted.subscribe(&filter, client_id, qos);
        filters.push((filter, qos));
    }
    redis::pipe()
        .cmd("HSET")
        .arg(keys::session(client_id))
        .arg("owner")
        .arg(&*cluster.node_id)
        .arg("connected")
        .arg("0")
        .ignore()
        .cmd("HDEL")
        .arg(keys::session(client_id))
        .arg("will")
        .ignore()
        .cmd("HINCRBY")
        .arg(keys::session(client_id))
        .arg("epoch")
        .arg(1)
        .ignore()
        .cmd("SADD")
        .arg(keys::node_clients(&cluster.node_id))
        .arg(&**client_id)
        .ignore()
        .query_async::<()>(con)
        .await?;
    broker.adopt_offline_session(client_id, filters).await;
    Ok(())
}

async fn delete_session(con: &mut ConnectionManager, client_id: &str) -> Result<(), RecoveryError> {
    redis::cmd("DEL")
        .arg(keys::session(client_id))
        .arg(keys::subscriptions(client_id))
        .arg(keys::inflight(client_id))
        .arg(keys::incoming_qos2(client_id))
        .arg(keys::queue(client_id))
        .query_async::<Value>(con)
        .await?;
    Ok(())
}

/// Queues the messages the dead node never read for the adopted sessions.
async fn queue_unread(
    cluster: &Cluster,
    broker: &Broker,
    con: &mut ConnectionManager,
    dead: &str,
    adopted: &SubscriptionTree,
) -> Result<(), RecoveryError> {
    let (stream, mut start) = match cluster.mode {
        Mode::Routed => (keys::inbox(dead), "-".to_string()),
        Mode::Broadcast => {
            let cursor: Option<String> = redis::cmd("GET")
                .arg(keys::bus_cursor(dead))
                .query_async(con)
                .await?;
            let after = cursor
                .and_then(|c| rv::next_stream_id(&c))
                .unwrap_or_else(|| "-".into());
            (keys::bus(), after)
        }
    };
    let mut queued = 0usize;
    loop {
        let reply: Value = redis::cmd("XRANGE")
            .arg(&stream)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(DRAIN_PAGE)
            .query_async(con)
            .await?;
        let entries = rv::stream_entries(&reply)?;
        let Some(last) = entries.last() else {
            break;
        };
        let Some(next) = rv::next_stream_id(&last.id) else {
            break;
        };
        let batch = deliveries_for(&entries, adopted);
        queued += batch.len();
        if !batch.is_empty() && broker.queue_offline(batch).await.is_err() {
            tracing::error!(node = %dead, "unread messages of a dead node could not be queued");
        }
        start = next;
        if entries.len() < DRAIN_PAGE {
            break;
        }
    }
    tracing::info!(node = %dead, queued, "unread messages queued for adopted sessions");
    Ok(())
}

fn deliveries_for(
    entries: &[StreamEntry],
    adopted: &SubscriptionTree,
) -> Vec<(ClientId, Delivery)> {
    let mut out = Vec::new();
    for entry in entries {
        let Some(raw) = entry.get(b"m") else { continue };
        let Ok(messages) = wire::decode_batch(raw.clone()) else {
            continue;
        };
        for message in messages {
            for (client_id, granted) in adopted.matches(&message.topic) {
                out.push((client_id, Delivery::forward(message.clone(), granted)));
            }
        }
    }
    out
}
