//! `astramq-node`: the AstraMQ broker.
//!
//! # Layout
//!
//! A request travels down this list:
//!
//! - [`listener`]: accepts TCP connections (and TLS, WebSocket and
//!   WebSocket-in-TLS ones, handshakes included, on `--tls-listen`,
//!   `--ws-listen`, `--wss-listen`), caps their number, shuts down
//!   gracefully; [`limits`] decides which it admits (per IP, per second)
//!   and the keep-alive each client is held to.
//! - [`session`]: one task per connection: CONNECT handshake, takeover,
//!   the packet loop, keep-alive, will, persistent-session parking;
//!   [`auth`] checks the CONNECT's credentials (password file, Redis) and
//!   holds the `user` admin command; [`acl`] decides which topics a
//!   client may publish and subscribe to.
//! - [`connection`]: bytes ⇄ whole MQTT frames, with coalesced writes and
//!   no buffers held while idle, over a [`transport`] (TCP, TLS, WebSocket).
//! - [`protocol`]: framing, bounds-checked validation and the rmqtt-codec
//!   codec (3.1, 3.1.1 and 5.0).
//! - [`broker`]: the publish path: route, post to mailboxes, queue offline.
//! - [`registry`]: connected sessions by client id, and their mailboxes.
//! - [`router`]: topic validation and the subscription tree.
//! - [`store`]: sessions, retained messages and offline queues behind one
//!   trait; an embedded memory backend, and Redis for clusters.
//! - [`retained`]: retained messages indexed by topic level, and their
//!   cluster-wide limits.
//! - [`cluster`]: nodes sharing state through Redis: routes, inter-node
//!   streams, heartbeats, and taking over from a dead node; it reaches the
//!   node only through [`cluster::LocalNode`].
//! - [`redis_model`]: the Redis data model shared by store and cluster.
//! - [`session_state`]: what store and sessions share about a session;
//!   [`subscription`]: a subscription's terms (QoS and the 5.0 options).
//! - [`message`]: the shared message model (MQTT 5-ready).
//! - [`pin`]: how a delivery served from memory stays in Redis (the
//!   journal or inbox entry it came in).
//! - [`sys`], [`stats`], [`ops`]: `$SYS` topics, Prometheus metrics, and
//!   the `/metrics`, `/healthz`, `/readyz` endpoint.
//! - [`gossip`]: announcing the node to proxies and peers, and hearing of
//!   failures early.
//! - [`config`]: flags, environment and TOML.

pub mod acl;
pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod gossip;
pub mod limits;
pub mod listener;
pub mod message;
pub mod ops;
pub mod pin;
pub mod protocol;
pub mod redis_model;
pub mod registry;
pub mod retained;
pub mod router;
pub mod session;
pub mod session_state;
pub mod stats;
pub mod store;
pub mod subscription;
pub mod sys;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use astramq_shared::metrics::MemberCount;
use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::acl::AccessControl;
use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::cluster::Cluster;
use crate::config::NodeConfig;
use crate::stats::Stats;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

