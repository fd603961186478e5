//! Recovery and rejoin against the in-memory fakes: what is adopted,
//! queued, fenced, dropped and trimmed, and in which order. The harness
//! is here; [`dead_node`] recovers another node, [`lock_and_rejoin`]
//! covers this node's own rejoin and a lost lock.

mod dead_node;
mod lock_and_rejoin;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::IntCounter;

use super::fake::{Call, FakeNode, FakeRedis, FakeSession, FakeStore, Journal};
use super::store::{ClientList, InboxEntry, NodeCleanup};
use super::unread::DRAIN_PAGE;
use super::{Recovery, RecoveryCounters, RecoveryError};
use crate::cluster::Mode;
use crate::message::{Message, Qos};
use crate::subscription::Subscription;

const ME: &str = "n1";
const DEAD: &str = "n2";

struct Harness {
    journal: Journal,
    store: Arc<FakeStore>,
    counters: RecoveryCounters,
    recovery: Recovery,
}

fn harness(mode: Mode) -> Harness {
    let journal = Journal::default();
    let store = Arc::new(FakeStore::new(journal.clone()));
    let node = Arc::new(FakeNode::new(journal.clone()));
    let counters = counters();
    let recovery = Recovery::new(ME.into(), mode, counters.clone(), store.clone(), node);
    store
        .redis()
        .nodes
        .extend([ME.to_string(), DEAD.to_string()]);
    Harness {
        journal,
        store,
        counters,
        recovery,
    }
}

fn counters() -> RecoveryCounters {
    RecoveryCounters {
        recoveries: IntCounter::new("recoveries", "test").expect("valid counter"),
        redeliveries: IntCounter::new("redeliveries", "test").expect("valid counter"),
    }
}

impl Harness {
    /// Another node's recovery, on the same Redis and journal.
    fn survivor(&self, me: &str) -> Recovery {
        let node = Arc::new(FakeNode::new(self.journal.clone()));
        let store = self.store.clone();
        Recovery::new(me.into(), Mode::Routed, counters(), store, node)
    }

    /// Stores `session` as `client_id`'s, listed in `listed_by`'s clients.
    fn session(&self, listed_by: &str, client_id: &str, session: FakeSession) {
        let mut redis = self.store.redis();
        redis.sessions.insert(client_id.into(), session);
        let clients = redis.clients.entry(listed_by.into()).or_default();
        clients.insert(client_id.into());
    }

    fn inbox(&self, node: &str, entries: Vec<InboxEntry>) {
        self.store.redis().inboxes.insert(node.into(), entries);
    }

    fn journal_stream(&self, node: &str, entries: Vec<InboxEntry>) {
        self.store.redis().journals.insert(node.into(), entries);
    }

    fn owner(&self, client_id: &str) -> Option<String> {
        let redis = self.store.redis();
        redis.sessions.get(client_id).and_then(|s| s.owner.clone())
    }

    fn has(&self, call: &Call) -> bool {
        self.journal.position(call).is_some()
    }

    /// Where `call` stands in the journal (fails the test if absent).
    fn at(&self, call: Call) -> usize {
        let position = self.journal.position(&call);
        position.unwrap_or_else(|| panic!("{call:?} not in {:?}", self.journal.calls()))
    }

    fn queued(&self) -> Vec<(String, String)> {
        let calls = self.journal.calls().into_iter();
        calls
            .filter_map(|call| match call {
                Call::Queued(client_id, topic) => Some((client_id, topic)),
                _ => None,
            })
            .collect()
    }
}

fn persistent(owner: &str, filters: &[&str]) -> FakeSession {
    FakeSession {
        owner: Some(owner.into()),
        persistent: true,
        subscriptions: filters
            .iter()
            .map(|f| (f.to_string(), Subscription::at(Qos::AtLeastOnce)))
            .collect(),
        ..FakeSession::default()
    }
}

fn connected(mut session: FakeSession) -> FakeSession {
    session.connected = true;
    session
}

fn with_will(mut session: FakeSession, topic: &str) -> FakeSession {
    session.will = Some(message(topic));
    session
}

fn message(topic: &str) -> Message {
    Message::new(topic, Bytes::from_static(b"x"), Qos::AtLeastOnce, false)
}

fn entry(id: &str, topics: &[&str]) -> InboxEntry {
    InboxEntry {
        id: id.into(),
        messages: topics.iter().map(|t| Arc::new(message(t))).collect(),
    }
}

fn pair(client_id: &str, topic: &str) -> (String, String) {
    (client_id.into(), topic.into())
}

/// The end of a recovery of [`DEAD`]: its client list deleted, its inbox
/// trimmed before `keep_from`.
fn forget_dead(keep_from: Option<&str>) -> Call {
    let cleanup = NodeCleanup {
        clients: ClientList::Delete,
        keep_inbox_from: keep_from.map(Into::into),
        keep_journal_from: None,
    };
    Call::Forget(DEAD.into(), cleanup)
}
