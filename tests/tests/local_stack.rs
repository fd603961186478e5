//! `scripts/start`, the README's "start the product" command, run the way a
//! user runs it (with its ports moved to free loopback ones through the
//! documented `ASTRAMQ_STACK_*` variables, and the binaries of this build):
//!
//! - it prints the MQTT address, every metrics address and how to stop;
//! - MQTT works through the proxy to a subscriber on a node directly;
//! - every metrics endpoint answers, Redis writes its AOF in the data dir,
//!   and the Prometheus config it writes is the template rendered for its
//!   ports;
//! - SIGINT (Ctrl-C) stops everything it started: every port it opened is
//!   closed afterwards, within a bound.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::binary::binaries_dir;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::observability::prometheus::render_config_raw;
use astramq_tests::observability::workspace_root;
use astramq_tests::{signal, unique_id, within, TestClient};
use rumqttc::QoS;

/// The script's last banner line: everything is up.
const READY_LINE: &str = "Press Ctrl-C to stop everything";

/// Start-up of Redis, three nodes and the proxy (no build: binaries given).
const START_TIMEOUT: Duration = Duration::from_secs(40);

/// Stop of everything after SIGINT: proxy, nodes (gossip leave ~1.5 s), Redis.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The ports the stack is told to use.
struct Ports {
    mqtt: u16,
    gossip: u16,
    metrics: u16,
    redis: u16,
}

impl Ports {
    /// Finds bases with four consecutive free loopback ports each (gossip:
    /// TCP and UDP), distinct from each other.
    fn find() -> Result<Self> {
        let mut taken = Vec::new();
        let mut range = |udp: bool| -> Result<u16> {
            for _ in 0..200 {
                let base = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
                if base > 65_000 || taken.iter().any(|t: &u16| t.abs_diff(base) < 4) {
                    continue;
                }
                let free = (base..base + 4).all(|p| {
                    TcpListener::bind(("127.0.0.1", p)).is_ok()
                        && (!udp || UdpSocket::bind(("127.0.0.1", p)).is_ok())
                });
                if free {
                    taken.push(base);
                    return Ok(base);
                }
            }
            bail!("no four consecutive free loopback ports")
        };
        Ok(Self {
            mqtt: range(false)?,
            gossip: range(true)?,
            metrics: range(false)?,
            redis: range(false)?,
        })
    }

    /// Every TCP port the stack listens on.
    fn all_tcp(&self) -> Vec<u16> {
        let mut ports = vec![self.redis];
        for i in 0..4 {
            ports.extend([self.mqtt + i, self.gossip + i, self.metrics + i]);
        }
        ports
    }
}

/// The running script. Dropping it sends SIGINT and waits (bounded), then
/// kills it, and removes the data directory.
struct Script {
    child: Child,
    output: Arc<Mutex<String>>,
    data_dir: PathBuf,
}

