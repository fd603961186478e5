//! [`NodeProcess`]: one running `astramq-node`, owned by one test.
//!
//! The node announces readiness with a single stdout line,
//! `astramq-node listening on mqtt://127.0.0.1:PORT`, after binding
//! `--listen 127.0.0.1:0`. Waiting for that line (instead of sleeping or
//! retrying connects) is what makes startup both fast and deterministic.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::binary::node_binary;
use crate::unique_id;

/// The prefix of the node's readiness line; the address follows it.
const READY_PREFIX: &str = "astramq-node listening on mqtt://";

/// How long a node may take from spawn to its readiness line.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the node's output is kept for failure reports.
///
/// Bounded so a chatty debug-level node cannot grow a test's memory without
/// limit; the tail is what explains a failure.
const LOG_CAPACITY: usize = 64 * 1024;

/// How much of the kept output is printed when the guard is dropped.
const LOG_PRINT_TAIL: usize = 16 * 1024;

/// A running node. Dropping it kills the process, even if the test panicked.
pub struct NodeProcess {
    /// The child process, killed and reaped on drop.
    child: Child,
    /// The address parsed from the readiness line.
    addr: SocketAddr,
    /// Tail of stdout and stderr, filled by background threads that also keep
    /// the pipes drained so the node never blocks on a full pipe.
    log: Arc<Mutex<String>>,
}

impl NodeProcess {
    /// Starts a node with default settings.
    pub fn start() -> Result<Self> {
        Self::start_with(&[])
    }

    /// Starts a node with extra `--flag value` pairs (e.g. `("--max-inflight", "4")`).
    pub fn start_with(flags: &[(&str, &str)]) -> Result<Self> {
        Self::start_named(&unique_id("node"), flags)
    }

    /// Starts a node with a chosen `--node-id` (cluster tests restart a node
    /// under the same id) and extra flags.
    pub fn start_named(node_id: &str, flags: &[(&str, &str)]) -> Result<Self> {
        let binary = node_binary()?;
        Self::spawn(Command::new(&binary), "127.0.0.1:0", node_id, flags)
    }

    /// Starts a node like [`Self::start_with`], logging at `RUST_LOG=level`
    /// whatever the test's environment says.
    pub fn start_logging(level: &str, flags: &[(&str, &str)]) -> Result<Self> {
        let binary = node_binary()?;
        let mut command = Command::new(&binary);
        command.env("RUST_LOG", level);
        Self::spawn(command, "127.0.0.1:0", &unique_id("node"), flags)
    }

