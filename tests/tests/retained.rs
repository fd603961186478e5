//! Retained messages: stored per topic, replaced, cleared by an empty
//! payload, and sent with RETAIN=1 only to new subscriptions (MQTT 3.1.1
//! section 3.3.1.3).
//!
//! To show that a new subscription got *only* the expected retained
//! messages, the subscriber then subscribes to a sentinel topic that has a
//! retained message of its own: the node handles one SUBSCRIBE after the
//! other, so the sentinel's arrival means the first SUBSCRIBE's retained
//! messages are all out.

use anyhow::{ensure, Result};
use astramq_tests::{unique_id, NodeProcess, TestClient};
use rumqttc::{Publish, QoS};

/// Topic holding a retained message that marks "earlier retained messages delivered".
const SENTINEL: &str = "sentinel";

/// A publisher connected to `node`, with the sentinel's retained message stored.
async fn publisher(node: &NodeProcess) -> Result<TestClient> {
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, true, "sentinel")
        .await?;
    Ok(publisher)
}

/// What a brand-new subscription to `filter` receives, up to the sentinel.
async fn retained_for(node: &NodeProcess, filter: &str) -> Result<Vec<Publish>> {
    let mut subscriber = TestClient::connect(node.addr(), &unique_id("sub")).await?;
    subscriber.subscribe(filter, QoS::AtLeastOnce).await?;
    subscriber.subscribe(SENTINEL, QoS::AtLeastOnce).await?;
    subscriber.publishes_until(SENTINEL).await
}

/// A retained message is delivered to a later subscriber, flagged RETAIN.
#[tokio::test]
async fn retained_message_is_delivered_on_subscribe_with_retain_flag() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = publisher(&node).await?;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "v1")
        .await?;
    let got = retained_for(&node, "r/t").await?;
    ensure!(got.len() == 1, "expected one retained message, got {got:?}");
    ensure!(
        got[0].retain && got[0].payload.as_ref() == b"v1",
        "got {:?}",
        got[0]
    );
    Ok(())
}

/// A newer retained message replaces the older one.
#[tokio::test]
async fn newer_retained_message_replaces_older() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = publisher(&node).await?;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "old")
        .await?;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "new")
        .await?;
    let got = retained_for(&node, "r/t").await?;
    ensure!(
        got.len() == 1 && got[0].payload.as_ref() == b"new",
        "got {got:?}"
    );
    Ok(())
}

/// A retained PUBLISH with an empty payload clears the topic's retained message.
#[tokio::test]
async fn empty_retained_payload_clears_retained_message() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = publisher(&node).await?;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "v1")
        .await?;
    publisher.publish("r/t", QoS::AtLeastOnce, true, "").await?;
    let got = retained_for(&node, "r/t").await?;
    ensure!(got.is_empty(), "cleared topic still delivered {got:?}");
    Ok(())
}

/// Normal forwarding to an existing subscriber has RETAIN=0 even when the
/// message was published retained; a later subscriber sees RETAIN=1.
#[tokio::test]
async fn forwarded_message_has_retain_false_for_existing_subscriber() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut existing = TestClient::connect(node.addr(), &unique_id("existing")).await?;
    existing.subscribe("r/t", QoS::AtLeastOnce).await?;
    let mut publisher = publisher(&node).await?;
    publisher
        .publish("r/t", QoS::AtLeastOnce, true, "live")
        .await?;

    let live = existing.next_publish().await?;
    ensure!(
        !live.retain && live.payload.as_ref() == b"live",
        "existing subscriber got {live:?}"
    );
    let later = retained_for(&node, "r/t").await?;
    ensure!(
        later.len() == 1 && later[0].retain,
        "later subscriber got {later:?}"
    );
    Ok(())
}

/// A wildcard subscription receives every matching retained message, and only those.
#[tokio::test]
async fn wildcard_subscription_receives_all_matching_retained() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = publisher(&node).await?;
    for topic in ["w/a", "w/b", "w/c/d", "x/y", "wx"] {
        publisher
            .publish(topic, QoS::AtLeastOnce, true, topic)
            .await?;
    }
    let got = retained_for(&node, "w/#").await?;
    let mut topics: Vec<_> = got.iter().map(|p| p.topic.as_str()).collect();
    topics.sort_unstable();
    ensure!(
        topics == ["w/a", "w/b", "w/c/d"],
        "w/# got retained {topics:?}"
    );
    ensure!(
        got.iter().all(|p| p.retain),
        "retained deliveries must be flagged: {got:?}"
    );
    Ok(())
}
