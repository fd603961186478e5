//! What the cluster needs of the node it runs in — the whole seam between
//! the cluster tasks (inbox reader, liveness, recovery) and the broker.
//!
//! The cluster knows the broker only through this trait (as toydb's Raft
//! knows its state machine through a narrow one), so the two never import
//! each other, and the cluster's use of the node can be faked in tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::bus::QueueTarget;
use crate::message::{ClientId, Delivery, Message};
use crate::session_state::SessionOwner;
use crate::store::{QueueOutcome, StoreError};
use crate::subscription::Subscription;

/// The node, as the cluster sees it.
#[async_trait]
pub trait LocalNode: Send + Sync + 'static {
    /// Another node claims `client_id`: end its connection here, or forget
    /// its parked session.
    async fn release_session(&self, client_id: &ClientId);

    /// Messages were queued in Redis for `client_id`: if it is connected
    /// here, it should read its queue.
    fn drain_session(&self, client_id: &ClientId);

    /// Routes a message another node forwarded to local sessions only;
    /// returns the deliveries to queue in Redis before they are posted.
    fn deliver_from_cluster(&self, message: &Arc<Message>) -> Vec<QueueTarget>;

    /// Publishes a dead client's will and waits until it is safe.
    async fn publish_will(&self, will: Arc<Message>);

    /// Makes this node the owner of an offline persistent session.
    async fn adopt_offline_session(
        &self,
        client_id: &ClientId,
        subscriptions: Vec<(String, Subscription)>,
    );

    /// Ends the offline session `owner` holds `after` this long (5.0
    /// session expiry), unless its client claims it by then.
    fn expire_session_after(&self, owner: SessionOwner, after: Duration);

    /// This node was declared dead: drop every client and session here.
    async fn fence(&self);

    /// Every filter with a subscriber on this node.
    fn local_filters(&self) -> Vec<String>;

    /// Queues deliveries for persistent sessions (recovering a dead node's
    /// inbox).
    async fn queue_for_sessions(
        &self,
        batch: Vec<(ClientId, Delivery)>,
    ) -> Result<QueueOutcome, StoreError>;
}
