//! `Membership`: the handle brokers and the proxy hold. Starting binds and
//! joins, the accessors are cheap reads, `leave` ends it gracefully.

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
};

use arc_swap::ArcSwap;
use serf::{
    delegate::CompositeDelegate,
    event::EventProducer,
    net::NetTransportOptions,
    tokio::{TokioNetTransport, TokioSocketAddrResolver, TokioTcp},
    types::SmolStr,
    Serf,
};
use tokio::{sync::broadcast, task::JoinHandle};

use super::{
    key::parse_key, seeds, startup_race, tuning, watcher, MemberEvent, MemberInfo,
    MembershipConfig, MembershipError,
};

/// Plain TCP+UDP transport on tokio, nodes named by `SmolStr`, addressed by `SocketAddr`.
pub(crate) type GossipTransport = TokioNetTransport<SmolStr, TokioSocketAddrResolver, TokioTcp>;
/// The serf instance type (no custom delegate: tags carry all we need).
pub(crate) type GossipSerf = Serf<GossipTransport, CompositeDelegate<SmolStr, SocketAddr>>;

/// How many events a slow subscriber may fall behind before it sees
/// `RecvError::Lagged` (it should then re-read [`Membership::live_brokers`]).
const EVENT_BUFFER: usize = 1024;

/// State shared by the handle clones and the background tasks.
pub(crate) struct Shared {
    /// The running serf instance (itself a cheap, clonable handle).
    pub(crate) serf: GossipSerf,
    /// Alive brokers sorted by node id, replaced on every membership event;
    /// readers get a consistent `Arc` without locking.
    pub(crate) live_brokers: ArcSwap<Vec<MemberInfo>>,
    /// Set by `leave()` so the watcher can tell a requested shutdown from
    /// serf stopping by itself (name conflict), which it must report loudly.
    pub(crate) leave_requested: AtomicBool,
    /// The watcher task; `leave()` waits for it so that, once `leave()`
    /// returns, every event has been delivered and every subscriber closed.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

/// A running membership: this process gossiping in the cluster.
///
/// Cheap to clone (all clones share one serf instance). Call
/// [`leave`](Self::leave) on shutdown; dropping the handles does not stop the
/// background tasks, and a process that exits without leaving is reported as
/// `failed` by its peers instead of `left`.
#[derive(Clone)]
pub struct Membership {
    /// Serf, the snapshot and the shutdown bookkeeping.
    shared: Arc<Shared>,
    /// Weak so that only the watcher task keeps the event channel open:
    /// when it ends, subscribers see `Closed`.
    events: broadcast::WeakSender<MemberEvent>,
}

impl Membership {
    /// Binds the gossip port, starts serf with this member's tags, and joins
    /// the seeds in `cfg.join`. Returns once the port is bound, even if no
    /// seed answered: the join is then retried in the background, so the
    /// start order of processes does not matter.
    ///
    /// Must run inside a tokio runtime (it spawns the event and join tasks).
    pub async fn start(cfg: MembershipConfig) -> Result<Membership, MembershipError> {
        cfg.validate_node_id()?;
        let key = cfg.encryption_key.as_deref().map(parse_key).transpose()?;
        let encrypted = key.is_some();

        let mut transport = NetTransportOptions::<SmolStr, TokioSocketAddrResolver, TokioTcp>::new(
            SmolStr::new(&cfg.node_id),
        );
        transport.add_bind_address(cfg.gossip_listen);
        let (producer, serf_events) = EventProducer::unbounded();
        let serf =
            GossipSerf::with_event_producer(transport, tuning::serf_options(&cfg, key), producer)
                .await
                .map_err(|err| MembershipError::Start {
                    addr: cfg.gossip_listen,
                    source: Box::new(err),
                })?;
        let gossip_addr = *serf.advertise_node().address();
        tracing::info!(
            node_id = %cfg.node_id,
            role = %cfg.role,
            %gossip_addr,
            encrypted,
            "gossip membership started"
        );

        let shared = Arc::new(Shared {
            serf: serf.clone(),
            live_brokers: ArcSwap::from_pointee(Vec::new()),
            leave_requested: AtomicBool::new(false),
            watcher: Mutex::new(None),
        });
        watcher::refresh_live_brokers(&shared).await;
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        let events = tx.downgrade();
        let task = tokio::spawn(watcher::run(shared.clone(), serf_events, tx));
        *shared.watcher.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        startup_race::replay_missed_joins(&serf).await;

        let seeds: Vec<SocketAddr> = cfg
            .join
            .iter()
            .copied()
            .filter(|a| *a != cfg.gossip_listen && *a != gossip_addr)
            .collect();
        if !seeds.is_empty() {
            let joined = seeds::join_seeds(&serf, &seeds, false).await;
            tokio::spawn(seeds::keep_joined(serf, seeds, joined));
        }
        Ok(Membership { shared, events })
    }

    /// The brokers currently alive (including this process if it is one),
    /// sorted by node id. A lock-free snapshot read, cheap enough for every
    /// client connection; replaced as a whole on every membership event.
    /// After serf stops it keeps the last view.
    pub fn live_brokers(&self) -> Arc<Vec<MemberInfo>> {
        self.shared.live_brokers.load_full()
    }

    /// A stream of membership events from now on (the live set already
    /// includes everything before). The snapshot is updated *before* an event
    /// is sent. `Lagged` means events were missed: re-read
    /// [`live_brokers`](Self::live_brokers). `Closed` means membership
    /// stopped (after [`leave`](Self::leave), or serf shut itself down).
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        match self.events.upgrade() {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1, // sender dropped at once: closed
        }
    }

    /// Announces a graceful leave (peers report `left` within tens of ms),
    /// keeps answering probes briefly so the news spreads, then shuts gossip
    /// down (about 0.5–1 s in all). Safe to call more than once and from
    /// several clones; every call returns after shutdown finished.
    pub async fn leave(&self) {
        let serf = &self.shared.serf;
        if !self.shared.leave_requested.swap(true, Ordering::SeqCst) {
            tracing::info!("leaving the gossip cluster");
            if let Err(err) = serf.leave().await {
                tracing::warn!(error = %err, "graceful leave failed; peers will see this member fail");
            }
            if let Err(err) = serf.shutdown().await {
                tracing::warn!(error = %err, "gossip shutdown failed");
            }
        }
        let _ = serf.shutdown_rx().recv().await; // returns once shutdown closed it
        let task = self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Membership")
            .field("node_id", self.shared.serf.local_id())
            .field("live_brokers", &self.live_brokers().len())
            .finish()
    }
}
