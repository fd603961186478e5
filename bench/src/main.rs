//! `astramq-bench`: a load generator for MQTT 3.1.1 and 5.0 brokers.
//!
//! # Layout
//! - `mqtt`: the minimal client-side codec, 3.1.1 and 5.0 (encode what we send,
//!   parse what we get).
//! - `client`: one connection — TCP stream, buffers, CONNECT/SUBSCRIBE handshakes.
//! - `probe`: the send timestamp carried in every payload.
//! - `publisher` / `subscriber`: the per-client tasks of the `load` mode.
//! - `load`: the `load` mode — connect, warm up, measure a timed window.
//! - `conn`: the `conn` mode — open C idle connections, measure connect rate and RSS.
//! - `procstat`: broker CPU seconds and RSS from `/proc`.
//! - `report`: the JSON object and human lines each run prints.
//!
//! Every run is bounded: connect phases and the stop phase have time limits,
//! the window is at most an hour, and only loopback addresses are accepted.

mod client;
mod conn;
mod load;
mod mqtt;
mod probe;
mod procstat;
mod publisher;
mod report;
mod subscriber;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::mqtt::Protocol;

#[derive(Parser)]
#[command(
    name = "astramq-bench",
    version,
    about = "Load generator for MQTT 3.1.1 and 5.0 brokers: delivered msg/s, end-to-end latency, broker CPU-µs per message and RSS per connection."
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Publishers and subscribers: warm-up, then a timed window.
    Load(LoadArgs),
    /// C idle connections: connect rate and broker RSS per connection.
    Conn(ConnArgs),
}

#[derive(Args)]
struct CommonArgs {
    /// Broker process ids (comma list) whose CPU time and RSS are sampled.
    #[arg(long, value_delimiter = ',')]
    pid: Vec<u32>,
    /// Print one JSON object on stdout; the human lines go to stderr.
    #[arg(long)]
    json: bool,
    /// Runtime threads for the bench's own clients (1 = single-threaded runtime).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Free text copied into the report (e.g. the scenario name).
    #[arg(long, default_value = "")]
    label: String,
    /// MQTT keep-alive in seconds (some brokers refuse 0).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u16).range(1..))]
    keep_alive: u16,
    /// MQTT version every client speaks: 3.1.1 (or 4) or 5 (or 5.0).
    #[arg(long, default_value = "3.1.1", value_parser = parse_protocol)]
    protocol: Protocol,
}

fn parse_protocol(text: &str) -> Result<Protocol, String> {
    match text {
        "3.1.1" | "4" => Ok(Protocol::V311),
        "5" | "5.0" => Ok(Protocol::V5),
        other => Err(format!("{other:?} is not 3.1.1 or 5")),
    }
}

#[derive(Args)]
struct LoadArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Addresses publishers connect to (comma list, used round-robin).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:1883")]
    pub_addr: Vec<SocketAddr>,
    /// Addresses subscribers connect to (comma list, used round-robin).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:1883")]
    sub_addr: Vec<SocketAddr>,
    /// Number of publishers; publisher i publishes to topic i % topics.
    #[arg(short = 'p', long, default_value_t = 1)]
    publishers: usize,
    /// Number of exact-topic subscribers; subscriber j takes topic j % topics.
    #[arg(short = 's', long, default_value_t = 1)]
    subscribers: usize,
    /// Additional subscribers to `PREFIX/+` (every topic).
    #[arg(long, default_value_t = 0)]
    wildcard_subscribers: usize,
    /// Number of topics.
    #[arg(short = 't', long, default_value_t = 1)]
    topics: usize,
    /// QoS of publishes and subscriptions.
    #[arg(short = 'q', long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 16: the latency probe).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Messages per second per publisher; 0 = as fast as the in-flight window
    /// (QoS 1/2) or the socket (QoS 0) allows.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rate: f64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    #[arg(long, default_value_t = 32)]
    inflight: usize,
    /// Closed loop: publishers wait while more than this many deliveries are
    /// outstanding (sent, not yet received) over the whole run, so flat-out
    /// throughput is measured at a bounded broker queue instead of overload.
    /// 0 = open loop. Use with QoS 1/2 (a lost message stays outstanding).
    #[arg(long, default_value_t = 0)]
    max_outstanding: u64,
    /// Warm-up seconds before the timed window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Timed window in seconds.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    duration: f64,
    /// Topic prefix [default: bench/<unique run tag>].
    #[arg(long)]
    topic_prefix: Option<String>,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Subscribers keep persistent sessions (clean session = 0), so QoS 1/2
    /// deliveries take the durable path of a cluster.
    #[arg(long)]
    persistent_subscribers: bool,
}

