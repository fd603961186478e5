//! How far a connection has read its session's Redis queue, so a mailbox
//! post that repeats an entry it has read is not sent a second time.
//!
//! A delivery to a connected persistent session arrives two ways: posted
//! to its mailbox by the task that queued it (the forwarder or the inbox
//! reader), and read back from the queue by the claim or a late drain. The
//! two carry the same entry when the queue write finished before the read
//! but its post reaches the mailbox after it — which can be any time later
//! (the writer's pipeline reply may come after the claim's), not only
//! before the mailbox is first read. Sent twice, a QoS 2 message would
//! reach the application twice under two packet ids.
//!
//! Stream entry ids only grow, and a read (`XRANGE - +`) returns every
//! entry present, so an entry whose id is not above the highest id read
//! was either returned by that read or deleted before it (acknowledged).
//! Either way its post must be dropped. Guaranteed: a post covered by the
//! mark is never sent; a post above it always is. Not covered: ids that do
//! not parse as `ms-seq` (never dropped).

use crate::message::QueueId;

/// A stream entry id, ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(id: &str) -> Option<StreamId> {
        let (ms, seq) = id.split_once('-')?;
        Some(StreamId {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// The highest queue entry id this connection has read from Redis.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadMark {
    highest: Option<StreamId>,
}

impl ReadMark {
    /// Moves the mark past every id in `ids` (entries a read returned).
    pub fn advance<'a>(&mut self, ids: impl IntoIterator<Item = &'a QueueId>) {
        let read = ids.into_iter().filter_map(|id| StreamId::parse(id));
        self.highest = self.highest.into_iter().chain(read).max();
    }

    /// True when the entry `id` was returned by a read already (or deleted
    /// before it): a post of it is a repeat.
    pub fn covers(&self, id: &QueueId) -> bool {
        match (self.highest, StreamId::parse(id)) {
            (Some(highest), Some(id)) => id <= highest,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> QueueId {
        s.into()
    }

    #[test]
    fn nothing_is_covered_before_a_read() {
        let mark = ReadMark::default();
        assert!(!mark.covers(&id("1-0")));
    }

    #[test]
    fn ids_up_to_the_highest_read_are_covered() {
        let mut mark = ReadMark::default();
        mark.advance([&id("1700000000000-3"), &id("1700000000000-1")]);
        assert!(mark.covers(&id("1700000000000-3")));
        assert!(mark.covers(&id("1699999999999-9")));
        assert!(!mark.covers(&id("1700000000000-4")));
        assert!(!mark.covers(&id("1700000000001-0")));
    }

    #[test]
    fn ids_compare_as_numbers_not_text() {
        let mut mark = ReadMark::default();
        mark.advance([&id("999-10")]);
        assert!(mark.covers(&id("999-9")));
        assert!(!mark.covers(&id("1000-0")));
    }

    #[test]
    fn the_mark_never_moves_back() {
        let mut mark = ReadMark::default();
        mark.advance([&id("5-0")]);
        mark.advance([&id("3-0")]);
        mark.advance(std::iter::empty());
        assert!(mark.covers(&id("4-9")));
    }

    #[test]
    fn unparsable_ids_are_never_covered_nor_move_the_mark() {
        let mut mark = ReadMark::default();
        mark.advance([&id("garbage")]);
        assert!(!mark.covers(&id("1-0")));
        mark.advance([&id("9-0")]);
        assert!(!mark.covers(&id("garbage")));
    }
}
