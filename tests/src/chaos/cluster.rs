//! [`ChaosCluster`]: Redis (AOF on), nodes that can be killed, frozen and
//! restarted under the same node id, and optionally gossip plus the proxy
//! in front.
//!
//! Guarantees the harness relies on: every process is a guard that dies
//! with the cluster; a restarted node keeps its `--node-id` and gossip
//! address (its MQTT port changes, which only the proxy sees, via gossip);
//! the log of every incarnation of a node is scanned for panics before the
//! incarnation is dropped, so a panic in a node that was later killed still
//! counts.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};

use super::partition::NetnsLink;
use crate::node::NodeProcess;
use crate::observability::exposition::Exposition;
use crate::proxy::ProxyProcess;
use crate::redis::RedisProcess;
use crate::{free_gossip_addr, unique_id};

/// How long the proxy may take to learn about every node through gossip.
const MEMBERSHIP: Duration = Duration::from_secs(15);

/// The word a Rust panic message contains (`thread 'x' panicked at ...`).
const PANIC_MARKER: &str = "panicked";

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterShape {
    /// Number of broker nodes.
    pub nodes: usize,
    /// Gossip between the nodes and `astramq-proxy` in front of them.
    pub with_proxy: bool,
    /// Run the last node in a network namespace so it can be partitioned
    /// (needs root and `ip netns`; ignored with a printed message if the
    /// namespace cannot be created).
    pub partitionable_node: bool,
}

/// One broker node and what the harness has learnt about its incarnations.
pub struct ChaosNode {
    /// Its `--node-id`, the same across restarts.
    pub id: String,
    /// Its gossip address, the same across restarts.
    gossip: Option<SocketAddr>,
    /// The running incarnation; `None` between a kill and its restart.
    process: Option<NodeProcess>,
    /// The namespace link this node runs behind, if it is partitionable.
    netns: Option<NetnsLink>,
    /// Whether the process is frozen (SIGSTOP) right now.
    frozen: bool,
    /// Panic lines seen in the logs of this node's incarnations.
    pub panics: Vec<String>,
    /// Highest resident set size sampled, in KiB.
    pub peak_rss_kib: u64,
    /// How many times it was started (1 + restarts).
    pub incarnations: usize,
}

/// The processes of one chaos run. Dropping it stops them all.
pub struct ChaosCluster {
    /// The proxy, when [`ClusterShape::with_proxy`]; dropped first.
    pub proxy: Option<ProxyProcess>,
    /// The nodes, in start order.
    pub nodes: Vec<ChaosNode>,
    /// The `--join` value: every node's gossip address.
    join: String,
    /// Shared state, AOF on (`appendonly yes`, `appendfsync everysec`).
    pub redis: RedisProcess,
}

