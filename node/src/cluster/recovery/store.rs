//! What recovery needs of Redis — the whole seam between the recovery
//! logic and the Redis data model.
//!
//! Every method is one step of a recovery or a rejoin, named after what it
//! does to the cluster's state, with plain values in and out: the logic in
//! [`super`] decides, an implementation only reads and writes. The Redis
//! one ([`super::redis::RedisRecoveryStore`]) keeps every key, script and
//! record encoding in [`crate::redis_model`]; tests use an in-memory fake.
//!
//! What an implementation must guarantee, because the logic relies on it:
//! - the lock calls are atomic compare-and-set on one value per node (a
//!   lock is taken only when free, renewed and released only with the
//!   token it was taken with);
//! - [`RecoveryStore::adopt`] changes the owner only if `from` still owns
//!   the session, in one step;
//! - [`RecoveryStore::read_entries`] returns entries in id order, from
//!   the page's `from` inclusive, at most `count` of them; an entry that
//!   carries no messages (a control entry, an unreadable batch) is still
//!   returned, so paging and trimming account for it.
//!
//! Nothing here is retried: an error ends the recovery, which the liveness
//! task starts again on its next check.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::message::{ClientId, Message};
use crate::redis_model::value::UnexpectedReply;
use crate::subscription::Subscription;

/// A dead node's session, now this node's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Adopted {
    /// The session's epoch under its new owner.
    pub epoch: u64,
    /// 5.0: how long until the session expires (its client left at the
    /// latest when its node died); `None`: never.
    pub expires_in: Option<Duration>,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryStoreError {
    /// Redis failed or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// A stored record could not be read.
    #[error(transparent)]
    Reply(#[from] UnexpectedReply),
}

/// Shorthand for the store's results.
pub type StoreResult<T> = Result<T, RecoveryStoreError>;

/// One session listed as a node's, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    /// Its client id.
    pub client_id: ClientId,
    /// The node that owns it now; `None` when the session is gone.
    pub owner: Option<String>,
    /// False for a clean session.
    pub persistent: bool,
    /// True while its client was connected (it did not disconnect
    /// cleanly, if its owner is dead).
    pub connected: bool,
    /// The will stored with it; `None` when there is none or it cannot be
    /// decoded.
    pub will: Option<Message>,
}

/// The stream a dead node's unread publishes are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnreadStream {
    /// Routed mode: the node's own inbox, read from its start.
    Inbox(String),
    /// Routed mode: the node's journal (QoS 1 publishes it served from
    /// memory), read from its start.
    Journal(String),
    /// Broadcast mode: the shared stream, read past the node's cursor.
    Broadcast,
}

/// One page of a dead node's unread entries to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadPage {
    /// The stream they are in.
    pub stream: UnreadStream,
    /// The first id to read (inclusive; "-" is the start).
    pub from: String,
    /// How many entries at most.
    pub count: usize,
}

/// One stream entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    /// The entry id (`ms-seq`).
    pub id: String,
    /// The publishes it carries; empty for a control entry or a batch
    /// that cannot be decoded.
    pub messages: Vec<Arc<Message>>,
}

/// What a finished recovery does to the client list of the node it took
/// over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientList {
    /// Deletes it: the node is dead, its sessions were handed on.
    Delete,
    /// Removes these ids, the sessions that are no longer the node's (it
    /// is this node, rejoining: the sessions it kept stay listed, so a
    /// survivor of its next death finds them).
    Remove(Vec<ClientId>),
}

/// What a finished recovery removes of the node it took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCleanup {
    /// What becomes of its client list.
    pub clients: ClientList,
    /// Its inbox is trimmed of every entry before this id (trimmed, not
    /// deleted: a restarting node may append already); `None` trims
    /// nothing.
    pub keep_inbox_from: Option<String>,
    /// Its journal likewise.
    pub keep_journal_from: Option<String>,
}

/// The Redis operations of recovery and rejoin.
#[async_trait]
pub trait RecoveryStore: Send + Sync + 'static {
    /// Takes `node`'s recovery lock with `token` for `ttl`; false when it
    /// is held already.
    async fn try_lock(&self, node: &str, token: &str, ttl: Duration) -> StoreResult<bool>;

    /// Extends the lock by `ttl`; false when it is not held with `token`
    /// anymore (it expired, or another node took it).
    async fn renew_lock(&self, node: &str, token: &str, ttl: Duration) -> StoreResult<bool>;

    /// Deletes the lock if it is still held with `token`.
    async fn release_lock(&self, node: &str, token: &str) -> StoreResult<()>;

    /// True while `node`'s heartbeat is present.
    async fn is_alive(&self, node: &str) -> StoreResult<bool>;

    /// Writes this node's heartbeat and registers it in the node set.
    async fn heartbeat(&self) -> StoreResult<()>;

    /// Removes `node` from the set of registered nodes.
    async fn unregister(&self, node: &str) -> StoreResult<()>;

    /// Fences `node` (declared dead by `by`): its inbox refuses appends
    /// and its heartbeat is refused.
    async fn fence(&self, node: &str, by: &str) -> StoreResult<()>;

    /// Lifts `node`'s fence (it is rejoining).
    async fn lift_fence(&self, node: &str) -> StoreResult<()>;

    /// The sessions listed as `node`'s, with their stored state.
    async fn sessions_of(&self, node: &str) -> StoreResult<Vec<SessionRecord>>;

    /// A persistent session's subscriptions; an unreadable QoS reads as 0.
    async fn subscriptions(&self, client_id: &str) -> StoreResult<Vec<(String, Subscription)>>;

    /// Makes `to` the owner of `client_id`'s offline session (new epoch,
    /// listed as `to`'s) if `from` still owns it; `None` when it does not.
    async fn adopt(&self, client_id: &str, from: &str, to: &str) -> StoreResult<Option<Adopted>>;

    /// Deletes a session and all it holds.
    async fn delete_session(&self, client_id: &str) -> StoreResult<()>;

    /// The owner of `client_id` if its client is connected now.
    async fn connected_owner(&self, client_id: &str) -> StoreResult<Option<String>>;

    /// Asks `owner` (another node) to read `client_id`'s queue.
    async fn send_drain(&self, owner: &str, client_id: &str) -> StoreResult<()>;

    /// Brings `node`'s route set to `filters`, one change at a time, so a
    /// filter in both the old and the new set never leaves it.
    async fn sync_routes(&self, node: &str, filters: &[String]) -> StoreResult<()>;

    /// Deletes `node`'s route set and tells every node to reload.
    async fn drop_routes(&self, node: &str) -> StoreResult<()>;

    /// The last broadcast entry `node` had handled, if it recorded one.
    async fn bus_cursor(&self, node: &str) -> StoreResult<Option<String>>;

    /// The entries of `page`.
    async fn read_entries(&self, page: &UnreadPage) -> StoreResult<Vec<InboxEntry>>;

    /// Ends a recovery of `node`: deletes its broadcast cursor, and its
    /// client list and inbox as `cleanup` says.
    async fn forget_node(&self, node: &str, cleanup: NodeCleanup) -> StoreResult<()>;
}
