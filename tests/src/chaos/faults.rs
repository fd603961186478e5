//! Fault injection: the kinds of failure, a schedule of them, and the
//! injection of one fault into a [`ChaosCluster`].
//!
//! Every fault ends with the cluster whole again (the node restarted or
//! thawed, Redis back, the link healed), so faults never pile up; each is
//! bounded in time. Which node is hit and for how long comes from a seeded
//! [`Rng`], so a run can be repeated with `--seed`.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::cluster::ChaosCluster;

/// One kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// `kill -9` of a node, then a restart under the same node id.
    Kill,
    /// SIGSTOP of a node for longer than failure detection, then SIGCONT.
    Freeze,
    /// Redis stopped (SIGTERM, AOF flushed) for a few seconds, then started.
    RedisRestart,
    /// One node cut off from Redis, its peers and the proxy, then healed.
    Partition,
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FaultKind::Kill => "kill -9 + restart",
            FaultKind::Freeze => "SIGSTOP/SIGCONT",
            FaultKind::RedisRestart => "Redis restart",
            FaultKind::Partition => "network partition",
        };
        f.write_str(name)
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct InjectedFault {
    /// What was done.
    pub kind: FaultKind,
    /// The node hit (none for a Redis restart).
    pub node: Option<String>,
    /// When it started.
    pub at: Instant,
    /// How long the node or Redis was out.
    pub outage: Duration,
    /// Subscribers whose session that node owned when it was hit.
    pub affected: Vec<String>,
    /// Why it was not injected, if it was not.
    pub skipped: Option<String>,
}

/// A small deterministic generator (xorshift64*): reproducible runs
/// without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed` (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A duration between `low` and `high`.
    pub fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = high.saturating_sub(low).as_millis().max(1) as u64;
        low + Duration::from_millis(self.next_u64() % span)
    }
}

/// The faults of a run, in order: `kills` kills and, for every two kills,
/// one freeze, and for every four kills one Redis restart and one
/// partition (at least one of each), shuffled.
pub fn schedule(kills: usize, rng: &mut Rng) -> Vec<FaultKind> {
    let mut plan = vec![FaultKind::Kill; kills];
    plan.extend(vec![FaultKind::Freeze; (kills / 2).max(1)]);
    plan.extend(vec![FaultKind::RedisRestart; (kills / 4).max(1)]);
    plan.extend(vec![FaultKind::Partition; (kills / 4).max(1)]);
    for i in (1..plan.len()).rev() {
        plan.swap(i, rng.below(i + 1));
    }
    plan
}

/// Injects one fault and waits until it is over (the cluster is whole).
///
/// `subscribers` are the client ids whose placement is looked up, so the
/// failover time of the ones on the hit node can be measured.
pub async fn inject(
    cluster: &mut ChaosCluster,
    kind: FaultKind,
    subscribers: &[String],
    rng: &mut Rng,
) -> Result<InjectedFault> {
    let node = match kind {
        FaultKind::RedisRestart => None,
        FaultKind::Partition => (0..cluster.nodes.len()).find(|i| cluster.is_partitionable(*i)),
        FaultKind::Kill | FaultKind::Freeze => Some(rng.below(cluster.nodes.len())),
    };
    let mut fault = InjectedFault {
        kind,
        node: node.map(|i| cluster.nodes[i].id.clone()),
        at: Instant::now(),
        outage: Duration::ZERO,
        affected: Vec::new(),
        skipped: None,
    };
    if kind == FaultKind::Partition && node.is_none() {
        fault.skipped = Some("no node runs in a network namespace".to_owned());
        return Ok(fault);
    }
    if let Some(id) = &fault.node {
        fault.affected = subscribers
            .iter()
            .filter(|s| cluster.session_owner(s).as_deref() == Some(id.as_str()))
            .cloned()
            .collect();
    }
    fault.at = Instant::now();
    match (kind, node) {
        (FaultKind::Kill, Some(i)) => {
            cluster.kill(i)?;
            tokio::time::sleep(rng.between(ms(500), ms(4000))).await;
            fault.outage = fault.at.elapsed();
            tokio::task::block_in_place(|| cluster.start_node(i))?;
        }
        (FaultKind::Freeze, Some(i)) => {
            cluster.freeze(i, true)?;
            tokio::time::sleep(rng.between(ms(3000), ms(6000))).await;
            cluster.freeze(i, false)?;
            fault.outage = fault.at.elapsed();
        }
        (FaultKind::Partition, Some(i)) => {
            cluster.partition(i, true)?;
            tokio::time::sleep(rng.between(ms(3000), ms(6000))).await;
            cluster.partition(i, false)?;
            fault.outage = fault.at.elapsed();
        }
        _ => {
            tokio::task::block_in_place(|| cluster.redis.stop())?;
            tokio::time::sleep(rng.between(ms(2000), ms(3000))).await;
            fault.outage = fault.at.elapsed();
            tokio::task::block_in_place(|| cluster.redis.resume())?;
        }
    }
    Ok(fault)
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}
