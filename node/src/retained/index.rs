//! A trie of topic names by level, answering "which stored topics can a
//! filter match" without looking at the others.
//!
//! Guarantees: every walk (insert, remove, match, subtree collection) is a
//! loop over an explicit stack or the topic's levels — nothing recurses on
//! a depth a client chooses; a removal prunes the branches it empties, so
//! memory follows the topics stored, not the topics ever stored. Matching
//! follows MQTT 3.1.1 section 4.7 exactly as
//! [`crate::router::topic::filter_matches`] does (including: a wildcard
//! first level never matches a topic starting with `$`), and a unit test
//! checks the two agree.
//!
//! Not guaranteed: any order of the results.

use std::collections::HashMap;

/// Index of the root node in the arena.
const ROOT: usize = 0;

/// One level of the trie.
struct Node<V> {
    /// Next levels by name.
    children: HashMap<Box<str>, usize>,
    /// The value of the topic that ends here, if one is stored.
    value: Option<V>,
    /// The node above (the root points to itself), for pruning.
    parent: usize,
    /// This node's level name, to unlink it from its parent.
    level: Box<str>,
}

impl<V> Node<V> {
    fn new(parent: usize, level: &str) -> Node<V> {
        Node {
            children: HashMap::new(),
            value: None,
            parent,
            level: level.into(),
        }
    }
}

/// Topic names with a value each (the message itself, or just the topic
/// when the payloads live elsewhere).
pub struct TopicIndex<V> {
    /// Every node; freed slots are reused.
    nodes: Vec<Node<V>>,
    /// Freed slots of `nodes`.
    free: Vec<usize>,
    /// Topics stored.
    len: usize,
}

