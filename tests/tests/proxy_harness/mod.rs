//! Harness for `tests/proxy.rs`: Prometheus scrapes of the proxy
//! (`astramq_tests::proxy::ProxyProcess` is the process guard), and a gossip
//! cluster of nodes behind a proxy.
//!
//! Kept beside the test file (not in `tests/src`, which serves every test
//! file) because only the proxy tests use it.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
pub use astramq_tests::free_gossip_addr;
pub use astramq_tests::proxy::ProxyProcess;
use astramq_tests::{unique_id, within, within_for, NodeProcess, RedisProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long membership may take to notice a killed node (three survivors:
/// about 1 s measured; bounded well above).
pub const MEMBERSHIP: Duration = Duration::from_secs(10);

/// Metrics-based waits on a [`ProxyProcess`], used by the proxy tests.
pub trait ProxyMetrics {
    /// One scrape of the proxy's `/metrics`.
    async fn scrape(&self) -> Result<Metrics>;
    /// Waits until the proxy reports `count` usable backends.
    async fn wait_for_backends(&self, count: usize, limit: Duration) -> Result<()>;
}

impl ProxyMetrics for ProxyProcess {
    async fn scrape(&self) -> Result<Metrics> {
        Metrics::scrape(self.metrics).await
    }

    /// Waits until the proxy reports `count` usable backends.
    async fn wait_for_backends(&self, count: usize, limit: Duration) -> Result<()> {
        let what = format!("the proxy to report {count} backends");
        within_for(limit, &what, async {
            loop {
                if self.scrape().await?.get("astramq_proxy_backends") == count as f64 {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .map_err(|e| anyhow!("{e}; proxy output:\n{}", self.log_tail()))?
    }
}

/// One scrape of a Prometheus text page.
pub struct Metrics(String);

impl Metrics {
    pub async fn scrape(addr: SocketAddr) -> Result<Self> {
        within("a metrics scrape", async {
            let mut stream = TcpStream::connect(addr).await?;
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .await?;
            let mut page = String::new();
            stream.read_to_string(&mut page).await?;
            let body = page
                .split_once("\r\n\r\n")
                .map(|(_, body)| body.to_owned())
                .ok_or_else(|| anyhow!("no HTTP body from {addr}"))?;
            Ok::<_, anyhow::Error>(Metrics(body))
        })
        .await?
    }

    /// The value of one series, written exactly as exposed
    /// (`name{label="v"}`), or 0 when absent.
    pub fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .find_map(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    /// Every series of `name` carrying label `label`, by that label's value.
    pub fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let prefix = format!("{name}{{{label}=\"");
        self.0
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix(&prefix)?;
                let (value_label, rest) = rest.split_once('"')?;
                let value = rest.rsplit(' ').next()?.parse().ok()?;
                Some((value_label.to_owned(), value))
            })
            .collect()
    }
}

/// `GET path` on the proxy's operations endpoint: the status code.
pub async fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    within("an HTTP request", async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut page = String::new();
        stream.read_to_string(&mut page).await?;
        let status = page
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {page:?}"))?;
        Ok::<_, anyhow::Error>(status)
    })
    .await?
}

/// The node's metrics address, from the line it prints before its readiness line.
fn node_metrics(node: &NodeProcess) -> Result<SocketAddr> {
    let log = node.log_tail();
    log.lines()
        .find_map(|l| l.strip_prefix("astramq-node metrics on http://"))
        .and_then(|rest| rest.trim().strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| anyhow!("node printed no metrics address; output:\n{log}"))
}

/// A started node with its id and metrics address.
pub struct Node {
    /// Its `--node-id`, the proxy's `backend` label for it.
    pub id: String,
    /// The process guard.
    pub process: NodeProcess,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
}

impl Node {
    pub fn start(id: &str, flags: &[(&str, &str)]) -> Result<Self> {
        let mut all = vec![("--metrics-listen", "127.0.0.1:0"), ("--sys-interval", "0")];
        all.extend_from_slice(flags);
        let process = NodeProcess::start_named(id, &all)?;
        let metrics = node_metrics(&process)?;
        Ok(Node {
            id: id.to_owned(),
            process,
            metrics,
        })
    }

    pub async fn scrape(&self) -> Result<Metrics> {
        Metrics::scrape(self.metrics).await
    }
}

/// Redis, three gossiping nodes sharing it, and a proxy that joined them.
pub struct GossipCluster {
    /// Dropped first (declaration order): no client outlives the nodes.
    pub proxy: ProxyProcess,
    /// The three nodes, `nodes[i].id` being the proxy's `backend` label.
    pub nodes: Vec<Node>,
    /// Kept alive for the nodes; dropped last.
    _redis: RedisProcess,
}

impl GossipCluster {
    pub async fn start(balance: &str) -> Result<Self> {
        let redis = RedisProcess::start()?;
        let gossip: Vec<SocketAddr> = (0..3).map(|_| free_gossip_addr()).collect::<Result<_>>()?;
        let join = gossip[..3]
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut nodes = Vec::new();
        for (i, addr) in gossip[..3].iter().enumerate() {
            let id = unique_id(&format!("n{i}"));
            nodes.push(Node::start(
                &id,
                &[
                    ("--redis", &redis.url()),
                    ("--gossip-listen", &addr.to_string()),
                    ("--join", &join),
                    ("--heartbeat-interval-ms", "200"),
                    ("--heartbeat-ttl-ms", "1000"),
                    ("--redis-timeout-ms", "500"),
                ],
            )?);
        }
        // Its gossip port is picked last and retried: a port found free
        // earlier may have gone to a node's ephemeral listener meanwhile.
        let mut attempts = 0;
        let proxy = loop {
            attempts += 1;
            let started = ProxyProcess::start(&[
                ("--node-id", &unique_id("px")),
                ("--gossip-listen", &free_gossip_addr()?.to_string()),
                ("--join", &join),
                ("--balance", balance),
            ]);
            match started {
                Ok(proxy) => break proxy,
                Err(error) if attempts < 3 => eprintln!("proxy start retried: {error:#}"),
                Err(error) => return Err(error),
            }
        };
        proxy.wait_for_backends(3, MEMBERSHIP).await?;
        Ok(GossipCluster {
            proxy,
            nodes,
            _redis: redis,
        })
    }
}

/// Active proxied connections per backend.
pub async fn active_by_backend(proxy: &ProxyProcess) -> Result<BTreeMap<String, f64>> {
    Ok(proxy
        .scrape()
        .await?
        .by_label("astramq_proxy_connections", "backend"))
}

/// The backend whose active count went up between two readings.
pub fn grown(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> Result<String> {
    let up: Vec<&String> = after
        .iter()
        .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
        .map(|(k, _)| k)
        .collect();
    ensure!(
        up.len() == 1,
        "expected one backend to gain a connection: {before:?} -> {after:?}"
    );
    Ok(up[0].clone())
}

/// A loopback port with nothing listening (connects are refused).
pub fn dead_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
