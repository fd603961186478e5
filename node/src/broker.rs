//! The state one node shares between its sessions, and the publish path.
//!
//! `Broker::publish` is where a message fans out: match the topic in the
//! subscription tree, post a delivery into the mailbox of every matching
//! connected session, and, in a cluster, forward the message once to each
//! other node that subscribes to it.
//!
//! What is kept where, and so what survives a node's death (cluster):
//! - a QoS 1/2 delivery to a **persistent** session (connected here or
//!   offline) is queued in the session's Redis queue in the same pipeline
//!   as the inter-node writes, and posted to the connected session only
//!   once queued — the publisher is acknowledged after that pipeline, so
//!   every acknowledged message is in Redis for every persistent
//!   subscriber, wherever it is;
//! - QoS 0 deliveries and deliveries to clean sessions go straight to the
//!   mailbox: they live in memory and die with the node, as a clean
//!   session does.
//!
//! On the embedded store everything is in memory; offline deliveries go to
//! the store in one batch.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::acl::AccessControl;
use crate::auth::Authenticator;
use crate::cluster::bus::{Qos2Origin, QueueTarget};
use crate::cluster::{Cluster, Durability, LocalNode, Mode};
use crate::config::Limits;
use crate::limits::sessions::{Held, SessionSlot, SessionSlots};
use crate::message::{ClientId, Delivery, Message, Qos};
use crate::registry::mailbox::Refused;
use crate::registry::SessionHandle;
use crate::registry::{Kick, Registry};
use crate::retained::{RetainOutcome, RetainRefusal};
use crate::router::shared::{self, Chosen, SharedSubscriptions};
use crate::router::SubscriptionTree;
use crate::stats::{DropReason, LimitReason, Stats};
use crate::store::{QueueOutcome, SessionOwner, Store};
use crate::subscription::{Matched, Subscription};
use astramq_shared::log_text::untrusted;

