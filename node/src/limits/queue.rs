//! The bound of what one session has queued: at most so many deliveries
//! and so many bytes (topic plus payload), whichever is reached first.
//!
//! One bound, three places that queue: a connected session's mailbox
//! ([`crate::registry::mailbox`]), the embedded store's offline queue
//! ([`crate::store::memory`]) and a persistent session's Redis queue (the
//! `ENQUEUE` script in [`crate::redis_model::scripts`] applies the same
//! rule in Lua, with sizes computed here). What the bound guarantees: a
//! delivery that would take a queue past it is refused, dropped and
//! counted; nothing already queued is ever evicted to make room. A single
//! delivery larger than the byte bound is never queued.

use crate::message::Delivery;

/// How much one session may have queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBound {
    /// Deliveries (`--max-queued-messages`).
    pub messages: usize,
    /// Bytes of topic plus payload (`--max-queued-bytes-per-session`).
    pub bytes: usize,
}

/// Which half of a [`QueueBound`] refused a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueFull {
    /// The queue holds its number of deliveries already.
    Messages,
    /// The delivery would take the queue past its bytes.
    Bytes,
}

/// What one delivery counts against the byte bound: its topic and payload
/// (the parts a client controls; the per-entry overhead is fixed and
/// bounded by the message count).
pub fn queued_size(delivery: &Delivery) -> usize {
    delivery.message.topic.len() + delivery.message.payload.len()
}

impl QueueBound {
    /// A bound on the number of deliveries only.
    pub fn messages(messages: usize) -> QueueBound {
        QueueBound {
            messages,
            bytes: usize::MAX,
        }
    }

    /// Whether a queue holding `queued` deliveries of `queued_bytes` in
    /// all may take one more of `size` bytes.
    pub fn admits(&self, queued: usize, queued_bytes: usize, size: usize) -> Result<(), QueueFull> {
        if queued >= self.messages {
            return Err(QueueFull::Messages);
        }
        if queued_bytes.saturating_add(size) > self.bytes {
            return Err(QueueFull::Bytes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_checked_before_the_bytes() {
        let bound = QueueBound {
            messages: 2,
            bytes: 10,
        };
        assert_eq!(bound.admits(0, 0, 10), Ok(()));
        assert_eq!(bound.admits(1, 4, 6), Ok(()));
        assert_eq!(bound.admits(1, 4, 7), Err(QueueFull::Bytes));
        assert_eq!(bound.admits(2, 0, 1), Err(QueueFull::Messages));
    }

    #[test]
    fn a_delivery_larger_than_the_bound_is_never_admitted() {
        let bound = QueueBound {
            messages: 10,
            bytes: 10,
        };
        assert_eq!(bound.admits(0, 0, 11), Err(QueueFull::Bytes));
        assert_eq!(bound.admits(0, usize::MAX, 1), Err(QueueFull::Bytes));
        assert_eq!(QueueBound::messages(1).admits(0, usize::MAX - 1, 1), Ok(()));
    }
}
