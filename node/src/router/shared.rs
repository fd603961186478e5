//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2, for
//! 5.0 and 3.1.1 clients alike): the members of a group subscribe to the
//! filter together, and each message matching it goes to one of them.
//!
//! Guaranteed on one node: each message a group's filter matches is given
//! to exactly one member of the group, chosen by the configured
//! [`Strategy`] among the members that are connected (an offline
//! persistent member is chosen only when none is connected, and then
//! queues the message as for any subscription). A member that disconnects
//! hands its unacknowledged shared messages back to be given to another
//! member (see `crate::session::active`). Not served: shared subscriptions
//! across a cluster (a node with `--redis` refuses them, SUBACK 0x9E for
//! 5.0, 0x80 for 3.1.1); one member per node would break "one member per
//! group", so the node does not pretend.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::message::ClientId;
use crate::subscription::Subscription;

use super::tree::SubscriptionTree;

/// Prefix of a shared subscription's filter.
pub const SHARE_PREFIX: &str = "$share/";

/// How a group's member is picked for each message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// The next member in turn.
    #[default]
    RoundRobin,
    /// Any member, at random.
    Random,
    /// The member chosen last, for as long as it is connected.
    Sticky,
}

/// A `$share/{group}/{filter}` filter taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFilter<'a> {
    /// The share name.
    pub group: &'a str,
    /// The topic filter the group subscribes to.
    pub filter: &'a str,
}

/// Why a `$share/` filter is not a valid shared subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidShare;

/// Splits a shared subscription's filter; `Ok(None)` for a filter that is
/// not one. The share name must be non-empty without `/`, `+` or `#`, and
/// the filter after it non-empty (5.0 §4.8.2).
pub fn parse(filter: &str) -> Result<Option<SharedFilter<'_>>, InvalidShare> {
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
        return Ok(None);
    };
    let (group, filter) = rest.split_once('/').ok_or(InvalidShare)?;
    if group.is_empty() || group.contains(['+', '#']) || filter.is_empty() {
        return Err(InvalidShare);
    }
    Ok(Some(SharedFilter { group, filter }))
}

/// One group on one filter.
#[derive(Debug, Default)]
struct Group {
    /// Members in the order they joined, with their terms.
    members: Vec<(ClientId, Subscription)>,
    /// Turns taken (round-robin) or the member chosen last (sticky).
    cursor: AtomicUsize,
}

/// The key of a group: its whole `$share/...` filter.
type GroupKey = Arc<str>;

/// Every shared subscription of this node.
#[derive(Debug, Default)]
pub struct SharedSubscriptions {
    /// Inner filter → group keys subscribed to it, as the "clients" of a
    /// tree, so matching a topic costs what matching a filter costs.
    tree: SubscriptionTree,
    groups: HashMap<GroupKey, Group>,
    random: RandomState,
}

/// A member chosen for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The member.
    pub client_id: ClientId,
    /// Its subscription to the group.
    pub subscription: Subscription,
    /// The group (`$share/{group}/{filter}`), so the delivery can be given
    /// to another member if this one leaves before acknowledging it.
    pub group: Arc<str>,
}

impl SharedSubscriptions {
    /// Adds (or updates) `client` in the group of `full` (a valid
    /// `$share/` filter split as `shared`). True when the group is new.
    pub fn subscribe(
        &mut self,
        full: &str,
        shared: &SharedFilter<'_>,
        client: &ClientId,
        subscription: Subscription,
    ) -> bool {
        let key: GroupKey = full.into();
        let new_group = !self.groups.contains_key(&key);
        if new_group {
            self.tree
                .subscribe(shared.filter, &key, Subscription::at(subscription.qos));
        }
        let group = self.groups.entry(key).or_default();
        match group.members.iter_mut().find(|(c, _)| c == client) {
            Some(member) => member.1 = subscription,
            None => group.members.push((client.clone(), subscription)),
        }
        new_group
    }

    /// Removes `client` from the group of `full`; true when it was in it.
    pub fn unsubscribe(&mut self, full: &str, shared: &SharedFilter<'_>, client: &str) -> bool {
        let Some(group) = self.groups.get_mut(full) else {
            return false;
        };
        let before = group.members.len();
        group.members.retain(|(c, _)| &**c != client);
        let removed = group.members.len() < before;
        if group.members.is_empty() {
            self.groups.remove(full);
            self.tree.unsubscribe(shared.filter, full);
        }
        removed
    }

    /// Number of (group, member) subscriptions.
    pub fn len(&self) -> usize {
        self.groups.values().map(|g| g.members.len()).sum()
    }

    /// True when no client holds a shared subscription.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Every group's full filter.
    pub fn filters(&self) -> Vec<String> {
        self.groups.keys().map(|k| k.to_string()).collect()
    }

    /// One member of every group whose filter matches `topic`, picked by
    /// `strategy` among those `connected` says are, else among all; never
    /// `except` (a member handing its messages back). (No Local is a
    /// protocol error on a shared subscription, 5.0 §3.8.3.1.)
    pub fn choose(
        &self,
        topic: &str,
        strategy: Strategy,
        connected: impl Fn(&ClientId) -> bool,
        except: Option<&ClientId>,
    ) -> Vec<Chosen> {
        let mut out = Vec::new();
        for (key, _) in self.tree.matches(topic, None) {
            if let Some(chosen) = self.choose_in(&key, strategy, &connected, except) {
                out.push(chosen);
            }
        }
        out
    }

