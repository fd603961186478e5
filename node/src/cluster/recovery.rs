//! Taking over from a dead node, and a node's own (re)start.
//!
//! **A survivor** — whoever takes the dead node's recovery lock in Redis —
//! does, in this order:
//! 1. checks the node is still dead, then reads its sessions: a persistent
//!    one is **adopted** (this node becomes its owner and loads its
//!    subscriptions as an offline session, so from now on its messages are
//!    queued); a clean one is deleted; a client that was connected has its
//!    **will** published;
//! 2. **fences** the dead node: its inbox refuses appends (publishers
//!    re-read the routes and send to the adopter) and, should the node come
//!    back (it was frozen or cut off, not dead), its heartbeat is refused,
//!    so it drops its clients and rejoins afresh instead of serving
//!    sessions it no longer owns;
//! 3. drops the dead node's routes (every node reloads its route cache);
//! 4. queues what the dead node's inbox still holds — entries it never
//!    read, or read without having queued them yet — for the adopted
//!    sessions and for sessions whose clients already reconnected
//!    elsewhere (their new node is told to take them). QoS 2 messages
//!    already queued are refused by the sessions' publish-id record.
//!    Everything the dead node held in memory for its persistent sessions
//!    (in flight, behind the window) is in their Redis queues already;
//! 5. deletes the dead node's keys (but the fence) and releases the lock.
//!
//! The lock carries a random token, is renewed while the recovery runs and
//! is released only by its holder: a recovery that outlives its lock stops
//! at the next step. Recoveries run as their own tasks, never inside the
//! heartbeat loop.
//!
//! **A node (re)starting** ([`rejoin`]) waits until no survivor is
//! recovering it, lifts its fence, takes over its own previous run's
//! sessions the same way, and only then writes its heartbeat: a node that
//! restarts while it is being recovered loses nothing. Its route set is
//! not dropped but brought to what the adopted sessions hold, so a filter
//! it keeps never leaves the other nodes' tables. While a fenced node
//! rejoins it takes no client ([`Cluster::accepts_clients`]): a session
//! claimed meanwhile would be adopted from under its own connection.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;

use super::{liveness, Cluster, LocalNode, Mode};
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::redis_model::inbox::send_drain;
use crate::redis_model::scripts::{evalsha, query_cmd};
use crate::redis_model::value::{self as rv, StreamEntry};
use crate::redis_model::{keys, wire};
use crate::router::SubscriptionTree;

/// How long the lock lives without renewal, should its holder die.
const LOCK_TTL: Duration = Duration::from_secs(15);
/// How often the holder renews it.
const LOCK_RENEW_EVERY: Duration = Duration::from_secs(5);
/// How often a (re)starting node looks whether its recovery lock is free.
const LOCK_POLL: Duration = Duration::from_millis(100);
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
    /// The lock expired or was taken over while recovering.
    #[error("recovery lock lost")]
    LockLost,
}

/// A held recovery lock: renewed in the background until released.
struct Lock {
    key: String,
    token: String,
    lost: Arc<AtomicBool>,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lock {
    /// Takes `node`'s recovery lock if it is free.
    async fn try_acquire(
        cluster: &Arc<Cluster>,
        con: &mut ConnectionManager,
        node: &str,
    ) -> Result<Option<Lock>, RecoveryError> {
        let key = keys::recovery_lock(node);
        let token = format!("{}:{}", cluster.node_id, crate::message::unix_millis());
        let locked: Value = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(con)
            .await?;
        if !matches!(locked, Value::Okay) {
            return Ok(None);
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            cluster.clone(),
            key.clone(),
            token.clone(),
            lost.clone(),
        ));
        Ok(Some(Lock {
            key,
            token,
            lost,
            renewer,
        }))
    }

    /// Fails once the lock is no longer held.
    fn check(&self) -> Result<(), RecoveryError> {
        match self.lost.load(Ordering::Acquire) {
            true => Err(RecoveryError::LockLost),
            false => Ok(()),
        }
    }

