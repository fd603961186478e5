//! Tests of the subscription tree: behaviour, the reference matcher, and
//! depth far beyond any stack.

use super::*;
use crate::message::Qos;
use crate::router::topic::filter_matches;

fn id(s: &str) -> ClientId {
    s.into()
}

fn matched(tree: &SubscriptionTree, topic: &str) -> Vec<(String, Qos)> {
    let mut v: Vec<_> = tree
        .matches(topic, None)
        .into_iter()
        .map(|(c, m)| (c.to_string(), m.qos))
        .collect();
    v.sort();
    v
}

#[test]
fn overlapping_subscriptions_give_one_match_at_highest_qos() {
    let mut tree = SubscriptionTree::default();
    tree.subscribe("a/#", &id("c1"), Subscription::at(Qos::AtLeastOnce));
    tree.subscribe("a/b", &id("c1"), Subscription::at(Qos::ExactlyOnce));
    tree.subscribe("a/+", &id("c1"), Subscription::at(Qos::AtMostOnce));
    assert_eq!(matched(&tree, "a/b"), vec![("c1".into(), Qos::ExactlyOnce)]);
    assert_eq!(tree.len(), 3);
}

#[test]
fn filter_changes_are_reported_and_listed() {
    let mut tree = SubscriptionTree::default();
    assert!(
        tree.subscribe("a/#", &id("c1"), Subscription::at(Qos::AtMostOnce))
            .new_filter
    );
    assert!(
        !tree
            .subscribe("a/#", &id("c2"), Subscription::at(Qos::AtMostOnce))
            .new_filter
    );
    tree.subscribe("+/b", &id("c1"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("", &id("c1"), Subscription::at(Qos::AtMostOnce));
    let mut filters = tree.filters();
    filters.sort();
    assert_eq!(filters, vec!["", "+/b", "a/#"]);
    assert!(!tree.unsubscribe("a/#", "c1").filter_gone);
    assert!(tree.unsubscribe("a/#", "c2").filter_gone);
}

#[test]
fn dollar_topics_skip_leading_wildcards() {
    let mut tree = SubscriptionTree::default();
    tree.subscribe("#", &id("all"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("+/x", &id("plus"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("$SYS/#", &id("sys"), Subscription::at(Qos::AtMostOnce));
    assert_eq!(
        matched(&tree, "$SYS/x"),
        vec![("sys".into(), Qos::AtMostOnce)]
    );
    assert_eq!(matched(&tree, "a/x").len(), 2);
}

#[test]
fn unsubscribe_prunes_and_counts() {
    let mut tree = SubscriptionTree::default();
    tree.subscribe("a/+/c", &id("c1"), Subscription::at(Qos::AtMostOnce));
    assert!(!tree.unsubscribe("a/+/d", "c1").removed);
    assert!(tree.unsubscribe("a/+/c", "c1").filter_gone);
    assert!(tree.is_empty());
    assert!(tree.root.is_empty());
    assert!(matched(&tree, "a/b/c").is_empty());
}

#[test]
fn tree_agrees_with_the_reference_matcher() {
    let filters = [
        "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "+/+/c", "a/+/#", "/", "+/", "$SYS/#", "a//b",
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
        tree.subscribe(f, &id(f), Subscription::at(Qos::AtMostOnce));
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

/// `n` empty levels: `n - 1` slashes.
fn deep(n: usize) -> String {
    "/".repeat(n - 1)
}

#[test]
fn a_hundred_thousand_levels_do_not_overflow_the_stack() {
    let filter = deep(100_000);
    let wild = format!("{}/+/#", deep(99_998));
    let mut tree = SubscriptionTree::default();
    assert!(
        tree.subscribe(&filter, &id("deep"), Subscription::at(Qos::AtLeastOnce))
            .new_filter
    );
    tree.subscribe(&wild, &id("wild"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("#", &id("all"), Subscription::at(Qos::AtMostOnce));
    assert!(tree.has_filter(&filter));
    assert_eq!(
        matched(&tree, &filter),
        vec![
            ("all".into(), Qos::AtMostOnce),
            ("deep".into(), Qos::AtLeastOnce),
            ("wild".into(), Qos::AtMostOnce),
        ]
    );
    let mut filters = tree.filters();
    filters.sort();
    let mut expected = vec!["#".to_string(), filter.clone(), wild.clone()];
    expected.sort();
    assert_eq!(filters, expected);
    assert!(tree.unsubscribe(&filter, "deep").filter_gone);
    assert!(!tree.has_filter(&filter));
    assert_eq!(matched(&tree, &filter).len(), 2);
    assert!(tree.unsubscribe(&wild, "wild").filter_gone);
    assert_eq!(tree.len(), 1);
    // Only `#` is left: the deep paths were pruned.
    assert_eq!(tree.root.children.len(), 0);
    // Dropping a tree that is still deep must not recurse either.
    tree.subscribe(&filter, &id("deep"), Subscription::at(Qos::AtMostOnce));
    drop(tree);
}

#[test]
fn a_deep_tree_runs_on_a_small_stack() {
    // A 64 KiB thread stack: any recursion per level would overflow it.
    std::thread::Builder::new()
        .stack_size(64 * 1024)
        .spawn(|| {
            let filter = deep(20_000);
            let mut tree = SubscriptionTree::default();
            tree.subscribe(&filter, &id("c"), Subscription::at(Qos::AtMostOnce));
            assert_eq!(tree.matches(&filter, None).into_iter().count(), 1);
            assert_eq!(tree.filters().len(), 1);
            assert!(tree.unsubscribe(&filter, "c").removed);
            tree.subscribe(&filter, &id("c"), Subscription::at(Qos::AtMostOnce));
        })
        .expect("thread spawned")
        .join()
        .expect("no stack overflow");
}

#[test]
fn unsubscribe_prunes_only_what_it_empties() {
    let mut tree = SubscriptionTree::default();
    tree.subscribe("a/b/c/d", &id("c1"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("a/b", &id("c2"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("a/b/+/#", &id("c3"), Subscription::at(Qos::AtMostOnce));
    tree.subscribe("a/b/c/d", &id("c4"), Subscription::at(Qos::AtMostOnce));
    assert!(!tree.unsubscribe("a/b/c/d", "c1").filter_gone);
    assert!(tree.unsubscribe("a/b/c/d", "c4").filter_gone);
    // `a/b` still holds c2 and the `+` branch.
    assert!(tree.has_filter("a/b"));
    assert!(tree.has_filter("a/b/+/#"));
    let a = &tree.root.children["a"];
    let b = &a.children["b"];
    assert!(b.children.is_empty(), "the emptied c/d path is pruned");
    assert!(tree.unsubscribe("a/b/+/#", "c3").filter_gone);
    assert!(tree.root.children["a"].children["b"].single.is_none());
    assert!(tree.unsubscribe("a/b", "c2").filter_gone);
    assert!(tree.root.is_empty());
    assert!(tree.is_empty());
    // Removing what is not there changes nothing.
    tree.subscribe("x/y", &id("c1"), Subscription::at(Qos::AtMostOnce));
    assert!(!tree.unsubscribe("x/y", "c2").removed);
    assert!(!tree.unsubscribe("x/y/z", "c1").removed);
    assert!(!tree.unsubscribe("x/#", "c1").removed);
    assert!(tree.has_filter("x/y"));
}

/// Random subscribe/unsubscribe sequences against a plain list of pairs:
/// matches, filters and counts agree, and an emptied tree is pruned to
/// nothing.
mod against_a_model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const FILTERS: [&str; 12] = [
        "#", "+", "a", "a/#", "a/+", "a/b", "+/b", "a/b/c", "a/+/#", "/", "a//b", "+/+/+",
    ];
    const TOPICS: [&str; 7] = ["a", "a/b", "a/b/c", "b", "/", "a//b", "x/b"];

    proptest! {
        #[test]
        fn tree_matches_model(ops in proptest::collection::vec((any::<bool>(), 0..12usize, 0..3u8), 0..60)) {
            let mut tree = SubscriptionTree::default();
            let mut model: BTreeMap<(String, String), ()> = BTreeMap::new();
            for (add, f, c) in ops {
                let (filter, client) = (FILTERS[f], format!("c{c}"));
                let key = (filter.to_string(), client.clone());
                if add {
                    let outcome = tree.subscribe(filter, &id(&client), Subscription::at(Qos::AtMostOnce));
                    prop_assert_eq!(outcome.new_subscription, !model.contains_key(&key));
                    model.insert(key, ());
                } else {
                    let outcome = tree.unsubscribe(filter, &client);
                    prop_assert_eq!(outcome.removed, model.remove(&key).is_some());
                    let still = model.keys().any(|(f, _)| f == filter);
                    prop_assert_eq!(outcome.filter_gone, outcome.removed && !still);
                }
                prop_assert_eq!(tree.len(), model.len());
            }
            for topic in TOPICS {
                let mut expected: Vec<String> = model
                    .keys()
                    .filter(|(f, _)| filter_matches(f, topic))
                    .map(|(_, c)| c.clone())
                    .collect();
                expected.sort();
                expected.dedup();
                let got: Vec<String> = matched(&tree, topic).into_iter().map(|(c, _)| c).collect();
                prop_assert_eq!(got, expected);
            }
            let mut filters = tree.filters();
            filters.sort();
            let mut expected: Vec<String> = model.keys().map(|(f, _)| f.clone()).collect();
            expected.dedup();
            prop_assert_eq!(filters, expected);
            for (filter, client) in model.keys() {
                tree.unsubscribe(filter, client);
            }
            prop_assert!(tree.root.is_empty());
        }
    }
}

#[test]
fn no_local_skips_the_publisher_and_options_merge() {
    use std::num::NonZeroU32;
    let mut tree = SubscriptionTree::default();
    let no_local = Subscription {
        no_local: true,
        id: NonZeroU32::new(1),
        ..Subscription::at(Qos::AtLeastOnce)
    };
    tree.subscribe("a/#", &id("me"), no_local);
    tree.subscribe("a/#", &id("other"), no_local);
    let me = id("me");
    let got: Vec<String> = tree
        .matches("a/b", Some(&me))
        .into_iter()
        .map(|(c, _)| c.to_string())
        .collect();
    assert_eq!(got, ["other"], "No Local: not sent back to its publisher");
    // Another subscription of the publisher that is not No Local matches.
    let plain = Subscription {
        retain_as_published: true,
        id: NonZeroU32::new(2),
        ..Subscription::at(Qos::AtMostOnce)
    };
    tree.subscribe("a/b", &me, plain);
    let mine = tree
        .matches("a/b", Some(&me))
        .into_iter()
        .find(|(c, _)| *c == me)
        .map(|(_, m)| m)
        .unwrap();
    assert_eq!(
        (mine.qos, mine.retain_as_published),
        (Qos::AtMostOnce, true)
    );
    assert_eq!(mine.ids, [2]);
    let mut all: Vec<u32> = tree
        .matches("a/b", None)
        .into_iter()
        .find(|(c, _)| *c == me)
        .map(|(_, m)| m.ids)
        .unwrap();
    all.sort();
    assert_eq!(all, [1, 2]);
}
