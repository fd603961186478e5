//! `astramq-proxy`: the MQTT front door of an AstraMQ cluster.
//!
//! For now it only joins gossip membership as role `proxy` and keeps the set
//! of live brokers (its future backends) up to date; the pingora-based L4
//! proxy that routes clients to them comes in a later issue.
//!
//! # Layout
//!
//! - `main` — command line, logging, start-up and graceful shutdown.
//! - [`backends`] — the live backend set, fed by membership events.

mod backends;

use std::{io::IsTerminal, net::SocketAddr, sync::Arc};

use anyhow::Context;
use astramq_shared::membership::{Membership, MembershipConfig, Role};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

use crate::backends::BackendSet;

/// Command line; every flag can also come from an `ASTRAMQ_*` variable.
#[derive(Debug, Parser)]
#[command(version, about = "AstraMQ proxy (membership only for now)")]
struct Args {
    /// Unique name of this proxy in the cluster [default: proxy-<hostname>-<pid>].
    #[arg(long, env = "ASTRAMQ_NODE_ID")]
    node_id: Option<String>,
    /// UDP+TCP address for gossip membership.
    #[arg(long, env = "ASTRAMQ_GOSSIP_LISTEN", default_value = "0.0.0.0:7946")]
    gossip_listen: SocketAddr,
    /// Gossip addresses of members to join (comma-separated); any one is enough.
    #[arg(long, env = "ASTRAMQ_JOIN", value_delimiter = ',')]
    join: Vec<SocketAddr>,
    /// Shared gossip encryption key: 16/24/32 bytes as base64 or hex. Off when unset.
    #[arg(long, env = "ASTRAMQ_GOSSIP_KEY", hide_env_values = true)]
    gossip_key: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let args = Args::parse();

    let node_id = args.node_id.unwrap_or_else(default_node_id);
    let membership = Membership::start(MembershipConfig {
        node_id: node_id.clone(),
        role: Role::Proxy,
        gossip_listen: args.gossip_listen,
        join: args.join,
        mqtt_addr: None,
        metrics_addr: None,
        encryption_key: args.gossip_key,
    })
    .await
    .context("starting gossip membership")?;
    tracing::info!(%node_id, gossip_listen = %args.gossip_listen, "astramq-proxy started");

    let backends = Arc::new(BackendSet::default());
    let mut follower = tokio::spawn(backends::follow(membership.clone(), backends.clone()));

    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, leaving the cluster"),
        _ = sigterm.recv() => tracing::info!("SIGTERM received, leaving the cluster"),
        _ = &mut follower => {
            // Membership stopped without our leave (e.g. a node id conflict):
            // a proxy with a frozen backend set must not keep serving.
            anyhow::bail!("gossip membership stopped unexpectedly; exiting");
        }
    }
    membership.leave().await;
    let _ = follower.await;
    tracing::info!("astramq-proxy stopped");
    Ok(())
}

/// A name unique per host and process, so two proxies on one machine (or
/// in two containers) never collide: `proxy-<hostname>-<pid>`.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("proxy-{host}-{}", std::process::id())
}
