//! Recovering a dead node: adoption, wills, fencing, routes, the unread
//! inbox and its trimming.

use super::*;

#[tokio::test]
async fn a_persistent_session_is_adopted_and_its_unread_entries_queued() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/+"]));
    let control = entry("3-0", &[]);
    h.inbox(
        DEAD,
        vec![
            entry("1-0", &["a/x", "b/y"]),
            entry("2-0", &["a/z"]),
            control,
        ],
    );

    h.recovery.recover(DEAD).await.expect("recovered");

    let subscriptions = vec![("a/+".to_string(), Subscription::at(Qos::AtLeastOnce))];
    assert!(h.has(&Call::AdoptedOffline("c1".into(), subscriptions)));
    assert_eq!(h.queued(), vec![pair("c1", "a/x"), pair("c1", "a/z")]);
    assert_eq!(h.owner("c1").as_deref(), Some(ME));
    let redis = h.store.redis();
    assert!(redis.clients[ME].contains("c1"));
    assert!(!redis.clients.contains_key(DEAD));
    assert!(!redis.nodes.contains(DEAD));
    assert!(redis.inboxes[DEAD].is_empty(), "read to its end, trimmed");
    assert!(redis.locks.is_empty(), "lock released");
    assert_eq!(h.counters.redeliveries.get(), 2);
    assert_eq!(h.counters.recoveries.get(), 1);
}

#[tokio::test]
async fn an_expiring_session_is_expired_by_its_adopter_and_others_are_not() {
    let h = harness(Mode::Routed);
    let expiring = FakeSession {
        expiry: Some(Duration::from_secs(30)),
        epoch: 4,
        ..connected(persistent(DEAD, &["a/#"]))
    };
    h.session(DEAD, "expiring", expiring);
    h.session(DEAD, "kept", persistent(DEAD, &["b/#"]));
    h.inbox(DEAD, vec![entry("1-0", &[])]);

    h.recovery.recover(DEAD).await.expect("recovered");

    // Adopted under a new epoch; it ends 30 s after its node died unless
    // its client is back by then. A session without expiry gets no timer.
    let expires = Call::ExpiresAfter("expiring".into(), 5, Duration::from_secs(30));
    assert!(h.has(&expires));
    let timers = h
        .journal
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::ExpiresAfter(..)))
        .count();
    assert_eq!(timers, 1);
}

#[tokio::test]
async fn a_session_claimed_elsewhere_is_not_adopted_but_its_entries_go_to_its_owner() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "elsewhere", connected(persistent("n3", &["a/#"])));
    h.session(DEAD, "here", connected(persistent(ME, &["b/#"])));
    h.inbox(DEAD, vec![entry("1-0", &["a/1", "b/1"])]);

    h.recovery.recover(DEAD).await.expect("recovered");

    assert!(!h.has(&Call::Adopt("elsewhere".into())));
    assert!(!h.has(&Call::Adopt("here".into())));
    let adopted = h.journal.calls().into_iter();
    assert!(!adopted
        .into_iter()
        .any(|c| matches!(c, Call::AdoptedOffline(..))));
    assert_eq!(
        h.queued(),
        vec![pair("elsewhere", "a/1"), pair("here", "b/1")]
    );
    let (owner, client_id) = ("n3".into(), "elsewhere".into());
    assert!(h.has(&Call::SendDrain { owner, client_id }));
    assert!(h.has(&Call::Drained("here".into())));
    assert_eq!(h.owner("elsewhere").as_deref(), Some("n3"));
}

#[tokio::test]
async fn a_session_claimed_during_the_recovery_is_left_to_its_claimer() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    h.inbox(DEAD, vec![entry("1-0", &["a/1"])]);
    let claim = Box::new(|redis: &mut FakeRedis| {
        if let Some(session) = redis.sessions.get_mut("c1") {
            session.owner = Some("n3".into());
            session.connected = true;
        }
    });
    h.store
        .redis()
        .meanwhile
        .push((Call::Adopt("c1".into()), claim));

    h.recovery.recover(DEAD).await.expect("recovered");

    let adopted = h.journal.calls().into_iter();
    assert!(!adopted
        .into_iter()
        .any(|c| matches!(c, Call::AdoptedOffline(..))));
    assert_eq!(h.owner("c1").as_deref(), Some("n3"));
    assert_eq!(h.queued(), vec![pair("c1", "a/1")]);
    let (owner, client_id) = ("n3".into(), "c1".into());
    assert!(h.has(&Call::SendDrain { owner, client_id }));
}

#[tokio::test]
async fn a_clean_session_is_deleted_and_only_connected_clients_wills_published() {
    let h = harness(Mode::Routed);
    let clean = FakeSession {
        owner: Some(DEAD.into()),
        connected: true,
        ..FakeSession::default()
    };
    h.session(DEAD, "clean", with_will(clean, "will/clean"));
    h.session(
        DEAD,
        "online",
        with_will(connected(persistent(DEAD, &[])), "will/online"),
    );
    h.session(
        DEAD,
        "parked",
        with_will(persistent(DEAD, &[]), "will/parked"),
    );

    h.recovery.recover(DEAD).await.expect("recovered");

    assert!(h.has(&Call::DeleteSession("clean".into())));
    assert!(!h.store.redis().sessions.contains_key("clean"));
    assert!(!h.has(&Call::DeleteSession("online".into())));
    assert!(h.has(&Call::WillPublished("will/clean".into())));
    assert!(h.has(&Call::WillPublished("will/online".into())));
    assert!(!h.has(&Call::WillPublished("will/parked".into())));
    assert_eq!(h.owner("parked").as_deref(), Some(ME));
}

