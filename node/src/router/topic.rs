//! Topic names and topic filters (MQTT 3.1.1, section 4.7).

/// Longest topic name or filter the protocol can carry.
const MAX_TOPIC_LEN: usize = 65_535;

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
