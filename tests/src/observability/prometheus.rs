//! [`PrometheusServer`]: a real Prometheus (Debian's `prometheus` package)
//! owned by one test, configured from the project's own template, and a
//! small client for its HTTP API (`/api/v1/query`, `/api/v1/series`,
//! `/api/v1/targets`).
//!
//! A missing `prometheus` binary is an error, not a skip: `scripts/test`
//! installs it, so its absence means a broken environment that must be seen.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::Value;

use super::http::{self, encode_component};
use super::workspace_root;
use crate::redis::free_port;
use crate::unique_id;

/// How long Prometheus may take from spawn to answering `/-/ready`.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of Prometheus's own log is kept for failure reports.
const LOG_CAPACITY: usize = 32 * 1024;

/// Finds `prometheus` on `PATH`, or explains how to get it.
pub fn prometheus_binary() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("prometheus"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            anyhow!(
                "`prometheus` is not on PATH. This test needs a real Prometheus: install \
                 Debian's `prometheus` package (`apt-get install prometheus`); \
                 scripts/test installs it through scripts/ensure-deps.sh"
            )
        })
}

/// Renders `compose/prometheus.yml.template` with the project's renderer
/// (`scripts/render-prometheus-config`), exactly as the Compose config and
/// `scripts/start` do, for these scrape targets.
pub fn render_config(
    interval: &str,
    nodes: &[SocketAddr],
    proxies: &[SocketAddr],
) -> Result<String> {
    let join = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    render_config_raw(interval, &join(nodes), &join(proxies))
}

/// Like [`render_config`] with the targets as the script takes them
/// (comma-separated `host:port`).
pub fn render_config_raw(interval: &str, nodes: &str, proxies: &str) -> Result<String> {
    let script = workspace_root().join("scripts/render-prometheus-config");
    let output = Command::new("bash")
        .arg(&script)
        .args([interval, nodes, proxies])
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    ensure!(
        output.status.success(),
        "{} failed ({}): {}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("rendered config is not UTF-8")
}

/// One scrape target as Prometheus reports it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `job` label.
    pub job: String,
    /// The `instance` label (`host:port`).
    pub instance: String,
    /// `up`, `down` or `unknown` (not scraped yet).
    pub health: String,
    /// Why the last scrape failed, if it did.
    pub last_error: String,
}

/// One element of an instant-query result.
#[derive(Debug, Clone)]
pub struct QuerySample {
    /// The series labels.
    pub labels: BTreeMap<String, String>,
    /// The value (may be NaN, e.g. a quantile of an empty histogram).
    pub value: f64,
}

/// A running Prometheus. Dropping it kills the server and removes its data.
pub struct PrometheusServer {
    /// The server process, killed on drop.
    child: Child,
    /// Its web/API address.
    addr: SocketAddr,
    /// Config file and TSDB, removed on drop.
    dir: PathBuf,
    /// Tail of its log output, kept for failure messages.
    log: Arc<Mutex<String>>,
}

impl PrometheusServer {
    /// Starts Prometheus on a free loopback port with `config` (YAML).
    pub fn start(config: &str) -> Result<Self> {
        let binary = prometheus_binary()?;
        let dir = std::env::temp_dir().join(unique_id("astramq-prometheus"));
        std::fs::create_dir_all(&dir).context("creating the Prometheus directory")?;
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).context("writing prometheus.yml")?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
        let mut child = Command::new(&binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning {}", binary.display()))?;
        let log = Arc::new(Mutex::new(String::new()));
        if let Some(out) = child.stdout.take() {
            drain(out, log.clone());
        }
        if let Some(err) = child.stderr.take() {
            drain(err, log.clone());
        }
        let mut server = Self {
            child,
            addr,
            dir,
            log,
        };
        server.wait_ready()?;
        Ok(server)
    }

    /// Polls `/-/ready` until it answers 200.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prometheus exited ({status}); output:\n{}", self.log_tail());
            }
            if http::get(self.addr, "/-/ready").is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "prometheus not ready after {STARTUP_TIMEOUT:?}; output:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The address of its web UI and API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its data directory (config and TSDB).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its recent log output.
    pub fn log_tail(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Calls an API path and returns the `data` field of a success answer.
    fn api(&self, path_and_query: &str) -> Result<Value> {
        let response = http::get(self.addr, path_and_query)?;
        let json: Value = serde_json::from_str(&response.body).with_context(|| {
            format!(
                "Prometheus answered {} with a non-JSON body to {path_and_query}: {:.300}",
                response.status, response.body
            )
        })?;
        if json["status"] != "success" {
            bail!(
                "Prometheus refused {path_and_query}: {} {}",
                json["errorType"],
                json["error"]
            );
        }
        Ok(json["data"].clone())
    }

    /// Evaluates `expr` now (`/api/v1/query`); scalars come back as one
    /// sample without labels.
    pub fn query(&self, expr: &str) -> Result<Vec<QuerySample>> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode_component(expr)))
            .with_context(|| format!("evaluating {expr}"))?;
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(|| anyhow!("vector result without a list: {data}"))?
                .iter()
                .map(|item| {
                    Ok(QuerySample {
                        labels: string_map(&item["metric"]),
                        value: sample_value(&item["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![QuerySample {
                labels: BTreeMap::new(),
                value: sample_value(&data["result"])?,
            }]),
            other => bail!("unexpected result type {other:?} for {expr}"),
        }
    }

    /// Label sets of the series matching `selector` (`/api/v1/series`),
    /// over the last ten minutes.
    pub fn series(&self, selector: &str) -> Result<Vec<BTreeMap<String, String>>> {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .saturating_sub(600);
        let data = self.api(&format!(
            "/api/v1/series?match[]={}&start={start}",
            encode_component(selector)
        ))?;
        Ok(data
            .as_array()
            .map(|list| list.iter().map(string_map).collect())
            .unwrap_or_default())
    }

    /// The active scrape targets (`/api/v1/targets`).
    pub fn targets(&self) -> Result<Vec<Target>> {
        let data = self.api("/api/v1/targets?state=active")?;
        let list = data["activeTargets"]
            .as_array()
            .ok_or_else(|| anyhow!("no activeTargets in {data}"))?;
        Ok(list
            .iter()
            .map(|t| Target {
                job: t["labels"]["job"].as_str().unwrap_or_default().to_owned(),
                instance: t["labels"]["instance"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                health: t["health"].as_str().unwrap_or_default().to_owned(),
                last_error: t["lastError"].as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "---- prometheus {} output (tail) ----\n{}",
            self.addr,
            self.log_tail()
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `{"a": "x", ...}` → map; non-string values are skipped.
fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|object| {
            object
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `[timestamp, "value"]` → value (Prometheus sends numbers as strings).
fn sample_value(pair: &Value) -> Result<f64> {
    let text = pair[1]
        .as_str()
        .ok_or_else(|| anyhow!("sample without a value: {pair}"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        number => number
            .parse()
            .with_context(|| format!("bad sample value {number:?}")),
    }
}

/// Keeps a pipe drained into a bounded log.
fn drain(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
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
