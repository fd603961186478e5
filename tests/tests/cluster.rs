//! The cluster: several `astramq-node` processes sharing one real
//! `redis-server`, driven by independent clients. Publishes cross nodes,
//! sessions resume anywhere, a client id is owned by one node at a time,
//! a killed node's clients get their wills and keep their messages, and a
//! Redis restart is survived.

use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, Connect, Will};
use astramq_tests::{
    unique_id, within, within_for, NodeProcess, RawClient, RedisProcess, TestClient, QUIET,
};
use rumqttc::{Publish, QoS};

/// How long a test waits for the cluster to notice a dead node and act.
const FAILOVER: Duration = Duration::from_secs(15);

/// Redis plus nodes configured for fast failure detection.
struct TestCluster {
    redis: RedisProcess,
    nodes: Vec<NodeProcess>,
}

impl TestCluster {
    fn start(nodes: usize) -> Result<Self> {
        Self::start_with_mode(nodes, "routed")
    }

    fn start_with_mode(count: usize, mode: &str) -> Result<Self> {
        let redis = RedisProcess::start()?;
        let mut nodes = Vec::with_capacity(count);
        for i in 0..count {
            nodes.push(start_node(&redis, &unique_id(&format!("n{i}")), mode)?);
        }
        Ok(Self { redis, nodes })
    }

    fn node(&self, i: usize) -> &NodeProcess {
        &self.nodes[i]
    }
}

fn start_node(redis: &RedisProcess, node_id: &str, mode: &str) -> Result<NodeProcess> {
    NodeProcess::start_named(
        node_id,
        &[
            ("--redis", &redis.url()),
            ("--cluster-mode", mode),
            ("--heartbeat-interval-ms", "200"),
            ("--heartbeat-ttl-ms", "1000"),
            ("--redis-timeout-ms", "500"),
            ("--sys-interval", "0"),
        ],
    )
}

