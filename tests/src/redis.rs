//! [`RedisProcess`]: a real `redis-server` owned by one test.
//!
//! Cluster tests share state through Redis the way production does, so
//! each starts its own server on a free loopback port, with AOF persistence
//! in a private directory so a restart keeps the data (as `appendfsync
//! everysec` does in production).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};

use crate::unique_id;

/// How long the server may take to answer PING after it is spawned.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `redis-server`. Dropping it kills the server and removes its
/// data directory.
pub struct RedisProcess {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// Addresses besides 127.0.0.1 the server listens on (a chaos test's
    /// network-namespace link), kept for restarts.
    extra_binds: Vec<IpAddr>,
}

impl RedisProcess {
    /// Starts a server on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_bound(&[])
    }

    /// Starts a server on a free port of 127.0.0.1 and of each of
    /// `extra_binds` (local addresses that must already exist).
    pub fn start_bound(extra_binds: &[IpAddr]) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique_id("astramq-redis"));
        std::fs::create_dir_all(&dir).context("creating the Redis data directory")?;
        let mut redis = Self {
            child: None,
            port,
            dir,
            extra_binds: extra_binds.to_vec(),
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut binds = vec!["127.0.0.1".to_owned()];
        binds.extend(self.extra_binds.iter().map(ToString::to_string));
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind"])
            .args(&binds)
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ])
            // Without a password Redis refuses non-loopback clients in
            // protected mode; the extra binds exist to serve exactly those.
            .args([
                "--protected-mode",
                if self.extra_binds.is_empty() {
                    "yes"
                } else {
                    "no"
                },
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning redis-server (is it installed? scripts/test installs it)")?;
        self.child = Some(child);
        wait_for_pong(self.port)
    }

    /// The URL nodes connect with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server gracefully (SIGTERM flushes the AOF) and waits.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = crate::signal::send(&child, libc::SIGTERM);
        child.wait().context("waiting for redis-server")?;
        Ok(())
    }

    /// Starts the server again on the same port with the same data.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.spawn()
    }

    /// Starts a server stopped by [`RedisProcess::stop`] again, on the same
    /// port with the same data (a no-op while it runs).
    pub fn resume(&mut self) -> Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        self.spawn()
    }

    /// The port, for URLs on the extra bind addresses.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs one command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .context("running redis-cli")?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

fn wait_for_pong(port: u16) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if ping(port).unwrap_or(false) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!("redis-server on port {port} did not answer PING"))
}

fn ping(port: u16) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer)?;
    Ok(&answer == b"+PONG\r\n")
}