#[tokio::test]
async fn a_dead_node_is_fenced_and_its_routes_dropped_in_order() {
    let h = harness(Mode::Routed);
    h.session(
        DEAD,
        "c1",
        with_will(connected(persistent(DEAD, &["a/#"])), "w"),
    );
    h.store
        .redis()
        .routes
        .insert(DEAD.into(), ["a/#".to_string()].into());
    h.inbox(DEAD, vec![entry("1-0", &["a/1"])]);

    h.recovery.recover(DEAD).await.expect("recovered");

    let steps = [
        h.at(Call::IsAlive(DEAD.into())),
        h.at(Call::Adopt("c1".into())),
        h.at(Call::Fence(DEAD.into())),
        h.at(Call::DropRoutes(DEAD.into())),
        h.at(Call::WillPublished("w".into())),
        h.at(Call::Queued("c1".into(), "a/1".into())),
        h.at(forget_dead(Some("1-1"))),
        h.at(Call::Unregister(DEAD.into())),
    ];
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "{:?}",
        h.journal.calls()
    );
    let redis = h.store.redis();
    assert_eq!(redis.fenced.get(DEAD).map(String::as_str), Some(ME));
    assert!(!redis.routes.contains_key(DEAD));
}

#[tokio::test]
async fn a_node_found_alive_again_is_left_alone() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    h.inbox(DEAD, vec![entry("1-0", &["a/1"])]);
    h.store.redis().alive.insert(DEAD.into());

    h.recovery.recover(DEAD).await.expect("nothing to do");

    assert_eq!(h.journal.calls(), vec![Call::IsAlive(DEAD.into())]);
    assert_eq!(h.owner("c1").as_deref(), Some(DEAD));
    let redis = h.store.redis();
    assert_eq!(redis.inboxes[DEAD].len(), 1);
    assert!(redis.locks.is_empty(), "lock released");
}

#[tokio::test]
async fn a_recovery_already_locked_by_another_survivor_does_nothing() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    h.store.redis().locks.insert(DEAD.into(), "n3:1".into());

    h.recovery.recover(DEAD).await.expect("nothing to do");

    assert!(h.journal.calls().is_empty());
    assert_eq!(h.store.redis().locks[DEAD], "n3:1");
}

#[tokio::test]
async fn the_inbox_is_read_in_pages_and_trimmed_only_past_what_was_read() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    let total = 2 * DRAIN_PAGE;
    let entries = (1..=total).map(|i| entry(&format!("{i}-0"), &["a/x"]));
    h.inbox(DEAD, entries.collect());
    // Appended once the last page was read, before the trim.
    let late = Box::new(|redis: &mut FakeRedis| {
        let inbox = redis.inboxes.entry(DEAD.into()).or_default();
        inbox.push(entry("5000-0", &["a/late"]));
    });
    let trim_from = format!("{total}-1");
    let forget = forget_dead(Some(&trim_from));
    h.store.redis().meanwhile.push((forget.clone(), late));

    h.recovery.recover(DEAD).await.expect("recovered");

    let reads: Vec<String> = h
        .journal
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::ReadEntries { from, count } if count == DRAIN_PAGE => Some(from),
            _ => None,
        })
        .collect();
    let second = format!("{DRAIN_PAGE}-1");
    // Then the (empty) journal, from its start.
    let journal = "-".to_string();
    assert_eq!(reads, vec!["-".to_string(), second, trim_from, journal]);
    assert_eq!(h.queued().len(), total);
    assert!(h.has(&forget));
    let redis = h.store.redis();
    let left: Vec<&str> = redis.inboxes[DEAD].iter().map(|e| e.id.as_str()).collect();
    assert_eq!(left, vec!["5000-0"], "only what was read is trimmed");
}

#[tokio::test]
async fn broadcast_mode_reads_past_the_cursor_and_trims_nothing() {
    let h = harness(Mode::Broadcast);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    {
        let mut redis = h.store.redis();
        redis.cursors.insert(DEAD.into(), "5-0".into());
        redis.broadcast = vec![entry("4-0", &["a/old"]), entry("6-0", &["a/new"])];
    }

    h.recovery.recover(DEAD).await.expect("recovered");

    let read = Call::ReadEntries {
        from: "5-1".into(),
        count: DRAIN_PAGE,
    };
    assert!(h.has(&read));
    assert_eq!(h.queued(), vec![pair("c1", "a/new")]);
    assert!(h.has(&forget_dead(None)));
    assert_eq!(h.store.redis().broadcast.len(), 2);
}

#[tokio::test]
async fn the_dead_nodes_journal_is_queued_after_its_inbox_and_trimmed() {
    // QoS 1 publishes the dead node served its connected sessions from
    // memory are in its journal only: they must reach the adopted and the
    // moved sessions alike.
    let h = harness(Mode::Routed);
    h.session(DEAD, "here", connected(persistent(DEAD, &["a/#"])));
    h.session(DEAD, "moved", connected(persistent("n3", &["b/#"])));
    h.inbox(DEAD, vec![entry("1-0", &["a/from-inbox"])]);
    h.journal_stream(
        DEAD,
        vec![entry("5-0", &["a/one", "b/two"]), entry("6-0", &["c/none"])],
    );

    h.recovery.recover(DEAD).await.expect("recovered");

    assert_eq!(
        h.queued(),
        vec![
            pair("here", "a/from-inbox"),
            pair("here", "a/one"),
            pair("moved", "b/two")
        ]
    );
    let cleanup = NodeCleanup {
        clients: ClientList::Delete,
        keep_inbox_from: Some("1-1".into()),
        keep_journal_from: Some("6-1".into()),
    };
    assert!(h.has(&Call::Forget(DEAD.into(), cleanup)));
    assert!(
        h.store.redis().journals[DEAD].is_empty(),
        "read to its end, trimmed"
    );
}
