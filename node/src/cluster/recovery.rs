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
//!    past its cursor) for the adopted sessions, and for sessions whose
//!    clients already reconnected elsewhere (their new node is told to
//!    take them);
//! 4. deletes the dead node's keys and releases the lock.
//!
//! A node also runs this for its own previous run when it starts, which
//! reloads its offline sessions after a restart and cleans up after a crash.

use std::collections::HashSet;
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
    /// The node that claimed it after the death (the client reconnected
    /// before this recovery): its messages in the dead inbox go to it.
    moved_to: Option<String>,
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
        match (session.persistent, session.moved_to) {
            (true, Some(_)) => {
                for (filter, qos) in read_subscriptions(con, &session.client_id).await? {
                    adopted.subscribe(&filter, &session.client_id, qos);
                }
            }
            (true, None) => adopt(cluster, broker, con, &session.client_id, &mut adopted).await?,
            (false, None) => delete_session(con, &session.client_id).await?,
            (false, Some(_)) => {}
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
        let queued_for = queue_unread(cluster, broker, con, dead, &adopted).await?;
        notify_connected_owners(cluster, broker, con, queued_for).await?;
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
        let persistent = field(1).as_deref() == Some(b"1");
        let owner = field(0).map(|o| String::from_utf8_lossy(&o).into_owned());
        if owner.as_deref() != Some(dead) {
            // Claimed by another node since; only its unread messages matter.
            out.push(DeadSession {
                client_id: client_id.into(),
                persistent,
                will: None,
                moved_to: owner,
            });
            continue;
        }
        let connected = field(2).as_deref() == Some(b"1");
        let will = field(3)
            .filter(|w| connected && !w.is_empty())
            .and_then(|w| wire::decode_message(w.into()).ok());
        out.push(DeadSession {
            client_id: client_id.into(),
            persistent,
            will,
            moved_to: None,
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
    let filters = read_subscriptions(con, client_id).await?;
    for (filter, qos) in &filters {
        adopted.subscribe(filter, client_id, *qos);
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

/// Messages were just queued for these sessions; a client that meanwhile
/// reconnected (to any node) takes them now rather than at its next
/// reconnect.
async fn notify_connected_owners(
    cluster: &Cluster,
    broker: &Broker,
    con: &mut ConnectionManager,
    queued_for: HashSet<ClientId>,
) -> Result<(), RecoveryError> {
    for client_id in queued_for {
        let (owner, connected): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(keys::session(&client_id))
            .arg("owner")
            .arg("connected")
            .query_async(con)
            .await?;
        match (owner, connected.as_deref()) {
            (Some(owner), Some("1")) if owner == *cluster.node_id => {
                broker.drain_session(&client_id)
            }
            (Some(owner), Some("1")) => super::bus::send_drain(con, &owner, &client_id).await?,
            _ => {}
        }
    }
    Ok(())
}

/// A persistent session's subscriptions as stored in Redis.
async fn read_subscriptions(
    con: &mut ConnectionManager,
    client_id: &str,
) -> Result<Vec<(String, Qos)>, RecoveryError> {
    let subs: Value = redis::cmd("HGETALL")
        .arg(keys::subscriptions(client_id))
        .query_async(con)
        .await?;
    let flat = rv::bulk_list(Some(&subs))?;
    Ok(flat
        .chunks_exact(2)
        .map(|pair| {
            let filter = String::from_utf8_lossy(&pair[0]).into_owned();
            let qos = rv::parse_u64(&pair[1]).and_then(|q| Qos::from_bits(q as u8));
            (filter, qos.unwrap_or(Qos::AtMostOnce))
        })
        .collect())
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
) -> Result<HashSet<ClientId>, RecoveryError> {
    let mut queued_for = HashSet::new();
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
        queued_for.extend(batch.iter().map(|(client_id, _)| client_id.clone()));
        if !batch.is_empty() && broker.queue_offline(batch).await.is_err() {
            tracing::error!(node = %dead, "unread messages of a dead node could not be queued");
        }
        start = next;
        if entries.len() < DRAIN_PAGE {
            break;
        }
    }
    tracing::info!(node = %dead, queued, "unread messages queued for adopted sessions");
    Ok(queued_for)
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