/// Runs the node until `shutdown` resolves, then closes every client and
/// saves their sessions.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let stats = Stats::default();
    // Reaching Redis retries until it answers: a SIGTERM meanwhile ends
    // the node instead of waiting for Redis.
    let mut shutdown = std::pin::pin!(shutdown);
    let (store, cluster) = tokio::select! {
        opened = open_store(&config, &stats) => opened?,
        () = &mut shutdown => {
            tracing::info!("shutdown requested before the store was reached");
            return Ok(());
        }
    };
    let auth = Authenticator::new(
        config.auth.clone(),
        cluster.as_ref().map(|c| c.connection()),
    );
    log_auth_mode(&auth, &config);
    let broker = Arc::new(
        Broker::new(
            &config.node_id,
            config.limits.clone(),
            store,
            cluster.clone(),
            stats,
        )
        .with_authenticator(auth)
        .with_access_control(access_control(&config)),
    );
    // Installed before the readiness line: SIGHUP's default action would
    // end the process.
    let reload_task = tokio::spawn(reload_on_sighup(
        broker.clone(),
        config.tls_certificates(),
        signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
    ));
    if let Some(cluster) = &cluster {
        cluster.start(broker.clone()).await?;
    }
    // Before the MQTT readiness line, so whoever waits for that line
    // already knows the metrics address too.
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let source = Arc::new(ops::NodeOps::new(broker.clone()));
            let bound = astramq_shared::ops_http::serve(addr, source).await?;
            tracing::info!(metrics = %bound, "metrics endpoint started");
            println!("astramq-node metrics on http://{bound}/metrics");
            Some(bound)
        }
        None => None,
    };
    let sockets = listener::bind(&config).await?;
    let local = sockets[0].2;
    tracing::info!(
        node_id = %config.node_id,
        listeners = ?sockets.iter().map(|(_, protocol, bound)| format!("{}://{bound}", protocol.scheme())).collect::<Vec<_>>(),
        "node started"
    );
    let membership = match &config.gossip {
        Some(options) => {
            let membership = gossip::join(&config.node_id, options, local, metrics_addr).await?;
            tokio::spawn(gossip::follow(
                membership.clone(),
                cluster.clone(),
                config.node_id.clone(),
                MemberCount::register(&broker.stats().registry),
            ));
            Some(membership)
        }
        None => None,
    };
    // Stable lines on stdout: scripts and tests wait for them (the plain
    // one last, so it still means everything is bound).
    for (_, protocol, bound) in sockets.iter().rev() {
        println!("astramq-node listening on {}://{bound}", protocol.scheme());
    }
    // Leave gossip as soon as shutdown starts, so proxies stop sending new
    // clients here while the connected ones are closed.
    let leaving = membership.clone();
    let shutdown = async move {
        shutdown.await;
        if let Some(membership) = leaving {
            tokio::spawn(async move { membership.leave().await });
        }
    };
    let gauges_task = tokio::spawn(ops::refresh_slow_gauges(broker.clone()));
    let released_task = tokio::spawn(broker.clone().sweep_periodically());
    let sys_task = config
        .sys_interval
        .map(|every| tokio::spawn(sys::publish_periodically(broker.clone(), every)));
    let listeners = listener::Listeners {
        sockets: sockets
            .into_iter()
            .map(|(socket, protocol, _)| (socket, protocol))
            .collect(),
    };
    listener::serve(broker, listeners, shutdown, config.shutdown_timeout).await;
    gauges_task.abort();
    released_task.abort();
    reload_task.abort();
    if let Some(task) = sys_task {
        task.abort();
    }
    if let Some(membership) = &membership {
        membership.leave().await;
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    tracing::info!("node stopped");
    Ok(())
}

/// Says at start-up who may connect, and warns when nobody can.
fn log_auth_mode(auth: &Authenticator, config: &NodeConfig) {
    let file_users = config.auth.users.len();
    let redis_users = config.cluster.is_some();
    tracing::info!(
        allow_anonymous = auth.allows_anonymous(),
        file_users,
        redis_users,
        "authentication"
    );
    if !auth.allows_anonymous() && !auth.has_user_source() {
        tracing::warn!(
            "anonymous clients are refused and no users are configured: \
             no client can connect (give --password-file, --redis, or --allow-anonymous true)"
        );
    }
}

/// The ACL from `--acl-file`, logged; `None` without one.
fn access_control(config: &NodeConfig) -> Option<AccessControl> {
    let Some(acl) = &config.acl else {
        tracing::info!("authorization: no ACL file, every topic allowed");
        return None;
    };
    tracing::info!(path = %acl.path.display(), rules = acl.rules.len(), "authorization: ACL file read");
    Some(AccessControl::new(acl.path.clone(), acl.rules.clone()))
}

/// Re-reads the password file, the ACL file and the TLS files at every
/// SIGHUP. New TLS handshakes use the new certificates; bad files keep the
/// old ones (and the old rules).
async fn reload_on_sighup(
    broker: Arc<Broker>,
    tls: Option<Arc<astramq_shared::tls::ServerTls>>,
    mut hangup: Signal,
) {
    while hangup.recv().await.is_some() {
        broker.auth().reload();
        if let Some(acl) = broker.acl() {
            acl.reload();
        }
        if let Some(tls) = &tls {
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificates reloaded"),
                Err(error) => {
                    tracing::error!(%error, "TLS certificates not reloaded; keeping the previous ones")
                }
            }
        }
    }
}

/// The embedded store, or Redis and the cluster when a URL is configured.
async fn open_store(
    config: &NodeConfig,
    stats: &Stats,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<Cluster>>)> {
    let Some(options) = &config.cluster else {
        let store = MemoryStore::new(config.limits.queue_bound())
            .with_retained_limits(config.limits.retained);
        return Ok((Arc::new(store), None));
    };
    let refusals = stats.queue_refusal_counters();
    let cluster =
        Cluster::connect(&config.node_id, options.clone(), &stats.registry, refusals).await?;
    let store = RedisStore::new(
        cluster.connection(),
        cluster.metrics.clone(),
        cluster.node_id.clone(),
        options.queue_bound,
        options.takeover_timeout,
        cluster.scripts.clone(),
        config.limits.retained,
    );
    tokio::spawn(store.retained().follow_periodically());
    Ok((Arc::new(store), Some(cluster)))
}