impl<V> Default for TopicIndex<V> {
    fn default() -> TopicIndex<V> {
        TopicIndex {
            nodes: vec![Node::new(ROOT, "")],
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<V> TopicIndex<V> {
    /// Number of topics stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no topic is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every topic.
    pub fn clear(&mut self) {
        *self = TopicIndex::default();
    }

    /// Stores `value` under `topic`; returns the value it replaces.
    pub fn insert(&mut self, topic: &str, value: V) -> Option<V> {
        let mut at = ROOT;
        for level in topic.split('/') {
            at = match self.nodes[at].children.get(level) {
                Some(&child) => child,
                None => self.add_child(at, level),
            };
        }
        let previous = self.nodes[at].value.replace(value);
        if previous.is_none() {
            self.len += 1;
        }
        previous
    }

    /// The value stored under `topic`.
    pub fn get(&self, topic: &str) -> Option<&V> {
        self.find(topic)
            .and_then(|at| self.nodes[at].value.as_ref())
    }

    /// Removes `topic`; returns its value.
    pub fn remove(&mut self, topic: &str) -> Option<V> {
        let at = self.find(topic)?;
        let value = self.nodes[at].value.take()?;
        self.len -= 1;
        self.prune(at);
        Some(value)
    }

    /// Every stored value whose topic `filter` matches.
    pub fn matching(&self, filter: &str) -> Vec<&V> {
        let levels: Vec<&str> = filter.split('/').collect();
        let mut out = Vec::new();
        // (node, index of the filter level to match against its children)
        let mut stack = vec![(ROOT, 0usize)];
        while let Some((at, depth)) = stack.pop() {
            let Some(&level) = levels.get(depth) else {
                out.extend(self.nodes[at].value.as_ref());
                continue;
            };
            let node = &self.nodes[at];
            match level {
                "#" => {
                    // `a/#` matches `a` itself too (not at the root).
                    if at != ROOT {
                        out.extend(node.value.as_ref());
                    }
                    for (name, &child) in &node.children {
                        if !(at == ROOT && name.starts_with('$')) {
                            self.collect_subtree(child, &mut out);
                        }
                    }
                }
                "+" => {
                    for (name, &child) in &node.children {
                        if !(at == ROOT && name.starts_with('$')) {
                            stack.push((child, depth + 1));
                        }
                    }
                }
                exact => {
                    if let Some(&child) = node.children.get(exact) {
                        stack.push((child, depth + 1));
                    }
                }
            }
        }
        out
    }

    /// Every value at or below `top`, with an explicit stack.
    fn collect_subtree<'a>(&'a self, top: usize, out: &mut Vec<&'a V>) {
        let mut stack = vec![top];
        while let Some(at) = stack.pop() {
            let node = &self.nodes[at];
            out.extend(node.value.as_ref());
            stack.extend(node.children.values().copied());
        }
    }

    fn find(&self, topic: &str) -> Option<usize> {
        let mut at = ROOT;
        for level in topic.split('/') {
            at = *self.nodes[at].children.get(level)?;
        }
        Some(at)
    }

    fn add_child(&mut self, parent: usize, level: &str) -> usize {
        let node = Node::new(parent, level);
        let id = match self.free.pop() {
            Some(id) => {
                self.nodes[id] = node;
                id
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.nodes[parent].children.insert(level.into(), id);
        id
    }

    /// Unlinks `at` and every ancestor left without value or children.
    fn prune(&mut self, mut at: usize) {
        while at != ROOT && self.nodes[at].value.is_none() && self.nodes[at].children.is_empty() {
            let parent = self.nodes[at].parent;
            let level = std::mem::take(&mut self.nodes[at].level);
            self.nodes[parent].children.remove(&level);
            self.nodes[at].children = HashMap::new();
            self.free.push(at);
            at = parent;
        }
        if self.len == 0 {
            // Give the arena's memory back once everything is gone.
            self.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic::filter_matches;

    fn sorted(index: &TopicIndex<String>, filter: &str) -> Vec<String> {
        let mut got: Vec<String> = index.matching(filter).into_iter().cloned().collect();
        got.sort();
        got
    }

    const TOPICS: [&str; 12] = [
        "a", "a/b", "a/b/c", "a/c", "b", "/", "", "a//b", "$SYS/x", "$SYS", "x/$y", "/a",
    ];

    #[test]
    fn agrees_with_filter_matches() {
        let mut index = TopicIndex::default();
        for topic in TOPICS {
            index.insert(topic, topic.to_string());
        }
        for filter in [
            "#", "+", "a", "a/#", "a/+", "a/+/c", "+/+", "/#", "+/#", "$SYS/#", "$SYS", "+/$y",
            "a//b", "a/+/+", "#/x", "", "x/#", "/+",
        ] {
            let mut expected: Vec<String> = TOPICS
                .iter()
                .filter(|t| filter_matches(filter, t))
                .map(|t| t.to_string())
                .collect();
            expected.sort();
            assert_eq!(sorted(&index, filter), expected, "filter {filter:?}");
        }
    }

    #[test]
    fn replace_remove_and_prune() {
        let mut index = TopicIndex::default();
        assert_eq!(index.insert("a/b/c", 1), None);
        assert_eq!(index.insert("a/b/c", 2), Some(1));
        assert_eq!(index.insert("a/b", 3), None);
        assert_eq!(index.len(), 2);
        assert_eq!(index.remove("a/b/c"), Some(2));
        assert_eq!(index.remove("a/b/c"), None);
        assert_eq!(index.remove("a"), None);
        assert_eq!(index.get("a/b"), Some(&3));
        // The emptied `c` node was pruned, `a/b` kept.
        assert_eq!(index.nodes.len() - index.free.len(), 3);
        assert_eq!(index.remove("a/b"), Some(3));
        assert!(index.is_empty());
        assert_eq!(index.nodes.len(), 1);
    }

    #[test]
    fn deep_topics_need_no_recursion() {
        let mut index = TopicIndex::default();
        let deep = "/".repeat(65_000);
        index.insert(&deep, ());
        assert_eq!(index.matching("#").len(), 1);
        assert_eq!(index.matching(&deep).len(), 1);
        assert_eq!(index.remove(&deep), Some(()));
        assert!(index.is_empty());
    }
}
