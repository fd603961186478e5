//! In-memory fakes of both seams recovery runs against — the Redis state
//! ([`FakeStore`]) and the local broker ([`FakeNode`]) — writing what they
//! are asked to do, in order, to one shared [`Journal`].

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::lock::LOCK_RENEW_EVERY;
use super::store::{
    Adopted, ClientList, InboxEntry, NodeCleanup, RecoveryStore, SessionRecord, StoreResult,
    UnreadPage, UnreadStream,
};
use crate::cluster::bus::QueueTarget;
use crate::cluster::LocalNode;
use crate::message::{ClientId, Delivery, Message};
use crate::session_state::SessionOwner;
use crate::store::{QueueOutcome, StoreError};
use crate::subscription::Subscription;

/// One thing asked of a fake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    IsAlive(String),
    Heartbeat,
    Unregister(String),
    Fence(String),
    LiftFence(String),
    Adopt(String),
    DeleteSession(String),
    SendDrain { owner: String, client_id: String },
    SyncRoutes(String, Vec<String>),
    DropRoutes(String),
    ReadEntries { from: String, count: usize },
    Forget(String, NodeCleanup),
    // The local node:
    AdoptedOffline(String, Vec<(String, Subscription)>),
    ExpiresAfter(String, u64, Duration),
    WillPublished(String),
    Queued(String, String),
    Drained(String),
}

/// Every call to either fake, in order.
#[derive(Default, Clone)]
pub struct Journal(Arc<Mutex<Vec<Call>>>);

impl Journal {
    fn push(&self, call: Call) {
        lock(&self.0).push(call);
    }

    /// What was called so far.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.0).clone()
    }

    /// Where `call` first stands in the journal.
    pub fn position(&self, call: &Call) -> Option<usize> {
        self.calls().iter().position(|c| c == call)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A stored session.
#[derive(Debug, Clone, Default)]
pub struct FakeSession {
    pub owner: Option<String>,
    pub persistent: bool,
    pub connected: bool,
    pub will: Option<Message>,
    pub subscriptions: Vec<(String, Subscription)>,
    pub epoch: u64,
    /// 5.0: how long until it expires once adopted.
    pub expiry: Option<Duration>,
}

/// What the fake Redis holds.
#[derive(Default)]
pub struct FakeRedis {
    pub alive: BTreeSet<String>,
    pub nodes: BTreeSet<String>,
    pub fenced: HashMap<String, String>,
    pub locks: HashMap<String, String>,
    pub sessions: HashMap<String, FakeSession>,
    pub clients: HashMap<String, BTreeSet<String>>,
    pub routes: HashMap<String, BTreeSet<String>>,
    pub inboxes: HashMap<String, Vec<InboxEntry>>,
    /// Each node's journal stream (not the call log below).
    pub journals: HashMap<String, Vec<InboxEntry>>,
    pub broadcast: Vec<InboxEntry>,
    pub cursors: HashMap<String, String>,
    /// When the journal gets this call, another node takes every lock and
    /// the call lasts past a renewal: the lock is lost from then on.
    pub lose_lock_at: Option<Call>,
    /// What other nodes change when the journal gets a call, just before
    /// the call itself acts.
    pub meanwhile: Vec<(Call, Meanwhile)>,
}

/// A change another node makes to the fake Redis.
pub type Meanwhile = Box<dyn FnOnce(&mut FakeRedis) + Send>;

/// [`RecoveryStore`] in memory.
pub struct FakeStore {
    redis: Mutex<FakeRedis>,
    journal: Journal,
}

impl FakeStore {
    pub fn new(journal: Journal) -> FakeStore {
        FakeStore {
            redis: Mutex::new(FakeRedis::default()),
            journal,
        }
    }

    /// The fake Redis, to set up or inspect.
    pub fn redis(&self) -> MutexGuard<'_, FakeRedis> {
        lock(&self.redis)
    }

    /// Journals `call`, then makes its `change`.
    async fn act(&self, call: Call, change: impl FnOnce(&mut FakeRedis) + Send) -> StoreResult<()> {
        self.record(call).await;
        change(&mut self.redis());
        Ok(())
    }

    /// Journals `call` and applies what happens meanwhile; at the chosen
    /// call, loses the lock and waits long enough for the renewer to
    /// notice.
    async fn record(&self, call: Call) {
        let steal = {
            let mut redis = self.redis();
            if let Some(at) = redis.meanwhile.iter().position(|(c, _)| *c == call) {
                let (_, change) = redis.meanwhile.remove(at);
                change(&mut redis);
            }
            let steal = redis.lose_lock_at.as_ref() == Some(&call);
            if steal {
                redis.locks.values_mut().for_each(|t| *t = "thief".into());
            }
            steal
        };
        self.journal.push(call);
        if steal {
            tokio::time::sleep(LOCK_RENEW_EVERY + Duration::from_secs(1)).await;
        }
    }
}

