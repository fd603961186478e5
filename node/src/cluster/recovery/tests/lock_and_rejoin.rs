//! This node's own rejoin, and a recovery whose lock is lost.

use super::*;

#[tokio::test]
async fn rejoin_syncs_its_own_routes_and_is_never_fenced() {
    let h = harness(Mode::Routed);
    h.session(ME, "c1", persistent(ME, &["a/#"]));
    {
        let mut redis = h.store.redis();
        redis.fenced.insert(ME.into(), DEAD.into());
        let routes = ["a/#".to_string(), "old/+".to_string()];
        redis.routes.insert(ME.into(), routes.into());
    }
    h.inbox(ME, vec![entry("1-0", &["a/b"])]);

    h.recovery.rejoin().await.expect("rejoined");

    let calls = h.journal.calls();
    assert_eq!(calls.first(), Some(&Call::LiftFence(ME.into())));
    assert_eq!(calls.last(), Some(&Call::Heartbeat));
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Fence(_) | Call::DropRoutes(_))));
    assert!(h.has(&Call::SyncRoutes(ME.into(), vec!["a/#".into()])));
    assert_eq!(h.queued(), vec![pair("c1", "a/b")]);
    let redis = h.store.redis();
    assert!(!redis.fenced.contains_key(ME));
    assert_eq!(redis.routes[ME], ["a/#".to_string()].into());
    assert!(redis.nodes.contains(ME), "not unregistered");
    assert_eq!(h.counters.recoveries.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn rejoin_waits_while_a_survivor_holds_its_lock() {
    let h = harness(Mode::Routed);
    h.store.redis().locks.insert(ME.into(), "survivor".into());
    let Harness {
        journal,
        store,
        recovery,
        ..
    } = h;
    let rejoin = tokio::spawn(async move { recovery.rejoin().await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        journal.calls().is_empty(),
        "nothing before the lock is free"
    );
    store.redis().locks.remove(ME);
    let rejoined = rejoin.await.expect("task ran");
    assert!(rejoined.is_ok());
    assert_eq!(journal.calls().last(), Some(&Call::Heartbeat));
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_stops_the_recovery_before_fencing() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    h.session(DEAD, "c2", persistent(DEAD, &["a/#"]));
    h.inbox(DEAD, vec![entry("1-0", &["a/1"])]);
    h.store.redis().lose_lock_at = Some(Call::Adopt("c1".into()));

    let result = h.recovery.recover(DEAD).await;

    assert!(matches!(result, Err(RecoveryError::LockLost)), "{result:?}");
    assert!(!h.has(&Call::Adopt("c2".into())));
    assert!(!h.has(&Call::Fence(DEAD.into())));
    assert!(!h.has(&Call::DropRoutes(DEAD.into())));
    assert!(h.queued().is_empty());
    let redis = h.store.redis();
    assert_eq!(redis.inboxes[DEAD].len(), 1, "nothing trimmed");
    assert!(redis.nodes.contains(DEAD));
    assert_eq!(redis.locks[DEAD], "thief", "released only by its holder");
}

#[tokio::test(start_paused = true)]
async fn a_lost_lock_stops_the_recovery_before_queueing() {
    let h = harness(Mode::Routed);
    h.session(DEAD, "c1", persistent(DEAD, &["a/#"]));
    h.inbox(DEAD, vec![entry("1-0", &["a/1"])]);
    h.store.redis().lose_lock_at = Some(Call::DropRoutes(DEAD.into()));

    let result = h.recovery.recover(DEAD).await;

    assert!(matches!(result, Err(RecoveryError::LockLost)), "{result:?}");
    assert!(h.has(&Call::Fence(DEAD.into())));
    let read = h.journal.calls().into_iter();
    assert!(!read
        .into_iter()
        .any(|c| matches!(c, Call::ReadEntries { .. })));
    assert!(h.queued().is_empty());
    assert_eq!(h.store.redis().inboxes[DEAD].len(), 1, "nothing trimmed");
}

#[tokio::test]
async fn sessions_kept_on_rejoin_stay_listed_for_the_next_recovery() {
    let h = harness(Mode::Routed);
    h.session(ME, "kept", persistent(ME, &["a/#"]));
    let clean = FakeSession {
        owner: Some(ME.into()),
        ..FakeSession::default()
    };
    h.session(ME, "clean", clean);
    h.session(ME, "moved", connected(persistent("n3", &["b/#"])));

    h.recovery.rejoin().await.expect("rejoined");

    let cleanup = NodeCleanup {
        clients: ClientList::Remove(vec!["clean".into(), "moved".into()]),
        keep_inbox_from: None,
        keep_journal_from: None,
    };
    assert!(h.has(&Call::Forget(ME.into(), cleanup)));
    let listed = h.store.redis().clients.get(ME).cloned().unwrap_or_default();
    assert_eq!(listed, ["kept".to_string()].into());
    // This node dies again: a survivor must find the session it kept.
    let survivor = h.survivor("n3");
    survivor.recover(ME).await.expect("recovered");
    let subscriptions = vec![("a/#".to_string(), Subscription::at(Qos::AtLeastOnce))];
    assert_eq!(h.owner("kept").as_deref(), Some("n3"));
    assert!(h.has(&Call::AdoptedOffline("kept".into(), subscriptions)));
}
