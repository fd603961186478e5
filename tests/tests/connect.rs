//! CONNECT handling: acceptance, refusal codes, and what closes a connection
//! before or around the handshake (MQTT 3.1.1 section 3.1).

use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, Connect, Publish};
use astramq_tests::{unique_id, NodeProcess, RawClient, TestClient, TIMEOUT};

/// A plain 3.1.1 CONNECT gets exactly `20 02 00 00` (accepted, no session).
#[tokio::test]
async fn valid_connect_is_accepted_with_return_code_zero() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    client
        .send(&Connect::new(&unique_id("ok")).encode())
        .await?;
    let connack = client.recv().await?;
    ensure!(
        connack.first_byte == 0x20 && connack.body == [0, 0],
        "got {connack:?}"
    );
    client.ping().await
}

/// The independent client library also connects and round-trips a message.
#[tokio::test]
async fn library_client_connects_and_round_trips() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = TestClient::connect(node.addr(), &unique_id("lib")).await?;
    ensure!(
        !client.session_present(),
        "clean session must not report a session"
    );
    client
        .subscribe("connect/echo", rumqttc::QoS::AtLeastOnce)
        .await?;
    client
        .publish("connect/echo", rumqttc::QoS::AtLeastOnce, false, "hi")
        .await?;
    let got = client.next_publish().await?;
    ensure!(got.payload.as_ref() == b"hi", "got {got:?}");
    Ok(())
}

/// Sends a CONNECT with an unsupported protocol level and expects CONNACK 1, then a close.
async fn assert_level_refused(level: u8) -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("level")).with_protocol("MQTT", level);
    let (mut client, connack) = RawClient::handshake(node.addr(), &connect).await?;
    ensure!(
        connack.code == 0x01,
        "level {level}: expected return code 1, got {connack:?}"
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// MQTT 5.0 (level 5) is spoken: a 5.0 CONNECT (with its Property
/// Length) gets a 5.0 CONNACK with reason 0x00 and is served. (It used to
/// be refused with 3.1.1 code 1; tests/mqtt5/ covers 5.0 itself.)
#[tokio::test]
async fn protocol_level_5_is_accepted() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = astramq_tests::v5::Connect5::new(&unique_id("level5"));
    let mut client = astramq_tests::v5::Client5::connect(node.addr(), &connect).await?;
    client.ping().await
}

/// A level past 5.0 (6) is refused with "unacceptable protocol version"
/// (MQTT 5.0 itself is served: tests/tests/mqtt5/).
#[tokio::test]
async fn protocol_level_6_is_refused_with_code_1() -> Result<()> {
    assert_level_refused(6).await
}

/// An unknown old level (2) is refused the same way.
#[tokio::test]
async fn protocol_level_2_is_refused_with_code_1() -> Result<()> {
    assert_level_refused(2).await
}

/// MQTT 3.1 ("MQIsdp", level 3) clients are still accepted.
#[tokio::test]
async fn mqtt_3_1_mqisdp_is_accepted() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("v31")).with_protocol("MQIsdp", 3);
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    client.ping().await
}

/// An empty client id with clean session is accepted (the node assigns one).
#[tokio::test]
async fn empty_client_id_with_clean_session_is_accepted() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut client, session_present) =
        RawClient::connected(node.addr(), &Connect::new("")).await?;
    ensure!(
        !session_present,
        "a fresh assigned id cannot have a session"
    );
    client.ping().await
}

/// An empty client id cannot own a persistent session: CONNACK 2, then a close.
#[tokio::test]
async fn empty_client_id_without_clean_session_is_refused_with_code_2() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect::new("").with_clean_session(false);
    let (mut client, connack) = RawClient::handshake(node.addr(), &connect).await?;
    ensure!(
        connack.code == 0x02,
        "expected identifier rejected (2), got {connack:?}"
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// A second CONNECT on an established connection is a protocol violation.
#[tokio::test]
async fn second_connect_on_same_connection_closes_it() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let connect = Connect::new(&unique_id("twice"));
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    client.send(&connect.encode()).await?;
    client.expect_closed(TIMEOUT).await?;
    astramq_tests::assert_serves_clients(&mut node).await
}

/// Opens a TCP connection, sends `first` as the first packet, expects a close.
async fn assert_first_packet_closes(first: &[u8]) -> Result<()> {
    let mut node = NodeProcess::start()?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    client.send(first).await?;
    client.expect_closed(TIMEOUT).await?;
    astramq_tests::assert_serves_clients(&mut node).await
}

/// PINGREQ before CONNECT closes the connection.
#[tokio::test]
async fn pingreq_before_connect_closes_connection() -> Result<()> {
    assert_first_packet_closes(&wire::pingreq()).await
}

/// PUBLISH before CONNECT closes the connection.
#[tokio::test]
async fn publish_before_connect_closes_connection() -> Result<()> {
    assert_first_packet_closes(&Publish::new("early/bird", 0, b"x").encode()).await
}

/// A TCP client that never sends CONNECT is dropped after `--connect-timeout`.
#[tokio::test]
async fn silent_tcp_client_is_closed_after_connect_timeout() -> Result<()> {
    let node = NodeProcess::start_with(&[("--connect-timeout", "1")])?;
    let mut client = RawClient::connect_tcp(node.addr()).await?;
    let took = client.expect_closed(Duration::from_secs(4)).await?;
    ensure!(
        took >= Duration::from_millis(800),
        "closed too early, after {took:?}"
    );
    Ok(())
}
