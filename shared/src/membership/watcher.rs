//! The task that turns serf's event stream into ours: it refreshes the
//! live-broker snapshot, logs each event, fans it out to subscribers, and
//! notices when serf stops.
//!
//! It owns the only strong `broadcast::Sender`, so when it ends (serf shut
//! down, after `leave()` or on its own) every subscriber's `recv()` returns
//! `Closed`. That is how a broker or proxy learns that its membership view
//! is no longer maintained.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
};

use serf::{
    event::{Event, EventSubscriber, MemberEvent as SerfMemberEvent},
    types::{MemberStatus, SmolStr},
};
use tokio::sync::broadcast;

use super::{
    handle::{GossipTransport, Shared},
    MemberEvent, MemberInfo, Role,
};

/// Serf's event stream for our transport and delegate types.
pub(crate) type SerfEvents =
    EventSubscriber<GossipTransport, serf::DefaultDelegate<GossipTransport>>;

/// Consumes serf events until serf shuts down; see the module docs.
pub(crate) async fn run(
    shared: Arc<Shared>,
    serf_events: SerfEvents,
    tx: broadcast::Sender<MemberEvent>,
) {
    let shutdown = shared.serf.shutdown_rx();
    loop {
        tokio::select! {
            biased;
            event = serf_events.recv() => match event {
                Ok(Event::Member(event)) => publish(&shared, &tx, &event).await,
                Ok(_) => {} // user events and queries: not used by AstraMQ
                Err(_) => break,
            },
            _ = shutdown.recv() => break,
        }
    }
    // Deliver what serf queued before it stopped (our own `left`, typically).
    while let Ok(event) = serf_events.try_recv() {
        if let Event::Member(event) = event {
            publish(&shared, &tx, &event).await;
        }
    }
    if shared.leave_requested.load(Ordering::SeqCst) {
        tracing::info!("membership stopped after leaving the cluster");
    } else {
        tracing::error!(
            node_id = %shared.serf.local_id(),
            "gossip membership SHUT ITSELF DOWN: this process is no longer in the cluster \
             and its member list is frozen (most likely another live member uses the same \
             node id); subscribers will see the event channel close"
        );
    }
}

/// Handles one serf event: snapshot first (so a subscriber reacting to the
/// event already sees the new live set), then log, then fan out.
async fn publish(
    shared: &Shared,
    tx: &broadcast::Sender<MemberEvent>,
    event: &SerfMemberEvent<SmolStr, SocketAddr>,
) {
    refresh_live_brokers(shared).await;
    for member in event.members() {
        match MemberInfo::from_serf(member) {
            Ok(info) => {
                let event = MemberEvent::from_serf(event.ty(), info);
                event.log();
                // An error only means nobody subscribes right now.
                let _ = tx.send(event);
            }
            Err(err) => tracing::warn!(
                member = %member.node().id(),
                kind = %event.ty(),
                error = %err,
                "ignoring membership event for a member with unreadable tags"
            ),
        }
    }
}

/// Recomputes the live-broker snapshot from serf's member table, which serf
/// updates before it emits the event. Deriving it (instead of patching a
/// copy per event) means it can never drift from serf's view.
pub(crate) async fn refresh_live_brokers(shared: &Shared) {
    let mut brokers: Vec<MemberInfo> = shared
        .serf
        .members()
        .await
        .iter()
        .filter(|m| *m.status() == MemberStatus::Alive)
        .filter_map(|m| MemberInfo::from_serf(m).ok())
        .filter(|m| m.role == Role::Broker)
        .collect();
    brokers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    shared.live_brokers.store(Arc::new(brokers));
}
