//! The cluster: nodes that share their state through Redis.
//!
//! # What Redis holds
//! - **Sessions** (see `store::redis`): owner node, fencing epoch,
//!   subscriptions (written through on SUBSCRIBE/UNSUBSCRIBE), and the
//!   queue of every QoS 1/2 delivery the client has not acknowledged,
//!   connected or not. Any node can resume any persistent session.
//! - **Routes** ([`routes`]): per node, the filters it has subscribers
//!   for, and a log of changes every node follows.
//! - **Streams** ([`bus`]): a per-node inbox (routed mode) or one shared
//!   stream (broadcast mode) carrying publishes between nodes, and control
//!   entries for session takeover; a per-node journal (routed mode) of QoS
//!   1 publishes served to its own connected persistent sessions.
//! - **Liveness** ([`liveness`]): a heartbeat key per node with a TTL.
//!
//! Every key is named in [`crate::redis_model::keys`].
//!
//! # What is guaranteed (routed mode)
//! - A QoS 1/2 publish is acknowledged only after every Redis write it
//!   needs succeeded: other nodes' inboxes, the queue of every matching
//!   persistent session on this node, the publisher's QoS 2 record,
//!   retained. What a node holds in memory for a persistent session is also
//!   in Redis until the client acknowledges it — in the session's queue,
//!   or (QoS 1 to a connected session) in the journal or inbox entry it
//!   came in, pinned there ([`crate::pin`], [`ledger`]) — so a node's
//!   death loses no acknowledged message.
//! - A client id is owned by one node at a time; a stale owner's writes are
//!   fenced off by the epoch.
//! - When a node dies (its heartbeat expires), exactly one survivor — the
//!   holder of a Redis lock — adopts its persistent sessions, publishes the
//!   wills of its connected clients, fences it, drops its routes, and
//!   queues the dead node's inbox and journal entries for those sessions
//!   ([`recovery`]).
//!
//! # What is not
//! - Redis durability is Redis's: with AOF `appendfsync everysec` a Redis
//!   crash can lose up to one second of acknowledged writes.
//! - QoS 1 messages may be delivered twice across a node's death; messages
//!   to clean sessions and QoS 0 messages die with their node.
//! - Broadcast mode caps its shared stream and gives no zero-loss
//!   guarantee.
//! - A subscription becomes visible to other nodes when they read the route
//!   log (milliseconds after SUBACK), not atomically with SUBACK.
//!
//! The full lists are "Guarantees" and "What is not guaranteed" in
//! `docs/zero-loss.md` (the README keeps a short version), which also
//! explains the design.

pub mod bus;
pub mod ledger;
pub mod liveness;
mod local;
pub mod recovery;
pub mod routes;

pub use local::LocalNode;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot, Mutex, Notify};

use crate::limits::queue::QueueBound;
use crate::message::{Message, Qos};
use crate::redis_model::endpoint::{permanent_failure, RedisEndpoint};
use crate::redis_model::keys;
use crate::redis_model::metrics::ClusterMetrics;
use crate::redis_model::scripts::Scripts;
use crate::stats::QueueRefusalCounters;
use bus::{Qos2Origin, QueueTarget};
use routes::RouteCache;

/// How publishes travel between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Each message goes to the inboxes of the nodes that subscribe to it.
    Routed,
    /// Each message goes to one stream that every node reads.
    Broadcast,
}

/// Cluster settings.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The Redis server: URL (credentials included) and TLS files, with
    /// the client every connection is opened from.
    pub redis: RedisEndpoint,
    /// Routed or broadcast delivery.
    pub mode: Mode,
    /// Bound on every Redis command and connection attempt.
    pub redis_timeout: Duration,
    /// Bound of each node's inbox: beyond it appends are refused (and
    /// publishes toward it not acknowledged), never evicted.
    pub stream_maxlen: usize,
    /// How long the forwarder lets publishes gather before writing a
    /// batch (zero: only the scheduler turns of the group commit).
    pub forward_linger: Duration,
    /// Bound of each persistent session's Redis queue.
    pub queue_bound: QueueBound,
    /// How often the heartbeat is written and dead nodes are looked for.
    pub heartbeat_interval: Duration,
    /// How long a heartbeat lives: a node silent this long is dead.
    pub heartbeat_ttl: Duration,
    /// How long a claim waits for another node to park a session.
    pub takeover_timeout: Duration,
}

/// This node's membership in the cluster.
pub struct Cluster {
    /// This node's id; names its inbox and route set.
    pub node_id: Arc<str>,
    /// Routed or broadcast.
    pub mode: Mode,
    /// The settings it runs with.
    pub options: ClusterOptions,
    /// Cached copy of every node's routes.
    pub routes: RouteCache,
    /// Redis health and latency, stream traffic.
    pub metrics: Arc<ClusterMetrics>,
    /// Every Lua script, shared by the store and the cluster tasks.
    pub scripts: Arc<Scripts>,
    /// Bound of each persistent session's Redis queue.
    pub queue_bound: QueueBound,
    /// The journal and inbox entries that deliveries served from memory
    /// are pinned to.
    pub ledger: ledger::Ledger,
    /// True while this node rejoins after finding itself fenced.
    rejoining: std::sync::atomic::AtomicBool,
    client: redis::Client,
    connection: ConnectionManager,
    forward_tx: mpsc::Sender<bus::Forward>,
    /// Taken by `start` to run the forwarder.
    forward_rx: Mutex<Option<mpsc::Receiver<bus::Forward>>>,
    /// Wakes the liveness task early (e.g. gossip reported a failure).
    check_now: Notify,
}

