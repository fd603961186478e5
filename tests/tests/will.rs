//! Last will: published whenever a connection ends without DISCONNECT
//! (keep-alive expiry, network error, protocol error, takeover), never after
//! DISCONNECT, with the will's QoS and RETAIN honoured (MQTT 3.1.1 3.1.2.5).

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, Connect, Will};
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, QUIET, TIMEOUT};
use rumqttc::QoS;

/// Topic a helper client publishes to after the event under test; see
/// `will_is_not_published_after_disconnect`.
const SENTINEL: &str = "sentinel";

/// A client subscribed (at QoS 2) to every will topic and to the sentinel.
async fn watcher(node: &NodeProcess) -> Result<TestClient> {
    let mut watcher = TestClient::connect(node.addr(), &unique_id("watcher")).await?;
    watcher
        .subscribe_many(&[("will/#", QoS::ExactlyOnce), (SENTINEL, QoS::AtLeastOnce)])
        .await?;
    Ok(watcher)
}

/// A raw client connected with a QoS 0 will on `topic` and the given keep-alive.
async fn client_with_will(
    node: &NodeProcess,
    id: &str,
    topic: &str,
    keep_alive: u16,
) -> Result<RawClient> {
    let connect = Connect::new(id)
        .with_keep_alive(keep_alive)
        .with_will(Will::new(topic, b"gone"));
    Ok(RawClient::connected(node.addr(), &connect).await?.0)
}

/// Requires the watcher's next message to be the will on `topic`.
async fn expect_will(watcher: &mut TestClient, topic: &str) -> Result<()> {
    let got = watcher.next_publish().await?;
    ensure!(
        got.topic == topic && got.payload.as_ref() == b"gone",
        "expected the will on {topic}, got {got:?}"
    );
    Ok(())
}

/// A client that stops talking past its keep-alive has its will published.
#[tokio::test]
async fn will_is_published_on_keep_alive_timeout() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let _silent = client_with_will(&node, &unique_id("silent"), "will/keepalive", 1).await?;
    expect_will(&mut watcher, "will/keepalive").await
}

/// A connection dropped without DISCONNECT (network error) publishes the will.
#[tokio::test]
async fn will_is_published_when_connection_drops() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let client = client_with_will(&node, &unique_id("dropped"), "will/drop", 60).await?;
    drop(client);
    expect_will(&mut watcher, "will/drop").await
}

/// A protocol error (a reserved packet type after CONNECT) publishes the will.
#[tokio::test]
async fn will_is_published_on_protocol_error() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let mut client = client_with_will(&node, &unique_id("garbage"), "will/error", 60).await?;
    client.send(&[0x00, 0x00, 0xDE, 0xAD]).await?;
    client.expect_closed(TIMEOUT).await?;
    expect_will(&mut watcher, "will/error").await
}

/// A takeover (new connection, same client id) publishes the old connection's will.
#[tokio::test]
async fn will_is_published_on_takeover() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let id = unique_id("taken");
    let mut old = client_with_will(&node, &id, "will/takeover", 60).await?;
    let (mut new, _) = RawClient::connected(node.addr(), &Connect::new(&id)).await?;
    old.expect_closed(TIMEOUT).await?;
    expect_will(&mut watcher, "will/takeover").await?;
    new.ping().await
}

/// A clean DISCONNECT discards the will.
#[tokio::test]
async fn will_is_not_published_after_disconnect() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let mut client = client_with_will(&node, &unique_id("polite"), "will/polite", 60).await?;
    client.send(&wire::disconnect()).await?;
    client.shutdown_write().await?;
    client.expect_closed(TIMEOUT).await?;

    let mut other = TestClient::connect(node.addr(), &unique_id("other")).await?;
    other.publish(SENTINEL, QoS::AtLeastOnce, false, "").await?;
    let leaked = watcher.publishes_until(SENTINEL).await?;
    ensure!(
        leaked.is_empty(),
        "will published despite DISCONNECT: {leaked:?}"
    );
    watcher.expect_no_publish(QUIET).await
}

/// The will keeps its QoS, and a retained will is stored for later subscribers.
#[tokio::test]
async fn will_qos_and_retain_are_honoured() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut watcher = watcher(&node).await?;
    let will = Will {
        topic: "will/retained".into(),
        payload: b"gone".to_vec(),
        qos: 1,
        retain: true,
    };
    let connect = Connect::new(&unique_id("retainer")).with_will(will);
    let (client, _) = RawClient::connected(node.addr(), &connect).await?;
    drop(client);

    let live = watcher.next_publish().await?;
    ensure!(
        live.topic == "will/retained" && live.qos == QoS::AtLeastOnce,
        "watcher got {live:?}"
    );
    ensure!(!live.retain, "live forwarding must clear RETAIN: {live:?}");

    let mut later = TestClient::connect(node.addr(), &unique_id("later")).await?;
    later.subscribe("will/retained", QoS::ExactlyOnce).await?;
    let stored = later.next_publish().await?;
    ensure!(
        stored.retain && stored.qos == QoS::AtLeastOnce,
        "later subscriber got {stored:?}"
    );
    ensure!(
        stored.payload.as_ref() == b"gone",
        "later subscriber got {stored:?}"
    );
    Ok(())
}
