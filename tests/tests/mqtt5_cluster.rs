//! MQTT 5.0 in a cluster: three nodes sharing one `redis-server`, behind
//! `astramq-proxy` (round-robin), driven by the hand-encoded 5.0 client
//! (`astramq_tests::v5::Client5`). What 5.0 adds must survive the trip
//! between nodes: PUBLISH properties (§3.3.2.3) are carried unchanged, the
//! Message Expiry Interval keeps counting down (§3.3.2.3.3), and a session
//! with a Session Expiry Interval (§3.1.2.11.2) resumes on another node
//! with the QoS 1 messages queued while it was offline (§4.1).

#[allow(dead_code)]
mod proxy_harness;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use astramq_tests::v5::{
    application_properties, check_application_properties, id, reason, Client5, Connect5, Packet5,
    Properties, Publish5, Will5,
};
use astramq_tests::{unique_id, within, within_for};

use proxy_harness::{active_by_backend, grown, GossipCluster};

/// Redis, three nodes and a round-robin proxy. The gossip ports are picked
/// free and then bound by the processes, so a parallel test can take one
/// in between: such a start is retried (at most three times).
async fn start_cluster() -> Result<GossipCluster> {
    let mut attempt = 0;
    loop {
        match GossipCluster::start("round-robin").await {
            Ok(cluster) => return Ok(cluster),
            Err(e) if attempt < 2 && format!("{e:#}").contains("Address already in use") => {
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// The properties a publisher sets, including a Message Expiry Interval.
fn properties() -> Properties {
    application_properties().four(id::MESSAGE_EXPIRY_INTERVAL, 300)
}

/// Requires `got` to carry [`properties`] unchanged (User Properties in
/// order with duplicates), its expiry at most 300 s and at least 280 s.
fn check(got: &Publish5) -> Result<()> {
    check_application_properties(&got.props).context("between nodes")?;
    let expiry = got.props.get_four(id::MESSAGE_EXPIRY_INTERVAL);
    ensure!(
        expiry.is_some_and(|s| (280..=300).contains(&s)),
        "Message Expiry Interval 300 arrived as {expiry:?}"
    );
    Ok(())
}

/// Connects through the proxy; returns the client and the node it got.
async fn through_proxy(cluster: &GossipCluster, connect: &Connect5) -> Result<(Client5, String)> {
    let before = active_by_backend(&cluster.proxy).await?;
    let client = Client5::connect(cluster.proxy.addr, connect).await?;
    let backend = within("the proxy to count the connection", async {
        loop {
            if let Ok(b) = grown(&before, &active_by_backend(&cluster.proxy).await?) {
                return Ok::<_, anyhow::Error>(b);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    Ok((client, backend))
}

/// Publishes QoS 0 probes on `probe` until `subscriber` sees one: its
/// subscription has reached the publisher's node. Other messages the
/// subscriber gets meanwhile are acknowledged and dropped.
async fn await_route(publisher: &mut Client5, subscriber: &mut Client5, probe: &str) -> Result<()> {
    within_for(
        Duration::from_secs(10),
        "the subscription to reach the publisher's node",
        async {
            loop {
                publisher
                    .publish(&Publish5::new(probe, 0, b"probe"))
                    .await?;
                while let Some(packet) = subscriber.recv_for(Duration::from_millis(100)).await? {
                    if let Packet5::Publish(p) = packet {
                        if p.topic == probe.as_bytes() {
                            return Ok::<_, anyhow::Error>(());
                        }
                    }
                }
            }
        },
    )
    .await?
}

/// The next PUBLISH that is not a route probe, acknowledged.
async fn next_message(client: &mut Client5) -> Result<Publish5> {
    loop {
        let p = client.recv_publish_acked().await?;
        if !p.topic_str().ends_with("/probe") {
            return Ok(p);
        }
    }
}

/// §3.3.2.3: a PUBLISH with Payload Format Indicator, Message Expiry
/// Interval, Content Type, Response Topic, Correlation Data and User
/// Properties, published on one node, reaches subscribers on the two
/// other nodes with every property unchanged and the expiry not grown.
#[tokio::test]
async fn publish_properties_cross_nodes_unchanged() -> Result<()> {
    let cluster = start_cluster().await?;
    let mut subs = Vec::new();
    let mut used = Vec::new();
    for i in 0..2 {
        let (mut sub, node) =
            through_proxy(&cluster, &Connect5::new(&unique_id(&format!("csub{i}")))).await?;
        ensure!(sub.subscribe(1, &[("c5/#", 1)]).await?.reasons == [1]);
        subs.push(sub);
        used.push(node);
    }
    let (mut publisher, node) = through_proxy(&cluster, &Connect5::new(&unique_id("cpub"))).await?;
    used.push(node);
    used.sort();
    used.dedup();
    ensure!(used.len() == 3, "clients not on three nodes: {used:?}");
    for sub in &mut subs {
        await_route(&mut publisher, sub, "c5/probe").await?;
    }
    let sent = Publish5::new("c5/t", 1, "crossing ✓".as_bytes())
        .id(11)
        .props(properties());
    let ack = publisher.publish(&sent).await?.context("no PUBACK")?;
    ensure!(ack.reason == 0, "PUBACK {ack:?}");
    for sub in &mut subs {
        let got = within("the message on another node", next_message(sub)).await??;
        ensure!(
            got.topic == sent.topic && got.payload == sent.payload,
            "{got:?}"
        );
        check(&got)?;
    }
    Ok(())
}

/// §3.1.2.11.2, §4.1: a 5.0 session with Session Expiry Interval 300 s,
/// left with a normal DISCONNECT on one node, resumes through the proxy on
/// another node (Clean Start 0: Session Present 1) and gets the QoS 1
/// messages published while it was offline, in order, with their
/// properties.
#[tokio::test]
async fn a_persistent_v5_session_resumes_on_another_node_with_its_queue() -> Result<()> {
    let cluster = start_cluster().await?;
    let client_id = unique_id("roamer5");
    let connect = Connect5::new(&client_id).session_expiry(300);
    let (mut roamer, home) = through_proxy(&cluster, &connect).await?;
    ensure!(roamer.subscribe(1, &[("r5/#", 1)]).await?.reasons == [1]);
    let (mut publisher, publisher_node) =
        through_proxy(&cluster, &Connect5::new(&unique_id("rpub"))).await?;
    ensure!(
        publisher_node != home,
        "publisher and roamer both on {home}"
    );
    await_route(&mut publisher, &mut roamer, "r5/probe").await?;
    roamer.disconnect().await?;

    for i in 1..=3u16 {
        let publish = Publish5::new(&format!("r5/{i}"), 1, format!("queued {i}").as_bytes())
            .id(i)
            .props(properties());
        let ack = publisher.publish(&publish).await?.context("no PUBACK")?;
        ensure!(ack.reason == 0 || ack.reason == 0x10, "PUBACK {ack:?}");
    }

    let resume = Connect5::new(&client_id)
        .clean_start(false)
        .session_expiry(300);
    let mut attempts = 0;
    let mut back = loop {
        let (client, node) = through_proxy(&cluster, &resume).await?;
        if node != home {
            break client;
        }
        attempts += 1;
        ensure!(
            attempts < 3,
            "the proxy keeps sending {client_id} to {home}"
        );
        client.disconnect().await?;
    };
    ensure!(
        back.session_present(),
        "the session did not resume on another node"
    );
    for i in 1..=3 {
        let got = within("a queued message", next_message(&mut back)).await??;
        ensure!(
            got.topic_str() == format!("r5/{i}") && got.payload == format!("queued {i}").as_bytes(),
            "expected r5/{i}, got {got:?}"
        );
        check(&got)?;
    }
    Ok(())
}

/// §3.1.4 [MQTT-3.1.4-3], §3.14.2.1: a 5.0 client connecting on one node
/// takes over the session of the same Client Identifier on another node;
/// the old connection gets DISCONNECT 0x8E (Session taken over).
#[tokio::test]
async fn a_takeover_from_another_node_sends_disconnect_0x8e() -> Result<()> {
    let cluster = start_cluster().await?;
    let connect = Connect5::new(&unique_id("twin5")).session_expiry(60);
    let (mut old, first) = through_proxy(&cluster, &connect).await?;
    let (mut new, second) = through_proxy(&cluster, &connect).await?;
    ensure!(first != second, "both connections on {first}");
    within_for(
        Duration::from_secs(10),
        "the old connection's DISCONNECT",
        old.expect_disconnect_reason(reason::SESSION_TAKEN_OVER),
    )
    .await??;
    new.ping().await
}

/// §3.1.3.2: a will with Will Properties (content type, correlation data,
/// user properties) from a client on one node reaches a subscriber on
/// another node with them unchanged when the connection drops.
#[tokio::test]
async fn a_will_with_properties_crosses_nodes() -> Result<()> {
    let cluster = start_cluster().await?;
    let (mut sub, sub_node) = through_proxy(&cluster, &Connect5::new(&unique_id("wsub"))).await?;
    ensure!(sub.subscribe(1, &[("cw5/#", 1)]).await?.reasons == [1]);
    let will_props = Properties::new()
        .text(id::CONTENT_TYPE, "text/plain")
        .binary(id::CORRELATION_DATA, &[9, 0, 9])
        .user("why", "dropped")
        .user("why", "twice");
    let will = Will5::new("cw5/will", b"gone")
        .with_qos(1)
        .with_props(will_props.clone());
    let connect = Connect5::new(&unique_id("wdying")).will(will);
    let (mut dying, dying_node) = through_proxy(&cluster, &connect).await?;
    ensure!(dying_node != sub_node, "both clients on {sub_node}");
    await_route(&mut dying, &mut sub, "cw5/probe").await?;
    drop(dying);
    let got = within("the will on another node", next_message(&mut sub)).await??;
    ensure!(
        got.topic == b"cw5/will" && got.payload == b"gone",
        "{got:?}"
    );
    for prop in [id::CONTENT_TYPE, id::CORRELATION_DATA] {
        ensure!(
            got.props.get(prop) == will_props.get(prop),
            "will property {prop:#04x} changed: {got:?}"
        );
    }
    ensure!(got.props.users() == will_props.users(), "{got:?}");
    Ok(())
}

/// Connects `connect` through the proxy until it lands on a node other
/// than `avoid` (round-robin: at most three tries).
async fn elsewhere(cluster: &GossipCluster, connect: &Connect5, avoid: &str) -> Result<Client5> {
    for _ in 0..3 {
        let (client, node) = through_proxy(cluster, connect).await?;
        if node != avoid {
            return Ok(client);
        }
        drop(client);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the proxy keeps sending {} to {avoid}", connect.client_id)
}

/// §3.1.2.11.2, §4.1: a session with Session Expiry Interval 2 s, left on
/// one node, is gone after 3.5 s when the client comes back on another
/// node: Session Present 0, and the message queued for it is not sent.
#[tokio::test]
async fn an_expired_session_is_gone_on_every_node() -> Result<()> {
    let cluster = start_cluster().await?;
    let client_id = unique_id("brief5");
    let connect = Connect5::new(&client_id).session_expiry(2);
    let (mut client, home) = through_proxy(&cluster, &connect).await?;
    ensure!(client.subscribe(1, &[("ex5/#", 1)]).await?.reasons == [1]);
    let (mut publisher, _) = through_proxy(&cluster, &Connect5::new(&unique_id("expub"))).await?;
    await_route(&mut publisher, &mut client, "ex5/probe").await?;
    client.disconnect().await?;
    publisher
        .publish(&Publish5::new("ex5/t", 1, b"too late").id(1))
        .await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let resume = Connect5::new(&client_id)
        .clean_start(false)
        .session_expiry(2);
    let mut back = elsewhere(&cluster, &resume, &home).await?;
    ensure!(
        !back.session_present(),
        "a 2 s session was still present after 3.5 s on another node"
    );
    back.ping().await?;
    back.expect_quiet(astramq_tests::QUIET).await
}

/// §3.8.2.1.2, §3.8.3.1, §3.3.2.3.3: a session resumed on another node
/// keeps its subscription's options and identifier (a retained PUBLISH
/// arrives with RETAIN 1 under Retain As Published and Subscription
/// Identifier 42), and the Message Expiry Interval of a queued message
/// counted down across nodes: one with 1 s is dropped, one with 60 s
/// arrives with at most 58 s left.
#[tokio::test]
async fn a_resumed_session_keeps_subscription_options_and_expiry_on_another_node() -> Result<()> {
    let cluster = start_cluster().await?;
    let client_id = unique_id("opts5");
    let connect = Connect5::new(&client_id).session_expiry(300);
    let (mut client, home) = through_proxy(&cluster, &connect).await?;
    let ack = client
        .subscribe_with(
            1,
            &Properties::new().varint(id::SUBSCRIPTION_IDENTIFIER, 42),
            &[("op5/#", 1 | astramq_tests::v5::sub::RETAIN_AS_PUBLISHED)],
        )
        .await?;
    ensure!(ack.reasons == [1], "SUBACK {ack:?}");
    let (mut publisher, _) = through_proxy(&cluster, &Connect5::new(&unique_id("oppub"))).await?;
    await_route(&mut publisher, &mut client, "op5/probe").await?;
    client.disconnect().await?;
    let queued = [
        ("op5/short", 1u32, false),
        ("op5/long", 60, false),
        ("op5/retained", 300, true),
    ];
    for (i, (topic, expiry, retain)) in queued.into_iter().enumerate() {
        let mut publish = Publish5::new(topic, 1, b"m")
            .id(i as u16 + 1)
            .props(Properties::new().four(id::MESSAGE_EXPIRY_INTERVAL, expiry));
        publish.retain = retain;
        publisher.publish(&publish).await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let resume = Connect5::new(&client_id)
        .clean_start(false)
        .session_expiry(300);
    let mut back = elsewhere(&cluster, &resume, &home).await?;
    ensure!(back.session_present(), "the session did not resume");
    let long = within("op5/long", next_message(&mut back)).await??;
    let retained = within("op5/retained", next_message(&mut back)).await??;
    ensure!(
        long.topic == b"op5/long" && retained.topic == b"op5/retained",
        "expected op5/long then op5/retained (op5/short expired): {long:?} {retained:?}"
    );
    let left = long.props.get_four(id::MESSAGE_EXPIRY_INTERVAL);
    ensure!(
        left.is_some_and(|s| s > 0 && s <= 58),
        "op5/long waited 2.5 s of 60 but says {left:?}"
    );
    for p in [&long, &retained] {
        ensure!(
            p.props.subscription_ids() == [42],
            "Subscription Identifier lost on the new node: {p:?}"
        );
    }
    ensure!(
        retained.retain,
        "Retain As Published lost on the new node: {retained:?}"
    );
    publisher
        .publish(&Publish5::new("op5/retained", 1, b"").id(9).retain())
        .await?;
    Ok(())
}

/// §3.1.3.2.2: a reconnect within the Will Delay Interval cancels the
/// will even when it lands on another node than the one the client left.
#[tokio::test]
async fn a_reconnect_on_another_node_within_the_will_delay_cancels_the_will() -> Result<()> {
    let cluster = start_cluster().await?;
    let (mut sub, _) = through_proxy(&cluster, &Connect5::new(&unique_id("cwsub"))).await?;
    ensure!(sub.subscribe(1, &[("wc5/#", 1)]).await?.reasons == [1]);
    let client_id = unique_id("wreturn");
    let will = Will5::new("wc5/will", b"never")
        .with_props(Properties::new().four(id::WILL_DELAY_INTERVAL, 3));
    let connect = Connect5::new(&client_id).session_expiry(60).will(will);
    let (mut leaving, home) = through_proxy(&cluster, &connect).await?;
    await_route(&mut leaving, &mut sub, "wc5/probe").await?;
    drop(leaving);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let resume = Connect5::new(&client_id)
        .clean_start(false)
        .session_expiry(60);
    let mut back = elsewhere(&cluster, &resume, &home).await?;
    ensure!(back.session_present(), "the session was not resumed");
    let mut seen = Vec::new();
    while let Some(packet) = sub.recv_for(Duration::from_secs(4)).await? {
        if let Packet5::Publish(p) = packet {
            if !p.topic_str().ends_with("/probe") {
                seen.push(p);
            }
        }
    }
    ensure!(
        seen.is_empty(),
        "the cancelled will was published: {seen:?}"
    );
    back.ping().await
}

/// How long a test waits for the cluster to notice a dead node and act.
const FAILOVER: Duration = Duration::from_secs(15);

/// §3.1.2.11.2, §4.1 with a node failure: a 5.0 session (expiry 300 s)
/// offline on a node that is then killed (`kill -9`) is adopted by a
/// survivor and resumes through the proxy (Session Present 1) with the
/// QoS 1 messages published for it before and after the death, their
/// properties intact.
#[tokio::test]
async fn a_v5_session_whose_node_died_resumes_on_a_survivor() -> Result<()> {
    let mut cluster = start_cluster().await?;
    let client_id = unique_id("orphan5");
    let connect = Connect5::new(&client_id).session_expiry(300);
    let (mut client, home) = through_proxy(&cluster, &connect).await?;
    ensure!(client.subscribe(1, &[("kd5/#", 1)]).await?.reasons == [1]);
    let (mut publisher, publisher_node) =
        through_proxy(&cluster, &Connect5::new(&unique_id("kdpub"))).await?;
    ensure!(
        publisher_node != home,
        "publisher and orphan both on {home}"
    );
    await_route(&mut publisher, &mut client, "kd5/probe").await?;
    client.disconnect().await?;
    let publish = |i: u16| {
        Publish5::new(&format!("kd5/{i}"), 1, format!("kept {i}").as_bytes())
            .id(i)
            .props(properties())
    };
    publisher.publish(&publish(1)).await?;

    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.id == home)
        .context("the orphan's node is not in the cluster")?;
    cluster.nodes[victim].process.kill()?;
    let recovered = format!("dead node recovered node={home}");
    within_for(FAILOVER, "a survivor to recover the dead node", async {
        while !cluster
            .nodes
            .iter()
            .enumerate()
            .any(|(i, n)| i != victim && n.process.log_tail().contains(&recovered))
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    publisher.publish(&publish(2)).await?;

    let resume = Connect5::new(&client_id)
        .clean_start(false)
        .session_expiry(300);
    let mut back = within_for(FAILOVER, "resuming on a survivor", async {
        loop {
            match Client5::handshake(cluster.proxy.addr, &resume).await {
                Ok(client) if client.connack.reason == 0 => return Ok::<_, anyhow::Error>(client),
                // Refused while the dead node still owns the session.
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .await??;
    ensure!(
        back.session_present(),
        "the session died with its node: {:?}",
        back.connack
    );
    // QoS 1 is at least once: a copy the adoption re-sends is allowed (and
    // reported), a loss or a reordering is not.
    let mut firsts = Vec::new();
    let mut copies = 0;
    while firsts.len() < 2 {
        let got = within("a message kept for the orphan", next_message(&mut back)).await??;
        check(&got)?;
        let topic = got.topic_str();
        ensure!(
            got.payload == format!("kept {}", &topic[4..]).as_bytes(),
            "{got:?}"
        );
        if firsts.contains(&topic) {
            copies += 1;
        } else {
            firsts.push(topic);
        }
    }
    ensure!(firsts == ["kd5/1", "kd5/2"], "first deliveries {firsts:?}");
    if copies > 0 {
        eprintln!("note: {copies} duplicate deliveries after the adoption");
    }
    Ok(())
}

/// §3.2.2.3.13, §4.8.2: what a node in a cluster says about shared
/// subscriptions holds: if its CONNACK announces them (absent or 1), a
/// group with members on two nodes gets each message once; if it refuses
/// a `$share/...` SUBSCRIBE with 0x9E, its CONNACK said 0.
#[tokio::test]
async fn shared_subscriptions_in_a_cluster_are_served_as_announced() -> Result<()> {
    let cluster = start_cluster().await?;
    let mut members = Vec::new();
    let mut refused = Vec::new();
    for i in 0..2 {
        let (mut member, node) =
            through_proxy(&cluster, &Connect5::new(&unique_id(&format!("shm{i}")))).await?;
        let announced = member
            .connack
            .props
            .get_byte(id::SHARED_SUBSCRIPTION_AVAILABLE);
        let ack = member.subscribe(1, &[("$share/cg/csh/t", 1)]).await?;
        match ack.reasons[..] {
            [0x9E] => refused.push((node, announced)),
            [1] => ensure!(
                announced != Some(0),
                "{node} announced no shared subscriptions but granted one"
            ),
            _ => anyhow::bail!("SUBACK {ack:?} on {node}"),
        }
        members.push(member);
    }
    if !refused.is_empty() {
        ensure!(
            refused.iter().all(|(_, announced)| *announced == Some(0)),
            "0x9E from nodes whose CONNACK announced shared subscriptions: {refused:?}"
        );
        return Ok(());
    }
    let (mut publisher, _) = through_proxy(&cluster, &Connect5::new(&unique_id("shpub"))).await?;
    // A probe cannot show that both members' routes reached the publisher's
    // node (a shared group delivers it to one of them): give them a second.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 1..=10u16 {
        publisher
            .publish(&Publish5::new("csh/t", 1, b"m").id(i))
            .await?;
    }
    let mut got = 0;
    for member in &mut members {
        while let Some(packet) = member.recv_for(Duration::from_millis(1000)).await? {
            if let Packet5::Publish(p) = packet {
                member
                    .send(&astramq_tests::v5::packet::puback(p.packet_id))
                    .await?;
                got += 1;
            }
        }
    }
    ensure!(
        got == 10,
        "a group across two nodes got {got} of 10 messages"
    );
    Ok(())
}
