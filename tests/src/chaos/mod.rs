//! Chaos harness: a real cluster under faults, a workload through the
//! proxy, and a checker that proves (or disproves) zero loss of
//! acknowledged messages.
//!
//! # What a run does
//!
//! Redis with AOF (`appendonly yes`, `appendfsync everysec`), three nodes
//! joined by gossip, `astramq-proxy` in front (`--balance client-id`, so a
//! reconnecting client returns to its node while that node lives). Two
//! QoS 1 and two QoS 2 publishers and, per publisher, a fast and a slow
//! persistent subscriber (clean session = false, fixed client ids), all
//! through the proxy with automatic reconnect. Slow subscribers withhold
//! their acks four seconds out of eight, so their in-flight windows fill.
//! Placement (which node owns each session) is read from Redis and
//! reported. Faults come on a seeded schedule ([`faults`]): `kill -9` and
//! restart under the same id, SIGSTOP for 3–6 s, a Redis restart (2–3 s
//! down), and a partition of one node from Redis, peers and proxy through a
//! network namespace (skipped with a printed note where namespaces cannot
//! be created). Then publishers stop, subscribers drain until quiet, and
//! [`report`] checks and prints.
//!
//! # What is guaranteed if the run passes
//!
//! - every message a publisher got PUBACK (QoS 1) or PUBREC (QoS 2) for
//!   reached every subscriber of its topic; unacknowledged ones may be lost;
//! - no QoS 2 message reached an application twice (a re-send with the
//!   same packet id before PUBREL is the same message, see [`receiver`]);
//!   QoS 1 duplicates are counted and reported as a ratio;
//! - no client got a message on a topic it did not subscribe to;
//! - every node serves the same retained messages, none older than the
//!   last acknowledged retained publish;
//! - no node log contains "panicked"; no node's RSS exceeded 512 MiB.
//!
//! Failover time (fault to the first delivery to each subscriber the hit
//! node owned) is reported as p50/p99, not asserted. Clients are eager:
//! each gives up on a connection silent (or unanswered) for
//! [`GIVE_UP_AFTER`], so that much of a freeze's or partition's failover
//! time is the client's own detection.
//!
//! # Running it
//!
//! - In the suite, bounded to about 100 s:
//!   `cargo test -p astramq-tests --test chaos -- --nocapture`
//! - Long run for humans:
//!   `cargo run -p astramq-tests --bin chaos -- --duration 600 --kills 20`
//!   (also `--seed N` to repeat a schedule, `--drain 120` for the drain
//!   limit in seconds). Needs root for the partition fault.
//!
//! # Layout
//!
//! - [`cluster`]: the processes, with kill / freeze / restart / partition.
//! - [`partition`]: the network namespace and veth link of one node.
//! - [`faults`]: fault kinds, schedule, injection, the seeded generator.
//! - [`publisher`], [`subscriber`]: the workload tasks.
//! - [`receiver`]: client-side QoS 1/2 receive state (shared with
//!   `tests/zero_loss.rs`).
//! - [`ledger`]: acknowledged vs delivered, and the per-subscriber verdict.
//! - [`report`]: end-of-run checks and the summary block.

pub mod cluster;

/// How long a harness client waits on a silent connection (no PINGRESP,
/// no CONNACK, no acknowledgement of its publish) before it reconnects.
pub const GIVE_UP_AFTER: std::time::Duration = std::time::Duration::from_secs(2);
pub mod faults;
pub mod ledger;
pub mod partition;
pub mod publisher;
pub mod receiver;
pub mod report;
pub mod subscriber;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use cluster::{ChaosCluster, ClusterShape};
use faults::Rng;
use ledger::{lock, Ledger, SharedLedger};
use publisher::PublisherSpec;
use report::Report;
use subscriber::SubscriberSpec;

/// Where the workload is in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Publishing; slow subscribers stall.
    Running,
    /// Publishers stopped; subscribers ack at once until quiet.
    Draining,
    /// Everyone disconnects.
    Stop,
}

/// How long and how hard a run is.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// Length of the fault phase (publishing the whole time).
    pub duration: Duration,
    /// Kills in the schedule; the other kinds scale with it.
    pub kills: usize,
    /// Seed of the schedule and fault choices.
    pub seed: u64,
    /// Upper bound of the drain.
    pub drain_limit: Duration,
    /// Pause between two messages of one publisher.
    pub publish_interval: Duration,
}

/// Retained topics all live under this filter.
const RETAINED_FILTER: &str = "chaos/retained/#";

/// Subscribers quiet this long are drained.
const DRAIN_QUIET: Duration = Duration::from_secs(4);

/// A drain with messages still missing lasts at least this long.
const DRAIN_MIN: Duration = Duration::from_secs(12);

/// How long every subscriber may take to connect first.
const FIRST_CONNECT: Duration = Duration::from_secs(20);

/// Time for subscriptions to reach every node before publishing starts.
const ROUTE_SETTLE: Duration = Duration::from_secs(2);

/// How long the proxy may take to see every node again after a fault.
const HEAL: Duration = Duration::from_secs(15);

