//! [`Cluster`]: the processes of the local stack on free loopback ports —
//! one `redis-server`, three `astramq-node`s joined by gossip and sharing
//! Redis, and one `astramq-proxy` in front — each with its metrics endpoint.
//!
//! It is what `scripts/start` runs, started from Rust so that every port is
//! free and every process is a guard that dies with the test.

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::exposition::Exposition;
use crate::binary::binaries_dir;
use crate::free_gossip_addr;
use crate::node::NodeProcess;
use crate::proxy::ProxyProcess;
use crate::redis::RedisProcess;

/// The node's stdout line announcing its metrics endpoint.
const NODE_METRICS_PREFIX: &str = "astramq-node metrics on http://";

/// How long the proxy may take to learn every node through gossip.
const BACKENDS_TIMEOUT: Duration = Duration::from_secs(10);

/// One broker node of the cluster.
pub struct ClusterNode {
    /// Its `--node-id`.
    pub id: String,
    /// The running process.
    pub process: NodeProcess,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

/// Redis, three nodes and a proxy. Dropping it stops them all.
pub struct Cluster {
    /// The proxy, dropped first (declaration order).
    pub proxy: ProxyProcess,
    /// The nodes.
    pub nodes: Vec<ClusterNode>,
    /// The nodes' gossip addresses, comma-separated (the `--join` value).
    pub join: String,
    /// The shared Redis, dropped last.
    pub redis: RedisProcess,
}

impl Cluster {
    /// Starts Redis, three nodes (`n1`..`n3`) and the proxy (`px`), and waits
    /// until the proxy reports all three nodes as usable backends.
    pub fn start() -> Result<Self> {
        // Builds both binaries in one cargo run before the nodes need theirs.
        binaries_dir()?;
        let redis = RedisProcess::start()?;
        let gossip: Vec<SocketAddr> = (0..4).map(|_| free_gossip_addr()).collect::<Result<_>>()?;
        let node_gossip = &gossip[..3];
        let join = node_gossip
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, gossip_addr) in node_gossip.iter().enumerate() {
            let id = format!("n{}", i + 1);
            let process = NodeProcess::start_named(
                &id,
                &[
                    ("--redis", &redis.url()),
                    ("--metrics-listen", "127.0.0.1:0"),
                    ("--gossip-listen", &gossip_addr.to_string()),
                    ("--join", &join),
                    ("--heartbeat-interval-ms", "200"),
                    ("--heartbeat-ttl-ms", "1000"),
                ],
            )?;
            let metrics = node_metrics_addr(&process)?;
            nodes.push(ClusterNode {
                id,
                process,
                metrics,
            });
        }
        let proxy = ProxyProcess::start(&[
            ("--node-id", "px"),
            ("--gossip-listen", &gossip[3].to_string()),
            ("--join", &join),
            // The default, named because the tests count on its rotation.
            ("--balance", "round-robin"),
        ])?;
        let cluster = Self {
            proxy,
            nodes,
            join,
            redis,
        };
        cluster.wait_for_backends(3)?;
        Ok(cluster)
    }

    /// Starts one more broker that joins the cluster's gossip only (no
    /// Redis, no metrics): a backend for the proxy that a test may kill.
    pub fn start_gossip_only_node(&self, id: &str) -> Result<NodeProcess> {
        let gossip = free_gossip_addr()?;
        NodeProcess::start_named(
            id,
            &[
                ("--gossip-listen", &gossip.to_string()),
                ("--join", &self.join),
                ("--sys-interval", "0"),
            ],
        )
    }

    /// The nodes' metrics addresses, in node order.
    pub fn node_metrics(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.metrics).collect()
    }

    /// Waits until the proxy's `astramq_proxy_backends` is `count`.
    pub fn wait_for_backends(&self, count: usize) -> Result<()> {
        let deadline = Instant::now() + BACKENDS_TIMEOUT;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(page) = Exposition::scrape(self.proxy.metrics) {
                last = page.sum("astramq_proxy_backends", &[]);
                if last == Some(count as f64) {
                    return Ok(());
                }
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the proxy did not report {count} backends within {BACKENDS_TIMEOUT:?} \
             (astramq_proxy_backends = {last:?}); proxy output:\n{}",
            self.proxy.log_tail()
        )
    }
}

/// Reads the metrics address the node printed before its readiness line.
pub fn node_metrics_addr(node: &NodeProcess) -> Result<SocketAddr> {
    let log = node.log_tail();
    log.lines()
        .find_map(|line| line.strip_prefix(NODE_METRICS_PREFIX))
        .and_then(|rest| rest.trim().strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| anyhow!("node printed no metrics address; output:\n{log}"))
}
