//! [`RedisProcess`]: a real `redis-server` owned by one test.
//!
//! Cluster tests share state through Redis the way production does, so
//! each starts its own server on a free loopback port, with AOF persistence
//! in a private directory so a restart keeps the data (as `appendfsync
//! everysec` does in production). [`RedisSetup`] makes it serve TLS only
//! or require ACL users instead.

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
    /// TLS and access settings, kept for restarts.
    setup: RedisSetup,
}

/// The files of a server that speaks only TLS (`--port 0 --tls-port P`).
#[derive(Debug, Clone)]
pub struct RedisTls {
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// Its key (PEM).
    pub key: PathBuf,
    /// The CA that signed it, given to `redis-cli` (and, with
    /// `client`, the CA client certificates must chain to).
    pub ca: PathBuf,
    /// With a client certificate and key: `tls-auth-clients yes`, and
    /// `redis-cli` presents them. Without: `tls-auth-clients no`.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How a server differs from the plain, open default.
#[derive(Debug, Clone, Default)]
pub struct RedisSetup {
    /// Serve TLS only.
    pub tls: Option<RedisTls>,
    /// More `redis-server` arguments (`--user ...`, `--requirepass ...`).
    pub args: Vec<String>,
    /// User and password [`RedisProcess::cli`] logs in with.
    pub cli_auth: Option<(String, String)>,
}

impl RedisProcess {
    /// Starts a server on a free loopback port.
    pub fn start() -> Result<Self> {
        Self::start_bound(&[])
    }

    /// Starts a server on a free loopback port, set up as `setup` says.
    pub fn start_with(setup: RedisSetup) -> Result<Self> {
        Self::start_set_up(&[], setup)
    }

    /// Starts a server on a free port of 127.0.0.1 and of each of
    /// `extra_binds` (local addresses that must already exist).
    pub fn start_bound(extra_binds: &[IpAddr]) -> Result<Self> {
        Self::start_set_up(extra_binds, RedisSetup::default())
    }

    fn start_set_up(extra_binds: &[IpAddr], setup: RedisSetup) -> Result<Self> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(unique_id("astramq-redis"));
        std::fs::create_dir_all(&dir).context("creating the Redis data directory")?;
        let mut redis = Self {
            child: None,
            port,
            dir,
            extra_binds: extra_binds.to_vec(),
            setup,
        };
        redis.spawn()?;
        Ok(redis)
    }

    fn spawn(&mut self) -> Result<()> {
        let mut binds = vec!["127.0.0.1".to_owned()];
        binds.extend(self.extra_binds.iter().map(ToString::to_string));
        let port = self.port.to_string();
        let mut command = Command::new("redis-server");
        match &self.setup.tls {
            None => command.args(["--port", &port]),
            Some(tls) => {
                let auth_clients = if tls.client.is_some() { "yes" } else { "no" };
                command
                    .args(["--port", "0", "--tls-port", &port])
                    .arg("--tls-cert-file")
                    .arg(&tls.cert)
                    .arg("--tls-key-file")
                    .arg(&tls.key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.ca)
                    .args(["--tls-auth-clients", auth_clients])
            }
        };
        let child = command
            .arg("--bind")
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
            .args(&self.setup.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning redis-server (is it installed? scripts/test installs it)")?;
        self.child = Some(child);
        if self.setup.tls.is_none() && self.setup.args.is_empty() {
            wait_for_pong(self.port)
        } else {
            // A plain PING gets no PONG over TLS or without credentials;
            // a listening port is enough (an empty data dir loads at once).
            wait_for_listener(self.port)
        }
    }

    /// The URL nodes connect with (`rediss://` when the server speaks
    /// TLS), without credentials.
    pub fn url(&self) -> String {
        let scheme = if self.setup.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The URL with `user:password@` in it.
    pub fn url_with_credentials(&self, user: &str, password: &str) -> String {
        self.url()
            .replacen("://", &format!("://{user}:{password}@"), 1)
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
        let mut command = Command::new("redis-cli");
        command.args(["-p", &self.port.to_string()]);
        if let Some(tls) = &self.setup.tls {
            command.arg("--tls").arg("--cacert").arg(&tls.ca);
            if let Some((cert, key)) = &tls.client {
                command.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        if let Some((user, password)) = &self.setup.cli_auth {
            command.args(["--no-auth-warning", "--user", user, "--pass", password]);
        }
        let output = command.args(args).output().context("running redis-cli")?;
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

fn wait_for_listener(port: u16) -> Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(anyhow!("redis-server on port {port} did not listen"))
}

fn ping(port: u16) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_millis(500)))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer)?;
    Ok(&answer == b"+PONG\r\n")
}
