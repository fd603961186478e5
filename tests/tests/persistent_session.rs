//! Persistent sessions (clean session = 0): session-present, surviving
//! subscriptions, offline queueing, re-delivery of unacknowledged messages,
//! discarding on a clean reconnect, and the offline queue bound
//! (MQTT 3.1.1 sections 3.1.2.4 and 4.4).

use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use astramq_tests::wire::{self, Connect};
use astramq_tests::{unique_id, within_for, NodeProcess, RawClient, TestClient, QUIET, TIMEOUT};
use rumqttc::{Publish, QoS};

/// Topic a helper publishes last so a subscriber knows routing caught up.
const SENTINEL: &str = "sentinel";

/// Connects `id` with clean session = 0.
async fn persistent(node: &NodeProcess, id: &str) -> Result<TestClient> {
    let mut options = TestClient::options(node.addr(), id);
    options.set_clean_session(false);
    TestClient::connect_with(options).await
}

/// Sends DISCONNECT on a raw connection and waits for the node to close it.
async fn raw_disconnect(mut client: RawClient) -> Result<()> {
    client.send(&wire::disconnect()).await?;
    client.shutdown_write().await?;
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// Collects messages until none arrives for a quiet period.
///
/// Used only where the expected count is unknown (a bounded queue may drop
/// any of the messages), so there is no sentinel to wait for.
async fn drain(client: &mut TestClient) -> Result<Vec<Publish>> {
    let mut received = Vec::new();
    let mut wait = TIMEOUT;
    while let Some(publish) = client.next_publish_within(wait).await? {
        received.push(publish);
        wait = QUIET * 2;
    }
    Ok(received)
}

/// First CONNECT with clean session = 0 reports no session; a reconnect does.
#[tokio::test]
async fn session_present_is_false_first_then_true_on_reconnect() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("persist")).with_clean_session(false);
    let (first, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(!present, "first connection reported session-present");
    raw_disconnect(first).await?;
    let (mut second, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(present, "reconnect did not report session-present");
    second.ping().await
}

/// Subscriptions of a persistent session survive a disconnect.
#[tokio::test]
async fn subscriptions_survive_disconnect() -> Result<()> {
    let node = NodeProcess::start()?;
    let id = unique_id("persist");
    let mut client = persistent(&node, &id).await?;
    client.subscribe("p/t", QoS::AtLeastOnce).await?;
    client.disconnect().await?;

    let mut client = persistent(&node, &id).await?;
    ensure!(
        client.session_present(),
        "reconnect did not report session-present"
    );
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("p/t", QoS::AtLeastOnce, false, "still subscribed")
        .await?;
    let got = client.next_publish().await?;
    ensure!(got.payload.as_ref() == b"still subscribed", "got {got:?}");
    Ok(())
}

/// QoS 1 and 2 messages published while the client is offline are delivered
/// on reconnect (QoS 0 may be dropped and is ignored here).
#[tokio::test]
async fn offline_qos1_and_qos2_messages_are_delivered_on_reconnect() -> Result<()> {
    let node = NodeProcess::start()?;
    let id = unique_id("persist");
    let mut client = persistent(&node, &id).await?;
    client.subscribe("p/t", QoS::ExactlyOnce).await?;
    client.disconnect().await?;

    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("p/t", QoS::AtMostOnce, false, "zero")
        .await?;
    publisher
        .publish("p/t", QoS::AtLeastOnce, false, "one")
        .await?;
    publisher
        .publish("p/t", QoS::ExactlyOnce, false, "two")
        .await?;

    let mut client = persistent(&node, &id).await?;
    let mut wanted = vec![
        (b"one".as_slice(), QoS::AtLeastOnce),
        (b"two".as_slice(), QoS::ExactlyOnce),
    ];
    while !wanted.is_empty() {
        let got = client.next_publish().await?;
        if got.payload.as_ref() == b"zero" {
            continue;
        }
        let (payload, qos) = wanted.remove(0);
        ensure!(
            got.payload.as_ref() == payload && got.qos == qos,
            "expected {payload:?} at {qos:?}, got {got:?}"
        );
    }
    Ok(())
}

/// A QoS 1 message delivered but not acknowledged before the connection
/// dropped is re-sent on reconnect with DUP=1 and its original packet id.
#[tokio::test]
async fn unacknowledged_message_is_resent_with_dup_on_reconnect() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("noack")).with_clean_session(false);
    let (mut subscriber, _) = RawClient::connected(node.addr(), &connect).await?;
    subscriber.subscribe(1, &[("p/t", 1)]).await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("p/t", QoS::AtLeastOnce, false, "unacked")
        .await?;
    let first = subscriber.recv_publish().await?;
    ensure!(
        first.qos == 1 && !first.dup && first.payload == b"unacked",
        "got {first:?}"
    );
    drop(subscriber);

    let (mut subscriber, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(present, "reconnect did not report session-present");
    let again = subscriber.recv_publish().await?;
    ensure!(
        again.dup && again.payload == b"unacked",
        "expected a DUP re-send, got {again:?}"
    );
    ensure!(
        again.packet_id == first.packet_id,
        "re-send changed the packet id: {first:?} → {again:?}"
    );
    subscriber.send(&wire::puback(again.packet_id)).await?;
    subscriber.ping().await?;
    subscriber.expect_quiet(QUIET).await
}