impl Script {
    fn start(ports: &Ports, data_dir: &PathBuf) -> Result<Self> {
        let mut command = Command::new("bash");
        command.arg(workspace_root().join("scripts/start"));
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ASTRAMQ_") {
                command.env_remove(key);
            }
        }
        command
            .env("ASTRAMQ_STACK_BIN_DIR", binaries_dir()?)
            .env("ASTRAMQ_STACK_MQTT_BASE", ports.mqtt.to_string())
            .env("ASTRAMQ_STACK_GOSSIP_BASE", ports.gossip.to_string())
            .env("ASTRAMQ_STACK_METRICS_BASE", ports.metrics.to_string())
            .env("ASTRAMQ_STACK_REDIS_PORT", ports.redis.to_string())
            .env("ASTRAMQ_STACK_DATA_DIR", data_dir)
            .env("ASTRAMQ_STACK_PROXY_HOST", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        restore_sigint(&mut command);
        let mut child = command.spawn().context("running scripts/start")?;
        let output = Arc::new(Mutex::new(String::new()));
        drain(child.stdout.take().context("stdout")?, output.clone());
        drain(child.stderr.take().context("stderr")?, output.clone());
        Ok(Self {
            child,
            output,
            data_dir: data_dir.clone(),
        })
    }

    fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    /// Waits for the ready banner; fails with the output if the script
    /// exits or the bound passes.
    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while !self.output().contains(READY_LINE) {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "scripts/start exited ({status}) before it was ready:\n{}",
                    self.output()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "scripts/start not ready after {START_TIMEOUT:?}:\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Sends SIGINT, as Ctrl-C in a terminal does.
    fn interrupt(&self) -> Result<()> {
        signal::send(&self.child, libc::SIGINT).context("SIGINT failed")
    }

    /// Waits for the script to exit; returns how long it took.
    fn wait_exit(&mut self, limit: Duration) -> Result<Duration> {
        let started = Instant::now();
        while self.child.try_wait()?.is_none() {
            if started.elapsed() >= limit {
                bail!(
                    "scripts/start still running {limit:?} after SIGINT:\n{}",
                    self.output()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(started.elapsed())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.interrupt();
            if self.wait_exit(STOP_TIMEOUT).is_err() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        eprintln!("---- scripts/start output ----\n{}", self.output());
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn drain(pipe: impl Read + Send + 'static, output: Arc<Mutex<String>>) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut output) = output.lock() {
                output.push_str(&line);
                output.push('\n');
            }
        }
    });
}

/// Gives the script the default SIGINT disposition. A suite started in
/// the background of a non-interactive shell (`scripts/test &`) inherits
/// SIGINT as ignored, and bash cannot trap a signal ignored on entry: the
/// Ctrl-C this test sends would do nothing.
#[allow(unsafe_code)] // a libc call in the child; SAFETY comment below
fn restore_sigint(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the forked child before exec; signal(2) is
    // async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_start_runs_the_local_stack_and_ctrl_c_stops_all_of_it() -> Result<()> {
    let ports = Ports::find()?;
    let data_dir = std::env::temp_dir().join(unique_id("astramq-stack"));
    let mut script = Script::start(&ports, &data_dir)?;
    script.wait_ready()?;

    // The banner names the MQTT address, every metrics address, how to stop,
    // and says that anonymous clients are let in.
    let banner = script.output();
    let mut expected = vec![
        format!("mqtt://127.0.0.1:{}", ports.mqtt),
        "--allow-anonymous true".to_owned(),
    ];
    expected.extend((0..4).map(|i| format!("http://127.0.0.1:{}/metrics", ports.metrics + i)));
    expected.push("Ctrl-C".to_owned());
    for text in &expected {
        ensure!(
            banner.contains(text.as_str()),
            "the banner does not mention {text}:\n{banner}"
        );
    }

    // MQTT through the proxy reaches a subscriber on node3 directly.
    let mut subscriber =
        TestClient::connect(loopback(ports.mqtt + 3), &unique_id("stack-sub")).await?;
    subscriber.subscribe("stack/#", QoS::AtLeastOnce).await?;
    let mut publisher = TestClient::connect(loopback(ports.mqtt), &unique_id("stack-pub")).await?;
    within(
        "a publish through the proxy to reach node3's subscriber",
        async {
            loop {
                publisher
                    .publish("stack/hello", QoS::AtLeastOnce, false, "hi")
                    .await?;
                if let Some(p) = subscriber
                    .next_publish_within(Duration::from_millis(200))
                    .await?
                {
                    ensure!(
                        p.topic == "stack/hello",
                        "unexpected publish on {}",
                        p.topic
                    );
                    return Ok::<_, anyhow::Error>(());
                }
            }
        },
    )
    .await??;
    drop(publisher);
    drop(subscriber);

    // Every metrics endpoint answers, with the right component.
    for i in 0..4 {
        let page = Exposition::scrape(loopback(ports.metrics + i))?;
        let component = if i == 0 { "proxy" } else { "node" };
        ensure!(
            page.sum("astramq_build_info", &[("component", component)]) == Some(1.0),
            "metrics port {} is not a {component}",
            ports.metrics + i
        );
    }

    // Gossip runs with a key the script made for this stack, readable by
    // its owner only.
    let key_file = data_dir.join("gossip.key");
    let key = std::fs::read_to_string(&key_file).context("reading the stack's gossip.key")?;
    ensure!(
        key.trim().len() == 44,
        "gossip.key is not 32 bytes of base64"
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file)?.permissions());
    ensure!(mode & 0o077 == 0, "gossip.key has mode {mode:o}");
    ensure!(
        banner.contains("encrypted (key: "),
        "the banner does not say gossip is keyed:\n{banner}"
    );

    // Redis persists with an AOF in the data dir; the Prometheus config is
    // the template rendered for these ports.
    let aof = data_dir.join("redis/appendonlydir");
    ensure!(aof.is_dir(), "no append-only files in {}", aof.display());
    let written = std::fs::read_to_string(data_dir.join("prometheus.yml"))
        .context("reading the stack's prometheus.yml")?;
    let nodes = (1..4)
        .map(|i| format!("127.0.0.1:{}", ports.metrics + i))
        .collect::<Vec<_>>()
        .join(",");
    let rendered = render_config_raw("5s", &nodes, &format!("127.0.0.1:{}", ports.metrics))?;
    ensure!(
        written == rendered,
        "the stack's prometheus.yml is not the rendered template:\n{written}"
    );

    // Ctrl-C stops everything: the script exits and every port closes.
    script.interrupt()?;
    let took = script.wait_exit(STOP_TIMEOUT)?;
    eprintln!("[local_stack] stopped {took:?} after SIGINT");
    let output = script.output();
    ensure!(
        output.contains("AstraMQ stopped."),
        "no stop report:\n{output}"
    );
    let open: Vec<u16> = ports
        .all_tcp()
        .into_iter()
        .filter(|&p| TcpStream::connect_timeout(&loopback(p), Duration::from_millis(200)).is_ok())
        .collect();
    ensure!(
        open.is_empty(),
        "ports still open after the stack stopped: {open:?}\n{output}"
    );
    Ok(())
}
