//! A connected session's inbox: deliveries the router hands over, waiting
//! for the session task to write them.
//!
//! A plain mutex-guarded queue plus a `Notify`, rather than a channel, so an
//! idle session holds no preallocated buffer, the bound is checked where
//! the drop is counted, and a closed mailbox gives its deliveries back for
//! the offline queue.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::message::Delivery;

/// Why a delivery was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// The mailbox holds its limit already; the delivery is dropped.
    Full,
    /// The session has ended; the delivery goes to the offline queue.
    Closed(Delivery),
}

#[derive(Debug, Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    closed: bool,
    /// Another node queued messages for this session in the store.
    drain_requested: bool,
}

/// The inbox of one connected session.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    wake: Notify,
}

impl Mailbox {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a delivery unless the mailbox holds `limit` already or is closed.
    pub fn post(&self, delivery: Delivery, limit: usize) -> Result<(), Refused> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed(delivery));
        }
        if queue.deliveries.len() >= limit {
            return Err(Refused::Full);
        }
        let was_empty = queue.deliveries.is_empty();
        queue.deliveries.push_back(delivery);
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Adds a delivery that is queued in Redis already (bounded there),
    /// unless the session has ended (then its next owner reads it from
    /// Redis). Returns false when closed.
    pub fn post_queued(&self, delivery: Delivery) -> bool {
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        let was_empty = queue.deliveries.is_empty();
        queue.deliveries.push_back(delivery);
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        true
    }

    /// Deliveries waiting, for the queued-messages gauge.
    pub fn len(&self) -> usize {
        self.queue().deliveries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queue().deliveries.is_empty()
    }

    /// Asks the session to take what the store queued for it (recovery of a
    /// dead node put messages there after this session was claimed).
    pub fn request_drain(&self) {
        self.queue().drain_requested = true;
        self.wake.notify_one();
    }

    /// True once per [`Self::request_drain`].
    pub fn take_drain_request(&self) -> bool {
        std::mem::take(&mut self.queue().drain_requested)
    }

    /// Takes everything posted so far, oldest first.
    pub fn take_all(&self) -> VecDeque<Delivery> {
        std::mem::take(&mut self.queue().deliveries)
    }

    /// Closes the mailbox and returns what was left in it.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue();
        queue.closed = true;
        std::mem::take(&mut queue.deliveries)
    }

    /// Resolves when something was posted since the last `take_all`.
    pub async fn posted(&self) {
        self.wake.notified().await
    }
}
