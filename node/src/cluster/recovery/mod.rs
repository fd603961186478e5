//! Taking over from a dead node, and a node's own (re)start.
//!
//! **A survivor** — whoever takes the dead node's recovery lock in Redis —
//! does, in this order:
//! 1. checks the node is still dead, then reads its sessions: a persistent
//!    one is **adopted** (this node becomes its owner and loads its
//!    subscriptions as an offline session, so from now on its messages are
//!    queued); a clean one is deleted;
//! 2. **fences** the dead node: its inbox refuses appends (publishers
//!    re-read the routes and send to the adopter) and, should the node come
//!    back (it was frozen or cut off, not dead), its heartbeat is refused,
//!    so it drops its clients and rejoins afresh instead of serving
//!    sessions it no longer owns;
//! 3. drops the dead node's routes (every node reloads its route cache);
//! 4. publishes the **will** of every client that was connected;
//! 5. queues what the dead node's inbox still holds — entries it never
//!    read, or read without having queued them yet — for the adopted
//!    sessions and for sessions whose clients already reconnected
//!    elsewhere (their new node is told to take them). QoS 2 messages
//!    already queued are refused by the sessions' publish-id record.
//!    Everything the dead node held in memory for its persistent sessions
//!    (in flight, behind the window) is in their Redis queues already;
//! 6. deletes the dead node's client list and cursor, trims its inbox up
//!    to what step 5 read, unregisters it and releases the lock (the fence
//!    stays).
//!
//! The lock carries a token unique to its taker (node id and time), is
//! renewed while the recovery runs and is released only by its holder: a
//! recovery that outlives its lock stops at its next check — before each
//! session of step 1, before the fence of step 2 and before step 5 (a step
//! under way is finished).
//! Recoveries run as their own tasks, never inside the heartbeat loop.
//!
//! **A node (re)starting** ([`rejoin`]) waits until no survivor is
//! recovering it, lifts its fence, takes over its own previous run's
//! sessions the same way, and only then writes its heartbeat: a node that
//! restarts while it is being recovered loses nothing. Its route set is
//! not dropped but brought to what the adopted sessions hold, so a filter
//! it keeps never leaves the other nodes' tables; its client list keeps
//! the sessions it adopted (only those deleted or claimed elsewhere leave
//! it), so a survivor of its next death finds them. While a fenced node
//! rejoins it takes no client ([`Cluster::accepts_clients`]): a session
//! claimed meanwhile would be adopted from under its own connection.
//!
//! # Layout
//! - this file: [`Recovery`], the entry points ([`recover`], [`rejoin`]);
//! - `takeover.rs`: the steps above, one session at a time;
//! - `unread.rs`: queueing the dead inbox, a page at a time;
//! - `lock.rs`: the recovery lock and its renewal;
//! - [`store`]: the [`RecoveryStore`] trait, all recovery asks of Redis,
//!   with plain values; [`redis`]: its Redis implementation.
//!
//! The logic knows Redis only through [`RecoveryStore`] and the broker
//! only through [`LocalNode`], so its unit tests run it against in-memory
//! fakes of both (`fake.rs`, `tests/`).

use std::sync::Arc;
use std::time::Duration;

use prometheus::IntCounter;

use super::{Cluster, LocalNode, Mode};
use crate::store::StoreError;
use lock::Lock;
use store::{RecoveryStore, RecoveryStoreError};

#[cfg(test)]
mod fake;
mod lock;
pub mod redis;
pub mod store;
mod takeover;
#[cfg(test)]
mod tests;
mod unread;

