//! Flow control (§4.9) and the client's Maximum Packet Size (§3.1.2.11.4).

use super::*;

/// §4.9 [MQTT-3.3.4-9]: a client that connects with Receive Maximum 2 and
/// does not acknowledge has at most 2 QoS 1 PUBLISHes in flight; each
/// PUBACK lets one more through, and all 5 arrive in order.
#[tokio::test]
async fn the_client_receive_maximum_bounds_unacknowledged_deliveries() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect =
        Connect5::new(&unique_id("slow")).props(Properties::new().two(id::RECEIVE_MAXIMUM, 2));
    let mut slow = Client5::connect(node.addr(), &connect).await?;
    ensure!(slow.subscribe(1, &[("flow/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "fast").await?;
    for i in 1..=5u16 {
        let publish = Publish5::new(&format!("flow/{i}"), 1, b"m").id(i);
        ack_reason(publisher.publish(&publish).await?, reason::SUCCESS)?;
    }
    let mut held = vec![slow.recv_publish().await?, slow.recv_publish().await?];
    slow.expect_quiet(QUIET)
        .await
        .context("a third PUBLISH in flight with Receive Maximum 2")?;
    let mut topics: Vec<String> = held.iter().map(Publish5::topic_str).collect();
    while topics.len() < 5 {
        let oldest = held.remove(0);
        slow.send(&puback(oldest.packet_id)).await?;
        let next = slow.recv_publish().await?;
        topics.push(next.topic_str());
        held.push(next);
        if topics.len() < 5 {
            slow.expect_quiet(QUIET)
                .await
                .context("more than 2 in flight after one PUBACK")?;
        }
    }
    let expected: Vec<String> = (1..=5).map(|i| format!("flow/{i}")).collect();
    ensure!(topics == expected, "delivered {topics:?}");
    Ok(())
}

/// §4.9 [MQTT-3.3.4-7], [MQTT-3.3.4-8]: a client that has more
/// unacknowledged QoS 2 PUBLISHes (PUBREC received, no PUBREL sent) than
/// the server's Receive Maximum gets DISCONNECT 0x93.
#[tokio::test]
async fn exceeding_the_server_receive_maximum_gets_disconnect_0x93() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-inflight", "4")])?;
    let mut client = connect(&node, "flood").await?;
    let max = client
        .connack
        .props
        .get_two(id::RECEIVE_MAXIMUM)
        .unwrap_or(u16::MAX);
    ensure!(
        max <= 1024,
        "server Receive Maximum {max} is too large to exceed in a test"
    );
    for i in 1..=max {
        let publish = Publish5::new("flood/t", 2, b"q2").id(i);
        client.send(&publish.encode()).await?;
        match client.recv().await? {
            Packet5::Ack(a) if a.kind == kind::PUBREC && a.packet_id == i => {}
            other => bail!("QoS 2 PUBLISH {i} of {max}: expected PUBREC, got {other:?}"),
        }
    }
    let over = Publish5::new("flood/t", 2, b"q2").id(max + 1);
    client.send(&over.encode()).await?;
    client
        .expect_disconnect_reason(reason::RECEIVE_MAXIMUM_EXCEEDED)
        .await
        .with_context(|| format!("QoS 2 PUBLISH {} with Receive Maximum {max}", max + 1))?;
    Ok(())
}

/// §3.1.2.11.4 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: a client that connects
/// with Maximum Packet Size 256 is not sent a message that would exceed
/// it; a small message on the same subscription still arrives.
#[tokio::test]
async fn the_client_maximum_packet_size_is_never_exceeded() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("small"))
        .props(Properties::new().four(id::MAXIMUM_PACKET_SIZE, 256));
    let mut small = Client5::connect(node.addr(), &connect).await?;
    ensure!(small.subscribe(1, &[("mps/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "big").await?;
    publisher
        .publish(&Publish5::new("mps/big", 1, &[b'B'; 1000]).id(1))
        .await?;
    publisher
        .publish(&Publish5::new("mps/small", 1, b"tiny").id(2))
        .await?;
    publisher
        .publish(&Publish5::new("mps/end", 1, b"end").id(3))
        .await?;
    let got = within("the small messages", small.publishes_until("mps/end")).await??;
    let topics: Vec<String> = got.iter().map(Publish5::topic_str).collect();
    ensure!(topics == ["mps/small"], "delivered {topics:?}");
    Ok(())
}

/// §4.9 [MQTT-3.3.4-9]: the client's Receive Maximum counts QoS 2
/// deliveries until PUBCOMP: with Receive Maximum 1, the second QoS 2
/// PUBLISH waits until the first one's PUBCOMP has been sent, not just its
/// PUBREC.
#[tokio::test]
async fn the_client_receive_maximum_counts_qos_2_until_pubcomp() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("one-at-a-time"))
        .props(Properties::new().two(id::RECEIVE_MAXIMUM, 1));
    let mut slow = Client5::connect(node.addr(), &connect).await?;
    ensure!(slow.subscribe(1, &[("flow2/#", 2)]).await?.reasons == [2]);
    let mut publisher = self::connect(&node, "q2pub").await?;
    for i in 1..=2u16 {
        let publish = Publish5::new(&format!("flow2/{i}"), 2, b"m").id(i);
        ack_reason(publisher.publish(&publish).await?, reason::SUCCESS)?;
    }
    let first = slow.recv_publish().await?;
    ensure!(first.topic == b"flow2/1" && first.qos == 2, "{first:?}");
    slow.send(&p5::pubrec(first.packet_id)).await?;
    match slow.recv().await? {
        Packet5::Ack(a) if a.kind == kind::PUBREL && a.packet_id == first.packet_id => {}
        other => bail!("expected PUBREL, got {other:?}"),
    }
    slow.expect_quiet(QUIET)
        .await
        .context("a second QoS 2 PUBLISH before PUBCOMP with Receive Maximum 1")?;
    slow.send(&p5::pubcomp(first.packet_id)).await?;
    let second = slow.recv_publish().await?;
    ensure!(second.topic == b"flow2/2", "{second:?}");
    Ok(())
}

/// §4.9: the node may hold a client to fewer messages in flight than the
/// client's Receive Maximum allows (`--max-inflight 1` against Receive
/// Maximum 5), never to more: one unacknowledged QoS 1 PUBLISH at a time.
#[tokio::test]
async fn the_node_in_flight_limit_applies_below_the_client_receive_maximum() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-inflight", "1")])?;
    let connect =
        Connect5::new(&unique_id("roomy")).props(Properties::new().two(id::RECEIVE_MAXIMUM, 5));
    let mut client = Client5::connect(node.addr(), &connect).await?;
    ensure!(client.subscribe(1, &[("inf/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "inf-pub").await?;
    for i in 1..=3u16 {
        publisher
            .publish(&Publish5::new(&format!("inf/{i}"), 1, b"m").id(i))
            .await?;
    }
    for i in 1..=3 {
        let p = client.recv_publish().await?;
        ensure!(p.topic_str() == format!("inf/{i}"), "{p:?}");
        client
            .expect_quiet(QUIET)
            .await
            .context("a second PUBLISH in flight with --max-inflight 1")?;
        client.send(&puback(p.packet_id)).await?;
    }
    Ok(())
}

/// §3.1.2.11.4 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: a retained message larger
/// than the subscribing client's Maximum Packet Size is not sent to it; a
/// small retained message matched by the same SUBSCRIBE is.
#[tokio::test]
async fn a_retained_message_over_the_client_maximum_is_not_sent() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = self::connect(&node, "bigret-pub").await?;
    publisher
        .publish(&Publish5::new("bigret/big", 1, &[b'R'; 1000]).id(1).retain())
        .await?;
    publisher
        .publish(&Publish5::new("bigret/small", 1, b"ok").id(2).retain())
        .await?;
    let connect = Connect5::new(&unique_id("tiny"))
        .props(Properties::new().four(id::MAXIMUM_PACKET_SIZE, 200));
    let mut client = Client5::connect(node.addr(), &connect).await?;
    ensure!(client.subscribe(1, &[("bigret/#", 1)]).await?.reasons == [1]);
    let got = client.recv_publish_acked().await?;
    ensure!(got.topic == b"bigret/small", "{got:?}");
    client.ping().await?;
    client.expect_quiet(QUIET).await?;
    for (i, topic) in ["bigret/big", "bigret/small"].into_iter().enumerate() {
        publisher
            .publish(&Publish5::new(topic, 1, b"").id(i as u16 + 3).retain())
            .await?;
    }
    Ok(())
}
