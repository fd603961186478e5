//! End-to-end test harness for AstraMQ.
//!
//! Every test in `tests/` starts its own `astramq-node` process on an
//! ephemeral loopback port and talks to it only over TCP, the way a real
//! client would. That keeps the tests honest (they exercise the binary we
//! ship, its flags and its startup line) and lets them run in parallel.
//!
//! # Layout
//!
//! - [`binary`]: finds the node and proxy executables, building them once
//!   per test process.
//! - [`node`]: [`NodeProcess`], a guard that starts a node, waits for its
//!   "listening" line, keeps its logs, and kills it when dropped.
//! - [`wire`]: hand-encoded MQTT 3.1.1 packets and a minimal decoder, written
//!   independently of the node's codec so a shared bug cannot hide itself.
//! - [`raw`]: [`RawClient`], a byte-level client for cases a well-behaved
//!   library cannot express (malformed input, withheld acks, duplicates).
//! - [`proxy`]: [`proxy::ProxyProcess`], the same for `astramq-proxy`.
//! - [`redis`]: [`RedisProcess`], a private `redis-server` for cluster tests.
//! - [`users`]: `astramq-node user ...` with the password on stdin, and
//!   self-removing temporary directories for password files.
//! - [`chaos`]: a fault-injecting cluster harness (kill, freeze, Redis
//!   restart, partition) with a workload and a zero-loss checker.
//! - [`ws`]: [`ws::WsClient`], a byte-level MQTT client over WebSocket
//!   (and WebSocket inside TLS), for the `--ws-listen`/`--wss-listen` tests.
//! - [`signal`]: signals to a started process (the one `kill(2)`).
//! - [`paho`]: the paho-mqtt Python client (3.1.1 and 5.0), installed
//!   when missing.
//! - [`v5`]: hand-encoded MQTT 5.0 packets and properties, a decoder,
//!   and [`v5::Client5`], a byte-level 5.0 client (the 5.0 twin of
//!   [`wire`] and [`raw`]).
//! - [`client`]: [`TestClient`], a wrapper around the independent `rumqttc`
//!   client that turns its event loop into awaitable, bounded steps.

pub mod binary;
pub mod bystander;
pub mod chaos;
pub mod client;
pub mod node;
pub mod observability;
pub mod paho;
pub mod proxy;
pub mod raw;
pub mod redis;
pub mod signal;
pub mod users;
pub mod v5;
pub mod wire;
pub mod ws;

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

pub use client::TestClient;
pub use node::NodeProcess;
pub use raw::RawClient;
pub use redis::{RedisProcess, RedisSetup, RedisTls};

/// Upper bound for any single expected event (a packet, an ack, a close).
///
/// Generous enough for a loaded 2-core CI machine, small enough that a hung
/// test fails quickly instead of stalling the whole suite.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long a test listens to conclude that something did *not* happen.
///
/// Only used after a positive signal (a sentinel message, a ping round trip)
/// has already shown that the node processed everything sent before it, so
/// this only has to catch stragglers, not cover processing time.
pub const QUIET: Duration = Duration::from_millis(300);

/// Awaits `fut` for at most [`TIMEOUT`], naming `what` in the error.
///
/// Every await on the node goes through a bound like this so that a broker
/// that never answers fails the test instead of hanging it.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(TIMEOUT, what, fut).await
}

/// Like [`within`] with an explicit bound, for steps slower than [`TIMEOUT`].
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Returns a client id no other test in this run uses.
///
/// Tests share nothing but the machine, yet a unique id per client makes
/// logs readable and rules out accidental takeovers between clients.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A loopback address free for both TCP and UDP: gossip binds one port
/// for both.
pub fn free_gossip_addr() -> Result<std::net::SocketAddr> {
    for _ in 0..100 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let addr = tcp.local_addr()?;
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    anyhow::bail!("no loopback port free for both TCP and UDP")
}

/// Checks that the node is alive and still serves a fresh, well-behaved client.
///
/// Used after feeding the node bad input: the offending connection must be
/// closed, but the process must neither crash nor stop serving others.
pub async fn assert_serves_clients(node: &mut NodeProcess) -> Result<()> {
    node.assert_running()?;
    let connect = wire::Connect::new(&unique_id("healthy"));
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    client.ping().await?;
    client.send(&wire::disconnect()).await?;
    node.assert_running()
}
