//! Heartbeats, and noticing that another node has died.
//!
//! Each node refreshes its `alive` key (TTL `heartbeat-ttl`) every
//! `heartbeat-interval` and checks the other registered nodes' keys; a
//! node whose key has expired is dead and [`super::recovery`] runs for it,
//! as a task of its own so heartbeats go on meanwhile. Gossip, when it
//! reports a failure first, only makes the check run sooner: Redis stays
//! the arbiter, so a node cut off from gossip but still writing its
//! heartbeat is not declared dead.
//!
//! A heartbeat is refused once a survivor has fenced the node (declared it
//! dead): the node then drops its clients and rejoins afresh
//! ([`Cluster::start_rejoin`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::ConnectionManager;

use super::{recovery, Cluster, LocalNode};
use crate::redis_model::keys;
use crate::redis_model::metrics::RedisOp;
use crate::redis_model::scripts::{evalsha, query_pipeline};

/// How often the route cache is reloaded and this node's route set
/// reconciled, in case a change was missed.
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Written: the node is alive.
    Alive,
    /// Refused: a survivor has declared this node dead.
    Fenced,
}

/// Writes this node's heartbeat (unless fenced) and registers it in the
/// node set.
pub async fn heartbeat(con: &mut ConnectionManager, cluster: &Cluster) -> redis::RedisResult<Beat> {
    let ttl_ms = cluster.options.heartbeat_ttl.as_millis() as u64;
    let alive = keys::node_alive(&cluster.node_id);
    let fenced = keys::node_fenced(&cluster.node_id);
    let mut beat = evalsha(&cluster.scripts.heartbeat, &[&alive, &fenced]);
    beat.arg(std::process::id()).arg(ttl_ms);
    let mut pipe = redis::pipe();
    pipe.add_command(beat);
    pipe.cmd("SADD")
        .arg(keys::nodes())
        .arg(&*cluster.node_id)
        .ignore();
    let (written,): (i64,) = query_pipeline(&cluster.scripts, con, &pipe).await?;
    Ok(match written {
        1 => Beat::Alive,
        _ => Beat::Fenced,
    })
}

/// Entries waiting in this node's inbox.
async fn inbox_length(con: &mut ConnectionManager, me: &str) -> redis::RedisResult<i64> {
    redis::cmd("XLEN")
        .arg(keys::inbox(me))
        .query_async(con)
        .await
}

/// Registered nodes, other than this one, whose heartbeat is missing now.
async fn silent_nodes(con: &mut ConnectionManager, me: &str) -> redis::RedisResult<Vec<String>> {
    let nodes: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys::nodes())
        .query_async(con)
        .await?;
    let others: Vec<String> = nodes.into_iter().filter(|n| n != me).collect();
    if others.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for node in &others {
        pipe.cmd("EXISTS").arg(keys::node_alive(node));
    }
    let alive: Vec<bool> = pipe.query_async(con).await?;
    Ok(others
        .into_iter()
        .zip(alive)
        .filter(|(_, alive)| !alive)
        .map(|(node, _)| node)
        .collect())
}

/// Runs the heartbeat and dead-node checks until the process ends.
pub async fn run(cluster: Arc<Cluster>, broker: Arc<dyn LocalNode>) {
    let mut con = cluster.connection();
    let mut ticker = tokio::time::interval(cluster.options.heartbeat_interval);
    let mut last_reconcile = tokio::time::Instant::now();
    let mut suspects = Suspects::default();
    let recovering = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = cluster.check_now.notified() => {}
        }
        let beat = cluster
            .metrics
            .timed(RedisOp::Liveness, heartbeat(&mut con, &cluster));
        match beat.await {
            Err(error) => {
                if cluster.metrics.redis_up.get() == 1 {
                    cluster.metrics.redis_up.set(0);
                    tracing::error!(%error, "Redis unreachable: QoS 1/2 publishes are refused until it is back");
                }
                // What we saw before the outage proves nothing about after
                // it: every node needs a whole TTL to write its key again.
                suspects.quiet_for(cluster.options.heartbeat_ttl);
                continue;
            }
            Ok(Beat::Fenced) => {
                cluster.start_rejoin(broker.clone());
                continue;
            }
            Ok(Beat::Alive) => {}
        }
        if cluster.metrics.redis_up.get() == 0 {
            cluster.metrics.redis_up.set(1);
            tracing::info!("Redis reachable again");
        }
        if let Ok(lag) = inbox_length(&mut con, &cluster.node_id).await {
            cluster.metrics.stream_lag.set(lag);
        }
        match silent_nodes(&mut con, &cluster.node_id).await {
            Ok(silent) => {
                for node in suspects.dead(silent, cluster.options.heartbeat_interval * 2) {
                    spawn_recovery(&cluster, &broker, &recovering, node);
                }
            }
            Err(error) => tracing::warn!(%error, "dead node check failed"),
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            last_reconcile = tokio::time::Instant::now();
            reconcile(&cluster, broker.as_ref(), &mut con).await;
        }
    }
}

