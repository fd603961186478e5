//! The `load` mode: subscribers connect and subscribe, publishers connect and
//! start, a warm-up lets the broker reach a steady state, then a timed window
//! is measured: deliveries and sends counted, latencies recorded, broker CPU
//! and RSS sampled at both ends.
//!
//! Topic layout: topic `t` is `{prefix}/{t}`; publisher `i` publishes to topic
//! `i % topics`; exact subscriber `j` subscribes to topic `j % topics`;
//! wildcard subscribers subscribe to `{prefix}/+` (every topic). Clients are
//! spread round-robin over the publisher and subscriber addresses.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::client::Connection;
use crate::mqtt::Protocol;
use crate::procstat::Watch;
use crate::report::{LatencySummary, LoadReport};
use crate::{probe, procstat, publisher, subscriber};

/// What to run; built from the command line.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub pub_addrs: Vec<SocketAddr>,
    pub sub_addrs: Vec<SocketAddr>,
    pub publishers: usize,
    pub subscribers: usize,
    pub wildcard_subscribers: usize,
    pub topics: usize,
    pub qos: u8,
    pub payload: usize,
    /// Messages per second per publisher; `None` = as fast as the in-flight
    /// window (QoS 1/2) or the socket (QoS 0) allows.
    pub rate: Option<f64>,
    pub inflight: usize,
    /// Closed loop: most deliveries outstanding over the run (see `publisher`).
    pub max_outstanding: Option<u64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub topic_prefix: String,
    pub keep_alive: u16,
    /// MQTT version every client speaks.
    pub protocol: Protocol,
    pub connect_concurrency: usize,
    /// Subscribers keep persistent sessions (clean session = 0).
    pub persistent_subscribers: bool,
    pub pids: Vec<u32>,
    pub label: String,
}

