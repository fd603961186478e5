//! Copying a session's pinned deliveries into its Redis queue.
//!
//! A QoS 1 delivery served from memory is held in Redis only by the
//! journal or inbox entry it came in ([`crate::pin`]); that is enough while
//! its session stays here, since a survivor queues those entries for this
//! node's sessions. When the session leaves (parks, is claimed elsewhere,
//! is taken over) or holds an entry for long (a slow client), its pinned
//! deliveries are queued in the session's own stream — in order, each
//! taking its queue entry id in place — and the pins are dropped.
//!
//! Guaranteed: a pin is dropped only after Redis took its delivery (or
//! answered that the session's queue is full or gone, as a publish would
//! be answered); when Redis cannot be reached the deliveries keep their
//! pins, and an ended session hands them to a task that retries until
//! Redis takes them. Not guaranteed: order against deliveries queued by
//! other nodes meanwhile.

use std::sync::Arc;
use std::time::Duration;

use astramq_shared::log_text::untrusted;

use super::active::ActiveSession;
use crate::message::{ClientId, Delivery};
use crate::store::Store;

/// Pause between tries of an ended session's spill, at first and at most.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl ActiveSession {
    /// The deliveries this session holds pinned, in flight first, in order.
    fn pinned_deliveries(&mut self) -> impl Iterator<Item = &mut Delivery> {
        self.window
            .deliveries_mut()
            .chain(self.pending.iter_mut())
            .filter(|d| d.pin.is_some())
    }

    /// Queues every pinned delivery (those waiting in the mailbox too) in
    /// the session's Redis queue and drops the pins. False when Redis
    /// could not take them: they keep their pins.
    pub(super) async fn spill_pinned(&mut self) -> bool {
        let waiting = self.handle.mailbox.take_all();
        self.pending.extend(waiting);
        let pinned: Vec<Delivery> = self.pinned_deliveries().map(|d| d.clone()).collect();
        if pinned.is_empty() {
            return true;
        }
        let count = pinned.len() as u64;
        let store = self.broker.store().clone();
        match store.queue_for_session(&self.client_id, pinned).await {
            Ok(queued) => {
                let mut queued = queued.into_iter();
                for delivery in self.pinned_deliveries() {
                    delivery.queued = queued.next().and_then(|q| q.queued);
                    delivery.pin = None;
                }
                if let Some(cluster) = self.broker.cluster() {
                    cluster.metrics.spilled.inc_by(count);
                }
                true
            }
            Err(error) => {
                tracing::debug!(%error, client_id = %untrusted(&self.client_id), "pinned deliveries not queued yet");
                false
            }
        }
    }

    /// Queues the pinned deliveries of a session that is ending; if Redis
    /// cannot take them now, a task keeps them (and their pins) and tries
    /// again until it can.
    pub(super) async fn spill_before_leaving(&mut self) {
        if self.spill_pinned().await {
            return;
        }
        let pinned: Vec<Delivery> = self.pinned_deliveries().map(|d| d.clone()).collect();
        tokio::spawn(keep_trying(
            self.broker.store().clone(),
            self.client_id.clone(),
            pinned,
        ));
    }
}

async fn keep_trying(store: Arc<dyn Store>, client_id: ClientId, pinned: Vec<Delivery>) {
    let mut delay = RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        match store.queue_for_session(&client_id, pinned.clone()).await {
            Ok(_) => {
                tracing::info!(client_id = %untrusted(&client_id), deliveries = pinned.len(), "pinned deliveries of an ended session queued");
                return;
            }
            Err(error) => {
                tracing::debug!(%error, "pinned deliveries of an ended session not queued yet");
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}