/// Recovers `node` in a task of its own, unless a recovery of it by this
/// node is running already.
fn spawn_recovery(
    cluster: &Arc<Cluster>,
    broker: &Arc<dyn LocalNode>,
    recovering: &Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    node: String,
) {
    if !lock_set(recovering).insert(node.clone()) {
        return;
    }
    let (cluster, broker, recovering) = (cluster.clone(), broker.clone(), recovering.clone());
    tokio::spawn(async move {
        if let Err(error) = recovery::recover(&cluster, &broker, &node).await {
            tracing::warn!(%error, %node, "dead node recovery failed; retrying next round");
        }
        lock_set(&recovering).remove(&node);
    });
}

fn lock_set(
    set: &std::sync::Mutex<std::collections::HashSet<String>>,
) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
    set.lock().unwrap_or_else(|p| p.into_inner())
}

/// Nodes whose heartbeat has been missing, and since when.
///
/// A missing key alone is not proof of death: after Redis restarts, or
/// when this node's own connection was down, keys may be missing or expired
/// although their nodes are fine and about to write again. A node is
/// declared dead only after its key has stayed missing for two heartbeat
/// periods as seen by this node with a working connection: time enough for
/// every live node to write its key again.
#[derive(Default)]
struct Suspects {
    since: HashMap<String, Instant>,
    /// No node is declared dead before this (after our own outage).
    quiet_until: Option<Instant>,
}

impl Suspects {
    /// Updates the record with the currently `silent` nodes and returns
    /// those silent for at least `grace`.
    fn dead(&mut self, silent: Vec<String>, grace: Duration) -> Vec<String> {
        let now = Instant::now();
        if self.quiet_until.is_some_and(|until| now < until) {
            self.since.clear();
            return Vec::new();
        }
        self.since.retain(|node, _| silent.contains(node));
        silent
            .into_iter()
            .filter(|node| {
                now.duration_since(*self.since.entry(node.clone()).or_insert(now)) >= grace
            })
            .collect()
    }

    /// Forgets what was seen and declares nobody dead for `period` (from
    /// now, i.e. from the end of our own outage).
    fn quiet_for(&mut self, period: Duration) {
        self.since.clear();
        self.quiet_until = Some(Instant::now() + period);
    }
}

/// Reloads the route cache and repairs this node's route set from the
/// filters its sessions actually hold.
async fn reconcile(cluster: &Cluster, broker: &dyn LocalNode, con: &mut ConnectionManager) {
    let result: redis::RedisResult<()> = async {
        super::routes::sync_own(con, &cluster.node_id, &broker.local_filters()).await?;
        cluster.routes.reload(con).await
    }
    .await;
    if let Err(error) = result {
        tracing::warn!(%error, "route reconcile failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_dead_only_after_a_grace_period_of_silence() {
        let mut suspects = Suspects::default();
        let ttl = Duration::from_millis(50);
        assert!(suspects.dead(vec!["a".into()], ttl).is_empty());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(suspects.dead(vec!["a".into()], ttl), vec!["a".to_string()]);
        // Heard from again: the clock restarts.
        assert!(suspects.dead(vec![], ttl).is_empty());
        assert!(suspects.dead(vec!["a".into()], ttl).is_empty());
    }
}