    /// Starts a node inside the network namespace `netns` (via `ip netns
    /// exec`, which execs the node, so [`NodeProcess::pid`] is the node's),
    /// listening on `listen_ip` there. Chaos tests partition such a node by
    /// taking its namespace's link down.
    pub fn start_in_netns(
        netns: &str,
        listen_ip: std::net::IpAddr,
        node_id: &str,
        flags: &[(&str, &str)],
    ) -> Result<Self> {
        let binary = node_binary()?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns]).arg(&binary);
        let listen = SocketAddr::new(listen_ip, 0).to_string();
        Self::spawn(command, &listen, node_id, flags)
    }

    /// Spawns `command` (the node binary, perhaps behind a launcher) with
    /// the harness's fixed flags and `flags`, and waits for readiness.
    /// `--allow-anonymous true` is among the fixed flags unless `flags`
    /// sets `--allow-anonymous` itself.
    fn spawn(
        mut command: Command,
        listen: &str,
        node_id: &str,
        flags: &[(&str, &str)],
    ) -> Result<Self> {
        command
            .args(["--listen", listen, "--node-id", node_id])
            // Plain log lines: they end up in failure reports, not a terminal.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Nodes refuse anonymous clients by default; the suite's clients
        // connect without credentials unless a test says otherwise.
        if !flags.iter().any(|(flag, _)| *flag == "--allow-anonymous") {
            command.args(["--allow-anonymous", "true"]);
        }
        for (flag, value) in flags {
            command.args([flag, value]);
        }
        clear_node_environment(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {:?}", command.get_program()))?;
        Self::wait_until_ready(child, log_file(node_id)?)
    }

    /// Drains the child's output and waits for its readiness line.
    fn wait_until_ready(mut child: Child, file: Option<LogFile>) -> Result<Self> {
        let log = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().context("node stdout not piped")?;
        let stderr = child.stderr.take().context("node stderr not piped")?;
        let (ready_tx, ready_rx) = mpsc::channel();
        spawn_stdout_drain(stdout, Arc::clone(&log), file.clone(), ready_tx);
        spawn_stderr_drain(stderr, Arc::clone(&log), file);
        let mut node = match ready_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => Self { child, addr, log },
            Err(reason) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = log.lock().map(|l| l.clone()).unwrap_or_default();
                return Err(anyhow!(
                    "node did not become ready ({reason}); output:\n{log}"
                ));
            }
        };
        node.assert_running()?;
        Ok(node)
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The node's TCP port (for command-line clients such as mosquitto).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory (`VmRSS` in `/proc/PID/status`), in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS line in /proc/{}/status", self.pid()))
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Fails with the node's output if the process has exited.
    pub fn assert_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(anyhow!(
                "node exited ({status}); output:\n{}",
                self.log_tail()
            )),
            Err(e) => Err(anyhow!("cannot query node status: {e}")),
        }
    }

    /// Asks the node to shut down gracefully (SIGTERM).
    pub fn terminate(&self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    /// Stops (SIGSTOP, `true`) or continues (SIGCONT) the node: a hung
    /// process whose kernel still accepts connections and buffers bytes.
    pub fn freeze(&self, frozen: bool) -> Result<()> {
        self.signal(if frozen { libc::SIGSTOP } else { libc::SIGCONT })
    }

    /// Sends `signal` to the node.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        crate::signal::send(&self.child, signal)
            .with_context(|| format!("sending signal {signal} to a node"))
    }

    /// Kills the node at once (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("sending SIGKILL")?;
        self.child.wait().context("reaping the node")?;
        Ok(())
    }

    /// Waits up to `limit` for the process to exit and returns its status.
    pub async fn wait_for_exit(&mut self, limit: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for node")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(anyhow!(
                    "node still running {limit:?} after the request to exit"
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// All of the node's output still kept (the last 64–128 KiB), for
    /// checks that scan the log, such as "no panic".
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (at most [`crate::TIMEOUT`]) until the node's log contains
    /// `text`, e.g. the line a SIGHUP reload writes.
    pub async fn wait_for_log(&self, text: &str) -> Result<()> {
        crate::within(&format!("the node to log {text:?}"), async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
    }

    /// Runs a node with `args` (after `--listen 127.0.0.1:0`) that is
    /// expected to refuse to start; returns its exit code and stderr.
    pub fn exit_of(args: &[&std::ffi::OsStr]) -> Result<(Option<i32>, String)> {
        let output = Command::new(node_binary()?)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        Ok((
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// The tail of the node's stdout and stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = self.log.lock().map(|l| l.clone()).unwrap_or_default();
        tail(&log, LOG_PRINT_TAIL).to_owned()
    }
}

impl Drop for NodeProcess {
    /// Kills the node and prints its log tail.
    ///
    /// The test harness only shows a test's output when the test fails, so
    /// printing unconditionally puts the node's side of the story next to
    /// every failure (including ones reported as `Err`, not as panics).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!(
            "---- astramq-node {} output (tail) ----\n{}",
            self.addr,
            self.log_tail()
        );
    }
}

/// Removes inherited `ASTRAMQ_*` variables from the node's environment.
///
/// The node reads every flag from `ASTRAMQ_<NAME>` too; a variable meant for
/// the harness (or left in a developer's shell) must not change its config.
fn clear_node_environment(command: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ASTRAMQ_") {
            command.env_remove(key);
        }
    }
}

/// A whole node log, kept when `ASTRAMQ_TEST_LOG_DIR` names a directory
/// (long chaos runs: the in-memory tail is too short to explain a loss).
type LogFile = Arc<Mutex<std::fs::File>>;

/// The file `<ASTRAMQ_TEST_LOG_DIR>/<node id>.log` (appended to across
/// restarts), or `None` when the variable is not set.
fn log_file(node_id: &str) -> Result<Option<LogFile>> {
    let Some(dir) = std::env::var_os("ASTRAMQ_TEST_LOG_DIR") else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir).join(format!("{node_id}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    Ok(Some(Arc::new(Mutex::new(file))))
}

/// Reads stdout lines, reports the readiness address once, and keeps draining.
fn spawn_stdout_drain(
    stdout: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    file: Option<LogFile>,
    ready: mpsc::Sender<SocketAddr>,
) {
    thread::spawn(move || {
        let mut ready = Some(ready);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                if let (Some(tx), Ok(addr)) = (ready.as_ref(), addr.trim().parse()) {
                    let _ = tx.send(addr);
                    ready = None;
                }
            }
            append_log(&log, file.as_ref(), &line);
        }
    });
}

/// Keeps stderr drained into the shared log.
fn spawn_stderr_drain(
    stderr: impl Read + Send + 'static,
    log: Arc<Mutex<String>>,
    file: Option<LogFile>,
) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            append_log(&log, file.as_ref(), &line);
        }
    });
}

/// Appends one line, dropping the oldest output beyond [`LOG_CAPACITY`]
/// (the file, when kept, gets every line).
fn append_log(log: &Mutex<String>, file: Option<&LogFile>, line: &str) {
    if let Some(Ok(mut file)) = file.map(|f| f.lock()) {
        use std::io::Write;
        let _ = writeln!(file, "{line}");
    }
    let Ok(mut log) = log.lock() else { return };
    log.push_str(line);
    log.push('\n');
    if log.len() > 2 * LOG_CAPACITY {
        let keep = tail(&log, LOG_CAPACITY).to_owned();
        *log = keep;
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