    /// Stops renewing and deletes the lock if it is still ours.
    async fn release(self, cluster: &Cluster, con: &mut ConnectionManager) {
        self.renewer.abort();
        let mut cmd = evalsha(&cluster.scripts.lock_release, &[&self.key]);
        cmd.arg(&self.token);
        if let Err(error) = query_cmd::<i64>(&cluster.scripts, con, &cmd).await {
            tracing::warn!(%error, "recovery lock not released; it expires by itself");
        }
    }
}

/// Renews a lock until aborted; sets `lost` when it is not ours anymore.
async fn renew(cluster: Arc<Cluster>, key: String, token: String, lost: Arc<AtomicBool>) {
    let mut con = cluster.connection();
    loop {
        tokio::time::sleep(LOCK_RENEW_EVERY).await;
        let mut cmd = evalsha(&cluster.scripts.lock_renew, &[&key]);
        cmd.arg(&token).arg(LOCK_TTL.as_millis() as u64);
        match query_cmd::<i64>(&cluster.scripts, &mut con, &cmd).await {
            Ok(1) => {}
            Ok(_) => {
                lost.store(true, Ordering::Release);
                return;
            }
            Err(error) => tracing::warn!(%error, "recovery lock renewal failed; retrying"),
        }
    }
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
    broker: &Arc<dyn LocalNode>,
    dead: &str,
) -> Result<(), RecoveryError> {
    let mut con = cluster.connection();
    let Some(lock) = Lock::try_acquire(cluster, &mut con, dead).await? else {
        return Ok(());
    };
    let result = recover_dead(cluster, broker, dead, &mut con, &lock).await;
    lock.release(cluster, &mut con).await;
    result
}

/// Starts (or restarts) this node in the cluster: waits until nobody is
/// recovering it, lifts its fence, takes over its previous run's state and
/// writes its heartbeat, all under its own recovery lock.
pub async fn rejoin(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
) -> Result<(), RecoveryError> {
    let mut con = cluster.connection();
    let me = cluster.node_id.clone();
    let lock = loop {
        if let Some(lock) = Lock::try_acquire(cluster, &mut con, &me).await? {
            break lock;
        }
        tracing::info!("a survivor is recovering this node's previous run; waiting");
        tokio::time::sleep(LOCK_POLL).await;
    };
    let result = async {
        redis::cmd("DEL")
            .arg(keys::node_fenced(&me))
            .query_async::<Value>(&mut con)
            .await?;
        take_over(cluster, broker, &me, &mut con, &lock).await?;
        lock.check()?;
        liveness::heartbeat(&mut con, cluster).await?;
        Ok(())
    }
    .await;
    lock.release(cluster, &mut con).await;
    result
}

async fn recover_dead(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
    dead: &str,
    con: &mut ConnectionManager,
    lock: &Lock,
) -> Result<(), RecoveryError> {
    let alive: bool = redis::cmd("EXISTS")
        .arg(keys::node_alive(dead))
        .query_async(con)
        .await?;
    if alive {
        return Ok(());
    }
    tracing::warn!(node = %dead, "node is dead: taking over its sessions");
    take_over(cluster, broker, dead, con, lock).await?;
    redis::cmd("SREM")
        .arg(keys::nodes())
        .arg(dead)
        .query_async::<Value>(con)
        .await?;
    cluster.metrics.recoveries.inc();
    tracing::info!(node = %dead, "dead node recovered");
    Ok(())
}

