//! Getting into the cluster through seed addresses, and back into it when we
//! find ourselves alone.
//!
//! The first attempt runs inside `Membership::start`. If no seed answers (it
//! may simply not be up yet), a background task retries with backoff
//! (200 ms doubling to 2 s) until some seed answers or some other member
//! contacts us. The same task keeps watching afterwards: whenever this member
//! has no live peer left (a partition longer than the reap timeout, or every
//! other member restarted), it re-joins the seeds. It does nothing while the
//! cluster is healthy, and stops when serf shuts down.

use std::{net::SocketAddr, time::Duration};

use serf::{types::MaybeResolvedAddress, SerfState};

use super::handle::GossipSerf;

/// First retry delay after a join where no seed answered.
const RETRY_MIN: Duration = Duration::from_millis(200);
/// Longest delay between join retries, and the period of the "alone?" check.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// Tries every seed once; `true` if at least one answered (gossip then finds
/// the rest of the cluster through it).
///
/// Every seed is contacted, not just the first that answers, so members that
/// started in separate groups (each seeded by a different process) merge.
/// One `join` per seed instead of serf's `join_many`: in memberlist-core 0.8.5
/// the `join_many` future is not `Send` (it holds a `RefCell` borrow across
/// an await), so it cannot run in a `tokio::spawn`ed retry task. The
/// reproduction is the `compile_fail` doctest below; when it starts to
/// compile, upstream is fixed and `join_many` can come back.
///
/// ```compile_fail,E0277
/// # use std::net::SocketAddr;
/// # use serf::{delegate::CompositeDelegate, types::{MaybeResolvedAddress, SmolStr}};
/// # use serf::tokio::{TokioTcpSerf, TokioSocketAddrResolver};
/// # type GossipSerf = TokioTcpSerf<SmolStr, TokioSocketAddrResolver, CompositeDelegate<SmolStr, SocketAddr>>;
/// fn assert_send<T: Send>(_: T) {}
/// fn repro(serf: GossipSerf, seeds: Vec<SocketAddr>) {
///     // error[E0277]: `RefCell<SmallVec<SocketAddr>>` cannot be shared between threads safely
///     assert_send(async move { serf.join_many(seeds.into_iter().map(MaybeResolvedAddress::resolved), false).await });
/// }
/// ```
pub(crate) async fn join_seeds(serf: &GossipSerf, seeds: &[SocketAddr], quiet: bool) -> bool {
    let mut answered = Vec::new();
    let mut last_error = None;
    for &seed in seeds {
        match serf.join(MaybeResolvedAddress::resolved(seed), false).await {
            Ok(_) => answered.push(seed),
            Err(err) => {
                tracing::debug!(%seed, error = %err, "gossip seed did not answer");
                last_error = Some(err.to_string());
            }
        }
    }
    if !answered.is_empty() {
        tracing::info!(seeds = ?answered, "joined gossip cluster");
        return true;
    }
    let error = last_error.unwrap_or_default();
    if quiet {
        tracing::debug!(?seeds, %error, "no gossip seed answered; will retry");
    } else {
        tracing::warn!(?seeds, %error, "no gossip seed answered yet; retrying in the background");
    }
    false
}

/// Runs until serf shuts down: retries the join while this member has no
/// live peer. `joined` says whether the first attempt in `start` succeeded.
pub(crate) async fn keep_joined(serf: GossipSerf, seeds: Vec<SocketAddr>, joined: bool) {
    let shutdown = serf.shutdown_rx();
    let mut delay = if joined { RETRY_MAX } else { RETRY_MIN };
    let mut alone = !joined;
    loop {
        tokio::select! {
            _ = shutdown.recv() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        if serf.state() != SerfState::Alive {
            return;
        }
        if has_live_peer(&serf).await {
            alone = false;
            delay = RETRY_MAX;
            continue;
        }
        if !alone {
            tracing::info!(?seeds, "no live peer left; re-joining the gossip seeds");
            alone = true;
        }
        delay = if join_seeds(&serf, &seeds, true).await {
            RETRY_MAX
        } else {
            (delay * 2).min(RETRY_MAX)
        };
    }
}

/// Whether any member other than this one is currently alive.
async fn has_live_peer(serf: &GossipSerf) -> bool {
    let me = serf.local_id();
    serf.members()
        .await
        .iter()
        .any(|m| m.node().id() != me && *m.status() == serf::types::MemberStatus::Alive)
}