impl ChaosCluster {
    /// Starts Redis, the nodes and (if asked) the proxy, and waits until
    /// the proxy knows every node.
    pub fn start(shape: &ClusterShape) -> Result<Self> {
        crate::binary::binaries_dir()?;
        let netns = if shape.partitionable_node {
            NetnsLink::create_or_explain()
        } else {
            None
        };
        let extra_binds: Vec<IpAddr> = netns.iter().map(NetnsLink::host_ip).collect();
        let redis = RedisProcess::start_bound(&extra_binds)?;
        let mut nodes = Vec::with_capacity(shape.nodes);
        for i in 0..shape.nodes {
            let gossip = if shape.with_proxy {
                Some(gossip_addr_for(i, shape.nodes, netns.as_ref())?)
            } else {
                None
            };
            let node_netns = if i + 1 == shape.nodes {
                netns.clone()
            } else {
                None
            };
            nodes.push(ChaosNode {
                id: unique_id(&format!("n{i}")),
                gossip,
                process: None,
                netns: node_netns,
                frozen: false,
                panics: Vec::new(),
                peak_rss_kib: 0,
                incarnations: 0,
            });
        }
        let join = nodes
            .iter()
            .filter_map(|n| n.gossip.map(|g| g.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            proxy: None,
            nodes,
            join,
            redis,
        };
        for i in 0..shape.nodes {
            cluster.start_node(i)?;
        }
        if shape.with_proxy {
            cluster.start_proxy(netns.as_ref())?;
        }
        Ok(cluster)
    }

    /// The proxy's client address (fails if the cluster has none).
    pub fn proxy_addr(&self) -> Result<SocketAddr> {
        self.proxy
            .as_ref()
            .map(|p| p.addr)
            .ok_or_else(|| anyhow!("this cluster runs without the proxy"))
    }

    /// Node `i`'s current MQTT address (fails while it is down).
    pub fn node_addr(&self, i: usize) -> Result<SocketAddr> {
        self.nodes[i]
            .process
            .as_ref()
            .map(NodeProcess::addr)
            .ok_or_else(|| anyhow!("node {} is down", self.nodes[i].id))
    }

    /// Node `i`'s `/metrics` address (fails while it is down; a node in a
    /// namespace serves it inside the namespace only).
    pub fn node_metrics_addr(&self, i: usize) -> Result<SocketAddr> {
        let process = self.nodes[i]
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {} is down", self.nodes[i].id))?;
        crate::observability::cluster::node_metrics_addr(process)
    }

    /// Whether node `i` runs behind a namespace link it can be cut off by.
    pub fn is_partitionable(&self, i: usize) -> bool {
        self.nodes[i].netns.is_some()
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Starts node `i` (again), under its id and gossip address.
    pub fn start_node(&mut self, i: usize) -> Result<()> {
        let redis_url = match &self.nodes[i].netns {
            Some(link) => format!("redis://{}:{}", link.host_ip(), self.redis.port()),
            None => self.redis.url(),
        };
        let node = &mut self.nodes[i];
        let gossip = node.gossip.map(|g| g.to_string());
        let mut flags: Vec<(&str, &str)> = vec![
            ("--redis", &redis_url),
            ("--heartbeat-interval-ms", "200"),
            ("--heartbeat-ttl-ms", "1000"),
            ("--redis-timeout-ms", "500"),
            ("--sys-interval", "0"),
            // A slow subscriber's backlog must never hit the queue cap: a
            // message dropped for that is a configured limit, not a loss.
            ("--max-queued-messages", "1000000"),
            ("--metrics-listen", "127.0.0.1:0"),
        ];
        if let Some(gossip) = &gossip {
            flags.push(("--gossip-listen", gossip));
            flags.push(("--join", &self.join));
        }
        let process = match &node.netns {
            Some(link) => NodeProcess::start_in_netns(&link.name, link.ns_ip(), &node.id, &flags)?,
            None => NodeProcess::start_named(&node.id, &flags)?,
        };
        node.process = Some(process);
        node.frozen = false;
        node.incarnations += 1;
        Ok(())
    }

    fn start_proxy(&mut self, netns: Option<&NetnsLink>) -> Result<()> {
        let gossip = match netns {
            Some(link) => SocketAddr::new(link.host_ip(), free_gossip_addr()?.port()),
            None => free_gossip_addr()?,
        };
        let proxy = ProxyProcess::start(&[
            ("--node-id", &unique_id("px")),
            ("--gossip-listen", &gossip.to_string()),
            ("--join", &self.join),
            // Sticky placement: a reconnecting client goes back to its node
            // while that node lives, so placement is stable and reportable.
            ("--balance", "client-id"),
            ("--dial-timeout-ms", "300"),
        ])?;
        self.proxy = Some(proxy);
        self.wait_for_backends(self.nodes.len(), MEMBERSHIP)
    }

    /// Waits (blocking) until the proxy reports `count` usable backends.
    pub fn wait_for_backends(&self, count: usize, limit: Duration) -> Result<()> {
        let Some(proxy) = &self.proxy else {
            return Ok(());
        };
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(page) = Exposition::scrape(proxy.metrics) {
                last = page.sum("astramq_proxy_backends", &[]);
                if last == Some(count as f64) {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("proxy saw {last:?} backends, not {count}, within {limit:?}")
    }

    /// `kill -9` of node `i`; its log is scanned for panics first.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let mut process = node
            .process
            .take()
            .ok_or_else(|| anyhow!("node {} is already down", node.id))?;
        process.kill()?;
        node.record_panics(&process);
        node.frozen = false;
        Ok(())
    }

    /// SIGSTOP (`freeze = true`) or SIGCONT of node `i`.
    pub fn freeze(&mut self, i: usize, freeze: bool) -> Result<()> {
        let node = &mut self.nodes[i];
        let process = node
            .process
            .as_ref()
            .ok_or_else(|| anyhow!("node {} is down", node.id))?;
        process.freeze(freeze)?;
        node.frozen = freeze;
        Ok(())
    }

    /// Cuts node `i` off from Redis, its peers and the proxy (`cut = true`)
    /// or heals the cut.
    pub fn partition(&mut self, i: usize, cut: bool) -> Result<()> {
        let node = &self.nodes[i];
        let link = node
            .netns
            .as_ref()
            .ok_or_else(|| anyhow!("node {} is not partitionable", node.id))?;
        link.set_up(!cut)
    }

    /// Records each running node's resident set size; returns nothing new,
    /// the peaks are kept on the nodes.
    pub fn sample_rss(&mut self) {
        for node in &mut self.nodes {
            if let Some(kib) = node.process.as_ref().and_then(|p| rss_kib(p.pid())) {
                node.peak_rss_kib = node.peak_rss_kib.max(kib);
            }
        }
    }

    /// Scans the running incarnations' logs for panics (the killed ones
    /// were scanned when they died).
    pub fn collect_panics(&mut self) {
        for node in &mut self.nodes {
            if let Some(process) = node.process.take() {
                node.record_panics(&process);
                node.process = Some(process);
            }
        }
    }

    /// Whether every node runs (none is down or frozen) and every node is
    /// still alive as a process.
    pub fn assert_all_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            let process = node
                .process
                .as_mut()
                .ok_or_else(|| anyhow!("node {} is down", node.id))?;
            process.assert_running()?;
            if node.frozen {
                bail!("node {} is still frozen", node.id);
            }
        }
        Ok(())
    }

    /// The node that owns `client_id`'s session according to Redis (the
    /// `owner` field of its session hash), if any.
    pub fn session_owner(&self, client_id: &str) -> Option<String> {
        let key = format!("astramq:s:{{{client_id}}}");
        let owner = self.redis.cli(&["HGET", &key, "owner"]).ok()?;
        let owner = owner.trim();
        (!owner.is_empty()).then(|| owner.to_owned())
    }

    /// Waits until a survivor logs that it recovered the dead node `dead`.
    pub async fn wait_for_recovery_of(&self, dead: &str, limit: Duration) -> Result<()> {
        let line = format!("dead node recovered node={dead}");
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let recovered = self
                .nodes
                .iter()
                .filter_map(|n| n.process.as_ref())
                .any(|p| p.log().contains(&line));
            if recovered {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("no survivor logged {line:?} within {limit:?}")
    }
}

impl ChaosNode {
    fn record_panics(&mut self, process: &NodeProcess) {
        for line in process.log().lines().filter(|l| l.contains(PANIC_MARKER)) {
            if !self.panics.iter().any(|seen| seen == line) {
                self.panics.push(line.to_owned());
            }
        }
    }
}

impl Drop for ChaosCluster {
    /// Thaws frozen nodes so their guards can kill and reap them.
    fn drop(&mut self) {
        for node in &self.nodes {
            if let (true, Some(process)) = (node.frozen, &node.process) {
                let _ = process.freeze(false);
            }
        }
    }
}

/// Node `i`'s gossip address: on the namespace link's host side when some
/// node lives in a namespace (so it can reach every peer), else loopback.
fn gossip_addr_for(i: usize, count: usize, netns: Option<&NetnsLink>) -> Result<SocketAddr> {
    let port = free_gossip_addr()?.port();
    Ok(match netns {
        Some(link) if i + 1 == count => SocketAddr::new(link.ns_ip(), port),
        Some(link) => SocketAddr::new(link.host_ip(), port),
        None => SocketAddr::from(([127, 0, 0, 1], port)),
    })
}

/// Sends `signal` to `pid` (one of our own children).
/// `VmRSS` of `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}
