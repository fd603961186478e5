//! [`Cluster`]: the processes of the local stack on free loopback ports —
//! one `redis-server`, three `astramq-node`s joined by gossip and sharing
//! Redis, and one `astramq-proxy` in front — each with its metrics endpoint.
//!
//! It is what `scripts/start` runs, started from Rust so that every port is
//! free and every process is a guard that dies with the test.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::exposition::Exposition;
use super::workspace_root;
use crate::node::NodeProcess;
use crate::redis::{free_port, RedisProcess};

/// The node's stdout line announcing its metrics endpoint.
const NODE_METRICS_PREFIX: &str = "astramq-node metrics on http://";

/// The proxy's readiness line; its MQTT address follows.
const PROXY_READY_PREFIX: &str = "astramq-proxy listening on mqtt://";

/// How long the proxy may take from spawn to its readiness line.
const PROXY_STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// How long the proxy may take to learn every node through gossip.
const BACKENDS_TIMEOUT: Duration = Duration::from_secs(10);

/// How much proxy output is kept for failure reports.
const LOG_CAPACITY: usize = 64 * 1024;

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
        let proxy = ProxyProcess::start("px", gossip[3], &join)?;
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
fn node_metrics_addr(node: &NodeProcess) -> Result<SocketAddr> {
    let log = node.log_tail();
    log.lines()
        .find_map(|line| line.strip_prefix(NODE_METRICS_PREFIX))
        .and_then(|rest| rest.trim().strip_suffix("/metrics"))
        .and_then(|addr| addr.parse().ok())
        .ok_or_else(|| anyhow!("node printed no metrics address; output:\n{log}"))
}

/// A loopback address free for both TCP and UDP (gossip uses one port for both).
pub fn free_gossip_addr() -> Result<SocketAddr> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
        let addr = tcp.local_addr()?;
        if UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no loopback port free for both TCP and UDP")
}

/// The directory holding the workspace binaries for this test build's
/// profile, built once per test process unless `ASTRAMQ_SKIP_BUILD=1`.
pub fn binaries_dir() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_binaries() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // <target>/<profile>/deps/<test exe>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    if std::env::var("ASTRAMQ_SKIP_BUILD").as_deref() != Ok("1") {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command
            .args(["build", "-q", "-p", "astramq-node", "-p", "astramq-proxy"])
            .current_dir(workspace_root());
        if dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let output = command.output().context("running cargo build")?;
        if !output.status.success() {
            bail!(
                "cargo build of the binaries failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(dir)
}

/// A running `astramq-proxy`. Dropping it kills the process.
pub struct ProxyProcess {
    /// The child process, killed on drop.
    child: Child,
    /// Where clients connect (from its readiness line).
    pub mqtt: SocketAddr,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// Its gossip address.
    pub gossip: SocketAddr,
    /// Tail of its stdout and stderr.
    log: Arc<Mutex<String>>,
}

impl ProxyProcess {
    /// Starts a proxy joining the gossip seeds in `join` (comma-separated).
    pub fn start(id: &str, gossip: SocketAddr, join: &str) -> Result<Self> {
        let binary = binaries_dir()?.join("astramq-proxy");
        let listen = format!("127.0.0.1:{}", free_port()?);
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut command = Command::new(&binary);
        command
            .args(["--node-id", id, "--listen", &listen])
            .args(["--metrics-listen", &metrics.to_string()])
            .args(["--gossip-listen", &gossip.to_string(), "--join", join])
            // The default, named because the tests count on its rotation.
            .args(["--balance", "round-robin"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ASTRAMQ_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        drain(
            child.stdout.take().context("stdout not piped")?,
            log.clone(),
            Some(ready_tx),
        );
        drain(
            child.stderr.take().context("stderr not piped")?,
            log.clone(),
            None,
        );
        match ready_rx.recv_timeout(PROXY_STARTUP_TIMEOUT) {
            Ok(mqtt) => Ok(Self {
                child,
                mqtt,
                metrics,
                gossip,
                log,
            }),
            Err(reason) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                bail!(
                    "astramq-proxy did not print its readiness line ({reason}); \
                     `{} --help` shows which flags this build has. Output:\n{log}",
                    binary.display()
                )
            }
        }
    }

    /// Its recent output.
    pub fn log_tail(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Fails with its output if the process has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("proxy exited ({status}); output:\n{}", self.log_tail()),
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "---- astramq-proxy {} output (tail) ----\n{}",
            self.mqtt,
            self.log_tail()
        );
    }
}

/// Drains a pipe into the bounded log, reporting the readiness address.
fn drain(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    ready: Option<mpsc::Sender<SocketAddr>>,
) {
    thread::spawn(move || {
        let mut ready = ready;
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix(PROXY_READY_PREFIX) {
                if let (Some(tx), Ok(addr)) = (ready.as_ref(), addr.trim().parse()) {
                    let _ = tx.send(addr);
                    ready = None;
                }
            }
            let Ok(mut log) = log.lock() else { break };
            log.push_str(&line);
            log.push('\n');
            if log.len() > 2 * LOG_CAPACITY {
                let cut = log.len() - LOG_CAPACITY;
                let cut = (cut..log.len())
                    .find(|&i| log.is_char_boundary(i))
                    .unwrap_or(log.len());
                log.drain(..cut);
            }
        }
    });
}