/// When a publish is safe in Redis.
#[derive(Debug)]
pub enum Durability {
    /// Nothing (more) to wait for.
    Done,
    /// Resolves to true once the forwarder's pipeline succeeded.
    Pending(oneshot::Receiver<bool>),
    /// It could not be written.
    Failed,
}

impl Durability {
    /// Waits for the outcome: true when the message is safe.
    pub async fn wait(self) -> bool {
        match self {
            Durability::Done => true,
            Durability::Pending(rx) => rx.await.unwrap_or(false),
            Durability::Failed => false,
        }
    }
}

/// Capacity of the queue in front of the forwarder; a full queue slows
/// publishers down instead of growing without bound.
const FORWARD_QUEUE: usize = 65_536;

impl Cluster {
    /// Connects to Redis, retrying with backoff until it answers. Its
    /// metrics go to `registry`; refused queue writes are also counted in
    /// the node's `refusals`.
    pub async fn connect(
        node_id: &str,
        options: ClusterOptions,
        registry: &prometheus::Registry,
        refusals: QueueRefusalCounters,
    ) -> anyhow::Result<Arc<Cluster>> {
        let client = options.redis.client();
        let url = options.redis.redacted();
        first_contact(&client, &url, options.redis_timeout).await?;
        tracing::info!(%url, tls = options.redis.is_tls(), "connected to Redis");
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(options.redis_timeout)
            .set_response_timeout(options.redis_timeout)
            .set_number_of_retries(3)
            .set_max_delay(1000);
        let connection = ConnectionManager::new_with_config(client.clone(), config)
            .await
            .with_context(|| format!("connecting to Redis at {url}"))?;
        let (forward_tx, forward_rx) = mpsc::channel(FORWARD_QUEUE);
        let scripts = Arc::new(Scripts::default());
        let mut loader = connection.clone();
        scripts
            .load(&mut loader)
            .await
            .context("loading the Lua scripts into Redis")?;

        Ok(Arc::new(Cluster {
            node_id: node_id.into(),
            mode: options.mode,
            queue_bound: options.queue_bound,
            options,
            routes: RouteCache::default(),
            metrics: Arc::new(ClusterMetrics::new(registry, refusals)),
            scripts,
            ledger: ledger::Ledger::default(),
            rejoining: std::sync::atomic::AtomicBool::new(false),
            client,
            connection,
            forward_tx,
            forward_rx: Mutex::new(Some(forward_rx)),
            check_now: Notify::new(),
        }))
    }