#[derive(Args)]
struct ConnArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Broker addresses (comma list, used round-robin).
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:1883")]
    addr: Vec<SocketAddr>,
    /// Idle connections to open.
    #[arg(short = 'c', long, default_value_t = 1000)]
    connections: usize,
    /// Connection attempts in progress at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Source addresses 127.0.0.2.. to spread connections over (1..=253).
    #[arg(long, default_value_t = 50)]
    source_ips: usize,
    /// Seconds to hold the connections before sampling the broker's RSS.
    #[arg(long, default_value_t = 2.0)]
    settle: f64,
    /// Limit in seconds on the whole connect phase.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let common = match &cli.mode {
        Mode::Load(args) => &args.common,
        Mode::Conn(args) => &args.common,
    };
    let runtime = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()
    }
    .context("starting the runtime")?;
    probe::now_ns(); // fix the clock origin before any client starts

    let json = common.json;
    let failed = match cli.mode {
        Mode::Load(args) => {
            let plan = load_plan(args)?;
            raise_fd_limit();
            let report = runtime.block_on(load::run(plan))?;
            emit(json, &report, &report.human())?;
            !report.errors.is_empty()
        }
        Mode::Conn(args) => {
            let plan = conn_plan(args)?;
            let report = runtime.block_on(conn::run(plan))?;
            emit(json, &report, &report.human())?;
            report.failed > 0
        }
    };
    // Do not wait for tasks still parked on sockets.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if failed {
        std::process::exit(2);
    }
    Ok(())
}

fn emit(json: bool, report: &impl Serialize, human: &str) -> Result<()> {
    if json {
        eprint!("{human}");
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{human}");
    }
    Ok(())
}

/// Seconds from the command line, bounded so every run ends by itself.
fn seconds(value: f64, max: f64, name: &str) -> Result<Duration> {
    ensure!(
        value.is_finite() && (0.0..=max).contains(&value),
        "--{name} must be 0..={max} s"
    );
    Ok(Duration::from_secs_f64(value))
}

fn load_plan(a: LoadArgs) -> Result<load::LoadPlan> {
    ensure!(a.rate.is_finite() && a.rate >= 0.0, "--rate must be >= 0");
    let duration = seconds(a.duration, 3600.0, "duration")?;
    ensure!(!duration.is_zero(), "--duration must be positive");
    let tag = format!("{:x}", std::process::id() as u64 ^ probe::now_ns());
    Ok(load::LoadPlan {
        pub_addrs: a.pub_addr,
        sub_addrs: a.sub_addr,
        publishers: a.publishers,
        subscribers: a.subscribers,
        wildcard_subscribers: a.wildcard_subscribers,
        topics: a.topics,
        qos: a.qos,
        payload: a.payload,
        rate: (a.rate > 0.0).then_some(a.rate),
        inflight: a.inflight,
        max_outstanding: (a.max_outstanding > 0).then_some(a.max_outstanding),
        warmup: seconds(a.warmup, 600.0, "warmup")?,
        duration,
        topic_prefix: a.topic_prefix.unwrap_or_else(|| format!("bench/{tag}")),
        keep_alive: a.common.keep_alive,
        protocol: a.common.protocol,
        connect_concurrency: a.connect_concurrency,
        persistent_subscribers: a.persistent_subscribers,
        pids: a.common.pid,
        label: a.common.label,
    })
}

fn conn_plan(a: ConnArgs) -> Result<conn::ConnPlan> {
    Ok(conn::ConnPlan {
        addrs: a.addr,
        connections: a.connections,
        concurrency: a.concurrency,
        source_ips: a.source_ips,
        settle: seconds(a.settle, 600.0, "settle")?,
        timeout: seconds(a.timeout, 3600.0, "timeout")?,
        keep_alive: a.common.keep_alive,
        protocol: a.common.protocol,
        pids: a.common.pid,
        label: a.common.label,
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the limit in force.
#[allow(unsafe_code)] // a libc call; its SAFETY comment is at the call
pub(crate) fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}