/// How long all clients together may take to connect and subscribe.
const CONNECT_PHASE_LIMIT: Duration = Duration::from_secs(60);
/// How long tasks get to send DISCONNECT and exit after the window.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub async fn run(plan: LoadPlan) -> Result<LoadReport> {
    ensure!(plan.topics > 0, "--topics must be at least 1");
    ensure!(
        plan.payload >= probe::MIN_PAYLOAD,
        "--payload must be at least {} bytes",
        probe::MIN_PAYLOAD
    );
    ensure!(
        plan.inflight > 0 && plan.inflight < 65_535,
        "--inflight must be 1..65534"
    );
    ensure!(
        !plan.pub_addrs.is_empty() && !plan.sub_addrs.is_empty(),
        "no broker address"
    );
    let watch = Watch::new(plan.pids.clone());
    watch
        .sample()
        .context("sampling the broker before the run")?;

    let topics: Vec<String> = (0..plan.topics)
        .map(|t| format!("{}/{t}", plan.topic_prefix))
        .collect();
    let wildcard = format!("{}/+", plan.topic_prefix);
    // Deliveries each publish to topic t should cause, for the delivery ratio.
    let mut fanout = vec![plan.wildcard_subscribers as u64; plan.topics];
    for j in 0..plan.subscribers {
        fanout[j % plan.topics] += 1;
    }

    if let Some(cap) = plan.max_outstanding {
        let widest = fanout.iter().copied().max().unwrap_or(0);
        ensure!(
            cap >= 2 * widest,
            "--max-outstanding must be at least twice the largest fan-out ({widest})"
        );
    }
    let shared = Arc::new(subscriber::Shared::new(plan.max_outstanding)?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let run_tag = format!("{:x}", probe::now_ns() ^ u64::from(std::process::id()));

    // Subscribers first, so the first publish already has its audience.
    let total_subs = plan.subscribers + plan.wildcard_subscribers;
    let subs = connect_all(total_subs, plan.connect_concurrency, |j| {
        let addr = plan.sub_addrs[j % plan.sub_addrs.len()];
        let id = format!("bench-{run_tag}-s{j}");
        let filter = if j < plan.subscribers {
            topics[j % plan.topics].clone()
        } else {
            wildcard.clone()
        };
        let (qos, keep_alive, protocol) = (plan.qos, plan.keep_alive, plan.protocol);
        let clean = !plan.persistent_subscribers;
        async move {
            let mut conn = Connection::open(addr, None, protocol, &id, keep_alive, clean).await?;
            conn.subscribe(&[filter], qos).await?;
            Ok(conn)
        }
    })
    .await
    .context("connecting subscribers")?;
    for conn in subs {
        let task = subscriber::run(conn, shared.clone(), stop_rx.clone());
        tasks.spawn(task);
    }

    let pubs = connect_all(plan.publishers, plan.connect_concurrency, |i| {
        let addr = plan.pub_addrs[i % plan.pub_addrs.len()];
        let id = format!("bench-{run_tag}-p{i}");
        let (keep_alive, protocol) = (plan.keep_alive, plan.protocol);
        async move { Connection::open(addr, None, protocol, &id, keep_alive, true).await }
    })
    .await
    .context("connecting publishers")?;
    for (i, conn) in pubs.into_iter().enumerate() {
        let config = publisher::Config {
            index: i as u32,
            topic: Bytes::from(topics[i % plan.topics].clone()),
            qos: plan.qos,
            payload: plan.payload,
            rate: plan.rate,
            window: plan.inflight,
            fanout: fanout[i % plan.topics],
            max_outstanding: plan.max_outstanding,
        };
        tasks.spawn(publisher::run(
            conn,
            config,
            shared.clone(),
            stop_rx.clone(),
        ));
    }

    // Warm-up, then the timed window between two snapshots.
    tokio::time::sleep(plan.warmup).await;
    let broker_before = watch.sample().context("sampling the broker")?;
    let self_before = procstat::sample_self()?;
    let counts_before = shared.counts();
    let started = Instant::now();
    shared.measuring.store(true, Relaxed);
    tokio::time::sleep(plan.duration).await;
    shared.measuring.store(false, Relaxed);
    let window = started.elapsed().as_secs_f64();
    let counts = shared.counts().minus(&counts_before);
    let broker_after = watch.sample().context("sampling the broker")?;
    let self_after = procstat::sample_self()?;

    let _ = stop_tx.send(true);
    let errors = finish(tasks).await;

    let broker = (!watch.is_empty()).then(|| watch.usage(broker_before, broker_after, window));
    let latency = LatencySummary::from(&*shared.latency.lock().expect("latency lock"));
    Ok(LoadReport::new(
        &plan,
        window,
        counts,
        latency,
        broker,
        self_after.cpu_s - self_before.cpu_s,
        errors,
    ))
}

/// Connects `count` clients, at most `concurrency` at a time; fails if any
/// fails or the whole phase exceeds [`CONNECT_PHASE_LIMIT`].
async fn connect_all<F, Fut>(count: usize, concurrency: usize, make: F) -> Result<Vec<Connection>>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<Connection>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..count {
        let permits = permits.clone();
        let connect = make(i);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await;
            connect
                .await
                .map(|c| (i, c))
                .with_context(|| format!("client {i}"))
        });
    }
    let mut conns: Vec<Option<Connection>> = (0..count).map(|_| None).collect();
    let collect = async {
        while let Some(joined) = set.join_next().await {
            let (i, conn) = joined.context("connect task panicked")??;
            conns[i] = Some(conn);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(CONNECT_PHASE_LIMIT, collect)
        .await
        .context("connect phase timed out")??;
    Ok(conns.into_iter().flatten().collect())
}

/// Waits (bounded) for every client task after the stop signal and returns
/// the errors they ended with; stragglers are aborted.
async fn finish(mut tasks: JoinSet<Result<()>>) -> Vec<String> {
    let mut errors = Vec::new();
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    loop {
        match tokio::time::timeout_at(deadline, tasks.join_next()).await {
            Ok(Some(Ok(Ok(())))) => {}
            Ok(Some(Ok(Err(error)))) => errors.push(format!("{error:#}")),
            Ok(Some(Err(join_error))) => errors.push(format!("client task: {join_error}")),
            Ok(None) => break,
            Err(_) => {
                errors.push(format!("{} client tasks did not stop in time", tasks.len()));
                tasks.abort_all();
                break;
            }
        }
    }
    errors
}
