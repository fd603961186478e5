//! The subscription tree: topic filters by level, each node holding the
//! clients subscribed to the filter that ends there.
//!
//! Matching a topic walks one path per wildcard branch, so its cost grows
//! with the topic's depth and the wildcards present, not with the number of
//! subscriptions.

use std::collections::HashMap;

use crate::message::{ClientId, Qos};

/// Subscribers of one filter, with the QoS each was granted.
type Subscribers = HashMap<ClientId, Qos>;

#[derive(Default, Debug)]
struct Level {
    /// Exact-name children.
    children: HashMap<Box<str>, Level>,
    /// The `+` child.
    single: Option<Box<Level>>,
    /// Subscribers of `<path>/#` (which also matches `<path>` itself).
    multi: Subscribers,
    /// Subscribers of the filter that ends exactly here.
    exact: Subscribers,
}

impl Level {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.single.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }

    /// The subscriber set for the filter whose remaining levels are `levels`,
    /// creating the path.
    fn subscribers_mut<'a>(
        &mut self,
        mut levels: impl Iterator<Item = &'a str>,
    ) -> &mut Subscribers {
        match levels.next() {
            None => &mut self.exact,
            Some("#") => &mut self.multi,
            Some("+") => self
                .single
                .get_or_insert_with(Default::default)
                .subscribers_mut(levels),
            Some(name) => self
                .children
                .entry(name.into())
                .or_default()
                .subscribers_mut(levels),
        }
    }

    /// Removes `client` from the filter; prunes levels left empty.
    fn remove<'a>(&mut self, mut levels: impl Iterator<Item = &'a str>, client: &str) -> bool {
        match levels.next() {
            None => self.exact.remove(client).is_some(),
            Some("#") => self.multi.remove(client).is_some(),
            Some("+") => {
                let Some(single) = self.single.as_mut() else {
                    return false;
                };
                let removed = single.remove(levels, client);
                if single.is_empty() {
                    self.single = None;
                }
                removed
            }
            Some(name) => {
                let Some(child) = self.children.get_mut(name) else {
                    return false;
                };
                let removed = child.remove(levels, client);
                if child.is_empty() {
                    self.children.remove(name);
                }
                removed
            }
        }
    }

    fn collect_filters<'a>(&'a self, path: &mut Vec<&'a str>, out: &mut Vec<String>) {
        if !self.exact.is_empty() {
            out.push(path.join("/"));
        }
        if !self.multi.is_empty() {
            path.push("#");
            out.push(path.join("/"));
            path.pop();
        }
        if let Some(single) = &self.single {
            path.push("+");
            single.collect_filters(path, out);
            path.pop();
        }
        for (name, child) in &self.children {
            path.push(name);
            child.collect_filters(path, out);
            path.pop();
        }
    }

    fn collect(&self, levels: &[&str], skip_wildcards: bool, out: &mut Matches) {
        if !skip_wildcards {
            out.add_all(&self.multi);
        }
        let Some((first, rest)) = levels.split_first() else {
            out.add_all(&self.exact);
            return;
        };
        if let Some(child) = self.children.get(*first) {
            child.collect(rest, false, out);
        }
        if let (Some(single), false) = (&self.single, skip_wildcards) {
            single.collect(rest, false, out);
        }
    }
}

/// What a subscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribeOutcome {
    /// The (filter, client) pair did not exist before.
    pub new_subscription: bool,
    /// Nobody subscribed to this filter before.
    pub new_filter: bool,
}

/// What an unsubscribe changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubscribeOutcome {
    /// The (filter, client) pair existed.
    pub removed: bool,
    /// Nobody subscribes to this filter any more.
    pub filter_gone: bool,
}

/// The clients a topic matched, each once, at the highest QoS among its
/// matching subscriptions (MQTT-3.3.5-1).
#[derive(Default, Debug)]
pub struct Matches {
    best: HashMap<ClientId, Qos>,
}

impl Matches {
    fn add_all(&mut self, subscribers: &Subscribers) {
        for (client, &qos) in subscribers {
            self.best
                .entry(client.clone())
                .and_modify(|q| *q = (*q).max(qos))
                .or_insert(qos);
        }
    }

    /// True when nobody matched.
    pub fn is_empty(&self) -> bool {
        self.best.is_empty()
    }
}

impl IntoIterator for Matches {
    type Item = (ClientId, Qos);
    type IntoIter = std::collections::hash_map::IntoIter<ClientId, Qos>;

    /// (client, granted QoS) pairs, one per client.
    fn into_iter(self) -> Self::IntoIter {
        self.best.into_iter()
    }
}

/// All subscriptions of this node's sessions (online and offline persistent).
#[derive(Default, Debug)]
pub struct SubscriptionTree {
    root: Level,
    count: usize,
}

impl SubscriptionTree {
    /// Adds or updates (`filter`, `client`) with `qos`.
    /// The filter must be valid ([`super::topic::is_valid_filter`]).
    pub fn subscribe(&mut self, filter: &str, client: &ClientId, qos: Qos) -> SubscribeOutcome {
        let subscribers = self.root.subscribers_mut(filter.split('/'));
        let new_filter = subscribers.is_empty();
        let new_subscription = subscribers.insert(client.clone(), qos).is_none();
        if new_subscription {
            self.count += 1;
        }
        SubscribeOutcome {
            new_subscription,
            new_filter,
        }
    }

