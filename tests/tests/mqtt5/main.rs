//! MQTT 5.0 on one node, checked against the normative statements of the
//! OASIS MQTT Version 5.0 standard (section numbers in each test's doc),
//! with clients that share no code with the node: the hand-encoded
//! [`Client5`] (`astramq_tests::v5`), `rumqttc::v5`, the mosquitto
//! command-line clients with `-V 5`, and paho-mqtt with `MQTTv5`.
//!
//! A step that must not happen is checked after a positive signal (a
//! sentinel message, a PINGRESP) has shown the node processed everything
//! sent before it; every wait is bounded by the harness's `TIMEOUT`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::users::TempDir;
use astramq_tests::v5::packet::{self as p5, puback};
use astramq_tests::v5::{
    application_properties, check_application_properties, id, reason, sub, Client5, Connect5,
    Packet5, Properties, Publish5, Will5,
};
use astramq_tests::wire::kind;
use astramq_tests::{unique_id, within, within_for, NodeProcess, RawClient, QUIET, TIMEOUT};
use tokio::io::{AsyncBufReadExt, BufReader};

mod aliases;
mod clients;
mod connect;
mod disconnect;
mod flow;
mod publish;
mod reason_codes;
mod session;
mod subscriptions;
mod will;

/// A clean-start 5.0 connection with default properties.
async fn connect(node: &NodeProcess, prefix: &str) -> Result<Client5> {
    Client5::connect(node.addr(), &Connect5::new(&unique_id(prefix))).await
}

/// A subscriber to `filter` at QoS 1, plus the sentinel topic `end`.
async fn subscriber(node: &NodeProcess, filter: &str, end: &str) -> Result<Client5> {
    let mut client = connect(node, "sub").await?;
    let ack = client.subscribe(1, &[(filter, 1), (end, 1)]).await?;
    ensure!(ack.reasons == [1, 1], "SUBACK {ack:?}");
    Ok(client)
}

/// Publishes the sentinel at QoS 1: once a subscriber sees it, everything
/// the same connection published before has been routed.
async fn sentinel(client: &mut Client5, end: &str) -> Result<()> {
    client
        .publish(&Publish5::new(end, 1, b"end").id(60_000))
        .await?;
    Ok(())
}

/// Requires the PUBACK (or PUBREC) `ack` to carry `expected`.
fn ack_reason(ack: Option<p5::Ack5>, expected: u8) -> Result<()> {
    let ack = ack.context("no ack for a QoS > 0 PUBLISH")?;
    ensure!(
        ack.reason == expected,
        "expected ack reason {expected:#04x}, got {ack:?}"
    );
    Ok(())
}

/// Publishes one QoS 1 message on `topic` from a fresh connection; the
/// PUBACK is 0x00 or, with no subscriber left, 0x10 (§3.4.2.1).
async fn publish_one(node: &NodeProcess, topic: &str, payload: &[u8]) -> Result<()> {
    let mut publisher = connect(node, "pub").await?;
    let ack = publisher
        .publish(&Publish5::new(topic, 1, payload))
        .await?
        .context("no PUBACK")?;
    ensure!(
        [reason::SUCCESS, reason::NO_MATCHING_SUBSCRIBERS].contains(&ack.reason),
        "PUBACK {ack:?}"
    );
    publisher.disconnect().await
}

/// Connects `client_id` with Clean Start 0 and `expiry`; returns the client.
async fn resume(node: &NodeProcess, client_id: &str, expiry: u32) -> Result<Client5> {
    let connect = Connect5::new(client_id)
        .clean_start(false)
        .session_expiry(expiry);
    Client5::connect(node.addr(), &connect).await
}

/// Requires that nothing is queued for `client`: a PINGRESP comes before
/// any PUBLISH, and none follows.
async fn expect_nothing_queued(client: &mut Client5) -> Result<()> {
    client.ping().await?;
    client.expect_quiet(QUIET).await
}

/// The reason code of the CONNACK `connect` gets, after which the node
/// must close the connection (§3.2.2.2 [MQTT-3.2.2-7]).
async fn refusal(node: &NodeProcess, connect: &Connect5) -> Result<u8> {
    let mut client = Client5::handshake(node.addr(), connect).await?;
    let code = client.connack.reason;
    ensure!(code >= 0x80, "expected a refusal, got {:?}", client.connack);
    client.expect_closed(TIMEOUT).await?;
    Ok(code)
}