/// Publishes QoS 0 probes on `probe` until `subscriber` receives one: the
/// subscription has reached the publisher's node through the route log.
async fn await_route(
    publisher: &mut TestClient,
    subscriber: &mut TestClient,
    probe: &str,
) -> Result<()> {
    within("the subscription to reach the publisher's node", async {
        loop {
            publisher
                .publish(probe, QoS::AtMostOnce, false, "probe")
                .await?;
            let seen = subscriber
                .next_publish_within(Duration::from_millis(100))
                .await?;
            if seen.is_some_and(|p| p.topic == probe) {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await?
}

/// Messages before `sentinel`, without route probes.
async fn received_until(client: &mut TestClient, sentinel: &str) -> Result<Vec<Publish>> {
    let all = within(
        "messages up to the sentinel",
        client.publishes_until(sentinel),
    )
    .await??;
    Ok(all
        .into_iter()
        .filter(|p| !p.topic.ends_with("/probe"))
        .collect())
}

fn payload(p: &Publish) -> String {
    String::from_utf8_lossy(&p.payload).into_owned()
}

/// A publish on node A reaches subscribers on B and C once each, at QoS 0,
/// 1 and 2.
#[tokio::test]
async fn publish_reaches_subscribers_on_other_nodes_once_per_qos() -> Result<()> {
    let cluster = TestCluster::start(3)?;
    let mut publisher = TestClient::connect(cluster.node(0).addr(), &unique_id("pub")).await?;
    let mut subscribers = Vec::new();
    for i in 1..3 {
        let mut sub = TestClient::connect(cluster.node(i).addr(), &unique_id("sub")).await?;
        sub.subscribe("x/#", QoS::ExactlyOnce).await?;
        await_route(&mut publisher, &mut sub, "x/probe").await?;
        subscribers.push(sub);
    }
    for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        publisher
            .publish(&format!("x/q{i}"), qos, false, format!("m{i}"))
            .await?;
    }
    publisher
        .publish("x/sentinel", QoS::AtLeastOnce, false, "end")
        .await?;
    for sub in &mut subscribers {
        let got = received_until(sub, "x/sentinel").await?;
        let seen: Vec<(String, QoS)> = got.iter().map(|p| (p.topic.clone(), p.qos)).collect();
        ensure!(
            seen == vec![
                ("x/q0".into(), QoS::AtMostOnce),
                ("x/q1".into(), QoS::AtLeastOnce),
                ("x/q2".into(), QoS::ExactlyOnce)
            ],
            "subscriber saw {seen:?}"
        );
        sub.expect_no_publish(QUIET).await?;
    }
    Ok(())
}

/// Broadcast mode (one stream every node reads) delivers across nodes too.
#[tokio::test]
async fn broadcast_mode_delivers_across_nodes() -> Result<()> {
    let cluster = TestCluster::start_with_mode(2, "broadcast")?;
    let mut publisher = TestClient::connect(cluster.node(0).addr(), &unique_id("pub")).await?;
    let mut sub = TestClient::connect(cluster.node(1).addr(), &unique_id("sub")).await?;
    sub.subscribe("b/#", QoS::AtLeastOnce).await?;
    await_route(&mut publisher, &mut sub, "b/probe").await?;
    publisher
        .publish("b/1", QoS::AtLeastOnce, false, "one")
        .await?;
    publisher
        .publish("b/sentinel", QoS::AtLeastOnce, false, "end")
        .await?;
    let got = received_until(&mut sub, "b/sentinel").await?;
    ensure!(got.len() == 1 && payload(&got[0]) == "one", "got {got:?}");
    Ok(())
}

/// Retained messages set through node A are cluster-wide: a wildcard
/// subscriber on node C receives every matching one, with the retain flag.
#[tokio::test]
async fn retained_messages_set_on_one_node_reach_a_wildcard_subscriber_on_another() -> Result<()> {
    let cluster = TestCluster::start(3)?;
    let mut publisher = TestClient::connect(cluster.node(0).addr(), &unique_id("pub")).await?;
    publisher
        .publish("r/a/1", QoS::AtLeastOnce, true, "v1")
        .await?;
    publisher
        .publish("r/b/2", QoS::AtLeastOnce, true, "v2")
        .await?;
    let mut sub = TestClient::connect(cluster.node(2).addr(), &unique_id("sub")).await?;
    sub.subscribe("r/#", QoS::AtLeastOnce).await?;
    let mut got = within("retained messages", sub.publishes(2)).await??;
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    ensure!(got.iter().all(|p| p.retain), "retain flag missing: {got:?}");
    ensure!(
        got.iter().map(payload).collect::<Vec<_>>() == ["v1", "v2"],
        "got {got:?}"
    );
    Ok(())
}

/// Reads publishes on a raw connection, skipping route probes.
async fn next_non_probe(client: &mut RawClient) -> Result<wire::Publish> {
    loop {
        let publish = client.recv_publish().await?;
        if !publish.topic_str().ends_with("/probe") {
            return Ok(publish);
        }
    }
}

/// A persistent session made on node A resumes on node B with the message
/// it had not acknowledged (re-sent with DUP) and those queued meanwhile.
#[tokio::test]
async fn persistent_session_resumes_on_another_node_with_inflight_and_queued() -> Result<()> {
    let cluster = TestCluster::start(2)?;
    let id = unique_id("roamer");
    let connect = Connect::new(&id).with_clean_session(false);
    let (mut raw, _) = RawClient::connected(cluster.node(0).addr(), &connect).await?;
    raw.subscribe(1, &[("q/#", 1)]).await?;
    let mut publisher = TestClient::connect(cluster.node(1).addr(), &unique_id("pub")).await?;
    within("the subscription to reach node B", async {
        loop {
            publisher
                .publish("q/probe", QoS::AtMostOnce, false, "probe")
                .await?;
            if raw.recv_for(Duration::from_millis(100)).await?.is_some() {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await??;
    publisher
        .publish("q/1", QoS::AtLeastOnce, false, "one")
        .await?;
    let first = within("q/1 on node A", next_non_probe(&mut raw)).await??;
    ensure!(first.topic_str() == "q/1" && !first.dup, "got {first:?}");
    drop(raw); // gone without PUBACK
    publisher
        .publish("q/2", QoS::AtLeastOnce, false, "two")
        .await?;
    publisher
        .publish("q/3", QoS::AtLeastOnce, false, "three")
        .await?;

    let (mut resumed, present) = RawClient::connected(cluster.node(1).addr(), &connect).await?;
    ensure!(present, "session not present on node B");
    let again = within("the re-sent q/1", next_non_probe(&mut resumed)).await??;
    ensure!(
        again.topic_str() == "q/1" && again.dup,
        "expected q/1 with DUP, got {again:?}"
    );
    resumed.send(&wire::puback(again.packet_id)).await?;
    for expected in ["q/2", "q/3"] {
        let next = within("queued messages", next_non_probe(&mut resumed)).await??;
        ensure!(
            next.topic_str() == expected,
            "expected {expected}, got {next:?}"
        );
        resumed.send(&wire::puback(next.packet_id)).await?;
    }
    Ok(())
}

/// A second connection with the same client id on node B closes the one on
/// node A; the new one works.
#[tokio::test]
async fn connecting_on_another_node_takes_the_session_over() -> Result<()> {
    let cluster = TestCluster::start(2)?;
    let id = unique_id("twin");
    let mut first = TestClient::connect(cluster.node(0).addr(), &id).await?;
    let mut second = TestClient::connect(cluster.node(1).addr(), &id).await?;
    within("node A to close the first connection", first.wait_closed()).await??;
    second.subscribe("t/#", QoS::AtLeastOnce).await?;
    second
        .publish("t/1", QoS::AtLeastOnce, false, "still here")
        .await?;
    let got = within("own message", second.next_publish()).await??;
    ensure!(payload(&got) == "still here");
    Ok(())
}

/// `kill -9` of a node: a survivor publishes the will of its connected
/// client, and a persistent session it owned keeps every acknowledged
/// message published before and after the death; the client resumes it on
/// another node.
#[tokio::test]
async fn killed_node_clients_get_wills_and_keep_their_messages() -> Result<()> {
    let mut cluster = TestCluster::start(3)?;
    let (a, b, c) = (
        cluster.node(0).addr(),
        cluster.node(1).addr(),
        cluster.node(2).addr(),
    );

    let keeper = unique_id("keeper");
    let mut options = TestClient::options(a, &keeper);
    options.set_clean_session(false);
    let mut persistent = TestClient::connect_with(options.clone()).await?;
    persistent.subscribe("k/#", QoS::AtLeastOnce).await?;
    persistent.disconnect().await?;

    let mut will = Will::new("will/w", b"gone");
    will.qos = 1;
    let with_will = Connect::new(&unique_id("mortal")).with_will(will);
    let (_mortal, _) = RawClient::connected(a, &with_will).await?;

    let mut observer = TestClient::connect(b, &unique_id("observer")).await?;
    observer.subscribe("will/#", QoS::AtLeastOnce).await?;
    let mut publisher = TestClient::connect(c, &unique_id("pub")).await?;
    await_route(&mut publisher, &mut observer, "will/probe").await?;

    cluster.nodes[0].kill()?;
    publisher
        .publish("k/1", QoS::AtLeastOnce, false, "before recovery 1")
        .await?;
    publisher
        .publish("k/2", QoS::AtLeastOnce, false, "before recovery 2")
        .await?;

    let will = within_for(FAILOVER, "the dead node's will", async {
        loop {
            let p = observer.next_publish().await?;
            if p.topic == "will/w" {
                return Ok::<_, anyhow::Error>(p);
            }
        }
    })
    .await??;
    ensure!(payload(&will) == "gone");
    publisher
        .publish("k/3", QoS::AtLeastOnce, false, "after recovery")
        .await?;

    let mut options = TestClient::options(b, &keeper);
    options.set_clean_session(false);
    let mut resumed = TestClient::connect_with(options).await?;
    ensure!(resumed.session_present(), "session lost with its node");
    let mut got: Vec<String> = within("the kept messages", resumed.publishes(3))
        .await??
        .iter()
        .map(payload)
        .collect();
    got.sort();
    ensure!(
        got == ["after recovery", "before recovery 1", "before recovery 2"],
        "got {got:?}"
    );
    Ok(())
}

/// Redis going away: QoS 0 delivery on one node keeps working, a QoS 1
/// publish is not acknowledged (the client is disconnected instead), and
/// after Redis restarts the cluster delivers across nodes again.
#[tokio::test]
async fn redis_restart_is_survived() -> Result<()> {
    let mut cluster = TestCluster::start(2)?;
    let (a, b) = (cluster.node(0).addr(), cluster.node(1).addr());
    let mut local_sub = TestClient::connect(a, &unique_id("local")).await?;
    local_sub.subscribe("l/#", QoS::AtMostOnce).await?;
    let mut remote_sub = TestClient::connect(b, &unique_id("remote")).await?;
    remote_sub.subscribe("x/#", QoS::AtLeastOnce).await?;
    let mut publisher = TestClient::connect(a, &unique_id("pub")).await?;
    await_route(&mut publisher, &mut remote_sub, "x/probe").await?;

    let mut doomed = TestClient::connect(a, &unique_id("doomed")).await?;

    cluster.redis.stop()?;
    publisher
        .publish("l/1", QoS::AtMostOnce, false, "local while down")
        .await?;
    let got = within(
        "local QoS 0 delivery without Redis",
        local_sub.next_publish(),
    )
    .await??;
    ensure!(payload(&got) == "local while down");

    let refused = within_for(
        Duration::from_secs(10),
        "the unacknowledged QoS 1 publish",
        async {
            doomed
                .publish("x/lost", QoS::AtLeastOnce, false, "not stored")
                .await
        },
    )
    .await?;
    ensure!(
        refused.is_err(),
        "QoS 1 publish was acknowledged while Redis was down"
    );

    cluster.redis.restart()?;
    within_for(
        Duration::from_secs(15),
        "cross-node delivery after the restart",
        async {
            loop {
                let mut p = match TestClient::connect(a, &unique_id("pub")).await {
                    Ok(p) => p,
                    Err(_) => continue,
                };
                if p.publish("x/after", QoS::AtLeastOnce, false, "back")
                    .await
                    .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                while let Some(got) = remote_sub
                    .next_publish_within(Duration::from_millis(500))
                    .await?
                {
                    if got.topic == "x/after" {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
            }
        },
    )
    .await??;
    for node in &mut cluster.nodes {
        node.assert_running()?;
    }
    Ok(())
}

/// A persistent client of a killed node that reconnects to a survivor
/// before the cluster has recovered the dead node still gets the messages
/// published to it in between (they sat in the dead node's inbox).
#[tokio::test]
async fn client_reconnecting_before_recovery_gets_what_was_published_meanwhile() -> Result<()> {
    let mut cluster = TestCluster::start(3)?;
    let (a, b, c) = (
        cluster.node(0).addr(),
        cluster.node(1).addr(),
        cluster.node(2).addr(),
    );
    let id = unique_id("hasty");
    let mut options = TestClient::options(a, &id);
    options.set_clean_session(false);
    let mut client = TestClient::connect_with(options).await?;
    client.subscribe("h/#", QoS::AtLeastOnce).await?;
    let mut publisher = TestClient::connect(c, &unique_id("pub")).await?;
    await_route(&mut publisher, &mut client, "h/probe").await?;

    cluster.nodes[0].kill()?;
    drop(client);
    publisher
        .publish("h/1", QoS::AtLeastOnce, false, "meanwhile")
        .await?;
    let mut options = TestClient::options(b, &id);
    options.set_clean_session(false);
    let mut resumed = within_for(
        FAILOVER,
        "reconnecting on a survivor",
        TestClient::connect_with(options),
    )
    .await??;
    ensure!(resumed.session_present(), "session lost");
    let got = within_for(FAILOVER, "the message published meanwhile", async {
        loop {
            let p = resumed.next_publish().await?;
            if p.topic == "h/1" {
                return Ok::<_, anyhow::Error>(p);
            }
        }
    })
    .await??;
    ensure!(payload(&got) == "meanwhile");
    Ok(())
}

/// A node's inbox at its bound refuses, and never evicts: with node B
/// hung (so nothing reads its inbox, and with a heartbeat TTL long enough
/// that nobody declares it dead), publishes on A toward B's subscriber
/// are acknowledged only while B's inbox has room; the first one that
/// finds it full gets no PUBACK. When B comes back, every acknowledged
/// message reaches the subscriber.
#[tokio::test]
async fn a_full_inbox_refuses_publishes_and_evicts_nothing() -> Result<()> {
    let redis = RedisProcess::start()?;
    let inbox_bound = [("--stream-maxlen", "4")];
    let node_a = never_declared_dead(&redis, &unique_id("ib-a"), &inbox_bound)?;
    let node_b = never_declared_dead(&redis, &unique_id("ib-b"), &inbox_bound)?;
    let (mut sub, _) =
        RawClient::connected(node_b.addr(), &Connect::new(&unique_id("ib-sub"))).await?;
    sub.subscribe(1, &[("ib/#", 1)]).await?;
    let (mut publisher, _) =
        RawClient::connected(node_a.addr(), &Connect::new(&unique_id("ib-pub"))).await?;
    await_raw_route(&mut publisher, &mut sub, "ib/probe").await?;
    // Let B's inbox reader trim what it has read, then hang B.
    tokio::time::sleep(Duration::from_millis(300)).await;
    node_b.freeze(true)?;

    let mut acked = Vec::new();
    let mut refused = None;
    for seq in 1..=10u16 {
        let publish = wire::Publish::new("ib/m", 1, seq.to_string().as_bytes()).with_packet_id(seq);
        publisher.send(&publish.encode()).await?;
        match next_puback(&mut publisher, seq).await {
            Ok(true) => acked.push(seq),
            _ => {
                refused = Some(seq);
                break;
            }
        }
    }
    node_b.freeze(false)?;
    ensure!(
        refused.is_some() && !acked.is_empty() && acked.len() <= 4,
        "inbox bound 4: acknowledged {acked:?}, first refused {refused:?}"
    );

    let delivered = collect_acked(&mut sub, &acked, Duration::from_secs(10)).await?;
    ensure!(
        acked.iter().all(|seq| delivered.contains(seq)),
        "acknowledged {acked:?}, delivered after B came back {delivered:?}"
    );
    Ok(())
}

/// Waits up to 1.5 s for the PUBACK of `id`: false when none came (or the
/// connection was closed without one).
async fn next_puback(publisher: &mut RawClient, id: u16) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(packet) = publisher.recv_for(left).await? else {
            return Ok(false);
        };
        if packet.kind() == wire::kind::PUBACK && packet.ack_id(wire::kind::PUBACK)? == id {
            return Ok(true);
        }
    }
}

/// A node with a heartbeat TTL of a minute: a test can hang it (SIGSTOP)
/// without any other node declaring it dead.
fn never_declared_dead(
    redis: &RedisProcess,
    node_id: &str,
    extra: &[(&str, &str)],
) -> Result<NodeProcess> {
    let url = redis.url();
    let mut flags = vec![
        ("--redis", url.as_str()),
        ("--heartbeat-interval-ms", "200"),
        ("--heartbeat-ttl-ms", "60000"),
        ("--redis-timeout-ms", "500"),
        ("--sys-interval", "0"),
    ];
    flags.extend_from_slice(extra);
    NodeProcess::start_named(node_id, &flags)
}

/// Publishes QoS 0 probes on `probe` from `publisher` until the raw
/// subscriber `sub` receives one.
async fn await_raw_route(
    publisher: &mut RawClient,
    sub: &mut RawClient,
    probe: &str,
) -> Result<()> {
    within("the subscription to reach the publisher's node", async {
        loop {
            publisher
                .send(&wire::Publish::new(probe, 0, b"probe").encode())
                .await?;
            if let Some(packet) = sub.recv_for(Duration::from_millis(100)).await? {
                if packet.publish().is_ok_and(|p| p.payload == b"probe") {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        }
    })
    .await?
}

/// Receives (and acknowledges) until every sequence number in `expected`
/// has arrived or `limit` passes; returns what arrived.
async fn collect_acked(sub: &mut RawClient, expected: &[u16], limit: Duration) -> Result<Vec<u16>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut delivered = Vec::new();
    while !expected.iter().all(|seq| delivered.contains(seq)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(packet) = sub.recv_for(left).await? else {
            break;
        };
        let Ok(publish) = packet.publish() else {
            continue;
        };
        if publish.qos > 0 {
            sub.send(&wire::puback(publish.packet_id)).await?;
        }
        if let Ok(seq) = String::from_utf8_lossy(&publish.payload).parse::<u16>() {
            delivered.push(seq);
        }
    }
    Ok(delivered)
}

/// A node back from a freeze that got it declared dead takes no client
/// until it has rejoined (CONNACK 0x03 meanwhile), and a persistent
/// subscriber that then resumes on it gets everything acknowledged after,
/// also once the adopter has let the session go: the subscriber's route
/// survives the rejoin. The test holds the thawed node's recovery lock,
/// so its rejoin waits — the window in which the node used to accept the
/// client and then drop the client's route together with its old ones.
#[tokio::test]
async fn a_node_back_from_a_freeze_takes_no_client_until_it_has_rejoined() -> Result<()> {
    let redis = RedisProcess::start()?;
    let id_a = unique_id("fz-a");
    let node_a = start_node(&redis, &id_a, "routed")?;
    let node_b = start_node(&redis, &unique_id("fz-b"), "routed")?;
    let mut connect = Connect::new(&unique_id("fz-sub"));
    connect.clean_session = false;
    let (mut sub, _) = RawClient::connected(node_a.addr(), &connect).await?;
    sub.subscribe(1, &[("fz/#", 1)]).await?;
    let (mut publisher, _) =
        RawClient::connected(node_b.addr(), &Connect::new(&unique_id("fz-pub"))).await?;
    await_raw_route(&mut publisher, &mut sub, "fz/probe").await?;

    node_a.freeze(true)?;
    let fence_key = format!("astramq:n:{{{id_a}}}:fenced");
    let lock_key = format!("astramq:n:{{{id_a}}}:recovery");
    within_for(
        FAILOVER,
        "B to fence A and release A's recovery lock",
        async {
            loop {
                let fenced = redis.cli(&["EXISTS", &fence_key])?.trim() == "1";
                if fenced
                    && redis
                        .cli(&["SET", &lock_key, "test", "NX", "PX", "5000"])?
                        .trim()
                        == "OK"
                {
                    return Ok::<_, anyhow::Error>(());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        },
    )
    .await??;
    drop(sub);
    node_a.freeze(false)?;
    // A's first heartbeats find the fence; its rejoin waits for the lock.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, connack) = RawClient::handshake(node_a.addr(), &connect).await?;
    ensure!(
        connack.code == 3,
        "a rejoining node accepted a client (CONNACK code {})",
        connack.code
    );
    redis.cli(&["DEL", &lock_key])?;
    let (mut sub, present) = within_for(FAILOVER, "A to rejoin and take the client", async {
        loop {
            if let Ok((client, ack)) = RawClient::handshake(node_a.addr(), &connect).await {
                if ack.code == 0 {
                    return Ok::<_, anyhow::Error>((client, ack.session_present));
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    ensure!(present, "the session was lost");

    // Past B's release grace (3 s): from then on only the route table
    // brings B's publishes to A.
    let mut acked = Vec::new();
    for seq in 1..=50u16 {
        let publish = wire::Publish::new("fz/m", 1, seq.to_string().as_bytes()).with_packet_id(seq);
        publisher.send(&publish.encode()).await?;
        if next_puback(&mut publisher, seq).await? {
            acked.push(seq);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        acked.len() >= 40,
        "only {} of 50 publishes acknowledged",
        acked.len()
    );
    let delivered = collect_acked(&mut sub, &acked, Duration::from_secs(10)).await?;
    let lost: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|s| !delivered.contains(s))
        .collect();
    ensure!(lost.is_empty(), "acknowledged but not delivered: {lost:?}");
    Ok(())
}

/// A publish whose only announced subscriber node is fenced (declared
/// dead, its sessions not yet announced by an adopter) is not
/// acknowledged: its inbox refuses the append and nobody else can take it.
/// Once the fence is gone the re-sent publish is acknowledged and arrives.
#[tokio::test]
async fn a_publish_only_fenced_nodes_subscribe_to_is_not_acknowledged() -> Result<()> {
    let redis = RedisProcess::start()?;
    let id_b = unique_id("fd-b");
    let node_a = never_declared_dead(&redis, &unique_id("fd-a"), &[])?;
    let node_b = never_declared_dead(&redis, &id_b, &[])?;
    let (mut sub, _) =
        RawClient::connected(node_b.addr(), &Connect::new(&unique_id("fd-sub"))).await?;
    sub.subscribe(1, &[("fd/#", 1)]).await?;
    let (mut publisher, _) =
        RawClient::connected(node_a.addr(), &Connect::new(&unique_id("fd-pub"))).await?;
    await_raw_route(&mut publisher, &mut sub, "fd/probe").await?;

    // B hangs (not declared dead: the TTL is long) and is fenced by hand.
    node_b.freeze(true)?;
    let fence_key = format!("astramq:n:{{{id_b}}}:fenced");
    redis.cli(&["SET", &fence_key, "test"])?;
    let publish = wire::Publish::new("fd/m", 1, b"1").with_packet_id(1);
    publisher.send(&publish.encode()).await?;
    // Not acknowledged: the node closes the connection, so that the
    // client re-sends (MQTT 3.1.1 clients re-send on reconnect).
    let acked_while_fenced = matches!(next_puback(&mut publisher, 1).await, Ok(true));
    redis.cli(&["DEL", &fence_key])?;
    node_b.freeze(false)?;
    ensure!(
        !acked_while_fenced,
        "acknowledged although its only destination was fenced"
    );
    let (mut publisher, _) =
        RawClient::connected(node_a.addr(), &Connect::new(&unique_id("fd-pub"))).await?;
    publisher.send(&publish.with_dup().encode()).await?;
    ensure!(
        next_puback(&mut publisher, 1).await?,
        "the re-sent publish was not acknowledged after the fence was lifted"
    );
    let delivered = collect_acked(&mut sub, &[1], Duration::from_secs(10)).await?;
    ensure!(delivered.contains(&1), "the re-sent publish did not arrive");
    Ok(())
}

/// A delivery that lands in a connected persistent session's Redis queue
/// with no notice to its node (a drain request lost while Redis restarted,
/// or refused by a full inbox) still reaches the client while it stays
/// connected: the session reads its queue past its read mark every 10 s.
/// The test makes such an entry by copying one inside Redis.
#[tokio::test]
async fn a_delivery_queued_without_notice_reaches_its_connected_session() -> Result<()> {
    let redis = RedisProcess::start()?;
    let node = start_node(&redis, &unique_id("sd"), "routed")?;
    let sub_id = unique_id("sd-sub");
    let mut connect = Connect::new(&sub_id);
    connect.clean_session = false;
    let (mut sub, _) = RawClient::connected(node.addr(), &connect).await?;
    sub.subscribe(1, &[("sd/t", 1)]).await?;
    // Published while the session is offline, the message is queued in
    // Redis (a connected session's deliveries are pinned instead).
    sub.send(&wire::disconnect()).await?;
    sub.expect_closed(Duration::from_secs(5)).await?;
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("sd-pub"))).await?;
    let publish = wire::Publish::new("sd/t", 1, b"1").with_packet_id(1);
    publisher.send(&publish.encode()).await?;
    ensure!(
        next_puback(&mut publisher, 1).await?,
        "publish not acknowledged"
    );
    let (mut sub, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(present, "the session was not kept");
    let first = within("the first delivery", sub.recv_publish()).await??;
    ensure!(first.payload == b"1");
    // Not acknowledged: the entry stays in the session's queue. Queue a
    // copy of it behind the node's back.
    let queue = format!("astramq:s:{{{sub_id}}}:q");
    let copy = "local e = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1) \
                return redis.call('XADD', KEYS[1], '*', 'd', e[1][2][2])";
    redis.cli(&["EVAL", copy, "1", &queue])?;
    let again = within_for(Duration::from_secs(20), "the unannounced entry", async {
        loop {
            let Some(packet) = sub.recv_for(Duration::from_secs(1)).await? else {
                continue;
            };
            if let Ok(p) = packet.publish() {
                if p.packet_id != first.packet_id {
                    return Ok::<_, anyhow::Error>(p);
                }
            }
        }
    })
    .await??;
    ensure!(
        again.payload == b"1",
        "unexpected payload {:?}",
        again.payload
    );
    Ok(())
}

/// `--forward-linger-ms`: the forwarder holds a batch that long before
/// writing it, so a publish toward another node is acknowledged no sooner
/// (the linger is applied), and every acknowledged message of a pipelined
/// burst still reaches a persistent subscriber on the other node.
#[tokio::test]
async fn a_forward_linger_delays_the_puback_and_delivers_every_acknowledged_message() -> Result<()>
{
    const LINGER: Duration = Duration::from_millis(20);
    let redis = RedisProcess::start()?;
    let linger = [("--forward-linger-ms", "20")];
    let node_a = never_declared_dead(&redis, &unique_id("lg-a"), &linger)?;
    let node_b = never_declared_dead(&redis, &unique_id("lg-b"), &linger)?;
    let sub_connect = Connect::new(&unique_id("lg-sub")).with_clean_session(false);
    let (mut sub, _) = RawClient::connected(node_b.addr(), &sub_connect).await?;
    sub.subscribe(1, &[("lg/#", 1)]).await?;
    let (mut publisher, _) =
        RawClient::connected(node_a.addr(), &Connect::new(&unique_id("lg-pub"))).await?;
    await_raw_route(&mut publisher, &mut sub, "lg/probe").await?;

    let started = tokio::time::Instant::now();
    publisher
        .send(
            &wire::Publish::new("lg/m", 1, b"1")
                .with_packet_id(1)
                .encode(),
        )
        .await?;
    ensure!(
        next_puback(&mut publisher, 1).await?,
        "publish 1 not acknowledged"
    );
    let waited = started.elapsed();
    ensure!(
        waited >= LINGER,
        "PUBACK after {waited:?}, before the {LINGER:?} linger"
    );

    let mut burst = Vec::new();
    for seq in 2..=50u16 {
        burst.extend(
            wire::Publish::new("lg/m", 1, seq.to_string().as_bytes())
                .with_packet_id(seq)
                .encode(),
        );
    }
    publisher.send(&burst).await?;
    let mut acked = vec![1];
    for seq in 2..=50u16 {
        ensure!(
            next_puback(&mut publisher, seq).await?,
            "publish {seq} not acknowledged"
        );
        acked.push(seq);
    }
    let delivered = collect_acked(&mut sub, &acked, Duration::from_secs(10)).await?;
    ensure!(
        acked.iter().all(|seq| delivered.contains(seq)),
        "acknowledged 1..=50, delivered {delivered:?}"
    );
    Ok(())
}