/// Orders stream ids ("ms-seq") numerically; "-" is before everything.
pub fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

#[async_trait]
impl RecoveryStore for FakeStore {
    async fn try_lock(&self, node: &str, token: &str, _ttl: Duration) -> StoreResult<bool> {
        let mut redis = self.redis();
        if redis.locks.contains_key(node) {
            return Ok(false);
        }
        redis.locks.insert(node.into(), token.into());
        Ok(true)
    }

    async fn renew_lock(&self, node: &str, token: &str, _ttl: Duration) -> StoreResult<bool> {
        Ok(self.redis().locks.get(node).map(String::as_str) == Some(token))
    }

    async fn release_lock(&self, node: &str, token: &str) -> StoreResult<()> {
        let mut redis = self.redis();
        if redis.locks.get(node).map(String::as_str) == Some(token) {
            redis.locks.remove(node);
        }
        Ok(())
    }

    async fn is_alive(&self, node: &str) -> StoreResult<bool> {
        self.record(Call::IsAlive(node.into())).await;
        Ok(self.redis().alive.contains(node))
    }

    async fn heartbeat(&self) -> StoreResult<()> {
        self.act(Call::Heartbeat, |_| {}).await
    }

    async fn unregister(&self, node: &str) -> StoreResult<()> {
        let change = |r: &mut FakeRedis| {
            r.nodes.remove(node);
        };
        self.act(Call::Unregister(node.into()), change).await
    }

    async fn fence(&self, node: &str, by: &str) -> StoreResult<()> {
        let change = |r: &mut FakeRedis| {
            r.fenced.insert(node.into(), by.into());
        };
        self.act(Call::Fence(node.into()), change).await
    }

    async fn lift_fence(&self, node: &str) -> StoreResult<()> {
        let change = |r: &mut FakeRedis| {
            r.fenced.remove(node);
        };
        self.act(Call::LiftFence(node.into()), change).await
    }

    async fn sessions_of(&self, node: &str) -> StoreResult<Vec<SessionRecord>> {
        let redis = self.redis();
        let listed = redis.clients.get(node).cloned().unwrap_or_default();
        Ok(listed
            .into_iter()
            .map(|client_id| {
                let session = redis.sessions.get(&client_id).cloned().unwrap_or_default();
                SessionRecord {
                    client_id: client_id.into(),
                    owner: session.owner,
                    persistent: session.persistent,
                    connected: session.connected,
                    will: session.will,
                }
            })
            .collect())
    }

    async fn subscriptions(&self, client_id: &str) -> StoreResult<Vec<(String, Subscription)>> {
        let redis = self.redis();
        let session = redis.sessions.get(client_id);
        Ok(session.map(|s| s.subscriptions.clone()).unwrap_or_default())
    }

    async fn adopt(&self, client_id: &str, from: &str, to: &str) -> StoreResult<Option<Adopted>> {
        self.record(Call::Adopt(client_id.into())).await;
        let mut redis = self.redis();
        let Some(session) = redis.sessions.get_mut(client_id) else {
            return Ok(None);
        };
        if session.owner.as_deref() != Some(from) {
            return Ok(None);
        }
        session.owner = Some(to.into());
        session.connected = false;
        session.will = None;
        session.epoch += 1;
        let adopted = Adopted {
            epoch: session.epoch,
            expires_in: session.expiry,
        };
        redis
            .clients
            .entry(to.into())
            .or_default()
            .insert(client_id.into());
        Ok(Some(adopted))
    }

    async fn delete_session(&self, client_id: &str) -> StoreResult<()> {
        let change = |r: &mut FakeRedis| {
            r.sessions.remove(client_id);
        };
        self.act(Call::DeleteSession(client_id.into()), change)
            .await
    }

    async fn connected_owner(&self, client_id: &str) -> StoreResult<Option<String>> {
        let redis = self.redis();
        let session = redis.sessions.get(client_id).filter(|s| s.connected);
        Ok(session.and_then(|s| s.owner.clone()))
    }

    async fn send_drain(&self, owner: &str, client_id: &str) -> StoreResult<()> {
        let (owner, client_id) = (owner.into(), client_id.into());
        self.act(Call::SendDrain { owner, client_id }, |_| {}).await
    }

