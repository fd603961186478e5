//! In-process checks of the public API: several `Membership` instances in
//! one test process, gossiping over loopback. The cross-process scenarios
//! (kill -9, SIGTERM, restarts) live in the workspace's
//! `tests/tests/membership.rs`.

use std::{
    net::{SocketAddr, TcpListener, UdpSocket},
    time::Duration,
};

use super::{MemberEvent, MemberState, Membership, MembershipConfig, MembershipError, Role};
use tokio::{sync::broadcast::error::RecvError, time::timeout};

/// Bound for anything gossip should do in well under a second on loopback.
const SOON: Duration = Duration::from_secs(5);

fn config(node_id: &str, role: Role, join: &[SocketAddr]) -> MembershipConfig {
    MembershipConfig {
        node_id: node_id.to_owned(),
        role,
        gossip_listen: "127.0.0.1:0".parse().unwrap(),
        join: join.to_vec(),
        mqtt_addr: (role == Role::Broker).then(|| "127.0.0.1:1883".parse().unwrap()),
        metrics_addr: None,
        encryption_key: None,
    }
}

async fn gossip_addr(m: &Membership, id: &str) -> SocketAddr {
    // A broker sees itself in its own live set as soon as it started.
    m.live_brokers()
        .iter()
        .find(|b| b.node_id == id)
        .map(|b| b.gossip_addr)
        .expect("a broker is in its own live set")
}

/// Waits until `m`'s live set has exactly `ids` (sorted).
async fn wait_live(m: &Membership, ids: &[&str]) {
    let found = timeout(SOON, async {
        loop {
            let live: Vec<String> = m.live_brokers().iter().map(|b| b.node_id.clone()).collect();
            if live == ids {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "live set never became {ids:?}: {:?}",
        m.live_brokers()
    );
}

/// Next event about `id`, skipping others.
async fn next_event_about(
    rx: &mut tokio::sync::broadcast::Receiver<MemberEvent>,
    id: &str,
) -> MemberEvent {
    timeout(SOON, async {
        loop {
            let event = rx.recv().await.expect("event stream open");
            if event.member().node_id == id {
                return event;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event about {id}"))
}

fn free_gossip_port() -> SocketAddr {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        if UdpSocket::bind(addr).is_ok() {
            return addr;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_see_each_other_leave_and_the_stream_closes() {
    let a = Membership::start(config("it-a", Role::Broker, &[]))
        .await
        .unwrap();
    let a_addr = gossip_addr(&a, "it-a").await;
    let p = Membership::start(config("it-p", Role::Proxy, &[a_addr]))
        .await
        .unwrap();
    let b = Membership::start(config("it-b", Role::Broker, &[a_addr]))
        .await
        .unwrap();

    // Brokers only, sorted, the proxy excluded; tags made it across.
    wait_live(&p, &["it-a", "it-b"]).await;
    let seen_a = p.live_brokers()[0].clone();
    assert_eq!(seen_a.role, Role::Broker);
    assert_eq!(seen_a.state, MemberState::Alive);
    assert_eq!(seen_a.mqtt_addr, Some("127.0.0.1:1883".parse().unwrap()));
    assert_eq!(seen_a.gossip_addr, a_addr);
    assert!(!seen_a.version.is_empty());

    let mut p_events = p.subscribe();
    let mut b_events = b.subscribe();
    b.leave().await;
    match next_event_about(&mut p_events, "it-b").await {
        MemberEvent::Left(m) => assert_eq!(m.role, Role::Broker),
        other => panic!("expected Left, got {other:?}"),
    }
    wait_live(&p, &["it-a"]).await;

    // After leave() returns, the leaver's stream is drained and closed.
    loop {
        match b_events.recv().await {
            Ok(_) => continue,
            Err(RecvError::Closed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(b.subscribe().recv().await, Err(RecvError::Closed)));
    b.leave().await; // idempotent

    p.leave().await;
    a.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_started_before_its_seed_joins_once_the_seed_is_up() {
    let seed_addr = free_gossip_port();
    let early = Membership::start(config("early", Role::Broker, &[seed_addr]))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut seed_cfg = config("seed", Role::Broker, &[]);
    seed_cfg.gossip_listen = seed_addr;
    let seed = Membership::start(seed_cfg).await.unwrap();
    // Retries back off to at most 2 s, so this is reached within ~2.5 s.
    wait_live(&seed, &["early", "seed"]).await;
    wait_live(&early, &["early", "seed"]).await;
    early.leave().await;
    seed.leave().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_node_id_closes_the_loser_stream() {
    let a = Membership::start(config("dup-a", Role::Broker, &[]))
        .await
        .unwrap();
    let a_addr = gossip_addr(&a, "dup-a").await;
    let first = Membership::start(config("dup", Role::Proxy, &[a_addr]))
        .await
        .unwrap();
    let mut first_events = first.subscribe();
    let second = Membership::start(config("dup", Role::Proxy, &[a_addr]))
        .await
        .unwrap();
    let mut second_events = second.subscribe();

    // Serf resolves the conflict by vote and shuts the minority down (~3 s).
    let closed = timeout(Duration::from_secs(15), async {
        loop {
            tokio::select! {
                r = first_events.recv() => if matches!(r, Err(RecvError::Closed)) { return "first" },
                r = second_events.recv() => if matches!(r, Err(RecvError::Closed)) { return "second" },
            }
        }
    })
    .await
    .expect("one of the duplicates must be shut down");
    eprintln!("duplicate id: the {closed} instance was shut down");
    first.leave().await;
    second.leave().await;
    a.leave().await;
}

#[tokio::test]
async fn bad_configuration_is_refused_before_binding() {
    let mut cfg = config("bad key", Role::Proxy, &[]);
    assert!(matches!(
        Membership::start(cfg.clone()).await,
        Err(MembershipError::InvalidNodeId { .. })
    ));
    cfg.node_id = "ok".to_owned();
    cfg.encryption_key = Some("not-a-key".to_owned());
    assert!(matches!(
        Membership::start(cfg).await,
        Err(MembershipError::InvalidKey { .. })
    ));
}
