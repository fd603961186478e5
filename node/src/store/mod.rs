//! Where sessions, retained messages and offline queues live.
//!
//! The broker talks to a [`Store`] and never to a backend directly. Two
//! backends fit behind it: [`memory::MemoryStore`], embedded, for a single
//! node (the default), and a Redis store, shared by a cluster, so a client
//! can resume its session on any node.
//!
//! Guarantees every backend gives:
//! - **Ownership is explicit.** [`Store::claim_session`] makes this node the
//!   owner of a client id and returns a [`SessionOwner`] with a fencing
//!   epoch; parking or discarding with a stale epoch is a no-op, so an old
//!   owner that lost a takeover race can never overwrite the new owner's
//!   state.
//! - **Batched calls.** Offline deliveries arrive as one batch per publish,
//!   so a networked backend sends one pipeline, not a round trip per
//!   message.
//! - **Order.** Messages queued for an offline session come back from
//!   [`Store::claim_session`] in the order they were queued, after the
//!   deliveries the session itself parked.
//!
//! What the memory backend does not give: durability across a restart of
//! the node.

pub mod memory;
pub mod redis;

use std::sync::Arc;

use async_trait::async_trait;

use crate::message::{ClientId, Delivery, Message};
use crate::retained::RetainOutcome;
pub use crate::session_state::SessionOwner;
use crate::session_state::{Progress, SessionState};
use crate::subscription::Subscription;

/// What a connecting client asks of the store.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The session's client id.
    pub client_id: ClientId,
    /// Start fresh: whatever state the session had is dropped (3.1.1:
    /// clean session; 5.0: clean start).
    pub clean_start: bool,
    /// Keep the session when the connection ends (3.1.1: clean session 0;
    /// 5.0: a session expiry interval above 0).
    pub persistent: bool,
    /// 5.0: the Session Expiry Interval in seconds, kept with the session
    /// so a survivor of this node's death can expire it; `None`: never
    /// expires (3.1.1, or 0xFFFFFFFF).
    pub expiry: Option<u32>,
    /// Kept with the session so that, if this node dies, a survivor can
    /// publish it.
    pub will: Option<Arc<Message>>,
}

/// The result of claiming a session.
#[derive(Debug)]
pub struct SessionClaim {
    /// The ownership token for later writes.
    pub owner: SessionOwner,
    /// The state the previous connection left, if a persistent session
    /// existed. Returned even for a clean session, so the broker can undo
    /// its subscriptions; it is resumed only when clean session is false
    /// (and then drives CONNACK's session-present).
    pub previous: Option<SessionState>,
}

/// What happened to a batch of offline deliveries.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Queued for a later resume.
    pub queued: usize,
    /// Refused because the session's queue held its number of messages.
    pub dropped_queue_full: usize,
    /// Refused because the session's queue would have held more than its
    /// bytes (`max-queued-bytes-per-session`).
    pub dropped_queue_bytes: usize,
    /// Not queued: QoS 0 messages are not kept for offline sessions.
    pub dropped_qos0: usize,
    /// Not queued: the client has no persistent session (anymore).
    pub no_session: usize,
}

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot be reached or answered with an error.
    #[error("store backend unavailable: {0}")]
    Unavailable(String),
}

/// The state that outlives a connection.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Makes this node the owner of `client_id`'s session and hands over
    /// the previous state. With `clean_start` the store drops what the
    /// session held; with `persistent` it keeps the session for
    /// [`Store::park_session`], without it forgets it.
    async fn claim_session(&self, request: &ClaimRequest) -> Result<SessionClaim, StoreError>;

    /// Records subscription changes of a connected persistent session, so
    /// they survive the death of its node.
    async fn update_subscriptions(
        &self,
        owner: &SessionOwner,
        added: &[(String, Subscription)],
        removed: &[String],
    ) -> Result<(), StoreError>;

    /// Deliveries queued for a session this node owns and has connected
    /// (stragglers queued while ownership moved). A durable backend leaves
    /// them queued until acknowledged (the caller skips those it holds).
    /// `after`: only entries after this queue entry id (those up to it
    /// were read before).
    async fn drain_offline(
        &self,
        owner: &SessionOwner,
        after: Option<&str>,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records a connected persistent session's progress (QoS 2 stages,
    /// completed packet ids, acknowledged queue entries). Returns false
    /// when the session is owned elsewhere now (the caller must end it).
    async fn record_progress(
        &self,
        owner: &SessionOwner,
        progress: &Progress,
    ) -> Result<bool, StoreError>;

    /// Forgets an incoming QoS 2 packet id at PUBREL, before PUBCOMP.
    async fn release_incoming_qos2(
        &self,
        owner: &SessionOwner,
        packet_ids: &[u16],
    ) -> Result<(), StoreError>;

    /// Keeps a persistent session's state while its client is away.
    async fn park_session(
        &self,
        owner: &SessionOwner,
        state: SessionState,
    ) -> Result<(), StoreError>;

    /// Forgets a session (a clean session ended, or a session expired) —
    /// unless a newer claim holds it: then returns false and forgets
    /// nothing. A session already gone counts as forgotten (true).
    async fn discard_session(&self, owner: &SessionOwner) -> Result<bool, StoreError>;

    /// The epoch of `client_id`'s session as the store holds it (`None`:
    /// it holds none): a newer epoch than a caller's owner means the
    /// session was claimed again since.
    async fn session_epoch(&self, client_id: &ClientId) -> Result<Option<u64>, StoreError>;

    /// Queues deliveries for sessions whose clients are offline.
    async fn enqueue_offline(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError>;

    /// Queues deliveries for a connected persistent session that did not
    /// come through the publish path (retained messages answering its
    /// SUBSCRIBE), so they outlive this node like every other delivery.
    /// Returns them in order, each with its entry id when it was queued
    /// (a store without durable queues, a full queue or a QoS 0 delivery
    /// leaves it unqueued: delivered from memory only).
    async fn queue_for_session(
        &self,
        client_id: &ClientId,
        deliveries: Vec<Delivery>,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Stores `message` as its topic's retained message, or clears the
    /// topic when the payload is empty; a new topic is refused when the
    /// retained limits are reached (see [`crate::retained`]).
    async fn set_retained(&self, message: Arc<Message>) -> Result<RetainOutcome, StoreError>;

    /// Retained messages whose topics match any of `filters`, each once;
    /// backends look only at topics the filters can match (an index).
    async fn retained_matching(&self, filters: &[&str]) -> Result<Vec<Arc<Message>>, StoreError>;

    /// Number of retained messages, for statistics.
    async fn retained_count(&self) -> Result<usize, StoreError>;
}