    async fn sync_routes(&self, node: &str, filters: &[String]) -> StoreResult<()> {
        let set = filters.iter().cloned().collect();
        let change = |r: &mut FakeRedis| {
            r.routes.insert(node.into(), set);
        };
        self.act(Call::SyncRoutes(node.into(), filters.to_vec()), change)
            .await
    }

    async fn drop_routes(&self, node: &str) -> StoreResult<()> {
        let change = |r: &mut FakeRedis| {
            r.routes.remove(node);
        };
        self.act(Call::DropRoutes(node.into()), change).await
    }

    async fn bus_cursor(&self, node: &str) -> StoreResult<Option<String>> {
        Ok(self.redis().cursors.get(node).cloned())
    }

    async fn read_entries(&self, page: &UnreadPage) -> StoreResult<Vec<InboxEntry>> {
        let (from, count) = (page.from.clone(), page.count);
        self.record(Call::ReadEntries { from, count }).await;
        let redis = self.redis();
        let entries = match &page.stream {
            UnreadStream::Inbox(node) => redis.inboxes.get(node).cloned().unwrap_or_default(),
            UnreadStream::Journal(node) => redis.journals.get(node).cloned().unwrap_or_default(),
            UnreadStream::Broadcast => redis.broadcast.clone(),
        };
        let from = id_key(&page.from);
        let unread = entries.into_iter().filter(|e| id_key(&e.id) >= from);
        Ok(unread.take(page.count).collect())
    }

    async fn forget_node(&self, node: &str, cleanup: NodeCleanup) -> StoreResult<()> {
        self.record(Call::Forget(node.into(), cleanup.clone()))
            .await;
        let mut redis = self.redis();
        match cleanup.clients {
            ClientList::Delete => {
                redis.clients.remove(node);
            }
            ClientList::Remove(ids) => {
                let listed = redis.clients.entry(node.into()).or_default();
                listed.retain(|id| !ids.iter().any(|gone| **gone == **id));
            }
        }
        redis.cursors.remove(node);
        let inbox = redis.inboxes.get_mut(node);
        if let (Some(keep_from), Some(inbox)) = (cleanup.keep_inbox_from, inbox) {
            inbox.retain(|e| id_key(&e.id) >= id_key(&keep_from));
        }
        let journal = redis.journals.get_mut(node);
        if let (Some(keep_from), Some(journal)) = (cleanup.keep_journal_from, journal) {
            journal.retain(|e| id_key(&e.id) >= id_key(&keep_from));
        }
        Ok(())
    }
}

/// [`LocalNode`] that only records: a broker with no clients connected.
pub struct FakeNode {
    journal: Journal,
    /// Filters of the sessions adopted so far (what `local_filters` gives).
    filters: Mutex<BTreeSet<String>>,
}

impl FakeNode {
    pub fn new(journal: Journal) -> FakeNode {
        FakeNode {
            journal,
            filters: Mutex::default(),
        }
    }
}

#[async_trait]
impl LocalNode for FakeNode {
    async fn release_session(&self, _client_id: &ClientId) {}

    fn drain_session(&self, client_id: &ClientId) {
        self.journal.push(Call::Drained(client_id.to_string()));
    }

    fn deliver_from_cluster(&self, _message: &Arc<Message>) -> Vec<QueueTarget> {
        Vec::new()
    }

    async fn publish_will(&self, will: Arc<Message>) {
        self.journal
            .push(Call::WillPublished(will.topic.to_string()));
    }

    async fn adopt_offline_session(
        &self,
        client_id: &ClientId,
        subscriptions: Vec<(String, Subscription)>,
    ) {
        lock(&self.filters).extend(subscriptions.iter().map(|(f, _)| f.clone()));
        let call = Call::AdoptedOffline(client_id.to_string(), subscriptions);
        self.journal.push(call);
    }

    fn expire_session_after(&self, owner: SessionOwner, after: Duration) {
        let call = Call::ExpiresAfter(owner.client_id.to_string(), owner.epoch, after);
        self.journal.push(call);
    }

    async fn fence(&self) {}

    fn local_filters(&self) -> Vec<String> {
        lock(&self.filters).iter().cloned().collect()
    }

    async fn queue_for_sessions(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError> {
        let queued = batch.len();
        for (client_id, delivery) in batch {
            let topic = delivery.message.topic.to_string();
            self.journal
                .push(Call::Queued(client_id.to_string(), topic));
        }
        Ok(QueueOutcome {
            queued,
            ..QueueOutcome::default()
        })
    }
}