/// A publish that could not be made durable; a QoS 1/2 publisher must not
/// be acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("message not stored: {0}")]
pub struct PublishError(&'static str);

/// Everything sessions on this node share.
pub struct Broker {
    /// This node's id, for logs and assigned client ids.
    node_id: Arc<str>,
    /// Bounds applied to every connection.
    limits: Limits,
    /// Connected sessions by client id.
    registry: Registry,
    /// Subscriptions of this node's sessions (online and offline).
    router: RwLock<SubscriptionTree>,
    /// Their shared subscriptions (`$share/...`; without a cluster only).
    shared: RwLock<SharedSubscriptions>,
    /// Filters of persistent sessions this node owns while their clients
    /// are away, so they can be removed if another node claims the session.
    offline_sessions: Mutex<HashMap<ClientId, Vec<String>>>,
    /// `max-sessions`, with the slots of handshakes under way, so
    /// concurrent handshakes cannot pass the limit together.
    session_slots: SessionSlots,
    /// Sessions, retained messages and offline queues.
    store: Arc<dyn Store>,
    /// The cluster this node belongs to, if any.
    cluster: Option<Arc<Cluster>>,
    /// Counters for `$SYS` and metrics.
    stats: Stats,
    /// When the node started, for `$SYS/broker/uptime`.
    started: Instant,
    /// Source of unique connection ids and assigned client ids.
    next_id: AtomicU64,
    /// Tells QoS 2 publish ids apart across restarts of this node.
    incarnation: u64,
    /// QoS 2 publishes recently posted to clean sessions here, so a
    /// re-run of the same publish is not posted twice.
    recent_publishes: Mutex<RecentIds>,
    /// Sessions another node claimed, still subscribed here until the
    /// given time (see [`RELEASE_GRACE`]).
    released: Mutex<Vec<(tokio::time::Instant, ClientId, Vec<String>)>>,
    /// Parked sessions with a 5.0 expiry, soonest first.
    /// One entry per client id (a later park replaces it), so memory is
    /// bounded by the sessions held, not by how often clients reconnect.
    expiring: Mutex<HashMap<ClientId, (tokio::time::Instant, u64)>>,
    /// Checks each CONNECT's credentials.
    auth: Authenticator,
    /// What clients may publish and subscribe to; `None` (no `--acl-file`):
    /// everything, and nothing is checked.
    acl: Option<AccessControl>,
}

/// A delivery of `message` to the member `chosen` for its shared group.
fn shared_delivery(message: &Arc<Message>, chosen: Chosen) -> Delivery {
    let mut delivery = Matched::of(&chosen.subscription).deliver(message.clone());
    delivery.shared = Some(chosen.group);
    delivery
}

/// How long a node goes on queueing (in Redis) for a session another node
/// has claimed: other nodes may still route its messages here by a route
/// table a moment old. The new owner reads its queue again after it.
pub const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// A bounded set of recently seen publish ids (oldest forgotten first).
#[derive(Default)]
struct RecentIds {
    ids: std::collections::HashSet<Arc<str>>,
    order: std::collections::VecDeque<Arc<str>>,
}

/// Publish ids remembered per node for exactly-once posting to clean
/// sessions.
const RECENT_PUBLISHES: usize = 65_536;

/// A QoS 1 delivery to a connected persistent session is served from
/// memory, pinned to its journal or inbox entry (see [`crate::pin`]), only
/// while fewer than this many deliveries wait in the session's mailbox;
/// beyond, it is written to the session's queue. This bounds what one
/// session pins: its in-flight window, what it took from its mailbox, and
/// this many.
const PIN_WHILE_MAILBOX_BELOW: usize = 256;

impl RecentIds {
    /// Records `id`; false if it was seen already.
    fn insert(&mut self, id: &Arc<str>) -> bool {
        if !self.ids.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id.clone());
        if self.order.len() > RECENT_PUBLISHES {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        true
    }
}

/// Deliveries of one publish that must be written to Redis first.
#[derive(Default)]
pub struct Routed {
    /// QoS 1/2 deliveries to persistent sessions (cluster): queue in Redis,
    /// then post to the connected ones.
    pub queue: Vec<QueueTarget>,
    /// Deliveries for offline sessions (embedded store).
    offline: Vec<(ClientId, Delivery)>,
}

impl Broker {
    /// A broker with no sessions yet.
    ///
    /// It lets every client in until [`Broker::with_authenticator`] says
    /// otherwise.
    pub fn new(
        node_id: &str,
        limits: Limits,
        store: Arc<dyn Store>,
        cluster: Option<Arc<Cluster>>,
        stats: Stats,
    ) -> Broker {
        Broker {
            node_id: node_id.into(),
            registry: Registry::default(),
            router: RwLock::new(SubscriptionTree::default()),
            shared: RwLock::new(SharedSubscriptions::default()),
            offline_sessions: Mutex::new(HashMap::new()),
            session_slots: SessionSlots::new(limits.max_sessions),
            store,
            cluster,
            stats,
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            incarnation: crate::message::unix_millis(),
            recent_publishes: Mutex::new(RecentIds::default()),
            released: Mutex::new(Vec::new()),
            expiring: Mutex::new(HashMap::new()),
            auth: Authenticator::anonymous(),
            acl: None,
            limits,
        }
    }

    /// The same broker, checking logins with `auth`.
    pub fn with_authenticator(mut self, auth: Authenticator) -> Broker {
        self.auth = auth;
        self
    }

    /// Who may connect.
    pub fn auth(&self) -> &Authenticator {
        &self.auth
    }

    /// The same broker, authorizing with `acl`.
    pub fn with_access_control(mut self, acl: Option<AccessControl>) -> Broker {
        self.acl = acl;
        self
    }

    /// The ACL, if one is configured.
    pub fn acl(&self) -> Option<&AccessControl> {
        self.acl.as_ref()
    }

    /// A cluster-unique id for a QoS 2 publish (see `Message::publish_id`).
    pub fn new_publish_id(&self) -> Arc<str> {
        format!("{}-{}-{}", self.node_id, self.incarnation, self.unique_id()).into()
    }

    /// This node's id, for logs and assigned client ids.
    pub fn node_id(&self) -> &Arc<str> {
        &self.node_id
    }

    /// Bounds applied to every connection.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Connected sessions by client id.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Sessions, retained messages and offline queues.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The cluster this node belongs to, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Counters for `$SYS` and metrics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// When the node started, for `$SYS/broker/uptime`.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// A number never handed out before by this node.
    pub fn unique_id(&self) -> u64 {
        self.next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    fn router(&self) -> RwLockReadGuard<'_, SubscriptionTree> {
        self.router.read().unwrap_or_else(|p| p.into_inner())
    }

    fn router_mut(&self) -> RwLockWriteGuard<'_, SubscriptionTree> {
        self.router.write().unwrap_or_else(|p| p.into_inner())
    }

    fn shared(&self) -> RwLockReadGuard<'_, SharedSubscriptions> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shared_mut(&self) -> RwLockWriteGuard<'_, SharedSubscriptions> {
        self.shared.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether shared subscriptions are served: on one node, not in a
    /// cluster (see [`crate::router::shared`]).
    pub fn serves_shared_subscriptions(&self) -> bool {
        self.cluster.is_none()
    }

    fn offline_sessions(&self) -> MutexGuard<'_, HashMap<ClientId, Vec<String>>> {
        self.offline_sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds or replaces a subscription; a filter new to this node is
    /// announced to the cluster before this returns.
    pub async fn subscribe(&self, client_id: &ClientId, filter: &str, subscription: Subscription) {
        if let Ok(Some(share)) = shared::parse(filter) {
            // Only without a cluster (sessions refuse them otherwise).
            self.shared_mut()
                .subscribe(filter, &share, client_id, subscription);
            return;
        }
        let outcome = self.router_mut().subscribe(filter, client_id, subscription);
        if let (true, Some(cluster)) = (outcome.new_filter, &self.cluster) {
            cluster.route_changed(filter, true).await;
        }
    }

    /// Removes subscriptions of `client_id`; filters no longer subscribed
    /// on this node are withdrawn from the cluster.
    pub async fn unsubscribe<'a>(
        &self,
        client_id: &ClientId,
        filters: impl IntoIterator<Item = &'a str>,
    ) {
        let gone: Vec<&str> = {
            let mut router = self.router_mut();
            let mut shared = self.shared_mut();
            filters
                .into_iter()
                .filter(|f| match shared::parse(f) {
                    Ok(Some(share)) => {
                        shared.unsubscribe(f, &share, client_id);
                        false
                    }
                    _ => router.unsubscribe(f, client_id).filter_gone,
                })
                .collect()
        };
        if let Some(cluster) = &self.cluster {
            for filter in gone {
                cluster.route_changed(filter, false).await;
            }
        }
    }

    /// Sets the gauges that are read rather than tracked, just before a
    /// scrape.
    pub fn refresh_gauges(&self) {
        let sessions = self.registry.read();
        let queued: usize = sessions.values().map(|s| s.mailbox.len()).sum();
        let online = sessions.len();
        drop(sessions);
        let offline = self.offline_sessions().len();
        self.stats
            .sessions
            .with_label_values(&["online"])
            .set(online as i64);
        self.stats
            .sessions
            .with_label_values(&["offline"])
            .set(offline as i64);
        self.stats.queued_messages.set(queued as i64);
        self.stats
            .subscriptions
            .set(self.subscription_count() as i64);
    }

    /// Number of subscriptions on this node (shared ones included).
    pub fn subscription_count(&self) -> usize {
        self.router().len() + self.shared().len()
    }

    /// Every filter with a subscriber on this node.
    pub fn local_filters(&self) -> Vec<String> {
        self.router().filters()
    }

    /// Remembers a parked persistent session's filters (its subscriptions
    /// stay in the tree so its messages are queued).
    pub fn session_parked(&self, client_id: &ClientId, filters: Vec<String>) {
        self.offline_sessions().insert(client_id.clone(), filters);
    }

    /// Ends a parked session `after` its client left (5.0 Session Expiry
    /// Interval) unless it is claimed again by then, here or on another
    /// node: its state is forgotten in the store (epoch-checked, so a newer
    /// claim is never touched) and its subscriptions leave the tree. Due
    /// sessions are ended by [`Self::sweep_periodically`], within a second.
    pub fn expire_session_after(&self, owner: SessionOwner, after: Duration) {
        let Some(due) = tokio::time::Instant::now().checked_add(after) else {
            return; // Further off than the clock reaches: never.
        };
        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
        if expiring
            .get(&owner.client_id)
            .is_some_and(|(_, epoch)| *epoch > owner.epoch)
        {
            return; // A later park of the session set its own expiry.
        }
        expiring.insert(owner.client_id, (due, owner.epoch));
    }

    /// Ends the sessions whose expiry is due (one pass over the parked
    /// sessions with an expiry, once a second).
    async fn expire_due(&self) {
        let now = tokio::time::Instant::now();
        let due: Vec<SessionOwner> = {
            let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
            let mut due = Vec::new();
            expiring.retain(|client_id, (at, epoch)| {
                if *at > now {
                    return true;
                }
                due.push(SessionOwner {
                    client_id: client_id.clone(),
                    epoch: *epoch,
                });
                false
            });
            due
        };
        for owner in due {
            self.expire_session(&owner).await;
        }
    }

    async fn expire_session(&self, owner: &SessionOwner) {
        if self.registry.read().contains_key(&owner.client_id) {
            return;
        }
        // In Redis its keys expire by their TTL, usually just before this
        // runs: the discard then only takes it off this node's list.
        match self.store.discard_session(owner).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::warn!(%error, client_id = %untrusted(&owner.client_id), "expired session not discarded yet: store unavailable");
                self.expire_session_after(owner.clone(), Duration::from_secs(1));
                return;
            }
        }
        tracing::debug!(client_id = %untrusted(&owner.client_id), "session expired");
        let filters = self.offline_sessions().remove(&owner.client_id);
        if let Some(filters) = filters {
            self.unsubscribe(&owner.client_id, filters.iter().map(String::as_str))
                .await;
        }
    }

    /// False while this node cannot take clients (it is rejoining the
    /// cluster after being declared dead); they are refused with 0x03.
    pub fn accepts_clients(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.accepts_clients())
    }

    /// Reserves room under `max-sessions` for a handshake of `client_id`,
    /// or `None` when the node holds its limit: sessions connected, offline
    /// ones it keeps and handshakes under way (see
    /// [`crate::limits::sessions`]). A client id the node holds already
    /// always gets a slot. Keep the slot until the session is registered.
    pub fn reserve_session(&self, client_id: &ClientId) -> Option<SessionSlot<'_>> {
        self.session_slots.reserve(|| {
            // One lock at a time, under the reservation lock.
            let (known, connected) = {
                let registry = self.registry.read();
                (registry.contains_key(client_id), registry.len())
            };
            let (known_offline, offline) = {
                let parked = self.offline_sessions();
                (parked.contains_key(client_id), parked.len())
            };
            Held {
                known: known || known_offline,
                sessions: connected + offline,
            }
        })
    }

    /// Forgets the parked-session record (and its expiry) when the session
    /// is resumed here.
    pub fn session_resumed(&self, client_id: &ClientId) {
        self.offline_sessions().remove(client_id);
        let mut expiring = self.expiring.lock().unwrap_or_else(|p| p.into_inner());
        expiring.remove(client_id);
    }

    /// Takes over an offline persistent session of a dead node.
    pub async fn adopt_offline_session(
        &self,
        client_id: &ClientId,
        subscriptions: Vec<(String, Subscription)>,
    ) {
        for (filter, subscription) in &subscriptions {
            self.subscribe(client_id, filter, *subscription).await;
        }
        let filters = subscriptions.into_iter().map(|(f, _)| f).collect();
        self.session_parked(client_id, filters);
    }

    /// Another node claims `client_id`: end its connection here, or drop
    /// the subscriptions of its parked session.
    pub async fn release_session(&self, client_id: &ClientId) {
        if let Some(session) = self.registry.read().get(client_id) {
            session.kick(Kick::Released);
            return;
        }
        let parked = self.offline_sessions().remove(client_id);
        if let Some(filters) = parked {
            self.session_released(client_id, filters);
        }
    }

    /// A session another node claimed: its subscriptions stay here for
    /// [`RELEASE_GRACE`] (what still arrives is queued in Redis for it),
    /// then are dropped unless the client came back to this node.
    pub fn session_released(&self, client_id: &ClientId, filters: Vec<String>) {
        let until = tokio::time::Instant::now() + RELEASE_GRACE;
        let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
        released.push((until, client_id.clone(), filters));
    }

    /// Drops the subscriptions of released sessions whose grace is over.
    pub async fn forget_released(&self) {
        let now = tokio::time::Instant::now();
        let due: Vec<(ClientId, Vec<String>)> = {
            let mut released = self.released.lock().unwrap_or_else(|p| p.into_inner());
            let (due, kept) = std::mem::take(&mut *released)
                .into_iter()
                .partition(|(until, _, _)| *until <= now);
            *released = kept;
            due.into_iter().map(|(_, c, f)| (c, f)).collect()
        };
        for (client_id, filters) in due {
            let back = self.registry.read().contains_key(&client_id)
                || self.offline_sessions().contains_key(&client_id);
            if !back {
                self.unsubscribe(&client_id, filters.iter().map(String::as_str))
                    .await;
            }
        }
    }

    /// Every second until the node stops: forgets released sessions whose
    /// grace is over ([`Self::forget_released`]) and ends expired ones
    /// ([`Self::expire_session_after`]).
    pub async fn sweep_periodically(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            ticker.tick().await;
            self.forget_released().await;
            self.expire_due().await;
        }
    }

    /// This node was declared dead while it was cut off (frozen,
    /// partitioned) and a survivor owns its sessions now: end every
    /// connection without writing anything, and forget every session, so
    /// clients reconnect and resume from Redis.
    pub async fn fence(&self) {
        for handle in self.registry.handles() {
            handle.kick(Kick::Fenced);
        }
        let parked: Vec<(ClientId, Vec<String>)> = self.offline_sessions().drain().collect();
        for (client_id, filters) in parked {
            self.unsubscribe(&client_id, filters.iter().map(String::as_str))
                .await;
        }
    }

    /// Messages were queued in the store for `client_id`, connected here:
    /// tell its session to take them.
    pub fn drain_session(&self, client_id: &ClientId) {
        if let Some(session) = self.registry.read().get(client_id) {
            session.mailbox.request_drain();
        }
    }

    /// Stores (if retained) and delivers a message published by a client of
    /// this node, locally and to the other nodes. Returns an error if a
    /// write it needs failed, and otherwise when the message will be safe
    /// in Redis: a QoS 1/2 publisher is acknowledged only then. `origin`
    /// names a persistent publisher's QoS 2 packet, recorded in the same
    /// pipeline (exactly once across a node's death).
    pub async fn publish(
        &self,
        message: Arc<Message>,
        origin: Option<Qos2Origin>,
    ) -> Result<Durability, PublishError> {
        if message.retain {
            self.retain(&message).await?;
        }
        let routed = self.route(&message);
        match &self.cluster {
            Some(cluster) => Ok(cluster.forward(&message, routed.queue, origin).await),
            None => {
                if !routed.offline.is_empty() {
                    self.queue_offline(routed.offline).await?;
                }
                Ok(Durability::Done)
            }
        }
    }

    /// Stores a retained message within the retained limits; a message
    /// over them is not stored (and counted) but still delivered.
    async fn retain(&self, message: &Arc<Message>) -> Result<(), PublishError> {
        if message.payload.len() > self.limits.max_retained_payload {
            self.stats.limit_refused(LimitReason::RetainedPayload);
            return Ok(());
        }
        match self.store.set_retained(message.clone()).await {
            Ok(RetainOutcome::Refused(why)) => {
                tracing::debug!(topic = %untrusted(&message.topic), ?why, "retained message not stored: limit");
                self.stats.limit_refused(match why {
                    RetainRefusal::Messages => LimitReason::RetainedMessages,
                    RetainRefusal::Bytes => LimitReason::RetainedBytes,
                });
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(error) => {
                tracing::warn!(%error, topic = %untrusted(&message.topic), "retained message not stored");
                Err(PublishError("retained store unavailable"))
            }
        }
    }

    /// [`Self::publish`], waiting until the message is safe (wills,
    /// statistics, recovery: nobody waits for an acknowledgement).
    pub async fn publish_and_wait(&self, message: Arc<Message>) -> Result<(), PublishError> {
        match self.publish(message, None).await?.wait().await {
            true => Ok(()),
            false => Err(PublishError("inter-node stream unavailable")),
        }
    }

    /// Posts deliveries that live in memory; returns those that must be
    /// written first (cluster: QoS 1/2 to persistent sessions; embedded
    /// store: offline sessions).
    fn route(&self, message: &Arc<Message>) -> Routed {
        let mut routed = Routed::default();
        let matches = self
            .router()
            .matches(&message.topic, message.publisher.as_ref());
        let sessions = self.registry.read();
        // Empty (no allocation) unless this node has shared subscriptions.
        let shared = self.choose_shared(message, &sessions, None);
        if matches.is_empty() && shared.is_empty() {
            self.stats.dropped(DropReason::NoSubscribers, 1);
            return routed;
        }
        let clustered = self.cluster.is_some();
        let pins = self
            .cluster
            .as_ref()
            .is_some_and(|c| c.mode == Mode::Routed)
            && message.publish_id.is_none();
        // A re-run of a QoS 2 publish (its first run was cut off by a node's
        // death) is posted to clean sessions only if they did not get it.
        let post_volatile = match &message.publish_id {
            Some(id) => self
                .recent_publishes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(id),
            None => true,
        };
        let targets = matches
            .into_iter()
            .map(|(client_id, matched)| (client_id, matched.deliver(message.clone())))
            .chain(shared);
        for (client_id, delivery) in targets {
            let session = sessions.get(&client_id);
            let durable = clustered
                && delivery.qos != Qos::AtMostOnce
                && session.is_none_or(|s| s.persistent);
            if durable {
                // Served from memory, held by its journal or inbox entry:
                // QoS 1 to a connected session that keeps up (a slow one's
                // deliveries go to its queue, so its pins stay few).
                let pinnable = pins
                    && delivery.qos == Qos::AtLeastOnce
                    && session.is_some_and(|s| s.mailbox.len() < PIN_WHILE_MAILBOX_BELOW);
                routed.queue.push(QueueTarget {
                    client_id,
                    delivery,
                    mailbox: session.map(|s| s.mailbox.clone()),
                    pinnable,
                });
                continue;
            }
            let Some(session) = session else {
                if clustered {
                    self.stats.dropped(DropReason::Qos0Offline, 1);
                } else {
                    routed.offline.push((client_id, delivery));
                }
                continue;
            };
            if !post_volatile {
                continue;
            }
            match session.mailbox.post(
                delivery,
                self.limits.max_queued_messages,
                self.limits.max_queued_bytes_per_session,
            ) {
                Ok(()) => {}
                Err(Refused::Full) => self.stats.dropped(DropReason::QueueFull, 1),
                Err(Refused::FullBytes) => {
                    self.stats.dropped(DropReason::QueueFull, 1);
                    self.stats.limit_refused(LimitReason::QueuedBytes);
                }
                Err(Refused::Closed(delivery)) if !clustered => {
                    routed.offline.push((client_id, delivery))
                }
                Err(Refused::Closed(_)) => {}
            }
        }
        routed
    }

    /// One delivery per shared group matching `message`, to the member the
    /// strategy picks (connected members first), never `except`.
    fn choose_shared(
        &self,
        message: &Arc<Message>,
        sessions: &HashMap<ClientId, SessionHandle>,
        except: Option<&ClientId>,
    ) -> Vec<(ClientId, Delivery)> {
        let shared = self.shared();
        if shared.is_empty() {
            return Vec::new();
        }
        let connected = |c: &ClientId| sessions.contains_key(c);
        shared
            .choose(
                &message.topic,
                self.limits.shared_strategy,
                connected,
                except,
            )
            .into_iter()
            .map(|chosen| (chosen.client_id.clone(), shared_delivery(message, chosen)))
            .collect()
    }

    /// A member of shared groups leaves with deliveries it has not
    /// acknowledged: each goes to another member of its group (5.0
    /// §4.8.2). Returns those no other member could take (the group has no
    /// other member): the leaving session keeps them.
    pub async fn hand_back_shared(
        &self,
        from: &ClientId,
        deliveries: Vec<Delivery>,
    ) -> Vec<Delivery> {
        let mut kept = Vec::new();
        let mut offline = Vec::new();
        {
            let sessions = self.registry.read();
            let shared = self.shared();
            let connected = |c: &ClientId| c != from && sessions.contains_key(c);
            let strategy = self.limits.shared_strategy;
            for delivery in deliveries {
                let Some(group) = delivery.shared.clone() else {
                    kept.push(delivery);
                    continue;
                };
                let Some(chosen) = shared.choose_in(&group, strategy, &connected, Some(from))
                else {
                    kept.push(delivery);
                    continue;
                };
                let delivery = shared_delivery(&delivery.message, chosen.clone());
                let posted = match sessions.get(&chosen.client_id) {
                    Some(session) => session.mailbox.post(
                        delivery,
                        self.limits.max_queued_messages,
                        self.limits.max_queued_bytes_per_session,
                    ),
                    None => Err(Refused::Closed(delivery)),
                };
                match posted {
                    Ok(()) => {}
                    Err(Refused::Closed(delivery)) => offline.push((chosen.client_id, delivery)),
                    Err(_) => self.stats.dropped(DropReason::QueueFull, 1),
                }
            }
        }
        if !offline.is_empty() {
            let _ = self.queue_offline(offline).await;
        }
        kept
    }

    /// Queues deliveries for offline sessions, counting what is dropped.
    pub async fn queue_offline(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<(), PublishError> {
        let count = batch.len() as u64;
        match self.store.enqueue_offline(batch).await {
            Ok(outcome) => {
                self.count_dropped(&outcome);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%error, count, "offline deliveries dropped: store unavailable");
                self.stats.dropped(DropReason::QueueFull, count);
                Err(PublishError("offline queue unavailable"))
            }
        }
    }

    /// Counts what a store refused to queue: a full queue (by either bound;
    /// the byte bound is also a `queued_bytes` limit refusal) or QoS 0.
    fn count_dropped(&self, outcome: &QueueOutcome) {
        let full = outcome.dropped_queue_full + outcome.dropped_queue_bytes;
        self.stats.dropped(DropReason::QueueFull, full as u64);
        self.stats
            .limit_refused_by(LimitReason::QueuedBytes, outcome.dropped_queue_bytes as u64);
        self.stats
            .dropped(DropReason::Qos0Offline, outcome.dropped_qos0 as u64);
    }
}

