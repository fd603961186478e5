//! Retained messages: an index by topic level so a SUBSCRIBE reads only
//! the retained messages its filters can match, and the limits on how many
//! (and how many bytes) a node or cluster keeps.
//!
//! - [`index`]: the trie of topic names, with iterative walks only.
//! - [`memory`]: the embedded store's retained messages (index holding the
//!   messages themselves).
//! - [`redis`]: the cluster's retained messages: payloads stay in Redis,
//!   every node keeps an index of the **topics** only, kept in step with
//!   Redis through a change log; see `docs/retained.md` for what is
//!   guaranteed across nodes.
//!
//! Limits (both backends): a message for a topic that has no retained
//! message yet is not stored when `max-retained-messages` or
//! `max-retained-bytes` would be exceeded; the publish itself is still
//! delivered. Replacing an existing topic's message and clearing a topic
//! (empty payload) always work, so a full store never blocks updates of
//! what it holds — replacements may therefore take the byte total over the
//! limit by at most what they grow by (each payload is bounded by
//! `max-retained-payload`).

pub mod index;
pub mod memory;
pub mod redis;

/// Bounds on the retained messages kept (cluster-wide with Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Most topics with a retained message.
    pub max_messages: usize,
    /// Most bytes of retained messages (topic plus stored message).
    pub max_bytes: u64,
}

impl Default for RetainedLimits {
    fn default() -> RetainedLimits {
        RetainedLimits {
            max_messages: 100_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// What storing a retained message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainOutcome {
    /// Stored, as a new topic or replacing the topic's previous message.
    Stored,
    /// The empty payload cleared the topic (or it had nothing to clear).
    Cleared,
    /// Not stored: a limit would be exceeded by a new topic.
    Refused(RetainRefusal),
}

/// Which retained limit refused a new topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainRefusal {
    /// `max-retained-messages`.
    Messages,
    /// `max-retained-bytes`.
    Bytes,
}

/// The decision both backends make for a new or replacing message, given
/// what is stored now: pure, so it is tested once here.
pub fn admit(
    limits: &RetainedLimits,
    replacing: bool,
    count: usize,
    bytes: u64,
    size: u64,
) -> Result<(), RetainRefusal> {
    if replacing {
        return Ok(());
    }
    if count >= limits.max_messages {
        return Err(RetainRefusal::Messages);
    }
    if bytes.saturating_add(size) > limits.max_bytes {
        return Err(RetainRefusal::Bytes);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_topics_are_bounded_and_replacements_are_not() {
        let limits = RetainedLimits {
            max_messages: 2,
            max_bytes: 100,
        };
        assert_eq!(admit(&limits, false, 1, 50, 50), Ok(()));
        assert_eq!(admit(&limits, false, 2, 0, 1), Err(RetainRefusal::Messages));
        assert_eq!(admit(&limits, false, 1, 60, 41), Err(RetainRefusal::Bytes));
        assert_eq!(admit(&limits, true, 2, 100, 1000), Ok(()));
    }
}
