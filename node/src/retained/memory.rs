//! The embedded store's retained messages: the index holds the messages.
//!
//! Guarantees: a SUBSCRIBE's lookup visits only the index branches its
//! filters can match; each message is returned once however many filters
//! match it; the limits of [`super::RetainedLimits`] are exact (one
//! process, one lock). Bytes are counted as topic plus payload.

use std::collections::HashSet;
use std::sync::Arc;

use super::index::TopicIndex;
use super::{admit, RetainOutcome, RetainedLimits};
use crate::message::Message;

/// Retained messages of a single node.
pub struct MemoryRetained {
    /// Topic → its retained message.
    index: TopicIndex<Arc<Message>>,
    /// Sum of [`size`] over the stored messages.
    bytes: u64,
    /// Bounds for new topics.
    limits: RetainedLimits,
}

/// What one retained message counts against `max-retained-bytes`.
fn size(message: &Message) -> u64 {
    (message.topic.len() + message.payload.len()) as u64
}

impl MemoryRetained {
    /// An empty set bounded by `limits`.
    pub fn new(limits: RetainedLimits) -> MemoryRetained {
        MemoryRetained {
            index: TopicIndex::default(),
            bytes: 0,
            limits,
        }
    }

    /// Stores, replaces or (empty payload) clears the topic's message.
    pub fn set(&mut self, message: Arc<Message>) -> RetainOutcome {
        if message.payload.is_empty() {
            if let Some(old) = self.index.remove(&message.topic) {
                self.bytes = self.bytes.saturating_sub(size(&old));
            }
            return RetainOutcome::Cleared;
        }
        let old_size = self.index.get(&message.topic).map(|m| size(m));
        let new_size = size(&message);
        if let Err(refusal) = admit(
            &self.limits,
            old_size.is_some(),
            self.index.len(),
            self.bytes,
            new_size,
        ) {
            return RetainOutcome::Refused(refusal);
        }
        let topic = message.topic.clone();
        self.index.insert(&topic, message);
        self.bytes = self.bytes.saturating_sub(old_size.unwrap_or(0)) + new_size;
        RetainOutcome::Stored
    }

    /// The messages any of `filters` matches, each once.
    pub fn matching(&self, filters: &[&str]) -> Vec<Arc<Message>> {
        let mut seen: HashSet<&str> = HashSet::new();
        let mut out = Vec::new();
        for filter in filters {
            for message in self.index.matching(filter) {
                if seen.insert(&message.topic) {
                    out.push(message.clone());
                }
            }
        }
        out
    }

    /// Topics with a retained message.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when nothing is retained.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes counted against the limit.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::Qos;
    use crate::retained::RetainRefusal;

    fn msg(topic: &str, payload: &'static str) -> Arc<Message> {
        Arc::new(Message::new(
            topic,
            Bytes::from_static(payload.as_bytes()),
            Qos::AtMostOnce,
            true,
        ))
    }

    #[test]
    fn limits_refuse_new_topics_only() {
        let mut set = MemoryRetained::new(RetainedLimits {
            max_messages: 2,
            max_bytes: 10,
        });
        assert_eq!(set.set(msg("a", "1234")), RetainOutcome::Stored);
        assert_eq!(
            set.set(msg("b", "123456")),
            RetainOutcome::Refused(RetainRefusal::Bytes)
        );
        assert_eq!(set.set(msg("b", "1")), RetainOutcome::Stored);
        assert_eq!(
            set.set(msg("c", "1")),
            RetainOutcome::Refused(RetainRefusal::Messages)
        );
        // Replacing grows past the byte limit; clearing frees room.
        assert_eq!(set.set(msg("a", "123456789")), RetainOutcome::Stored);
        assert_eq!(set.bytes(), 10 + 2);
        assert_eq!(set.set(msg("a", "")), RetainOutcome::Cleared);
        assert_eq!(set.set(msg("c", "1")), RetainOutcome::Stored);
        assert_eq!(set.len(), 2);
        assert_eq!(set.bytes(), 4);
    }

    #[test]
    fn overlapping_filters_return_each_message_once() {
        let mut set = MemoryRetained::new(RetainedLimits::default());
        set.set(msg("a/b", "1"));
        set.set(msg("a/c", "2"));
        set.set(msg("b", "3"));
        assert_eq!(set.matching(&["a/#", "a/b", "+/c"]).len(), 2);
        assert_eq!(set.matching(&["x"]).len(), 0);
    }
}
