//! PUBLISH at QoS 0, 1 and 2 in both directions: QoS downgrade, the full
//! acknowledgement flows, duplicate suppression, the in-flight window and
//! per-topic ordering (MQTT 3.1.1 sections 3.3–3.7 and 4.3–4.6).

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, kind, Connect, Publish};
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, QUIET};
use rumqttc::QoS;

/// Delivered QoS is min(publish QoS, granted subscription QoS).
#[tokio::test]
async fn delivered_qos_is_minimum_of_publish_and_subscription_qos() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut subscribers = Vec::new();
    for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut sub = TestClient::connect(node.addr(), &unique_id("sub")).await?;
        sub.subscribe("qos/t", sub_qos).await?;
        subscribers.push((sub_qos, sub));
    }
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    for pub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        publisher
            .publish("qos/t", pub_qos, false, vec![pub_qos as u8])
            .await?;
    }
    for (sub_qos, sub) in &mut subscribers {
        for publish in sub.publishes(3).await? {
            let pub_qos = publish.payload[0];
            let expected = pub_qos.min(*sub_qos as u8);
            ensure!(
                publish.qos as u8 == expected,
                "published at QoS {pub_qos}, subscribed at {sub_qos:?}: delivered at {:?}",
                publish.qos
            );
        }
    }
    Ok(())
}

/// An inbound QoS 1 PUBLISH is acknowledged with a PUBACK for its id.
#[tokio::test]
async fn inbound_qos1_publish_gets_puback() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p1"))).await?;
    publisher
        .send(&Publish::new("q1/t", 1, b"x").with_packet_id(3).encode())
        .await?;
    let ack = publisher.recv().await?;
    ensure!(
        ack.first_byte == 0x40 && ack.body == [0, 3],
        "expected PUBACK 3, got {ack:?}"
    );
    Ok(())
}

/// Inbound QoS 2: PUBLISH 7 → PUBREC 7; a DUP re-send before PUBREL is
/// acknowledged again but not delivered again; PUBREL 7 → PUBCOMP 7.
#[tokio::test]
async fn inbound_qos2_duplicate_before_pubrel_is_delivered_once() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    subscriber.subscribe("dup/#", QoS::ExactlyOnce).await?;
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p2"))).await?;

    let publish = Publish::new("dup/t", 2, b"once").with_packet_id(7);
    publisher.send(&publish.encode()).await?;
    ensure!(
        publisher.recv().await?.ack_id(kind::PUBREC)? == 7,
        "PUBREC must carry id 7"
    );
    publisher.send(&publish.clone().with_dup().encode()).await?;
    ensure!(
        publisher.recv().await?.ack_id(kind::PUBREC)? == 7,
        "the DUP must be re-acknowledged with PUBREC 7"
    );
    publisher.send(&wire::pubrel(7)).await?;
    let comp = publisher.recv().await?;
    ensure!(
        comp.first_byte == 0x70 && comp.body == [0, 7],
        "expected PUBCOMP 7, got {comp:?}"
    );

    publisher
        .send(&Publish::new("dup/sentinel", 0, b"").encode())
        .await?;
    let received = subscriber.publishes_until("dup/sentinel").await?;
    ensure!(
        received.len() == 1,
        "expected exactly one copy, got {received:?}"
    );
    ensure!(
        received[0].payload.as_ref() == b"once",
        "got {:?}",
        received[0]
    );
    Ok(())
}

/// Outbound QoS 2 to a raw subscriber: PUBLISH → PUBREC → PUBREL → PUBCOMP.
#[tokio::test]
async fn outbound_qos2_flow_completes_with_pubrel_and_pubcomp() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut subscriber, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("raw"))).await?;
    ensure!(
        subscriber.subscribe(1, &[("out2/t", 2)]).await? == [2],
        "QoS 2 not granted"
    );
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("out2/t", QoS::ExactlyOnce, false, "x")
        .await?;

    let publish = subscriber.recv_publish().await?;
    ensure!(
        publish.qos == 2 && publish.payload == b"x" && !publish.dup,
        "got {publish:?}"
    );
    let id = publish.packet_id;
    subscriber.send(&wire::pubrec(id)).await?;
    let rel = subscriber.recv().await?;
    ensure!(
        rel.first_byte == 0x62,
        "expected PUBREL with flags 0010, got {rel:?}"
    );
    ensure!(
        rel.ack_id(kind::PUBREL)? == id,
        "PUBREL for the wrong id: {rel:?}"
    );
    subscriber.send(&wire::pubcomp(id)).await?;
    // Nothing may be re-sent after PUBCOMP: the next packet is the PINGRESP.
    subscriber.ping().await
}

/// With `--max-inflight 4`, an unacknowledging QoS 1 subscriber gets exactly
/// 4 of 10 messages; acknowledging one releases exactly the 5th.
#[tokio::test]
async fn inflight_window_limits_unacknowledged_deliveries() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-inflight", "4")])?;
    let (mut subscriber, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("slow"))).await?;
    ensure!(
        subscriber.subscribe(1, &[("win/t", 1)]).await? == [1],
        "QoS 1 not granted"
    );
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    let payloads = (0..10).map(|i| i.to_string().into_bytes());
    publisher
        .publish_many("win/t", QoS::AtLeastOnce, payloads)
        .await?;

    let mut window = Vec::new();
    for _ in 0..4 {
        window.push(subscriber.recv_publish().await?);
    }
    let payloads: Vec<_> = window.iter().map(|p| p.payload.clone()).collect();
    ensure!(
        payloads == [b"0", b"1", b"2", b"3"],
        "first window out of order: {window:?}"
    );
    subscriber.expect_quiet(QUIET).await?;

    subscriber.send(&wire::puback(window[0].packet_id)).await?;
    let fifth = subscriber.recv_publish().await?;
    ensure!(
        fifth.payload == b"4",
        "expected message 4 after one ack, got {fifth:?}"
    );
    subscriber.expect_quiet(QUIET).await
}

/// 1000 QoS 1 messages on one topic from one publisher arrive in order.
#[tokio::test]
async fn qos1_messages_on_one_topic_arrive_in_order() -> Result<()> {
    const COUNT: usize = 1000;
    let node = NodeProcess::start()?;
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    subscriber.subscribe("order/t", QoS::AtLeastOnce).await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    let payloads = (0..COUNT).map(|i| i.to_string().into_bytes());
    let (published, received) = tokio::join!(
        publisher.publish_many("order/t", QoS::AtLeastOnce, payloads),
        subscriber.publishes(COUNT)
    );
    published?;
    for (expected, publish) in received?.iter().enumerate() {
        let got = String::from_utf8_lossy(&publish.payload);
        ensure!(
            got == expected.to_string(),
            "message {expected} arrived as {got:?}: reordered or lost"
        );
    }
    Ok(())
}