impl ChaosConfig {
    /// The run in the suite: five faults (two kills, one of each other
    /// kind) in 48 s, at most 30 s of drain.
    pub fn short() -> Self {
        Self {
            duration: Duration::from_secs(48),
            kills: 2,
            seed: seed_from_clock(),
            drain_limit: Duration::from_secs(30),
            publish_interval: Duration::from_millis(50),
        }
    }

    /// Parses `--duration SECS --kills N --seed N --drain SECS` over
    /// [`ChaosConfig::short`].
    pub fn from_args(args: impl IntoIterator<Item = String>) -> Result<Self> {
        let mut config = Self::short();
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| anyhow!("{flag} needs a value"))?;
            let number: u64 = value
                .parse()
                .with_context(|| format!("{flag} {value}: not a number"))?;
            match flag.as_str() {
                "--duration" => config.duration = Duration::from_secs(number),
                "--kills" => config.kills = usize::try_from(number)?,
                "--seed" => config.seed = number,
                "--drain" => config.drain_limit = Duration::from_secs(number),
                other => bail!("unknown flag {other} (use --duration, --kills, --seed, --drain)"),
            }
        }
        Ok(config)
    }
}

/// The workload's tasks and what they report into.
struct Workload {
    ledger: SharedLedger,
    phase: watch::Sender<Phase>,
    /// Publishers, known from the start, running once routes exist.
    publishers: Vec<PublisherSpec>,
    publisher_tasks: Vec<JoinHandle<()>>,
    subscribers: Vec<(SubscriberSpec, JoinHandle<()>)>,
}

/// Runs a whole chaos run and returns its report (not yet asserted).
pub async fn run(config: &ChaosConfig) -> Result<Report> {
    let started = Instant::now();
    let shape = ClusterShape {
        nodes: 3,
        with_proxy: true,
        partitionable_node: true,
    };
    let mut cluster = tokio::task::block_in_place(|| ChaosCluster::start(&shape))?;
    let mut report = Report {
        seed: config.seed,
        ..Report::default()
    };
    if !(0..cluster.nodes.len()).any(|i| cluster.is_partitionable(i)) {
        report
            .notes
            .push("partition skipped: no network namespace could be created".into());
    }
    let proxy = cluster.proxy_addr()?;
    let mut workload = Workload::start_subscribers(proxy, config)?;
    workload.wait_until_connected().await?;
    tokio::time::sleep(ROUTE_SETTLE).await;
    workload.start_publishers(proxy);
    let placement = placement(&cluster, &workload);

    let mut rng = Rng::new(config.seed);
    run_faults(&mut cluster, &workload, config, &mut rng, &mut report).await;
    cluster.assert_all_running()?;

    report.drained = workload.drain(config.drain_limit).await;
    report.retained = read_retained_everywhere(&cluster, &workload).await?;
    cluster.collect_panics();
    cluster.sample_rss();
    for node in &cluster.nodes {
        report
            .nodes
            .push((node.id.clone(), node.peak_rss_kib, node.incarnations));
        for line in &node.panics {
            report.panics.push((node.id.clone(), line.clone()));
        }
    }
    report.judge_ledger(&lock(&workload.ledger), &placement);
    report.wall = started.elapsed();
    Ok(report)
}

/// Injects the scheduled faults, evenly spread over the fault phase.
async fn run_faults(
    cluster: &mut ChaosCluster,
    workload: &Workload,
    config: &ChaosConfig,
    rng: &mut Rng,
    report: &mut Report,
) {
    let plan = faults::schedule(config.kills, rng);
    let spacing = config.duration / u32::try_from(plan.len().max(1)).unwrap_or(u32::MAX);
    let subscribers: Vec<String> = workload
        .subscribers
        .iter()
        .map(|(s, _)| s.client_id.clone())
        .collect();
    let phase_start = Instant::now();
    for (k, kind) in plan.into_iter().enumerate() {
        let due = phase_start + spacing * u32::try_from(k).unwrap_or(u32::MAX) + spacing / 4;
        sleep_sampling(cluster, due).await;
        match faults::inject(cluster, kind, &subscribers, rng).await {
            Ok(fault) => {
                println!(
                    "chaos: {:>5.1}s {} on {:?}, out {:.1?}, affected {:?}",
                    phase_start.elapsed().as_secs_f64(),
                    kind,
                    fault.node,
                    fault.outage,
                    fault.affected
                );
                report.faults.push(fault);
            }
            Err(e) => report.notes.push(format!("{kind} failed to inject: {e:#}")),
        }
        let expected = cluster.nodes.len();
        if let Err(e) = tokio::task::block_in_place(|| cluster.wait_for_backends(expected, HEAL)) {
            report.notes.push(format!("after {kind}: {e:#}"));
        }
    }
    sleep_sampling(cluster, phase_start + config.duration).await;
}

/// Sleeps until `until`, sampling node RSS once a second.
async fn sleep_sampling(cluster: &mut ChaosCluster, until: Instant) {
    while Instant::now() < until {
        cluster.sample_rss();
        let left = until.saturating_duration_since(Instant::now());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
    }
}