/// Adopts `node`'s sessions, publishes its wills, fences it (unless it is
/// this node), drops its routes and queues what its inbox still holds.
async fn take_over(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
    node: &str,
    con: &mut ConnectionManager,
    lock: &Lock,
) -> Result<(), RecoveryError> {
    let is_self = node == &*cluster.node_id;
    let sessions = read_sessions(con, node).await?;
    let mut adopted = SubscriptionTree::default();
    let mut wills = Vec::new();
    for session in sessions {
        lock.check()?;
        if let Some(will) = session.will {
            wills.push(will);
        }
        match (session.persistent, session.moved_to) {
            (true, Some(_)) => {
                for (filter, qos) in read_subscriptions(con, &session.client_id).await? {
                    adopted.subscribe(&filter, &session.client_id, qos);
                }
            }
            (true, None) => {
                adopt(
                    cluster,
                    broker.as_ref(),
                    con,
                    node,
                    &session.client_id,
                    &mut adopted,
                )
                .await?
            }
            (false, None) => delete_session(con, &session.client_id).await?,
            (false, Some(_)) => {}
        }
    }
    if is_self {
        // Our own previous run: its route set becomes what the adoption
        // above holds. Not dropped first: a filter held both before and
        // after must never leave the table, or publishes toward it would
        // find nobody meanwhile and be acknowledged to no one.
        super::routes::sync_own(con, node, &broker.local_filters()).await?;
    } else {
        redis::cmd("SET")
            .arg(keys::node_fenced(node))
            .arg(&*cluster.node_id)
            .query_async::<Value>(con)
            .await?;
        drop_routes(con, node).await?;
    }
    for will in wills {
        broker.publish_will(Arc::new(will)).await;
    }
    lock.check()?;
    let (queued_for, drained_to) =
        queue_unread(cluster, broker.as_ref(), con, node, &adopted).await?;
    notify_connected_owners(cluster, broker.as_ref(), con, queued_for).await?;
    let mut pipe = redis::pipe();
    pipe.cmd("DEL")
        .arg(keys::node_clients(node))
        .arg(keys::bus_cursor(node))
        .ignore();
    if let Some(next) = drained_to.as_deref().and_then(rv::next_stream_id) {
        // Trimmed, not deleted: a restarting node may append already.
        pipe.cmd("XTRIM")
            .arg(keys::inbox(node))
            .arg("MINID")
            .arg(next)
            .ignore();
    }
    pipe.query_async::<()>(con).await?;
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
    broker: &dyn LocalNode,
    con: &mut ConnectionManager,
    dead: &str,
    client_id: &ClientId,
    adopted: &mut SubscriptionTree,
) -> Result<(), RecoveryError> {
    let filters = read_subscriptions(con, client_id).await?;
    for (filter, qos) in &filters {
        adopted.subscribe(filter, client_id, *qos);
    }
    let session = keys::session(client_id);
    let mut take = evalsha(&cluster.scripts.adopt, &[&session]);
    take.arg(dead).arg(&*cluster.node_id);
    let epoch: i64 = query_cmd(&cluster.scripts, con, &take).await?;
    if epoch == 0 {
        // Claimed by its client on another node meanwhile: that node owns
        // it; only what the dead inbox holds for it is queued (above).
        return Ok(());
    }
    redis::cmd("SADD")
        .arg(keys::node_clients(&cluster.node_id))
        .arg(&**client_id)
        .query_async::<Value>(con)
        .await?;
    broker.adopt_offline_session(client_id, filters).await;
    Ok(())
}

/// Messages were just queued for these sessions; a client that meanwhile
/// reconnected (to any node) takes them now rather than at its next
/// reconnect.
async fn notify_connected_owners(
    cluster: &Cluster,
    broker: &dyn LocalNode,
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
            (Some(owner), Some("1")) => send_drain(con, &owner, &client_id).await?,
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
    broker: &dyn LocalNode,
    con: &mut ConnectionManager,
    dead: &str,
    adopted: &SubscriptionTree,
) -> Result<(HashSet<ClientId>, Option<String>), RecoveryError> {
    let mut queued_for = HashSet::new();
    let mut drained_to = None;
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
        if !batch.is_empty() {
            let outcome = broker.queue_for_sessions(batch).await.map_err(|error| {
                redis::RedisError::from((
                    redis::ErrorKind::IoError,
                    "queueing a dead node's inbox",
                    error.to_string(),
                ))
            })?;
            cluster.metrics.redeliveries.inc_by(outcome.queued as u64);
        }
        if cluster.mode == Mode::Routed {
            drained_to = Some(last.id.clone());
        }
        start = next;
        if entries.len() < DRAIN_PAGE {
            break;
        }
    }
    tracing::info!(node = %dead, queued, "unread messages queued for adopted sessions");
    Ok((queued_for, drained_to))
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
