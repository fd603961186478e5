//! Workaround for a start-up race in serf 0.5.2 that makes a member blind to
//! peers that contact it in its first milliseconds.
//!
//! `Serf::new_in` starts memberlist (sockets bound, listeners running) and
//! only afterwards gives memberlist's event delegate its back-reference to
//! the serf instance (`SerfDelegate::store`). A peer's join or gossip that
//! lands in between is merged into memberlist's node table, but the
//! delegate's `notify_join` finds no serf and drops the event
//! (`serf/delegate.rs`: `if let Some(this) = self.this()`). Memberlist then
//! considers the peer known, so it never notifies again: serf's member list,
//! and so our events and live set, lack that peer for good, and a later
//! `leave()` is not announced (serf thinks nobody is alive), so peers report
//! `failed` instead of `left`.
//!
//! Seen when processes start together and join each other: in about 1 of 20
//! four-process starts of `astramq-proxy` (one process then saw none of the
//! other three, and its later leave was reported as a failure). Reproduced
//! with raw serf by the ignored test `reproduction` below (1 round in ~40).
//!
//! The repair: once serf is constructed (the back-reference is set, so no
//! further event can be lost this way), replay `notify_join` for every node
//! memberlist knows as online but serf does not. If a regular notification
//! was in flight at that moment, the member is reported `joined` twice;
//! events are idempotent for consumers of the live set.

use memberlist_core::delegate::EventDelegate;

use super::handle::GossipSerf;

/// Replays joins serf missed while it was starting; returns how many.
pub(crate) async fn replay_missed_joins(serf: &GossipSerf) -> usize {
    let Some(delegate) = serf.memberlist().delegate() else {
        return 0;
    };
    // Memberlist first: it records a node before notifying serf, so a node
    // it knows that serf still lacks afterwards was lost, not in flight
    // (bar a window of microseconds).
    let online = serf.memberlist().online_members().await;
    let known: Vec<_> = serf
        .members()
        .await
        .iter()
        .map(|m| m.node().id().clone())
        .collect();
    let mut replayed = 0;
    for node in online {
        if node.id() != serf.local_id() && !known.contains(node.id()) {
            tracing::warn!(
                member = %node.id(),
                "serf missed a member that joined while it was starting; replaying the join"
            );
            delegate.notify_join(node).await;
            replayed += 1;
        }
    }
    replayed
}

/// The reproduction, with raw serf (no workaround): four cold processes
/// start at once and join each other, as the end-to-end test does. Ignored:
/// it asserts upstream behaviour and is probabilistic (1 round in ~40 loses
/// a peer here; it stops at the first). Run: `cargo test -p astramq-shared --lib startup_race -- --ignored --nocapture`.
#[cfg(test)]
mod reproduction {
    use std::{
        net::{SocketAddr, TcpListener, UdpSocket},
        process::{Command, Stdio},
        time::Duration,
    };

    use serf::{event::EventProducer, net::NetTransportOptions, types::MaybeResolvedAddress};

    use super::super::handle::GossipSerf;

    const CHILD_ENV: &str = "ASTRAMQ_RACE_CHILD";

    /// One process of a round: raw serf on the first address, joining the
    /// rest; prints what memberlist and serf each know a second later.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn child() {
        let Ok(spec) = std::env::var(CHILD_ENV) else {
            return;
        };
        let addrs: Vec<SocketAddr> = spec.split(',').map(|a| a.parse().unwrap()).collect();
        let mut transport = NetTransportOptions::new(addrs[0].to_string().into());
        transport.add_bind_address(addrs[0]);
        let (producer, _events) = EventProducer::unbounded();
        let serf = GossipSerf::with_event_producer(transport, serf::Options::new(), producer)
            .await
            .unwrap();
        for seed in &addrs[1..] {
            let _ = serf
                .join(MaybeResolvedAddress::resolved(*seed), false)
                .await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let in_memberlist = serf.memberlist().online_members().await.len();
        println!(
            "RACE memberlist={in_memberlist} serf={}",
            serf.members().await.len()
        );
        let _ = serf.shutdown().await;
    }

    #[test]
    #[ignore]
    fn raw_serf_loses_peers_that_reach_it_while_it_starts() {
        let exe = std::env::current_exe().unwrap();
        for round in 1..=60 {
            let addrs: Vec<SocketAddr> = (0..4).map(|_| free_gossip_addr()).collect();
            let children: Vec<_> = (0..4)
                .map(|i| {
                    let mut order = addrs.clone();
                    order.swap(0, i);
                    let spec: Vec<String> = order.iter().map(|a| a.to_string()).collect();
                    Command::new(&exe)
                        .args([
                            "--ignored",
                            "--exact",
                            "membership::startup_race::reproduction::child",
                            "--nocapture",
                        ])
                        .env(CHILD_ENV, spec.join(","))
                        .stdout(Stdio::piped())
                        .stderr(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            let reports: Vec<String> = children
                .into_iter()
                .map(|c| {
                    String::from_utf8_lossy(&c.wait_with_output().unwrap().stdout).into_owned()
                })
                .filter_map(|out| {
                    out.lines()
                        .find(|l| l.starts_with("RACE"))
                        .map(str::to_owned)
                })
                .collect();
            eprintln!("round {round}: {reports:?}");
            if reports.iter().any(|r| r != "RACE memberlist=4 serf=4") {
                eprintln!("reproduced: serf's member list lacks peers its memberlist knows");
                return;
            }
        }
        panic!("not reproduced in 60 rounds (fixed upstream?)");
    }

    fn free_gossip_addr() -> SocketAddr {
        loop {
            let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = tcp.local_addr().unwrap();
            if UdpSocket::bind(addr).is_ok() {
                return addr;
            }
        }
    }
}
