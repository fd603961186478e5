//! Session takeover: a new connection with an existing client id closes the
//! old connection and carries on (MQTT 3.1.1 section 3.1.4, step 2).

use anyhow::{ensure, Result};
use astramq_tests::wire::Connect;
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, TIMEOUT};
use rumqttc::QoS;

/// The first connection is closed; the second one works.
#[tokio::test]
async fn second_connection_with_same_client_id_closes_the_first() -> Result<()> {
    let node = NodeProcess::start()?;
    let id = unique_id("dup");
    let mut old = TestClient::connect(node.addr(), &id).await?;
    let mut new = TestClient::connect(node.addr(), &id).await?;
    old.wait_closed().await?;

    new.subscribe("takeover/t", QoS::AtLeastOnce).await?;
    new.publish("takeover/t", QoS::AtLeastOnce, false, "works")
        .await?;
    let got = new.next_publish().await?;
    ensure!(got.payload.as_ref() == b"works", "got {got:?}");
    Ok(())
}

/// The same at byte level: the old socket reads end-of-stream.
#[tokio::test]
async fn takeover_closes_the_old_socket() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("dup"));
    let (mut old, _) = RawClient::connected(node.addr(), &connect).await?;
    let (mut new, _) = RawClient::connected(node.addr(), &connect).await?;
    old.expect_closed(TIMEOUT).await?;
    new.ping().await
}

/// Taking over a persistent session keeps its subscriptions.
#[tokio::test]
async fn takeover_of_persistent_session_keeps_its_subscriptions() -> Result<()> {
    let node = NodeProcess::start()?;
    let id = unique_id("dup");
    let mut options = TestClient::options(node.addr(), &id);
    options.set_clean_session(false);
    let mut old = TestClient::connect_with(options.clone()).await?;
    old.subscribe("takeover/p", QoS::AtLeastOnce).await?;

    let mut new = TestClient::connect_with(options).await?;
    ensure!(
        new.session_present(),
        "takeover of a persistent session must report session-present"
    );
    old.wait_closed().await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("takeover/p", QoS::AtLeastOnce, false, "kept")
        .await?;
    let got = new.next_publish().await?;
    ensure!(got.payload.as_ref() == b"kept", "got {got:?}");
    Ok(())
}

/// A QoS 1 message in flight to the old connection (delivered, not yet
/// acknowledged) is re-sent to the connection that takes the session over.
#[tokio::test]
async fn takeover_resends_unacknowledged_messages() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("dup")).with_clean_session(false);
    let (mut old, _) = RawClient::connected(node.addr(), &connect).await?;
    old.subscribe(1, &[("takeover/q", 1)]).await?;
    let mut publisher = TestClient::connect(node.addr(), &unique_id("pub")).await?;
    publisher
        .publish("takeover/q", QoS::AtLeastOnce, false, "in flight")
        .await?;
    let first = old.recv_publish().await?;
    ensure!(
        first.qos == 1 && first.payload == b"in flight",
        "old connection got {first:?}"
    );

    let (mut new, present) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(
        present,
        "takeover of a persistent session must report session-present"
    );
    let again = new.recv_publish().await?;
    ensure!(
        again.dup && again.payload == b"in flight",
        "expected a DUP re-send, got {again:?}"
    );
    ensure!(
        again.packet_id == first.packet_id,
        "re-send changed the packet id: {first:?} → {again:?}"
    );
    old.expect_closed(TIMEOUT).await?;
    Ok(())
}
