//! Queueing what a dead node did not have acknowledged: the entries of its
//! inbox and its journal (routed mode) or of the shared stream past its
//! cursor (broadcast mode), read a page at a time, each publish queued for
//! every adopted or moved session whose filters match it.
//!
//! The inbox holds what other nodes sent it that it had not finished with;
//! the journal, the QoS 1 publishes made on it that it served to its
//! connected persistent sessions from memory. Both are trimmed by their
//! node only past entries nothing of it still needs (see
//! `crate::cluster::ledger`), so an entry may have been delivered and
//! acknowledged already: QoS 1 may arrive twice, never not at all.
//!
//! Guaranteed: every entry up to the last one read has had its deliveries
//! queued before [`Unread`] names it, so trimming up to there loses
//! nothing; QoS 2 copies queued already are refused by the sessions'
//! publish-id record. Entries appended after the last page are not queued
//! here, nor trimmed: a dead node is fenced before this step, so its inbox
//! and journal take no more publishes; this node's own inbox (a rejoin) is
//! read by its inbox reader from the start.

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
#[derive(Default)]
pub(super) struct Unread {
    /// The sessions something was queued for.
    pub(super) queued_for: HashSet<ClientId>,
    /// The last inbox entry read (routed mode only: the shared broadcast
    /// stream is never trimmed by recovery).
    pub(super) inbox_read_to: Option<String>,
    /// The last journal entry read (routed mode only).
    pub(super) journal_read_to: Option<String>,
}

impl Recovery {
    /// Queues the messages `dead` had not finished with for the `adopted`
    /// sessions.
    pub(super) async fn queue_unread(
        &self,
        dead: &str,
        adopted: &SubscriptionTree,
    ) -> Result<Unread, RecoveryError> {
        let mut unread = Unread::default();
        let mut queued = 0usize;
        match self.mode {
            Mode::Routed => {
                let inbox = UnreadStream::Inbox(dead.to_string());
                unread.inbox_read_to = self
                    .queue_stream(
                        first_page(inbox, "-"),
                        adopted,
                        &mut unread.queued_for,
                        &mut queued,
                    )
                    .await?;
                let journal = UnreadStream::Journal(dead.to_string());
                unread.journal_read_to = self
                    .queue_stream(
                        first_page(journal, "-"),
                        adopted,
                        &mut unread.queued_for,
                        &mut queued,
                    )
                    .await?;
            }
            Mode::Broadcast => {
                let cursor = self.store.bus_cursor(dead).await?;
                let after = cursor
                    .and_then(|c| rv::next_stream_id(&c))
                    .unwrap_or_else(|| "-".into());
                let page = first_page(UnreadStream::Broadcast, &after);
                self.queue_stream(page, adopted, &mut unread.queued_for, &mut queued)
                    .await?;
            }
        }
        tracing::info!(node = %dead, queued, "unread messages queued for adopted sessions");
        Ok(unread)
    }

    /// Queues one stream from `page` to its end; returns the last entry
    /// read.
    async fn queue_stream(
        &self,
        mut page: UnreadPage,
        adopted: &SubscriptionTree,
        queued_for: &mut HashSet<ClientId>,
        queued: &mut usize,
    ) -> Result<Option<String>, RecoveryError> {
        let mut read_to = None;
        loop {
            let entries = self.store.read_entries(&page).await?;
            let Some(last) = entries.last() else {
                break;
            };
            let Some(next) = rv::next_stream_id(&last.id) else {
                break;
            };
            let batch = deliveries_for(&entries, adopted);
            *queued += batch.len();
            queued_for.extend(batch.iter().map(|(client_id, _)| client_id.clone()));
            if !batch.is_empty() {
                let outcome = self.node.queue_for_sessions(batch).await?;
                self.counters.redeliveries.inc_by(outcome.queued as u64);
            }
            read_to = Some(last.id.clone());
            page.from = next;
            if entries.len() < DRAIN_PAGE {
                break;
            }
        }
        Ok(read_to)
    }
}

fn first_page(stream: UnreadStream, from: &str) -> UnreadPage {
    UnreadPage {
        stream,
        from: from.to_string(),
        count: DRAIN_PAGE,
    }
}

/// One delivery per publish and matching session.
fn deliveries_for(entries: &[InboxEntry], adopted: &SubscriptionTree) -> Vec<(ClientId, Delivery)> {
    let mut out = Vec::new();
    for message in entries.iter().flat_map(|entry| &entry.messages) {
        for (client_id, matched) in adopted.matches(&message.topic, message.publisher.as_ref()) {
            out.push((client_id, matched.deliver(message.clone())));
        }
    }
    out
}
