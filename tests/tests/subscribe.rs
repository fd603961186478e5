//! SUBSCRIBE / UNSUBSCRIBE: wildcard matching, invalid filters, overlapping
//! subscriptions and `$`-topics (MQTT 3.1.1 sections 3.8–3.11 and 4.7).
//!
//! Negative checks use a sentinel: the publisher sends one last message on a
//! topic the subscriber also follows; once it arrives, everything published
//! before it has been routed, so "not received by then" means "not matched".

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, kind, Connect};
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, TIMEOUT};
use rumqttc::{QoS, SubscribeReasonCode};

/// The topic every test here uses as its "all published messages routed" marker.
const SENTINEL: &str = "sentinel";

/// Subscribes one client to `filter`, publishes to each of `topics`, and
/// returns the topics it received, in order.
async fn matched_topics(filter: &str, topics: &[&str]) -> Result<Vec<String>> {
    let node = NodeProcess::start()?;
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    subscriber
        .subscribe_many(&[(filter, QoS::AtLeastOnce), (SENTINEL, QoS::AtLeastOnce)])
        .await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    for topic in topics {
        publisher
            .publish(topic, QoS::AtLeastOnce, false, "m")
            .await?;
    }
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, false, "")
        .await?;
    let received = subscriber.publishes_until(SENTINEL).await?;
    Ok(received.into_iter().map(|p| p.topic).collect())
}

/// `+` matches exactly one level, including an empty one.
#[tokio::test]
async fn single_level_wildcard_matches_exactly_one_level() -> Result<()> {
    let topics = [
        "a/b/c", "a/b/d", "a/b/c/d", "a/c", "a//c", "b/b/c", "a/xyz/c",
    ];
    let got = matched_topics("a/+/c", &topics).await?;
    ensure!(got == ["a/b/c", "a//c", "a/xyz/c"], "a/+/c matched {got:?}");
    Ok(())
}

/// `#` matches the parent level and every descendant, nothing beside it.
#[tokio::test]
async fn multi_level_wildcard_matches_parent_and_descendants() -> Result<()> {
    let topics = ["a", "a/b", "a/b/c", "ab", "b/a", "a/"];
    let got = matched_topics("a/#", &topics).await?;
    ensure!(got == ["a", "a/b", "a/b/c", "a/"], "a/# matched {got:?}");
    Ok(())
}

/// Invalid filters get 0x80 in their own SUBACK slot; valid filters in the
/// same SUBSCRIBE are granted and work.
#[tokio::test]
async fn invalid_filters_fail_in_their_slot_while_valid_ones_are_granted() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut subscriber, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("raw"))).await?;
    let filters = [
        ("a/#/b", 0),
        ("ok/1", 1),
        ("a+", 0),
        ("#x", 0),
        ("ok/2", 2),
        ("+/ok", 1),
    ];
    let codes = subscriber.subscribe(9, &filters).await?;
    ensure!(
        codes == [0x80, 1, 0x80, 0x80, 2, 1],
        "SUBACK codes {codes:02x?}"
    );

    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("ok/1", QoS::AtMostOnce, false, "granted")
        .await?;
    let publish = subscriber.recv_publish().await?;
    ensure!(publish.topic == b"ok/1", "got {publish:?}");
    subscriber.ping().await
}

/// An empty filter breaks the packet ("at least one character",
/// [MQTT-4.7.3-1]): the connection is closed, as Mosquitto does, and the
/// node keeps serving.
#[tokio::test]
async fn an_empty_filter_closes_the_connection() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut client, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("empty"))).await?;
    client
        .send(&wire::subscribe(3, &[("ok", 0), ("", 0)]))
        .await?;
    client.expect_closed(TIMEOUT).await?;
    let (mut other, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("after"))).await?;
    other.ping().await
}

/// Two overlapping subscriptions of one client yield one copy at the higher QoS.
#[tokio::test]
async fn overlapping_subscriptions_deliver_one_copy_at_highest_qos() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    let filters = [
        ("a/#", QoS::AtLeastOnce),
        ("a/b", QoS::ExactlyOnce),
        (SENTINEL, QoS::AtMostOnce),
    ];
    subscriber.subscribe_many(&filters).await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("a/b", QoS::ExactlyOnce, false, "one")
        .await?;
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, false, "")
        .await?;
    let received = subscriber.publishes_until(SENTINEL).await?;
    ensure!(received.len() == 1, "expected one copy, got {received:?}");
    ensure!(
        received[0].qos == QoS::ExactlyOnce,
        "expected QoS 2, got {:?}",
        received[0]
    );
    Ok(())
}

/// Topics starting with `$` are not matched by filters starting with a
/// wildcard (`#`, `+/bar`), but are matched by `$foo/#`.
#[tokio::test]
async fn dollar_topics_are_not_matched_by_leading_wildcards() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut wildcard = TestClient::connect(node.addr(), &unique_id("wild")).await?;
    wildcard
        .subscribe_many(&[("#", QoS::AtLeastOnce), ("+/bar", QoS::AtLeastOnce)])
        .await?;
    let mut dollar = TestClient::connect(node.addr(), &unique_id("dollar")).await?;
    let granted = dollar.subscribe("$foo/#", QoS::AtLeastOnce).await?;
    ensure!(
        granted == SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "$foo/# got {granted:?}"
    );

    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("$foo/bar", QoS::AtLeastOnce, false, "dollar")
        .await?;
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, false, "")
        .await?;

    let leaked = wildcard.publishes_until(SENTINEL).await?;
    ensure!(
        leaked.is_empty(),
        "# or +/bar matched a $ topic: {leaked:?}"
    );
    let got = dollar.next_publish().await?;
    ensure!(got.topic == "$foo/bar", "$foo/# received {got:?}");
    Ok(())
}

/// After UNSUBACK, messages on the removed filter are no longer delivered.
#[tokio::test]
async fn unsubscribe_stops_delivery() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    subscriber
        .subscribe_many(&[("u/t", QoS::AtLeastOnce), (SENTINEL, QoS::AtLeastOnce)])
        .await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("u/t", QoS::AtLeastOnce, false, "before")
        .await?;
    ensure!(
        subscriber.next_publish().await?.topic == "u/t",
        "subscription did not work"
    );

    subscriber.unsubscribe("u/t").await?;
    publisher
        .publish("u/t", QoS::AtLeastOnce, false, "after")
        .await?;
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, false, "")
        .await?;
    let leaked = subscriber.publishes_until(SENTINEL).await?;
    ensure!(leaked.is_empty(), "delivered after unsubscribe: {leaked:?}");
    Ok(())
}

/// UNSUBACK carries the UNSUBSCRIBE's packet id (also for an unknown filter).
#[tokio::test]
async fn unsuback_echoes_the_packet_id() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut client, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("raw"))).await?;
    client.subscribe(1, &[("x/y", 1)]).await?;
    client
        .send(&wire::unsubscribe(0x1234, &["x/y", "never/subscribed"]))
        .await?;
    let ack = client.recv().await?;
    ensure!(ack.first_byte == 0xB0, "expected UNSUBACK, got {ack:?}");
    ensure!(
        ack.ack_id(kind::UNSUBACK)? == 0x1234,
        "UNSUBACK id mismatch: {ack:?}"
    );
    Ok(())
}