#[async_trait::async_trait]
impl LocalNode for Broker {
    async fn release_session(&self, client_id: &ClientId) {
        Broker::release_session(self, client_id).await
    }

    fn drain_session(&self, client_id: &ClientId) {
        Broker::drain_session(self, client_id)
    }

    fn deliver_from_cluster(&self, message: &Arc<Message>) -> Vec<QueueTarget> {
        self.route(message).queue
    }

    async fn publish_will(&self, will: Arc<Message>) {
        if let Err(error) = self.publish_and_wait(will).await {
            tracing::warn!(%error, "will of a dead node's client not published");
        }
    }

    async fn adopt_offline_session(
        &self,
        client_id: &ClientId,
        subscriptions: Vec<(String, Subscription)>,
    ) {
        Broker::adopt_offline_session(self, client_id, subscriptions).await
    }

    fn expire_session_after(&self, owner: SessionOwner, after: Duration) {
        Broker::expire_session_after(self, owner, after)
    }

    async fn fence(&self) {
        Broker::fence(self).await
    }

    fn local_filters(&self) -> Vec<String> {
        Broker::local_filters(self)
    }

    async fn queue_for_sessions(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, crate::store::StoreError> {
        let outcome = self.store.enqueue_offline(batch).await?;
        self.count_dropped(&outcome);
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::sync::{watch, Notify};

    use super::*;
    use crate::limits::queue::QueueBound;
    use crate::registry::mailbox::Mailbox;
    use crate::registry::SessionHandle;
    use crate::store::memory::MemoryStore;
    use crate::store::ClaimRequest;

    fn broker() -> Broker {
        let store = Arc::new(MemoryStore::new(QueueBound::messages(10)));
        Broker::new("n1", Limits::default(), store, None, Stats::default())
    }

    fn connect(broker: &Broker, client_id: &str, persistent: bool) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox::default());
        let handle = SessionHandle {
            connection_id: broker.unique_id(),
            mailbox: mailbox.clone(),
            kick: Arc::new(Notify::new()),
            kick_reason: Arc::default(),
            finished: watch::channel(false).1,
            persistent,
        };
        let registered = broker.registry().register(&client_id.into(), handle);
        assert!(registered.is_ok());
        mailbox
    }