    /// A handle on the shared, reconnecting connection.
    pub fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }

    /// Cleans up after this node's previous run, registers it, loads the
    /// route table and starts the background tasks.
    pub async fn start(self: &Arc<Self>, broker: Arc<dyn LocalNode>) -> anyhow::Result<()> {
        let mut con = self.connection();
        recovery::rejoin(self, &broker)
            .await
            .context("recovering this node's previous run")?;
        let route_position = stream_end(&mut con, &keys::route_log())
            .await
            .context("reading the route log")?;
        self.routes
            .reload(&mut con)
            .await
            .context("loading the route table")?;
        let bus_position = match self.mode {
            Mode::Broadcast => stream_end(&mut con, &keys::bus()).await?,
            Mode::Routed => "0-0".into(),
        };
        let forward_rx = self
            .forward_rx
            .lock()
            .await
            .take()
            .context("cluster already started")?;
        tokio::spawn(bus::Forwarder::new(self.clone(), self.connection(), forward_rx).run());
        let reader = bus::InboxReader::new(
            self.clone(),
            broker.clone(),
            self.client.clone(),
            self.connection(),
            route_position,
            bus_position,
        );
        tokio::spawn(reader.run());
        tokio::spawn(liveness::run(self.clone(), broker));
        tokio::spawn(ledger::maintain(self.clone()));
        tracing::info!(node_id = %self.node_id, mode = ?self.mode, "joined the cluster");
        Ok(())
    }

    /// Writes `message` to Redis: to the other nodes that want it and to
    /// the queues of this node's persistent sessions (`queue`), with the
    /// publisher's QoS 2 record (`origin`). For QoS 1/2 the result tells
    /// when it is all in Redis; the caller does not wait for that before
    /// handling its client's next packet.
    pub async fn forward(
        &self,
        message: &Arc<Message>,
        queue: Vec<QueueTarget>,
        origin: Option<Qos2Origin>,
    ) -> Durability {
        let destinations = match self.mode {
            Mode::Routed => self.routes.remote_nodes(&message.topic, &self.node_id),
            Mode::Broadcast => Vec::new(),
        };
        if message.qos != Qos::AtMostOnce && self.routes.is_stale() {
            // The table may lack subscribers that moved while this node
            // could not read the route log: "nobody to send to" would be
            // acknowledged and lost. Not acknowledged; the client re-sends.
            self.metrics.stale_route_refusals.inc();
            return Durability::Failed;
        }
        let nothing_remote = self.mode == Mode::Routed && destinations.is_empty();
        if nothing_remote && queue.is_empty() && origin.is_none() {
            return Durability::Done;
        }
        let (written, durability) = match message.qos {
            Qos::AtMostOnce => (None, Durability::Done),
            _ => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Durability::Pending(rx))
            }
        };
        let forward = bus::Forward {
            message: message.clone(),
            destinations,
            queue,
            origin,
            written,
        };
        match self.forward_tx.send(forward).await {
            Ok(()) => durability,
            Err(_) => Durability::Failed,
        }
    }

    /// Called when a heartbeat found this node fenced (declared dead while
    /// it was frozen or cut off): drops every client and session here and
    /// rejoins as if restarted. Runs once at a time.
    pub fn start_rejoin(self: &Arc<Self>, broker: Arc<dyn LocalNode>) {
        use std::sync::atomic::Ordering;
        if self.rejoining.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metrics.fenced.inc();
        // Declared dead: the route table missed whatever moved meanwhile.
        self.routes.mark_stale();
        tracing::error!("this node was declared dead and its sessions taken over: dropping every client and rejoining");
        let cluster = self.clone();
        tokio::spawn(async move {
            broker.fence().await;
            let mut delay = Duration::from_millis(100);
            loop {
                let rejoined = match recovery::rejoin(&cluster, &broker).await {
                    Ok(()) => cluster
                        .routes
                        .reload(&mut cluster.connection())
                        .await
                        .map_err(|error| recovery::RecoveryError::Store(error.into())),
                    Err(error) => Err(error),
                };
                match rejoined {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(%error, "rejoin failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
            cluster.rejoining.store(false, Ordering::Release);
            tracing::info!("rejoined the cluster");
        });
    }

    /// False while this node rejoins after finding itself fenced: it must
    /// take no client then. A session claimed here before the rejoin has
    /// re-read this node's sessions would be adopted from under its own
    /// connection, and its routes would be dropped with the old ones.
    pub fn accepts_clients(&self) -> bool {
        !self.rejoining.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that this node gained (`added`) or lost its last subscriber
    /// for `filter`.
    pub async fn route_changed(&self, filter: &str, added: bool) -> bool {
        let mut con = self.connection();
        match routes::publish_change(&mut con, &self.node_id, filter, added).await {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, %filter, added, "route change not written; the periodic reconcile retries");
                false
            }
        }
    }

    /// Withdraws this node's heartbeat at shutdown, after its sessions are
    /// parked, so a survivor adopts them at once instead of after the TTL.
    pub async fn leave(&self) {
        let mut con = self.connection();
        let removed: redis::RedisResult<redis::Value> = redis::cmd("DEL")
            .arg(keys::node_alive(&self.node_id))
            .query_async(&mut con)
            .await;
        if let Err(error) = removed {
            tracing::warn!(%error, "heartbeat not withdrawn; survivors notice after its TTL");
        }
    }

    /// Asks the liveness task to look for dead nodes now.
    pub fn check_liveness_now(&self) {
        self.check_now.notify_one();
    }

    /// Every node registered in the cluster: alive, or dead and not yet
    /// recovered (recovery unregisters it).
    pub async fn registered_nodes(&self) -> redis::RedisResult<Vec<String>> {
        redis::cmd("SMEMBERS")
            .arg(keys::nodes())
            .query_async(&mut self.connection())
            .await
    }
}

/// Connects to Redis and PINGs it, retrying with backoff while it is
/// unreachable (it may still be starting). Refused credentials, a failed
/// TLS handshake and refused commands end start-up at once with an error
/// saying so: retrying would not fix them.
async fn first_contact(client: &redis::Client, url: &str, timeout: Duration) -> anyhow::Result<()> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(timeout)
        .set_response_timeout(timeout);
    let mut delay = Duration::from_millis(100);
    loop {
        let contact = async {
            let mut con = client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            redis::cmd("PING").query_async::<String>(&mut con).await
        };
        match contact.await {
            Ok(_) => return Ok(()),
            Err(error) => {
                if let Some(problem) = permanent_failure(&error) {
                    anyhow::bail!("connecting to Redis at {url}: {problem}");
                }
                tracing::warn!(%error, %url, "Redis unreachable; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The id of the last entry of `stream` ("0-0" when empty).
pub(super) async fn stream_end(
    con: &mut ConnectionManager,
    stream: &str,
) -> anyhow::Result<String> {
    let reply: redis::Value = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(con)
        .await?;
    Ok(crate::redis_model::value::stream_entries(&reply)
        .ok()
        .and_then(|e| e.first().map(|e| e.id.clone()))
        .unwrap_or_else(|| "0-0".into()))
}
