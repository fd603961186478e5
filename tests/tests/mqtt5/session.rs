//! Session expiry and Clean Start (§3.1.2.4, §3.1.2.11.2, §3.14.2.2.2, §4.1).

use super::*;

/// §3.1.2.11.2 [MQTT-3.1.2-23]: without a Session Expiry Interval (0) the
/// session ends with the connection: a reconnect with Clean Start 0 gets
/// Session Present 0 and none of the messages published meanwhile.
#[tokio::test]
async fn session_expiry_0_keeps_no_session_after_the_connection() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("expiry0");
    let mut client =
        Client5::connect(node.addr(), &Connect5::new(&client_id).clean_start(false)).await?;
    ensure!(client.subscribe(1, &[("se0/t", 1)]).await?.reasons == [1]);
    client.disconnect().await?;
    publish_one(&node, "se0/t", b"lost").await?;
    let mut again =
        Client5::connect(node.addr(), &Connect5::new(&client_id).clean_start(false)).await?;
    ensure!(!again.session_present(), "a session outlived expiry 0");
    expect_nothing_queued(&mut again).await
}

/// §3.1.2.11.2, §4.1 [MQTT-4.1.0-1]: with Session Expiry Interval 2 s the
/// session and the QoS 1 messages queued while offline survive a reconnect
/// within 2 s (Session Present 1, delivered); after more than 2 s offline
/// they are gone (Session Present 0, nothing delivered).
#[tokio::test]
async fn a_session_and_its_queue_last_for_the_expiry_interval_and_no_longer() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("expiry2");
    let mut client =
        Client5::connect(node.addr(), &Connect5::new(&client_id).session_expiry(2)).await?;
    ensure!(client.subscribe(1, &[("se2/t", 1)]).await?.reasons == [1]);
    client.disconnect().await?;
    publish_one(&node, "se2/t", b"within").await?;

    let mut back = resume(&node, &client_id, 2).await?;
    ensure!(back.session_present(), "the session did not last 2 s");
    let got = back.recv_publish_acked().await?;
    ensure!(got.payload == b"within", "got {got:?}");
    back.disconnect().await?;

    publish_one(&node, "se2/t", b"after").await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let mut late = resume(&node, &client_id, 2).await?;
    ensure!(
        !late.session_present(),
        "the session outlived its 2 s expiry"
    );
    expect_nothing_queued(&mut late).await
}

/// §3.1.2.4 [MQTT-3.1.2-4]: Clean Start 1 discards an existing session:
/// Session Present 0, its queued message is not delivered, and its
/// subscription is gone.
#[tokio::test]
async fn clean_start_discards_an_existing_session() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("discard");
    let mut client =
        Client5::connect(node.addr(), &Connect5::new(&client_id).session_expiry(60)).await?;
    ensure!(client.subscribe(1, &[("cs/t", 1)]).await?.reasons == [1]);
    client.disconnect().await?;
    publish_one(&node, "cs/t", b"queued").await?;
    let mut fresh =
        Client5::connect(node.addr(), &Connect5::new(&client_id).session_expiry(60)).await?;
    ensure!(!fresh.session_present(), "Clean Start 1 kept the session");
    expect_nothing_queued(&mut fresh).await?;
    publish_one(&node, "cs/t", b"after").await?;
    expect_nothing_queued(&mut fresh)
        .await
        .context("the discarded session's subscription still delivers")
}

/// §3.14.2.2.2: a DISCONNECT's Session Expiry Interval replaces the one
/// from CONNECT: 60 → 0 ends the session at once; 1 → 60 keeps it past
/// the original 1 s.
#[tokio::test]
async fn disconnect_changes_the_session_expiry_interval() -> Result<()> {
    let node = NodeProcess::start()?;
    let shorter = unique_id("to-zero");
    let mut client =
        Client5::connect(node.addr(), &Connect5::new(&shorter).session_expiry(60)).await?;
    ensure!(client.subscribe(1, &[("dx/a", 1)]).await?.reasons == [1]);
    client
        .disconnect_with(0, &Properties::new().four(id::SESSION_EXPIRY_INTERVAL, 0))
        .await?;
    client.expect_closed(TIMEOUT).await?;
    let again = resume(&node, &shorter, 60).await?;
    ensure!(
        !again.session_present(),
        "DISCONNECT with expiry 0 left the session"
    );

    let longer = unique_id("to-sixty");
    let mut client =
        Client5::connect(node.addr(), &Connect5::new(&longer).session_expiry(1)).await?;
    ensure!(client.subscribe(1, &[("dx/b", 1)]).await?.reasons == [1]);
    client
        .disconnect_with(0, &Properties::new().four(id::SESSION_EXPIRY_INTERVAL, 60))
        .await?;
    client.expect_closed(TIMEOUT).await?;
    publish_one(&node, "dx/b", b"kept").await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut back = resume(&node, &longer, 60).await?;
    ensure!(
        back.session_present(),
        "DISCONNECT with expiry 60 did not extend a 1 s session"
    );
    let got = back.recv_publish_acked().await?;
    ensure!(got.payload == b"kept", "got {got:?}");
    Ok(())
}

/// §3.14.2.2.2 [MQTT-3.14.2-2]: a DISCONNECT setting a non-zero Session
/// Expiry Interval when the CONNECT had 0 is a Protocol Error: the node
/// answers DISCONNECT 0x82 and keeps no session.
#[tokio::test]
async fn disconnect_setting_expiry_after_connect_had_0_is_a_protocol_error() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("zero-then");
    let mut client = Client5::connect(node.addr(), &Connect5::new(&client_id)).await?;
    client
        .send(&p5::disconnect(
            0,
            &Properties::new().four(id::SESSION_EXPIRY_INTERVAL, 30),
        ))
        .await?;
    client
        .expect_disconnect_reason(reason::PROTOCOL_ERROR)
        .await?;
    let again = resume(&node, &client_id, 0).await?;
    ensure!(!again.session_present(), "a session was kept");
    Ok(())
}
