//! Harness for `tests/proxy.rs`: the `astramq-proxy` process guard,
//! Prometheus scrapes, and a gossip cluster of nodes behind a proxy.
//!
//! Kept beside the test file (not in `tests/src`, which serves every test
//! file) because only the proxy tests use it.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use astramq_tests::{unique_id, within, within_for, NodeProcess, RedisProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long membership may take to notice a killed node (three survivors:
/// about 1 s measured; bounded well above).
pub const MEMBERSHIP: Duration = Duration::from_secs(10);

/// How long the proxy may take from spawn to its readiness line.
const PROXY_STARTUP: Duration = Duration::from_secs(15);

/// Builds (once per test process) and returns the proxy binary, like
/// `astramq_tests::binary` does for the node.
fn proxy_binary() -> Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_proxy().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn build_proxy() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ASTRAMQ_PROXY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("unexpected test executable path {}", exe.display()))?;
    if std::env::var("ASTRAMQ_SKIP_BUILD").as_deref() != Ok("1") {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command
            .args(["build", "-q", "-p", "astramq-proxy"])
            .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        if dir.file_name().is_some_and(|n| n == "release") {
            command.arg("--release");
        }
        let output = command
            .output()
            .context("running cargo build for the proxy")?;
        ensure!(
            output.status.success(),
            "cargo build -p astramq-proxy failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(dir.join("astramq-proxy"))
}

/// A running proxy. Dropping it kills the process and prints its log tail.
pub struct ProxyProcess {
    /// The process, killed and reaped on drop (tests wait on it too).
    pub child: Child,
    /// From the readiness line.
    pub addr: SocketAddr,
    /// From the metrics line.
    pub metrics: SocketAddr,
    /// Tail of stdout and stderr, kept by the drain threads.
    log: Arc<Mutex<String>>,
}

impl ProxyProcess {
    /// Starts a proxy on an ephemeral port with metrics on, plus `flags`.
    pub fn start(flags: &[(&str, &str)]) -> Result<Self> {
        let binary = proxy_binary()?;
        let mut command = Command::new(&binary);
        command
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (flag, value) in flags {
            // `--flag=value` so booleans (`--proxy-protocol=true`) work too.
            command.arg(format!("{flag}={value}"));
        }
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ASTRAMQ_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        drain(
            child.stdout.take().context("stdout")?,
            log.clone(),
            Some(tx),
        );
        drain(child.stderr.take().context("stderr")?, log.clone(), None);
        let mut metrics = None;
        let deadline = Instant::now() + PROXY_STARTUP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Line::Metrics(addr)) => metrics = Some(addr),
                Ok(Line::Listening(addr)) => {
                    let metrics = metrics.context("no metrics line before the listening line")?;
                    return Ok(Self {
                        child,
                        addr,
                        metrics,
                        log,
                    });
                }
                Err(reason) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                    bail!("proxy not ready ({reason}); output:\n{log}");
                }
            }
        }
    }

    pub fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let start = log.len().saturating_sub(16 * 1024);
        log.get(start..).unwrap_or(&log).to_owned()
    }

    pub async fn scrape(&self) -> Result<Metrics> {
        Metrics::scrape(self.metrics).await
    }

    /// Waits until the proxy reports `count` usable backends.
    pub async fn wait_for_backends(&self, count: usize, limit: Duration) -> Result<()> {
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

    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id())?;
        // SAFETY: kill(2) on our own unreaped child has no memory-safety preconditions.
        ensure!(unsafe { libc::kill(pid, signal) } == 0, "kill failed");
        Ok(())
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "---- astramq-proxy {} output (tail) ----\n{}",
            self.addr,
            self.log_tail()
        );
    }
}

enum Line {
    Metrics(SocketAddr),
    Listening(SocketAddr),
}

/// Keeps a pipe drained into `log`, reporting the announcement lines.
fn drain(
    pipe: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    lines: Option<mpsc::Sender<Line>>,
) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Some(tx) = &lines {
                if let Some(a) = line.strip_prefix("astramq-proxy listening on mqtt://") {
                    if let Ok(addr) = a.trim().parse() {
                        let _ = tx.send(Line::Listening(addr));
                    }
                }
                if let Some(a) = line.strip_prefix("astramq-proxy metrics on http://") {
                    if let Some(Ok(addr)) = a.trim().strip_suffix("/metrics").map(str::parse) {
                        let _ = tx.send(Line::Metrics(addr));
                    }
                }
            }
            if let Ok(mut log) = log.lock() {
                log.push_str(&line);
                log.push('\n');
                if log.len() > 256 * 1024 {
                    let cut = log.len() - 128 * 1024;
                    let cut = (cut..log.len())
                        .find(|i| log.is_char_boundary(*i))
                        .unwrap_or(0);
                    log.drain(..cut);
                }
            }
        }
    });
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

/// A loopback address free for TCP and UDP (gossip binds both on one port).
pub fn free_gossip_addr() -> Result<SocketAddr> {
    for _ in 0..100 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        if UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    bail!("no loopback port free for TCP and UDP")
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
        let gossip: Vec<SocketAddr> = (0..4).map(|_| free_gossip_addr()).collect::<Result<_>>()?;
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
        let proxy = ProxyProcess::start(&[
            ("--node-id", &unique_id("px")),
            ("--gossip-listen", &gossip[3].to_string()),
            ("--join", &join),
            ("--balance", balance),
        ])?;
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
