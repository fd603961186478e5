//! [`ProxyProcess`]: one running `astramq-proxy`, owned by one test.
//!
//! The proxy binds `--listen 127.0.0.1:0` itself and prints
//! `astramq-proxy metrics on http://ADDR/metrics` then
//! `astramq-proxy listening on mqtt://ADDR`; the guard waits for both, keeps
//! the output drained, and kills the process when dropped.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::binary::proxy_binary;

/// How long the proxy may take from spawn to its readiness line.
const PROXY_STARTUP: Duration = Duration::from_secs(15);

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
        Self::start_with_env(flags, &[])
    }

    /// [`Self::start`] with extra environment variables (`RUST_LOG`, say),
    /// set after the inherited `ASTRAMQ_*` ones are cleared.
    pub fn start_with_env(flags: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Self> {
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
        command.envs(env.iter().copied());
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

    /// The last 16 KiB of its output, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        let start = log.len().saturating_sub(16 * 1024);
        log.get(start..).unwrap_or(&log).to_owned()
    }

    /// Fails with its output if the process has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => bail!("proxy exited ({status}); output:\n{}", self.log_tail()),
        }
    }

    /// Sends `signal` to the proxy (SIGTERM for a graceful stop).
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        crate::signal::send(&self.child, signal)
            .with_context(|| format!("sending signal {signal} to the proxy"))
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
