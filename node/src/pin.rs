//! What keeps a delivery in Redis while it is served from memory.
//!
//! A QoS 1 delivery to a persistent session connected to this node need
//! not be copied into the session's own Redis queue: the stream entry that
//! carried the message here — this node's **journal** (publishes made on
//! this node) or its **inbox** (publishes from other nodes) — already holds
//! it, and a survivor that adopts this node's sessions queues every entry
//! of both streams for them. A [`Pin`] is the delivery's claim on that
//! entry: the node trims a stream only past entries no pin refers to.
//!
//! Guaranteed: a pin lives as long as any delivery holding it (it is
//! reference-counted and travels with the delivery through the mailbox,
//! the pending queue and the in-flight window), so an entry stays in Redis
//! until every delivery from it was acknowledged by its client, or was
//! copied into its session's queue ("spilled") first. Not guaranteed: that
//! a delivery is delivered once — after this node's death its survivor
//! queues whole entries, so a QoS 1 message the client had acknowledged
//! since the last trim arrives again. QoS 2 deliveries are never pinned.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// A Redis stream entry id (`ms-seq`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl StreamId {
    /// Parses `ms-seq`; `None` for anything else.
    pub fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The smallest id after this one.
    pub fn next(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The stream a pinned entry is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinnedStream {
    /// This node's journal: publishes made here.
    Journal,
    /// This node's inbox: publishes forwarded by other nodes.
    Inbox,
}

/// Something that can be asked to copy its pinned deliveries into its
/// session's queue (a connected session's mailbox).
pub trait SpillRequest: Send + Sync {
    /// Asks for the copy; the session does it on its next turn.
    fn request_spill(&self);
}

/// One pinned stream entry.
pub struct PinnedEntry {
    /// Which stream.
    pub stream: PinnedStream,
    /// The entry's id.
    pub id: StreamId,
    /// When it was pinned.
    pub since: Instant,
    /// The sessions that hold deliveries from it.
    pub holders: Vec<Weak<dyn SpillRequest>>,
}

/// A delivery's claim on the stream entry that holds it in Redis.
#[derive(Clone)]
pub struct Pin(Arc<PinnedEntry>);

impl Pin {
    /// A pin on `entry`, and the weak reference its ledger keeps.
    pub fn new(entry: PinnedEntry) -> (Pin, Weak<PinnedEntry>) {
        let pin = Arc::new(entry);
        let weak = Arc::downgrade(&pin);
        (Pin(pin), weak)
    }

    /// The pinned entry.
    pub fn entry(&self) -> &PinnedEntry {
        &self.0
    }
}

impl PartialEq for Pin {
    fn eq(&self, other: &Pin) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl fmt::Debug for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pin({:?} {})", self.0.stream, self.0.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_order_and_step() {
        let a = StreamId::parse("5-9").unwrap();
        let b = StreamId::parse("10-0").unwrap();
        assert!(a < b, "numeric, not lexical, order");
        assert_eq!(a.next().to_string(), "5-10");
        assert_eq!(
            StreamId {
                ms: 1,
                seq: u64::MAX
            }
            .next(),
            StreamId { ms: 2, seq: 0 }
        );
        assert_eq!(StreamId::parse("x-1"), None);
        assert_eq!(StreamId::parse("12"), None);
    }
}
