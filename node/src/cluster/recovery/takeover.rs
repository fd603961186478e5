//! Taking over one node's sessions (a dead node's, or this node's previous
//! run's), in the order the module docs of [`super`] give: sessions
//! adopted or deleted, then the node fenced and its routes dropped (or, for
//! this node, synced), wills published, the unread inbox queued, connected
//! owners told, and the node's lists cleared.

use std::collections::HashSet;
use std::sync::Arc;

use super::lock::Lock;
use super::store::{ClientList, NodeCleanup, SessionRecord};
use super::{Recovery, RecoveryError};
use crate::message::{ClientId, Message};
use crate::redis_model::value as rv;
use crate::router::SubscriptionTree;
use crate::session_state::SessionOwner;

/// A session of the node taken over, as recovery sees it.
#[derive(Debug)]
struct DeadSession {
    client_id: ClientId,
    persistent: bool,
    /// Set when the client was connected: it did not disconnect cleanly.
    will: Option<Message>,
    /// The node that claimed it after the death (the client reconnected
    /// before this recovery): its messages in the dead inbox go to it.
    moved_to: Option<String>,
}

impl DeadSession {
    /// What `record` means for a recovery of `node`: a session another
    /// node owns now keeps its will there.
    fn of(record: SessionRecord, node: &str) -> DeadSession {
        if record.owner.as_deref() != Some(node) {
            // Claimed by another node since; only its unread messages matter.
            return DeadSession {
                client_id: record.client_id,
                persistent: record.persistent,
                will: None,
                moved_to: record.owner,
            };
        }
        DeadSession {
            client_id: record.client_id,
            persistent: record.persistent,
            will: record.will.filter(|_| record.connected),
            moved_to: None,
        }
    }
}

impl Recovery {
    /// Adopts `node`'s sessions, publishes its wills, fences it (unless it
    /// is this node), drops its routes and queues what its inbox still
    /// holds.
    pub(super) async fn take_over(&self, node: &str, lock: &Lock) -> Result<(), RecoveryError> {
        let is_self = node == &*self.me;
        let sessions = self.store.sessions_of(node).await?;
        let mut adopted = SubscriptionTree::default();
        let mut wills = Vec::new();
        let mut not_kept = Vec::new();
        for record in sessions {
            lock.check()?;
            let mut session = DeadSession::of(record, node);
            wills.extend(session.will.take());
            let client_id = session.client_id.clone();
            if !self.take_session(node, session, &mut adopted).await? {
                not_kept.push(client_id);
            }
        }
        lock.check()?;
        self.hand_over_routes(node, is_self).await?;
        for will in wills {
            self.node.publish_will(Arc::new(will)).await;
        }
        lock.check()?;
        let unread = self.queue_unread(node, &adopted).await?;
        self.notify_connected_owners(unread.queued_for).await?;
        let cleanup = NodeCleanup {
            clients: match is_self {
                true => ClientList::Remove(not_kept),
                false => ClientList::Delete,
            },
            keep_inbox_from: unread.inbox_read_to.as_deref().and_then(rv::next_stream_id),
            keep_journal_from: unread
                .journal_read_to
                .as_deref()
                .and_then(rv::next_stream_id),
        };
        self.store.forget_node(node, cleanup).await?;
        Ok(())
    }

    /// Adopts a persistent session still owned by `node`, deletes a clean
    /// one, and records the filters of both adopted and moved persistent
    /// sessions in `adopted` (what the unread inbox is queued for). True
    /// when this node owns the session now.
    async fn take_session(
        &self,
        node: &str,
        session: DeadSession,
        adopted: &mut SubscriptionTree,
    ) -> Result<bool, RecoveryError> {
        match (session.persistent, session.moved_to) {
            (true, Some(_)) => {
                for (filter, subscription) in self.store.subscriptions(&session.client_id).await? {
                    adopted.subscribe(&filter, &session.client_id, subscription);
                }
                Ok(false)
            }
            (true, None) => self.adopt(node, &session.client_id, adopted).await,
            (false, None) => {
                self.store.delete_session(&session.client_id).await?;
                Ok(false)
            }
            (false, Some(_)) => Ok(false),
        }
    }

    /// Makes this node the owner of an offline persistent session; false
    /// when another node claimed it first.
    async fn adopt(
        &self,
        node: &str,
        client_id: &ClientId,
        adopted: &mut SubscriptionTree,
    ) -> Result<bool, RecoveryError> {
        let filters = self.store.subscriptions(client_id).await?;
        for (filter, subscription) in &filters {
            adopted.subscribe(filter, client_id, *subscription);
        }
        let Some(adopted) = self.store.adopt(client_id, node, &self.me).await? else {
            // Claimed by its client on another node meanwhile: that node
            // owns it; only what the dead inbox holds for it is queued.
            return Ok(false);
        };
        self.node.adopt_offline_session(client_id, filters).await;
        if let Some(after) = adopted.expires_in {
            let owner = SessionOwner {
                client_id: client_id.clone(),
                epoch: adopted.epoch,
            };
            self.node.expire_session_after(owner, after);
        }
        Ok(true)
    }

    /// A dead node is fenced and its routes dropped. Our own previous run:
    /// its route set becomes what the adoption holds. Not dropped first: a
    /// filter held both before and after must never leave the table, or
    /// publishes toward it would find nobody meanwhile and be acknowledged
    /// to no one.
    async fn hand_over_routes(&self, node: &str, is_self: bool) -> Result<(), RecoveryError> {
        if is_self {
            let filters = self.node.local_filters();
            self.store.sync_routes(node, &filters).await?;
        } else {
            self.store.fence(node, &self.me).await?;
            self.store.drop_routes(node).await?;
        }
        Ok(())
    }

    /// Messages were just queued for these sessions; a client that
    /// meanwhile reconnected (to any node) takes them now rather than at
    /// its next reconnect.
    async fn notify_connected_owners(
        &self,
        queued_for: HashSet<ClientId>,
    ) -> Result<(), RecoveryError> {
        for client_id in queued_for {
            match self.store.connected_owner(&client_id).await? {
                Some(owner) if owner == *self.me => self.node.drain_session(&client_id),
                Some(owner) => self.store.send_drain(&owner, &client_id).await?,
                None => {}
            }
        }
        Ok(())
    }
}