    /// Removes (`filter`, `client`).
    pub fn unsubscribe(&mut self, filter: &str, client: &str) -> UnsubscribeOutcome {
        let removed = self.root.remove(filter.split('/'), client);
        if removed {
            self.count -= 1;
        }
        let filter_gone = removed && !self.has_filter(filter);
        UnsubscribeOutcome {
            removed,
            filter_gone,
        }
    }

    /// True when `filter` has at least one subscriber.
    pub fn has_filter(&self, filter: &str) -> bool {
        let mut level = &self.root;
        let mut parts = filter.split('/');
        loop {
            match parts.next() {
                None => return !level.exact.is_empty(),
                Some("#") => return !level.multi.is_empty(),
                Some("+") => match &level.single {
                    Some(single) => level = single,
                    None => return false,
                },
                Some(name) => match level.children.get(name) {
                    Some(child) => level = child,
                    None => return false,
                },
            }
        }
    }

    /// Every filter with at least one subscriber.
    pub fn filters(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.root.collect_filters(&mut Vec::new(), &mut out);
        out
    }

    /// Every client with a subscription matching `topic`.
    /// Topics starting with `$` are not matched by filters starting with a
    /// wildcard (MQTT-4.7.2-1).
    pub fn matches(&self, topic: &str) -> Matches {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Matches::default();
        self.root.collect(&levels, topic.starts_with('$'), &mut out);
        out
    }

    /// Number of (filter, client) subscriptions.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when there are no subscriptions.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::topic::filter_matches;

    fn id(s: &str) -> ClientId {
        s.into()
    }

    fn matched(tree: &SubscriptionTree, topic: &str) -> Vec<(String, Qos)> {
        let mut v: Vec<_> = tree
            .matches(topic)
            .into_iter()
            .map(|(c, q)| (c.to_string(), q))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn overlapping_subscriptions_give_one_match_at_highest_qos() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("a/#", &id("c1"), Qos::AtLeastOnce);
        tree.subscribe("a/b", &id("c1"), Qos::ExactlyOnce);
        tree.subscribe("a/+", &id("c1"), Qos::AtMostOnce);
        assert_eq!(matched(&tree, "a/b"), vec![("c1".into(), Qos::ExactlyOnce)]);
        assert_eq!(tree.len(), 3);
    }

    #[test]
    fn filter_changes_are_reported_and_listed() {
        let mut tree = SubscriptionTree::default();
        assert!(tree.subscribe("a/#", &id("c1"), Qos::AtMostOnce).new_filter);
        assert!(!tree.subscribe("a/#", &id("c2"), Qos::AtMostOnce).new_filter);
        tree.subscribe("+/b", &id("c1"), Qos::AtMostOnce);
        tree.subscribe("", &id("c1"), Qos::AtMostOnce);
        let mut filters = tree.filters();
        filters.sort();
        assert_eq!(filters, vec!["", "+/b", "a/#"]);
        assert!(!tree.unsubscribe("a/#", "c1").filter_gone);
        assert!(tree.unsubscribe("a/#", "c2").filter_gone);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("#", &id("all"), Qos::AtMostOnce);
        tree.subscribe("+/x", &id("plus"), Qos::AtMostOnce);
        tree.subscribe("$SYS/#", &id("sys"), Qos::AtMostOnce);
        assert_eq!(
            matched(&tree, "$SYS/x"),
            vec![("sys".into(), Qos::AtMostOnce)]
        );
        assert_eq!(matched(&tree, "a/x").len(), 2);
    }

    #[test]
    fn unsubscribe_prunes_and_counts() {
        let mut tree = SubscriptionTree::default();
        tree.subscribe("a/+/c", &id("c1"), Qos::AtMostOnce);
        assert!(!tree.unsubscribe("a/+/d", "c1").removed);
        assert!(tree.unsubscribe("a/+/c", "c1").filter_gone);
        assert!(tree.is_empty());
        assert!(tree.root.is_empty());
        assert!(matched(&tree, "a/b/c").is_empty());
    }

    #[test]
    fn tree_agrees_with_the_reference_matcher() {
        let filters = [
            "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "+/+/c", "a/+/#", "/", "+/", "$SYS/#",
            "a//b",
        ];
        let topics = [
            "a",
            "a/b",
            "a/b/c",
            "b",
            "/",
            "a//b",
            "$SYS/load",
            "x/b",
            "a/",
            "",
        ];
        let mut tree = SubscriptionTree::default();
        for f in filters {
            tree.subscribe(f, &id(f), Qos::AtMostOnce);
        }
        for t in topics {
            let mut expected: Vec<String> = filters
                .iter()
                .filter(|f| filter_matches(f, t))
                .map(|f| f.to_string())
                .collect();
            expected.sort();
            let got: Vec<String> = matched(&tree, t).into_iter().map(|(c, _)| c).collect();
            assert_eq!(got, expected, "topic {t:?}");
        }
    }
}