    fn message(topic: &str, qos: Qos) -> Arc<Message> {
        Arc::new(Message::new(topic, Bytes::from_static(b"p"), qos, false))
    }

    #[tokio::test]
    async fn a_publish_reaches_each_matching_connected_session_once_at_the_granted_qos() {
        let broker = broker();
        let a = connect(&broker, "a", false);
        let b = connect(&broker, "b", true);
        broker
            .subscribe(&"a".into(), "t/+", Subscription::at(Qos::AtMostOnce))
            .await;
        broker
            .subscribe(&"b".into(), "t/#", Subscription::at(Qos::ExactlyOnce))
            .await;
        broker
            .subscribe(&"b".into(), "t/x", Subscription::at(Qos::AtLeastOnce))
            .await;
        let durability = broker.publish(message("t/x", Qos::ExactlyOnce), None).await;
        assert!(matches!(durability, Ok(Durability::Done)));
        let to_a: Vec<Qos> = a.take_all().into_iter().map(|d| d.qos).collect();
        let to_b: Vec<Qos> = b.take_all().into_iter().map(|d| d.qos).collect();
        assert_eq!(to_a, vec![Qos::AtMostOnce]);
        assert_eq!(
            to_b,
            vec![Qos::ExactlyOnce],
            "overlapping filters: one copy, best QoS"
        );
    }