/// How often a (re)starting node looks whether its recovery lock is free.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// Why a recovery did not complete (it is retried on the next check).
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    /// Redis failed mid-way, or a stored record could not be read.
    #[error(transparent)]
    Store(#[from] RecoveryStoreError),
    /// The local node could not queue the dead inbox's deliveries.
    #[error("queueing a dead node's inbox: {0}")]
    Queue(#[from] StoreError),
    /// The lock expired or was taken over while recovering.
    #[error("recovery lock lost")]
    LockLost,
}

/// The counters a recovery moves (shared with the cluster's metrics).
#[derive(Clone)]
pub struct RecoveryCounters {
    /// Dead nodes recovered.
    pub recoveries: IntCounter,
    /// Deliveries queued again from a dead node's inbox.
    pub redeliveries: IntCounter,
}

/// Recovery as this node runs it: of a dead node, or of its own previous
/// run. Knows Redis only through [`RecoveryStore`] and the broker only
/// through [`LocalNode`].
pub struct Recovery {
    /// This node: the adopter of what it recovers, and the fence's author.
    me: Arc<str>,
    /// Where a dead node's unread publishes are (its inbox, or the shared
    /// stream past its cursor).
    mode: Mode,
    /// Moved as nodes are recovered and deliveries queued.
    counters: RecoveryCounters,
    /// The cluster's state in Redis.
    store: Arc<dyn RecoveryStore>,
    /// The broker of this node, which takes the adopted sessions.
    node: Arc<dyn LocalNode>,
}

/// Recovers `dead` if this node wins its lock (and it is still dead).
pub async fn recover(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
    dead: &str,
) -> Result<(), RecoveryError> {
    Recovery::on_redis(cluster, broker).recover(dead).await
}

/// Starts (or restarts) this node in the cluster: waits until nobody is
/// recovering it, lifts its fence, takes over its previous run's state and
/// writes its heartbeat, all under its own recovery lock.
pub async fn rejoin(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
) -> Result<(), RecoveryError> {
    Recovery::on_redis(cluster, broker).rejoin().await
}

impl Recovery {
    /// A recovery run with `store` for `node`, the local broker of `me`.
    pub fn new(
        me: Arc<str>,
        mode: Mode,
        counters: RecoveryCounters,
        store: Arc<dyn RecoveryStore>,
        node: Arc<dyn LocalNode>,
    ) -> Recovery {
        Recovery {
            me,
            mode,
            counters,
            store,
            node,
        }
    }

    /// A recovery on `cluster`'s Redis.
    fn on_redis(cluster: &Arc<Cluster>, broker: &Arc<dyn LocalNode>) -> Recovery {
        let counters = RecoveryCounters {
            recoveries: cluster.metrics.recoveries.clone(),
            redeliveries: cluster.metrics.redeliveries.clone(),
        };
        let store = Arc::new(redis::RedisRecoveryStore::new(cluster.clone()));
        Recovery::new(
            cluster.node_id.clone(),
            cluster.mode,
            counters,
            store,
            broker.clone(),
        )
    }

    /// Recovers `dead` if this node wins its lock (and it is still dead).
    pub async fn recover(&self, dead: &str) -> Result<(), RecoveryError> {
        let Some(lock) = Lock::try_acquire(&self.store, &self.me, dead).await? else {
            return Ok(());
        };
        let result = self.recover_dead(dead, &lock).await;
        lock.release(self.store.as_ref()).await;
        result
    }

    /// This node's own (re)start, under its own lock.
    pub async fn rejoin(&self) -> Result<(), RecoveryError> {
        let me = self.me.clone();
        let lock = loop {
            if let Some(lock) = Lock::try_acquire(&self.store, &me, &me).await? {
                break lock;
            }
            tracing::info!("a survivor is recovering this node's previous run; waiting");
            tokio::time::sleep(LOCK_POLL).await;
        };
        let result = async {
            self.store.lift_fence(&me).await?;
            self.take_over(&me, &lock).await?;
            lock.check()?;
            self.store.heartbeat().await?;
            Ok(())
        }
        .await;
        lock.release(self.store.as_ref()).await;
        result
    }

    async fn recover_dead(&self, dead: &str, lock: &Lock) -> Result<(), RecoveryError> {
        if self.store.is_alive(dead).await? {
            return Ok(());
        }
        tracing::warn!(node = %dead, "node is dead: taking over its sessions");
        self.take_over(dead, lock).await?;
        self.store.unregister(dead).await?;
        self.counters.recoveries.inc();
        tracing::info!(node = %dead, "dead node recovered");
        Ok(())
    }
}
