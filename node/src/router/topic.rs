//! Topic names and topic filters (MQTT 3.1.1, section 4.7), and the
//! node's limits on their size.
//!
//! Every walk over a topic's levels here is a loop over `split('/')`:
//! nothing recurses on a depth the client chooses.

/// Longest topic name or filter the protocol can carry.
pub const MAX_TOPIC_LEN: usize = 65_535;

/// How long and how deep the topic names and filters a client uses may be
/// (configured with `--max-topic-length` and `--max-topic-levels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Bytes of UTF-8.
    pub max_length: usize,
    /// Levels: one more than the number of `/`.
    pub max_levels: usize,
}

impl Default for TopicLimits {
    fn default() -> TopicLimits {
        TopicLimits {
            max_length: MAX_TOPIC_LEN,
            max_levels: 64,
        }
    }
}

/// Which topic limit a name or filter is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicLimit {
    /// Longer than `max_length` bytes.
    #[error("topic longer than the max-topic-length limit")]
    Length,
    /// More than `max_levels` levels.
    #[error("topic deeper than the max-topic-levels limit")]
    Levels,
}

impl TopicLimits {
    /// Checks a topic name or filter against the limits; stops counting
    /// levels as soon as one too many is seen.
    pub fn check(&self, topic: &str) -> Result<(), TopicLimit> {
        if topic.len() > self.max_length {
            return Err(TopicLimit::Length);
        }
        if topic.split('/').nth(self.max_levels).is_some() {
            return Err(TopicLimit::Levels);
        }
        Ok(())
    }
}

/// True when `name` may be published to: non-empty, no wildcards, no U+0000.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_TOPIC_LEN && !name.contains(['+', '#', '\0'])
}

/// True when `filter` may be subscribed to: non-empty, `+` only as a whole
/// level, `#` only as the whole last level.
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() || filter.len() > MAX_TOPIC_LEN || filter.contains('\0') {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let is_last = levels.peek().is_none();
        match level {
            "+" => {}
            "#" if is_last => {}
            _ if level.contains(['+', '#']) => return false,
            _ => {}
        }
    }
    true
}

/// True when `filter` matches topic name `topic`. Used where there is no
/// tree to walk (retained messages, tests); the router walks its tree.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for level in filter.split('/') {
        match (level, topic_levels.next()) {
            ("#", _) => return true,
            ("+", Some(_)) => {}
            (expected, Some(actual)) if expected == actual => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_validation() {
        for ok in [
            "a", "a/b", "+", "#", "a/+/c", "a/#", "+/+", "/", "a//b", "$SYS/#",
        ] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a/#/b", "a+", "#x", "a/b#", "+a/b", "a\0b"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
    }

    #[test]
    fn topic_name_validation() {
        assert!(is_valid_topic_name("a/b"));
        assert!(is_valid_topic_name("/"));
        assert!(!is_valid_topic_name(""));
        assert!(!is_valid_topic_name("a/+"));
        assert!(!is_valid_topic_name("a/#"));
    }

    #[test]
    fn limits_count_bytes_and_levels() {
        let limits = TopicLimits {
            max_length: 10,
            max_levels: 3,
        };
        assert_eq!(limits.check("a/b/c"), Ok(()));
        assert_eq!(limits.check("//"), Ok(()));
        assert_eq!(limits.check("///"), Err(TopicLimit::Levels));
        assert_eq!(limits.check("a/b/c/d"), Err(TopicLimit::Levels));
        assert_eq!(limits.check("abcdefghijk"), Err(TopicLimit::Length));
        let defaults = TopicLimits::default();
        assert_eq!(defaults.check(&"/".repeat(63)), Ok(()));
        assert_eq!(defaults.check(&"/".repeat(64)), Err(TopicLimit::Levels));
        assert_eq!(defaults.check(&"x".repeat(65_535)), Ok(()));
        assert_eq!(defaults.check(&"x".repeat(65_536)), Err(TopicLimit::Length));
    }

    #[test]
    fn matching() {
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(!filter_matches("a/+/c", "a/b/d"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(filter_matches("+", ""));
        assert!(filter_matches("+/+", "/"));
        assert!(!filter_matches("a", "a/b"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(!filter_matches("+/x", "$SYS/x"));
        assert!(filter_matches("$SYS/#", "$SYS/x"));
    }
}
