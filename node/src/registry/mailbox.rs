//! A connected session's inbox: deliveries the router hands over, waiting
//! for the session task to write them.
//!
//! A plain mutex-guarded queue plus a `Notify`, rather than a channel, so an
//! idle session holds no preallocated buffer, the bound is checked where
//! the drop is counted, and a closed mailbox gives its deliveries back for
//! the offline queue.
//!
//! Bounds: [`Mailbox::post`] refuses beyond a count and beyond a byte
//! total (topic plus payload of what waits), so a session that does not
//! keep up costs bounded memory; deliveries already queued in Redis
//! ([`Mailbox::post_queued`]) are bounded there, by the same
//! [`QueueBound`], and are always taken, but count towards the bytes.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::limits::queue::{queued_size, QueueBound, QueueFull};
use crate::message::Delivery;
use crate::pin::SpillRequest;

/// Why a delivery was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// The mailbox holds its limit already; the delivery is dropped.
    Full,
    /// The mailbox holds its byte limit already; the delivery is dropped.
    FullBytes,
    /// The session has ended; the delivery goes to the offline queue.
    Closed(Delivery),
}

#[derive(Debug, Default)]
struct Queue {
    deliveries: VecDeque<Delivery>,
    /// Sum of [`queued_size`] over `deliveries`.
    bytes: usize,
    closed: bool,
    /// Another node queued messages for this session in the store.
    drain_requested: bool,
    /// This node's ledger wants the session's pinned deliveries copied
    /// into its Redis queue (they pin an old entry).
    spill_requested: bool,
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

    /// Adds a delivery unless the mailbox holds `limit` deliveries or
    /// would hold more than `max_bytes` with it, or is closed.
    pub fn post(&self, delivery: Delivery, limit: usize, max_bytes: usize) -> Result<(), Refused> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(Refused::Closed(delivery));
        }
        let bound = QueueBound {
            messages: limit,
            bytes: max_bytes,
        };
        let bytes = queued_size(&delivery);
        match bound.admits(queue.deliveries.len(), queue.bytes, bytes) {
            Ok(()) => {}
            Err(QueueFull::Messages) => return Err(Refused::Full),
            Err(QueueFull::Bytes) => return Err(Refused::FullBytes),
        }
        let was_empty = queue.deliveries.is_empty();
        queue.bytes += bytes;
        queue.deliveries.push_back(delivery);
        drop(queue);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Adds a delivery that is in Redis already — in its session's queue
    /// (bounded there) or pinned in a journal or inbox entry (bounded by
    /// the caller, see [`Self::len`]) — unless the session has ended: then
    /// its next owner reads a queued one from Redis, and the caller must
    /// queue a pinned one. Returns false when closed.
    pub fn post_queued(&self, delivery: Delivery) -> bool {
        let mut queue = self.queue();
        if queue.closed {
            return false;
        }
        let was_empty = queue.deliveries.is_empty();
        queue.bytes = queue.bytes.saturating_add(queued_size(&delivery));
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

    /// True once per [`SpillRequest::request_spill`].
    pub fn take_spill_request(&self) -> bool {
        std::mem::take(&mut self.queue().spill_requested)
    }

    /// True once per [`Self::request_drain`].
    pub fn take_drain_request(&self) -> bool {
        std::mem::take(&mut self.queue().drain_requested)
    }

    /// Takes everything posted so far, oldest first.
    pub fn take_all(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue();
        queue.bytes = 0;
        std::mem::take(&mut queue.deliveries)
    }

    /// Bytes waiting (see [`Mailbox::post`]).
    pub fn bytes(&self) -> usize {
        self.queue().bytes
    }

    /// Closes the mailbox and returns what was left in it.
    pub fn close(&self) -> VecDeque<Delivery> {
        let mut queue = self.queue();
        queue.closed = true;
        queue.bytes = 0;
        std::mem::take(&mut queue.deliveries)
    }

    /// Resolves when something was posted since the last `take_all`.
    pub async fn posted(&self) {
        self.wake.notified().await
    }
}

impl SpillRequest for Mailbox {
    fn request_spill(&self) {
        self.queue().spill_requested = true;
        self.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::{Message, Qos};

    fn delivery(payload: &'static [u8]) -> Delivery {
        let message = Message::new("t", Bytes::from_static(payload), Qos::AtMostOnce, false);
        Delivery::retained(Arc::new(message), Qos::AtMostOnce)
    }

    #[test]
    fn bytes_bound_what_waits_and_come_back_when_taken() {
        let mailbox = Mailbox::default();
        assert!(mailbox.post(delivery(b"123"), 10, 8).is_ok());
        assert!(matches!(
            mailbox.post(delivery(b"123456"), 10, 8),
            Err(Refused::FullBytes)
        ));
        assert!(mailbox.post(delivery(b"123"), 10, 8).is_ok());
        assert_eq!(mailbox.bytes(), 8);
        assert_eq!(mailbox.take_all().len(), 2);
        assert_eq!(mailbox.bytes(), 0);
        assert!(mailbox.post(delivery(b"1234567"), 10, 8).is_ok());
        assert!(matches!(
            mailbox.post(delivery(b""), 10, 8),
            Err(Refused::FullBytes)
        ));
    }
}