impl Workload {
    /// Two QoS 1 and two QoS 2 topics, a fast and a slow subscriber each.
    fn start_subscribers(proxy: SocketAddr, config: &ChaosConfig) -> Result<Self> {
        let ledger: SharedLedger = Arc::new(Mutex::new(Ledger::default()));
        let (phase, _) = watch::channel(Phase::Running);
        let mut workload = Self {
            ledger,
            phase,
            publishers: Vec::new(),
            publisher_tasks: Vec::new(),
            subscribers: Vec::new(),
        };
        let run_tag = format!("{}-{}", std::process::id(), config.seed % 10_000);
        for (n, qos) in [1u8, 1, 2, 2].into_iter().enumerate() {
            let topic = format!("chaos/{run_tag}/q{qos}/t{n}");
            for slow in [false, true] {
                let spec = SubscriberSpec {
                    client_id: format!(
                        "sub-t{n}-q{qos}-{}-{run_tag}",
                        if slow { "slow" } else { "fast" }
                    ),
                    topic: topic.clone(),
                    qos,
                    slow,
                    stall_offset: Duration::from_millis(1000 * n as u64),
                };
                lock(&workload.ledger).add_subscriber(&spec.client_id, &topic, qos, slow);
                let task = tokio::spawn(subscriber::run(
                    spec.clone(),
                    proxy,
                    workload.ledger.clone(),
                    workload.phase.subscribe(),
                ));
                workload.subscribers.push((spec, task));
            }
            workload.publishers.push(PublisherSpec {
                client_id: format!("pub-t{n}-q{qos}-{run_tag}"),
                topic: topic.clone(),
                retained_topic: format!("chaos/retained/{run_tag}/t{n}"),
                qos,
                interval: config.publish_interval,
                retain_every: 25,
            });
        }
        Ok(workload)
    }

    fn start_publishers(&mut self, proxy: SocketAddr) {
        for spec in &self.publishers {
            self.publisher_tasks.push(tokio::spawn(publisher::run(
                spec.clone(),
                proxy,
                self.ledger.clone(),
                self.phase.subscribe(),
            )));
        }
    }

    /// Waits until every subscriber has connected once.
    async fn wait_until_connected(&self) -> Result<()> {
        let deadline = Instant::now() + FIRST_CONNECT;
        while Instant::now() < deadline {
            let all = lock(&self.ledger)
                .subscribers
                .values()
                .all(|s| !s.connections.is_empty());
            if all {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("not every subscriber connected within {FIRST_CONNECT:?}")
    }

    /// Whether the drain begun at `started` is over: nothing is missing,
    /// or something is but subscribers have been silent for
    /// [`DRAIN_QUIET`] and late redeliveries (reconnects after the last
    /// fault, recovery of a dead node) have had [`DRAIN_MIN`].
    fn drained(&self, started: Instant) -> bool {
        let ledger = lock(&self.ledger);
        if ledger.nothing_missing() {
            return true;
        }
        let silent = ledger
            .last_delivery()
            .is_none_or(|t| t.elapsed() >= DRAIN_QUIET);
        silent && started.elapsed() >= DRAIN_MIN
    }

    /// Stops the publishers, waits until subscribers are quiet (bounded),
    /// stops them. Returns whether they went quiet in time.
    async fn drain(&mut self, limit: Duration) -> bool {
        let _ = self.phase.send(Phase::Draining);
        for task in self.publisher_tasks.drain(..) {
            let _ = task.await;
        }
        let started = Instant::now();
        let mut quiet = false;
        while started.elapsed() < limit {
            if self.drained(started) {
                quiet = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let _ = self.phase.send(Phase::Stop);
        for (_, task) in self.subscribers.drain(..) {
            let _ = task.await;
        }
        quiet
    }
}

/// "sub@<node> pub@<node>" for every subscriber, from Redis.
fn placement(cluster: &ChaosCluster, workload: &Workload) -> BTreeMap<String, String> {
    let owner = |id: &str| cluster.session_owner(id).unwrap_or_else(|| "?".into());
    workload
        .subscribers
        .iter()
        .map(|(sub, _)| {
            let publisher = workload
                .publishers
                .iter()
                .find(|p| p.topic == sub.topic)
                .map(|p| owner(&p.client_id))
                .unwrap_or_else(|| "?".into());
            let text = format!("sub@{} pub@{}", owner(&sub.client_id), publisher);
            (sub.client_id.clone(), text)
        })
        .collect()
}

/// Retained messages as every node serves them, and the acknowledged ones.
async fn read_retained_everywhere(
    cluster: &ChaosCluster,
    workload: &Workload,
) -> Result<report::RetainedCheck> {
    let mut check = report::RetainedCheck {
        acked: lock(&workload.ledger).retained_acked.clone(),
        ..Default::default()
    };
    for (i, node) in cluster.nodes.iter().enumerate() {
        let view = report::read_retained(cluster.node_addr(i)?, RETAINED_FILTER).await?;
        check.per_node.insert(node.id.clone(), view);
    }
    Ok(check)
}

/// A seed that differs between runs (printed, so a run can be repeated).
fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}