    #[tokio::test]
    async fn an_offline_persistent_session_gets_its_messages_from_the_store() {
        let broker = broker();
        let request = ClaimRequest {
            client_id: "p".into(),
            clean_start: false,
            persistent: true,
            expiry: None,
            will: None,
        };
        let claim = broker.store().claim_session(&request).await.unwrap();
        broker
            .subscribe(&"p".into(), "t", Subscription::at(Qos::AtLeastOnce))
            .await;
        broker.session_parked(&"p".into(), vec!["t".into()]);
        broker
            .store()
            .park_session(&claim.owner, Default::default())
            .await
            .unwrap();
        broker
            .publish(message("t", Qos::AtLeastOnce), None)
            .await
            .unwrap();
        broker
            .publish(message("t", Qos::AtMostOnce), None)
            .await
            .unwrap();
        let resumed = broker.store().claim_session(&request).await.unwrap();
        let pending = resumed.previous.map(|s| s.pending.len());
        assert_eq!(pending, Some(1), "QoS 1 queued, QoS 0 not kept offline");
    }

    #[tokio::test]
    async fn a_release_from_another_node_forgets_a_parked_session() {
        let broker = broker();
        broker
            .subscribe(&"p".into(), "t", Subscription::at(Qos::AtLeastOnce))
            .await;
        broker.session_parked(&"p".into(), vec!["t".into()]);
        assert_eq!(broker.subscription_count(), 1);
        broker.release_session(&"p".into()).await;
        assert_eq!(broker.subscription_count(), 1, "kept through the grace");
        broker.forget_released().await;
        assert_eq!(broker.subscription_count(), 1);
        tokio::time::pause();
        tokio::time::advance(RELEASE_GRACE).await;
        broker.forget_released().await;
        assert_eq!(broker.subscription_count(), 0);
    }

    #[tokio::test]
    async fn fencing_kicks_every_session_and_forgets_parked_ones() {
        let broker = broker();
        let _mailbox = connect(&broker, "c", true);
        broker
            .subscribe(&"p".into(), "t", Subscription::at(Qos::AtLeastOnce))
            .await;
        broker.session_parked(&"p".into(), vec!["t".into()]);
        broker.fence().await;
        assert_eq!(broker.subscription_count(), 0);
        let handles = broker.registry().handles();
        assert_eq!(handles.len(), 1);
        assert_eq!(handles[0].kick_reason(), Kick::Fenced);
    }

    #[test]
    fn publish_ids_are_unique_and_recent_ones_are_remembered_boundedly() {
        let broker = broker();
        let (a, b) = (broker.new_publish_id(), broker.new_publish_id());
        assert_ne!(a, b);
        let mut recent = RecentIds::default();
        assert!(recent.insert(&a));
        assert!(!recent.insert(&a));
        for i in 0..RECENT_PUBLISHES {
            recent.insert(&Arc::from(i.to_string()));
        }
        assert!(recent.insert(&a), "the oldest id was forgotten");
        assert!(recent.ids.len() <= RECENT_PUBLISHES);
    }
}
