//! The subscription tree: topic filters by level, each node holding the
//! clients subscribed to the filter that ends there.
//!
//! Matching a topic walks one path per wildcard branch, so its cost grows
//! with the topic's depth and the wildcards present, not with the number of
//! subscriptions.
//!
//! Every walk (subscribe, unsubscribe, match, listing, and dropping the
//! tree) is a loop with an explicit stack, never a recursion: a filter's
//! depth is chosen by the client (65,535 levels fit in one packet), and the
//! thread stack must not be what bounds it. Memory used by a walk grows with
//! the depth of the filter or topic walked; the depth itself is bounded by
//! the configured topic limits before anything reaches the tree.

use std::collections::HashMap;
use std::fmt;

use crate::message::ClientId;
use crate::subscription::{Matched, Subscription};

/// Subscribers of one filter, with the terms each subscribed with.
type Subscribers = HashMap<ClientId, Subscription>;

#[derive(Default)]
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

impl Drop for Level {
    /// Dismantles the levels below iteratively: the derived drop would
    /// recurse once per level and overflow the stack on a deep filter.
    fn drop(&mut self) {
        let mut below: Vec<Level> = self.children.drain().map(|(_, child)| child).collect();
        below.extend(self.single.take().map(|single| *single));
        while let Some(mut level) = below.pop() {
            below.extend(level.children.drain().map(|(_, child)| child));
            below.extend(level.single.take().map(|single| *single));
            // `level` drops here with nothing below it.
        }
    }
}

impl fmt::Debug for Level {
    /// One level only: a derived `Debug` would recurse through the tree.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Level")
            .field("children", &self.children.len())
            .field("single", &self.single.is_some())
            .field("multi", &self.multi.len())
            .field("exact", &self.exact.len())
            .finish()
    }
}

/// Where removing one (filter, client) pair takes effect.
struct Removal {
    /// Levels walked from the root to the filter's subscriber set.
    depth: usize,
    /// The set is `multi` (the filter ends in `#`), not `exact`.
    multi: bool,
    /// When the removal leaves the levels below this depth empty: the depth
    /// of the deepest level that stays, whose edge down the path is cut.
    cut: Option<usize>,
}