/// Reconnecting with clean session = 1 discards the stored session: no
/// session-present, no queued messages, no old subscriptions, and nothing is
/// kept for the next persistent connect either.
#[tokio::test]
async fn clean_session_reconnect_discards_the_session() -> Result<()> {
    let node = NodeProcess::start()?;
    let id = unique_id("persist");
    let mut client = persistent(&node, &id).await?;
    client.subscribe("p/t", QoS::AtLeastOnce).await?;
    client.disconnect().await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("p/t", QoS::AtLeastOnce, false, "stale")
        .await?;

    let mut client = TestClient::connect(node.addr(), &id).await?;
    ensure!(
        !client.session_present(),
        "clean session reported session-present"
    );
    client.subscribe(SENTINEL, QoS::AtLeastOnce).await?;
    publisher
        .publish("p/t", QoS::AtLeastOnce, false, "fresh")
        .await?;
    publisher
        .publish(SENTINEL, QoS::AtLeastOnce, false, "")
        .await?;
    let leaked = client.publishes_until(SENTINEL).await?;
    ensure!(
        leaked.is_empty(),
        "discarded session still delivered {leaked:?}"
    );
    client.disconnect().await?;

    let client = persistent(&node, &id).await?;
    ensure!(
        !client.session_present(),
        "a clean-session connection left a session behind"
    );
    Ok(())
}

/// With `--max-queued-messages 5`, 20 messages for an offline session leave
/// at most 5 to deliver, and the node counts the drops in `$SYS`.
#[tokio::test]
async fn offline_queue_is_bounded_by_max_queued_messages() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-queued-messages", "5"), ("--sys-interval", "1")])?;
    let id = unique_id("bounded");
    let mut client = persistent(&node, &id).await?;
    client.subscribe("p/t", QoS::AtLeastOnce).await?;
    client.disconnect().await?;

    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    let payloads = (0..20).map(|i| i.to_string().into_bytes());
    publisher
        .publish_many("p/t", QoS::AtLeastOnce, payloads)
        .await?;
    wait_for_dropped_count(&node).await?;

    let mut client = persistent(&node, &id).await?;
    let received = drain(&mut client).await?;
    ensure!(!received.is_empty(), "the bounded queue delivered nothing");
    ensure!(
        received.len() <= 5,
        "{} messages delivered from a queue bounded at 5",
        received.len()
    );
    Ok(())
}

/// Waits until `$SYS/broker/messages/dropped` reports a positive count.
async fn wait_for_dropped_count(node: &NodeProcess) -> Result<()> {
    let mut monitor = TestClient::connect(node.addr(), &unique_id("monitor")).await?;
    monitor
        .subscribe("$SYS/broker/messages/dropped", QoS::AtMostOnce)
        .await?;
    within_for(
        Duration::from_secs(6),
        "a positive $SYS/broker/messages/dropped",
        async {
            loop {
                let publish = monitor.next_publish().await?;
                let text = String::from_utf8_lossy(&publish.payload).trim().to_owned();
                let dropped: u64 = text
                    .parse()
                    .map_err(|_| anyhow!("non-decimal dropped count {text:?}"))?;
                if dropped > 0 {
                    return Ok::<_, anyhow::Error>(());
                }
            }
        },
    )
    .await?
}
