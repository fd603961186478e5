//! The `conn` mode: opens C idle MQTT connections and reports the connect
//! rate and what each idle connection costs the broker in resident memory.
//!
//! One loopback source address has ~28k ephemeral ports, so sockets are bound
//! round-robin to 127.0.0.2, 127.0.0.3, ... before connecting; the broker,
//! listening on 127.0.0.1, accepts from the whole 127.0.0.0/8.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::Connection;
use crate::mqtt::Protocol;
use crate::probe;
use crate::procstat::Watch;
use crate::report::{ConnReport, LatencySummary};

#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub addrs: Vec<SocketAddr>,
    pub connections: usize,
    pub concurrency: usize,
    /// How many 127.0.0.x source addresses to spread over (1..=253).
    pub source_ips: usize,
    /// Pause after the last CONNACK before sampling the broker again.
    pub settle: Duration,
    /// Limit on the whole connect phase.
    pub timeout: Duration,
    pub keep_alive: u16,
    /// MQTT version every connection speaks.
    pub protocol: Protocol,
    pub pids: Vec<u32>,
    pub label: String,
}

pub async fn run(plan: ConnPlan) -> Result<ConnReport> {
    ensure!(!plan.addrs.is_empty(), "no broker address");
    ensure!(
        (1..=253).contains(&plan.source_ips),
        "--source-ips must be 1..=253"
    );
    let fd_limit = crate::raise_fd_limit();
    ensure!(
        (plan.connections as u64) + 64 <= fd_limit,
        "{} connections need more file descriptors than RLIMIT_NOFILE allows ({fd_limit})",
        plan.connections
    );
    let watch = Watch::new(plan.pids.clone());
    let before = watch
        .sample()
        .context("sampling the broker before connecting")?;
    let run_tag = format!("{:x}", probe::now_ns() ^ u64::from(std::process::id()));

    let permits = Arc::new(Semaphore::new(plan.concurrency.max(1)));
    let mut set = JoinSet::new();
    let started = Instant::now();
    for i in 0..plan.connections {
        let addr = plan.addrs[i % plan.addrs.len()];
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % plan.source_ips) as u8));
        let id = format!("bench-{run_tag}-c{i}");
        let permits = permits.clone();
        let (keep_alive, protocol) = (plan.keep_alive, plan.protocol);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let t0 = Instant::now();
            let conn =
                Connection::open(addr, Some(source), protocol, &id, keep_alive, true).await?;
            anyhow::Ok((conn.stream, t0.elapsed()))
        });
    }

    let mut open: Vec<TcpStream> = Vec::with_capacity(plan.connections);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let mut failed = 0usize;
    let mut first_error = None;
    let deadline = tokio::time::Instant::now() + plan.timeout;
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Ok((stream, took))))) => {
                latency.saturating_record(took.as_nanos().max(1) as u64);
                open.push(stream);
            }
            Ok(Some(Ok(Err(error)))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("{error:#}"));
            }
            Ok(Some(Err(join_error))) => {
                failed += 1;
                first_error.get_or_insert_with(|| format!("connect task: {join_error}"));
            }
            Ok(None) => break,
            Err(_) => {
                failed += set.len();
                first_error.get_or_insert_with(|| "connect phase timed out".to_string());
                set.abort_all();
                break;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();

    tokio::time::sleep(plan.settle).await;
    let after = watch
        .sample()
        .context("sampling the broker after connecting")?;
    let held = started.elapsed().as_secs_f64();
    let broker = (!watch.is_empty()).then(|| watch.usage(before, after, held));
    let connected = open.len();
    drop(open);

    Ok(ConnReport::new(
        &plan,
        connected,
        failed,
        first_error,
        elapsed,
        LatencySummary::from(&latency),
        broker,
    ))
}