impl Level {
    /// True when nothing is held here or below (tests check pruning).
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.single.is_none()
            && self.multi.is_empty()
            && self.exact.is_empty()
    }

    /// The child a filter level leads to.
    fn child(&self, part: &str) -> Option<&Level> {
        match part {
            "+" => self.single.as_deref(),
            name => self.children.get(name),
        }
    }

    /// True when this level holds something besides the child `part`.
    fn holds_more_than(&self, part: &str) -> bool {
        let (other_children, other_single) = match part {
            "+" => (!self.children.is_empty(), false),
            _ => (self.children.len() > 1, self.single.is_some()),
        };
        other_children || other_single || !self.multi.is_empty() || !self.exact.is_empty()
    }

    /// The subscriber set for `filter`, creating the path.
    fn subscribers_mut(&mut self, filter: &str) -> &mut Subscribers {
        let mut level = self;
        for part in filter.split('/') {
            level = match part {
                "#" => return &mut level.multi,
                "+" => level.single.get_or_insert_with(Default::default),
                name => level.children.entry(name.into()).or_default(),
            };
        }
        &mut level.exact
    }

    /// Plans removing `client` from `filter` (read-only walk); `None` when
    /// the pair does not exist.
    fn plan_removal(&self, filter: &str, client: &str) -> Option<Removal> {
        let mut level = self;
        let mut depth = 0;
        // The root always stays, whatever it holds.
        let mut deepest_kept = 0;
        let mut multi = false;
        for part in filter.split('/') {
            if part == "#" {
                multi = true;
                break;
            }
            let child = level.child(part)?;
            if level.holds_more_than(part) {
                deepest_kept = depth;
            }
            level = child;
            depth += 1;
        }
        let (set, other) = if multi {
            (&level.multi, &level.exact)
        } else {
            (&level.exact, &level.multi)
        };
        if !set.contains_key(client) {
            return None;
        }
        let last_stays = depth == 0
            || set.len() > 1
            || !other.is_empty()
            || !level.children.is_empty()
            || level.single.is_some();
        Some(Removal {
            depth,
            multi,
            cut: (!last_stays).then_some(deepest_kept),
        })
    }

    /// The level `steps` levels down `filter`'s path, if it exists.
    fn descend_mut(&mut self, filter: &str, steps: usize) -> Option<&mut Level> {
        let mut level = self;
        for part in filter.split('/').take(steps) {
            level = match part {
                "+" => level.single.as_deref_mut()?,
                name => level.children.get_mut(name)?,
            };
        }
        Some(level)
    }

    /// Removes `client` from `filter`; prunes the levels left empty.
    fn remove(&mut self, filter: &str, client: &str) -> bool {
        let Some(plan) = self.plan_removal(filter, client) else {
            return false;
        };
        if let Some(cut) = plan.cut {
            let Some(kept) = self.descend_mut(filter, cut) else {
                return false;
            };
            // Dropping the edge drops the emptied path below it (iteratively).
            return match filter.split('/').nth(cut) {
                Some("+") => kept.single.take().is_some(),
                Some(name) => kept.children.remove(name).is_some(),
                None => false,
            };
        }
        let Some(last) = self.descend_mut(filter, plan.depth) else {
            return false;
        };
        let set = if plan.multi {
            &mut last.multi
        } else {
            &mut last.exact
        };
        set.remove(client).is_some()
    }

    /// Every filter with subscribers at or below this level (depth first,
    /// explicit stack).
    fn collect_filters(&self, out: &mut Vec<String>) {
        let mut path: Vec<&str> = Vec::new();
        // (length of the parent's path, this level's name, the level)
        let mut stack: Vec<(usize, Option<&str>, &Level)> = vec![(0, None, self)];
        while let Some((parent_len, name, level)) = stack.pop() {
            path.truncate(parent_len);
            path.extend(name);
            if !level.exact.is_empty() {
                out.push(path.join("/"));
            }
            if !level.multi.is_empty() {
                path.push("#");
                out.push(path.join("/"));
                path.pop();
            }
            let len = path.len();
            if let Some(single) = &level.single {
                stack.push((len, Some("+"), single));
            }
            for (name, child) in &level.children {
                stack.push((len, Some(name), child));
            }
        }
    }

    /// Adds the subscribers of every filter matching the topic `levels`.
    /// `skip_wildcards`: the topic starts with `$`, so wildcards at the
    /// first level do not match it (MQTT-4.7.2-1).
    fn collect(&self, levels: &[&str], skip_wildcards: bool, out: &mut Matches) {
        // (level, topic levels consumed, wildcards skipped at this level)
        let mut stack = vec![(self, 0usize, skip_wildcards)];
        while let Some((level, consumed, skip)) = stack.pop() {
            if !skip {
                out.add_all(&level.multi);
            }
            let Some(name) = levels.get(consumed) else {
                out.add_all(&level.exact);
                continue;
            };
            if let Some(child) = level.children.get(*name) {
                stack.push((child, consumed + 1, false));
            }
            if let (Some(single), false) = (&level.single, skip) {
                stack.push((single, consumed + 1, false));
            }
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

/// The clients a topic matched, each once, with what its matching
/// subscriptions say together (see [`Matched`]; MQTT-3.3.5-1).
#[derive(Default, Debug)]
pub struct Matches {
    best: HashMap<ClientId, Matched>,
    /// The publishing client: its No Local subscriptions do not match.
    publisher: Option<ClientId>,
}

impl Matches {
    fn add_all(&mut self, subscribers: &Subscribers) {
        for (client, subscription) in subscribers {
            if subscription.no_local && self.publisher.as_ref() == Some(client) {
                continue;
            }
            self.best
                .entry(client.clone())
                .and_modify(|m| m.add(subscription))
                .or_insert_with(|| Matched::of(subscription));
        }
    }

    /// True when nobody matched.
    pub fn is_empty(&self) -> bool {
        self.best.is_empty()
    }
}

impl IntoIterator for Matches {
    type Item = (ClientId, Matched);
    type IntoIter = std::collections::hash_map::IntoIter<ClientId, Matched>;

    /// (client, what its subscriptions say) pairs, one per client.
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
    /// Adds or updates (`filter`, `client`) with `subscription`.
    /// The filter must be valid ([`super::topic::is_valid_filter`]).
    pub fn subscribe(
        &mut self,
        filter: &str,
        client: &ClientId,
        subscription: Subscription,
    ) -> SubscribeOutcome {
        let subscribers = self.root.subscribers_mut(filter);
        let new_filter = subscribers.is_empty();
        let new_subscription = subscribers.insert(client.clone(), subscription).is_none();
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
        let removed = self.root.remove(filter, client);
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
        for part in filter.split('/') {
            if part == "#" {
                return !level.multi.is_empty();
            }
            match level.child(part) {
                Some(child) => level = child,
                None => return false,
            }
        }
        !level.exact.is_empty()
    }

    /// Every filter with at least one subscriber.
    pub fn filters(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.root.collect_filters(&mut out);
        out
    }

    /// Every client with a subscription matching `topic`, published by
    /// `publisher` (whose No Local subscriptions do not match; `None` for
    /// messages no client published here).
    /// Topics starting with `$` are not matched by filters starting with a
    /// wildcard (MQTT-4.7.2-1).
    pub fn matches(&self, topic: &str, publisher: Option<&ClientId>) -> Matches {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = Matches {
            best: HashMap::new(),
            publisher: publisher.cloned(),
        };
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
mod tests;