    /// One member of the group `key` (see [`Self::choose`]).
    pub fn choose_in(
        &self,
        key: &str,
        strategy: Strategy,
        connected: &impl Fn(&ClientId) -> bool,
        except: Option<&ClientId>,
    ) -> Option<Chosen> {
        let (key, group) = self.groups.get_key_value(key)?;
        let eligible = |(c, _): &&(ClientId, Subscription)| Some(c) != except;
        let online: Vec<usize> = (0..group.members.len())
            .filter(|&i| eligible(&&group.members[i]) && connected(&group.members[i].0))
            .collect();
        let pool: Vec<usize> = match online.is_empty() {
            false => online,
            true => (0..group.members.len())
                .filter(|&i| eligible(&&group.members[i]))
                .collect(),
        };
        if pool.is_empty() {
            return None;
        }
        let index = match strategy {
            Strategy::RoundRobin => pool[group.cursor.fetch_add(1, Ordering::Relaxed) % pool.len()],
            Strategy::Random => {
                let n = self
                    .random
                    .hash_one(group.cursor.fetch_add(1, Ordering::Relaxed));
                pool[(n % pool.len() as u64) as usize]
            }
            Strategy::Sticky => {
                let last = group.cursor.load(Ordering::Relaxed);
                let index = if pool.contains(&last) { last } else { pool[0] };
                group.cursor.store(index, Ordering::Relaxed);
                index
            }
        };
        let (client_id, subscription) = &group.members[index];
        Some(Chosen {
            client_id: client_id.clone(),
            subscription: *subscription,
            group: key.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Qos;

    fn id(s: &str) -> ClientId {
        s.into()
    }

    fn group_of(subs: &mut SharedSubscriptions, full: &str, members: &[&str]) {
        let shared = parse(full).unwrap().unwrap();
        for m in members {
            subs.subscribe(full, &shared, &id(m), Subscription::at(Qos::AtLeastOnce));
        }
    }

    /// `n` picks in the group `key`.
    fn picks(subs: &SharedSubscriptions, key: &str, strategy: Strategy, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let chosen = subs.choose_in(key, strategy, &|_| true, None).unwrap();
                chosen.client_id.to_string()
            })
            .collect()
    }

    #[test]
    fn share_names_and_filters_are_checked() {
        assert_eq!(parse("a/b"), Ok(None));
        let s = parse("$share/g/a/+").unwrap().unwrap();
        assert_eq!((s.group, s.filter), ("g", "a/+"));
        for bad in [
            "$share/",
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/g+/a",
            "$share/#/a",
        ] {
            assert_eq!(parse(bad), Err(InvalidShare), "{bad}");
        }
    }

    #[test]
    fn each_message_goes_to_one_member_per_group() {
        let mut subs = SharedSubscriptions::default();
        group_of(&mut subs, "$share/g/a/+", &["m1", "m2", "m3"]);
        group_of(&mut subs, "$share/h/a/#", &["x"]);
        let chosen = subs.choose("a/b", Strategy::RoundRobin, |_| true, None);
        assert_eq!(chosen.len(), 2, "one per group");
        let mut groups: Vec<&str> = chosen.iter().map(|c| &*c.group).collect();
        groups.sort();
        assert_eq!(groups, ["$share/g/a/+", "$share/h/a/#"]);
        let mut seen = picks(&subs, "$share/g/a/+", Strategy::RoundRobin, 3);
        seen.sort();
        assert_eq!(seen, ["m1", "m2", "m3"], "round robin visits every member");
        assert!(subs
            .choose("b", Strategy::RoundRobin, |_| true, None)
            .is_empty());
    }

    #[test]
    fn sticky_stays_and_offline_members_are_last_resort() {
        let mut subs = SharedSubscriptions::default();
        group_of(&mut subs, "$share/g/a/b", &["m1", "m2"]);
        let sticky = picks(&subs, "$share/g/a/b", Strategy::Sticky, 4);
        assert!(sticky.windows(2).all(|w| w[0] == w[1]), "{sticky:?}");
        // Only m2 connected: m2 every time; nobody connected: anyone.
        let only_m2 = |c: &ClientId| &**c == "m2";
        for _ in 0..4 {
            let chosen = subs.choose("a/b", Strategy::RoundRobin, only_m2, None);
            assert_eq!(&*chosen[0].client_id, "m2");
        }
        assert_eq!(
            subs.choose("a/b", Strategy::Random, |_| false, None).len(),
            1
        );
        // A member handing back is never chosen again for it.
        let m1 = id("m1");
        for _ in 0..4 {
            let chosen = subs.choose("a/b", Strategy::Random, |_| true, Some(&m1));
            assert_eq!(&*chosen[0].client_id, "m2");
        }
    }

    #[test]
    fn the_last_member_leaving_removes_the_group() {
        let mut subs = SharedSubscriptions::default();
        group_of(&mut subs, "$share/g/a/b", &["m1", "m2"]);
        let shared = parse("$share/g/a/b").unwrap().unwrap();
        assert!(subs.unsubscribe("$share/g/a/b", &shared, "m1"));
        assert!(!subs.unsubscribe("$share/g/a/b", &shared, "m1"));
        assert_eq!(subs.len(), 1);
        assert!(subs.unsubscribe("$share/g/a/b", &shared, "m2"));
        assert!(subs.is_empty());
        assert!(subs
            .choose("a/b", Strategy::RoundRobin, |_| true, None)
            .is_empty());
    }
}
