//! Queueing what a dead node never handled: the entries of its inbox
//! (routed mode) or of the shared stream past its cursor (broadcast mode),
//! read a page at a time, each publish queued for every adopted or moved
//! session whose filters match it.
//!
//! Guaranteed: every entry up to the last one read has had its deliveries
//! queued before [`Unread::read_to`] names it, so trimming up to there
//! loses nothing; QoS 2 copies queued already are refused by the
//! sessions' publish-id record. Entries appended after the last page are
//! not queued here, nor trimmed: a dead node is fenced before this step,
//! so its inbox takes no more publishes; this node's own inbox (a rejoin)
//! is read by its inbox reader from the start.

use std::collections::HashSet;

use super::store::{InboxEntry, UnreadPage, UnreadStream};
use super::{Recovery, RecoveryError};
use crate::cluster::Mode;
use crate::message::{ClientId, Delivery};
use crate::redis_model::value as rv;
use crate::router::SubscriptionTree;

/// Entries read per page while draining a dead node's stream.
pub(super) const DRAIN_PAGE: usize = 500;

/// What queueing a dead node's unread entries did.
pub(super) struct Unread {
    /// The sessions something was queued for.
    pub(super) queued_for: HashSet<ClientId>,
    /// The last inbox entry read (routed mode only: the shared broadcast
    /// stream is never trimmed by recovery).
    pub(super) read_to: Option<String>,
}

impl Recovery {
    /// Queues the messages `dead` never read for the `adopted` sessions.
    pub(super) async fn queue_unread(
        &self,
        dead: &str,
        adopted: &SubscriptionTree,
    ) -> Result<Unread, RecoveryError> {
        let mut unread = Unread {
            queued_for: HashSet::new(),
            read_to: None,
        };
        let mut page = self.unread_start(dead).await?;
        let mut queued = 0usize;
        loop {
            let entries = self.store.read_entries(&page).await?;
            let Some(last) = entries.last() else {
                break;
            };
            let Some(next) = rv::next_stream_id(&last.id) else {
                break;
            };
            let batch = deliveries_for(&entries, adopted);
            queued += batch.len();
            unread
                .queued_for
                .extend(batch.iter().map(|(client_id, _)| client_id.clone()));
            if !batch.is_empty() {
                let outcome = self.node.queue_for_sessions(batch).await?;
                self.counters.redeliveries.inc_by(outcome.queued as u64);
            }
            if self.mode == Mode::Routed {
                unread.read_to = Some(last.id.clone());
            }
            page.from = next;
            if entries.len() < DRAIN_PAGE {
                break;
            }
        }
        tracing::info!(node = %dead, queued, "unread messages queued for adopted sessions");
        Ok(unread)
    }

    /// The first page of `dead`'s unread entries.
    async fn unread_start(&self, dead: &str) -> Result<UnreadPage, RecoveryError> {
        let (stream, from) = match self.mode {
            Mode::Routed => (UnreadStream::Inbox(dead.to_string()), "-".to_string()),
            Mode::Broadcast => {
                let cursor = self.store.bus_cursor(dead).await?;
                let after = cursor
                    .and_then(|c| rv::next_stream_id(&c))
                    .unwrap_or_else(|| "-".into());
                (UnreadStream::Broadcast, after)
            }
        };
        Ok(UnreadPage {
            stream,
            from,
            count: DRAIN_PAGE,
        })
    }
}

/// One delivery per publish and matching session.
fn deliveries_for(entries: &[InboxEntry], adopted: &SubscriptionTree) -> Vec<(ClientId, Delivery)> {
    let mut out = Vec::new();
    for message in entries.iter().flat_map(|entry| &entry.messages) {
        for (client_id, granted) in adopted.matches(&message.topic) {
            out.push((client_id, Delivery::forward(message.clone(), granted)));
        }
    }
    out
}
