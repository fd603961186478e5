//! The cluster route table: for each topic filter, the nodes that have at
//! least one subscriber for it.
//!
//! Each node writes its own filters to `astramq:node:<id>:routes` and
//! appends every change to the `astramq:routes:log` stream; every node keeps
//! a cached copy of the whole table, loads it in full on start, follows the
//! log, and reloads it periodically in case a change was missed. A node
//! publishing a message matches the topic against this cache to know which
//! inboxes to append to.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redis::aio::ConnectionManager;
use redis::Value;

use crate::message::{ClientId, Qos};
use crate::redis_model::keys;
use crate::redis_model::value::StreamEntry;
use crate::router::SubscriptionTree;
use crate::subscription::Subscription;

/// How the route log is capped (approximate, `MAXLEN ~`).
const ROUTE_LOG_MAXLEN: usize = 100_000;

/// The cached route table: the subscription tree reused with node ids in
/// place of client ids.
#[derive(Default)]
pub struct RouteCache {
    tree: RwLock<SubscriptionTree>,
    /// Set while the route log cannot be followed (this node lost Redis),
    /// cleared by the next full reload.
    stale: AtomicBool,
}

impl RouteCache {
    /// True from a failed read of the route log until the next reload:
    /// the table may miss changes made meanwhile.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Acquire)
    }

    /// The route log could not be read: distrust the table until reloaded.
    pub fn mark_stale(&self) {
        self.stale.store(true, Ordering::Release);
    }

    /// Nodes other than `me` with a subscription matching `topic`.
    pub fn remote_nodes(&self, topic: &str, me: &str) -> Vec<ClientId> {
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        tree.matches(topic, None)
            .into_iter()
            .map(|(node, _)| node)
            .filter(|node| &**node != me)
            .collect()
    }

    /// Applies one entry of the route log.
    pub fn apply(&self, entry: &StreamEntry) {
        let text = |field: &[u8]| {
            entry
                .get(field)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        let (Some(op), Some(node)) = (text(b"op"), text(b"node")) else {
            return;
        };
        let node: ClientId = node.into();
        let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
        match (op.as_str(), text(b"filter")) {
            ("add", Some(filter)) => {
                tree.subscribe(&filter, &node, Subscription::at(Qos::AtMostOnce));
            }
            ("del", Some(filter)) => {
                tree.unsubscribe(&filter, &node);
            }
            ("drop", _) => {
                tracing::debug!(%node, "route log: node dropped; reload follows");
            }
            _ => {}
        }
    }

    /// Replaces the cache with the table as Redis holds it now.
    pub async fn reload(&self, con: &mut ConnectionManager) -> redis::RedisResult<()> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::nodes())
            .query_async(con)
            .await?;
        let mut pipe = redis::pipe();
        for node in &nodes {
            pipe.cmd("SMEMBERS").arg(keys::node_routes(node));
        }
        let sets: Vec<Vec<String>> = pipe.query_async(con).await?;
        let mut fresh = SubscriptionTree::default();
        for (node, filters) in nodes.iter().zip(sets) {
            let node: ClientId = node.as_str().into();
            for filter in filters {
                fresh.subscribe(&filter, &node, Subscription::at(Qos::AtMostOnce));
            }
        }
        *self.tree.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        self.stale.store(false, Ordering::Release);
        Ok(())
    }
}

/// An XADD of one route log entry; `filter` is absent for "drop".
fn log_entry(op: &str, node: &str, filter: Option<&str>) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(keys::route_log())
        .arg("MAXLEN")
        .arg("~")
        .arg(ROUTE_LOG_MAXLEN)
        .arg("*")
        .arg("op")
        .arg(op)
        .arg("node")
        .arg(node);
    if let Some(filter) = filter {
        cmd.arg("filter").arg(filter);
    }
    cmd
}

/// Records that `node` has (`add`) or no longer has (`del`) subscribers for
/// `filter`, in its route set and in the log, in one round trip.
pub async fn publish_change(
    con: &mut ConnectionManager,
    node: &str,
    filter: &str,
    added: bool,
) -> redis::RedisResult<()> {
    let (set_op, op) = if added {
        ("SADD", "add")
    } else {
        ("SREM", "del")
    };
    let mut pipe = redis::pipe();
    pipe.cmd(set_op)
        .arg(keys::node_routes(node))
        .arg(filter)
        .ignore();
    pipe.add_command(log_entry(op, node, Some(filter))).ignore();
    pipe.query_async::<()>(con).await
}

/// Makes `node`'s route set and the log agree with `local`, the filters
/// its sessions hold now: announces the missing ones and withdraws the
/// others, one change at a time, so a filter that is held never leaves
/// the table meanwhile.
pub async fn sync_own(
    con: &mut ConnectionManager,
    node: &str,
    local: &[String],
) -> redis::RedisResult<()> {
    let stored: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::node_routes(node))
        .query_async(con)
        .await?;
    for filter in local.iter().filter(|f| !stored.contains(f)) {
        publish_change(con, node, filter, true).await?;
    }
    for filter in stored.iter().filter(|f| !local.contains(f)) {
        publish_change(con, node, filter, false).await?;
    }
    Ok(())
}

/// Announces that a dead node's routes are gone (every node reloads).
pub async fn publish_drop(con: &mut ConnectionManager, node: &str) -> redis::RedisResult<()> {
    log_entry("drop", node, None)
        .query_async::<Value>(con)
        .await
        .map(|_| ())
}

/// Shared handle to the cache.
pub type SharedRoutes = Arc<RouteCache>;
