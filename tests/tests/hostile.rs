//! Hostile clients: each case refuses or closes only the offending client,
//! while a well-behaved bystander (the independent rumqttc client) keeps
//! getting its messages, and the node keeps running.
//!
//! Hostile input is sent with [`RawClient`] so its bytes are exactly what a
//! test says; every step is bounded by [`TIMEOUT`] (or a stated bound).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use astramq_tests::binary::node_binary;
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::wire::{self, Connect, Publish, Will};
use astramq_tests::{
    assert_serves_clients, unique_id, NodeProcess, RawClient, TestClient, TIMEOUT,
};
use rumqttc::{QoS, SubscribeReasonCode};

/// A SUBACK slot refusing its filter.
const SUBACK_FAILURE: u8 = 0x80;

/// CONNACK "identifier rejected".
const CONNACK_IDENTIFIER_REJECTED: u8 = 0x02;

/// `n` empty levels: `n - 1` slashes (a valid filter and topic name).
fn levels(n: usize) -> String {
    "/".repeat(n - 1)
}

/// Starts a node with a metrics endpoint and `flags`.
fn start_node(flags: &[(&str, &str)]) -> Result<NodeProcess> {
    let mut all = vec![("--metrics-listen", "127.0.0.1:0")];
    all.extend_from_slice(flags);
    NodeProcess::start_with(&all)
}

/// `astramq_limit_refusals_total{reason}` on the node's metrics page.
fn limit_refusals(node: &NodeProcess, reason: &str) -> Result<f64> {
    let page = Exposition::scrape(node_metrics_addr(node)?)?;
    Ok(page.total("astramq_limit_refusals_total", &[("reason", reason)]))
}

/// A subscriber and a publisher on a topic of their own: after each hostile
/// step, [`Bystander::still_served`] proves the node still delivers.
struct Bystander {
    subscriber: TestClient,
    publisher: TestClient,
    topic: String,
    sent: usize,
}

impl Bystander {
    async fn join(node: &NodeProcess) -> Result<Self> {
        let topic = format!("bystander/{}", unique_id("t"));
        let mut subscriber = TestClient::connect(node.addr(), &unique_id("by-sub")).await?;
        let granted = subscriber.subscribe(&topic, QoS::AtLeastOnce).await?;
        ensure!(granted == SubscribeReasonCode::Success(QoS::AtLeastOnce));
        let publisher = TestClient::connect(node.addr(), &unique_id("by-pub")).await?;
        Ok(Self {
            subscriber,
            publisher,
            topic,
            sent: 0,
        })
    }

    /// Publishes the next message and requires it to arrive, in order.
    async fn still_served(&mut self) -> Result<()> {
        self.sent += 1;
        let payload = format!("m{}", self.sent);
        self.publisher
            .publish(&self.topic, QoS::AtLeastOnce, false, payload.clone())
            .await?;
        let got = self.subscriber.next_publish().await?;
        ensure!(
            got.payload.as_ref() == payload.as_bytes(),
            "bystander got {:?}, expected {payload}",
            got.payload
        );
        Ok(())
    }
}

/// A 65,000-level filter (one packet; it used to overflow the node's stack)
/// gets 0x80 under the default 64-level limit; the other filter of the same
/// SUBSCRIBE is granted and the connection stays open.
#[tokio::test]
async fn a_65000_level_filter_is_refused_in_its_suback_slot() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(&node).await?;
    let connect = Connect::new(&unique_id("deep"));
    let (mut hostile, _) = RawClient::connected(node.addr(), &connect).await?;
    let deep = levels(65_000);
    let codes = hostile
        .subscribe(1, &[(deep.as_str(), 1), ("fine/topic", 1)])
        .await?;
    ensure!(codes == [SUBACK_FAILURE, 1], "SUBACK codes {codes:?}");
    hostile.ping().await?;
    ensure!(limit_refusals(&node, "topic_levels")? == 1.0);
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// With the level limit raised, the same filter is accepted, matched by a
/// 65,000-level topic, unsubscribed, and the node survives all of it (each
/// step walks the subscription tree 65,000 levels deep).
#[tokio::test]
async fn a_65000_level_filter_is_served_when_the_limit_allows_it() -> Result<()> {
    let mut node = NodeProcess::start_with(&[("--max-topic-levels", "70000")])?;
    let mut bystander = Bystander::join(&node).await?;
    let connect = Connect::new(&unique_id("deep"));
    let (mut client, _) = RawClient::connected(node.addr(), &connect).await?;
    let deep = levels(65_000);
    ensure!(client.subscribe(1, &[(deep.as_str(), 0)]).await? == [0]);
    client
        .send(&Publish::new(&deep, 0, b"deep").encode())
        .await?;
    let delivered = client.recv_publish().await?;
    ensure!(delivered.topic_str() == deep && delivered.payload == b"deep");
    client.send(&wire::unsubscribe(2, &[deep.as_str()])).await?;
    client.recv().await?.expect_kind(wire::kind::UNSUBACK)?;
    bystander.still_served().await?;
    // Leaving with the filter still subscribed drops a deep tree too.
    ensure!(client.subscribe(3, &[(deep.as_str(), 0)]).await? == [0]);
    client.send(&wire::disconnect()).await?;
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// A 65,000-byte client id gets CONNACK 0x02 (limit 256 by default).
#[tokio::test]
async fn a_65000_byte_client_id_gets_connack_0x02() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(&node).await?;
    let id = "i".repeat(65_000);
    let (mut hostile, connack) = RawClient::handshake(node.addr(), &Connect::new(&id)).await?;
    ensure!(connack.code == CONNACK_IDENTIFIER_REJECTED, "{connack:?}");
    hostile.expect_closed(TIMEOUT).await?;
    ensure!(limit_refusals(&node, "client_id_length")? == 1.0);
    // At the limit is fine.
    let (_fine, connack) =
        RawClient::handshake(node.addr(), &Connect::new(&"j".repeat(256))).await?;
    ensure!(connack.code == 0, "{connack:?}");
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// A PUBLISH deeper than the limit closes that client only; one within the
/// limit from another client is delivered.
#[tokio::test]
async fn a_too_deep_publish_topic_closes_only_that_client() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(&node).await?;
    let (mut hostile, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("h"))).await?;
    let too_deep = "x/".repeat(64) + "x"; // 65 levels
    hostile
        .send(&Publish::new(&too_deep, 1, b"x").with_packet_id(1).encode())
        .await?;
    hostile.expect_closed(TIMEOUT).await?;
    ensure!(limit_refusals(&node, "topic_levels")? == 1.0);
    bystander.still_served().await?;
    // 64 levels pass.
    let (mut fine, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("f"))).await?;
    let deepest = "x/".repeat(63) + "x";
    fine.send(&Publish::new(&deepest, 1, b"x").with_packet_id(1).encode())
        .await?;
    ensure!(fine.recv().await?.ack_id(wire::kind::PUBACK)? == 1);
    assert_serves_clients(&mut node).await
}

/// A will topic over the limit gets the connection closed, no CONNACK.
#[tokio::test]
async fn a_too_long_will_topic_closes_the_connection() -> Result<()> {
    let mut node = start_node(&[("--max-topic-length", "100")])?;
    let mut bystander = Bystander::join(&node).await?;
    let connect = Connect::new(&unique_id("will")).with_will(Will::new(&"w".repeat(101), b"bye"));
    let mut hostile = RawClient::connect_tcp(node.addr()).await?;
    hostile.send(&connect.encode()).await?;
    let answer = hostile.recv_for(TIMEOUT).await;
    ensure!(
        answer.is_err(),
        "expected a close without CONNACK, got {answer:?}"
    );
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// `GET / HTTP/1.1` as the first bytes is closed at once, not after the
/// 10 s connect timeout, while the sender keeps its socket open.
#[tokio::test]
async fn an_http_request_is_closed_at_once() -> Result<()> {
    let mut node = NodeProcess::start_with(&[("--connect-timeout", "10")])?;
    let mut bystander = Bystander::join(&node).await?;
    for junk in [
        &b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n"[..],
        &b"G"[..],
        // A CONNECT type with reserved flags, declaring a 2 MiB body.
        &[0x11, 0x80, 0x80, 0x80, 0x01][..],
    ] {
        let mut hostile = RawClient::connect_tcp(node.addr()).await?;
        let started = Instant::now();
        hostile.send(junk).await?;
        hostile.expect_closed(TIMEOUT).await?;
        let took = started.elapsed();
        ensure!(
            took < Duration::from_secs(1),
            "closed after {took:?} for {junk:?}"
        );
    }
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// Thousands of filters in one SUBSCRIBE: the first 1,000 (the default
/// per-client cap) are granted, every one beyond gets 0x80; re-subscribing
/// a held filter still works, and unsubscribing makes room.
#[tokio::test]
async fn filters_beyond_the_per_client_cap_get_0x80() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(&node).await?;
    let (mut hostile, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("flood"))).await?;
    let filters: Vec<String> = (0..3000).map(|i| format!("flood/{i}")).collect();
    let request: Vec<(&str, u8)> = filters.iter().map(|f| (f.as_str(), 0)).collect();
    let codes = hostile.subscribe(1, &request).await?;
    ensure!(codes.len() == 3000);
    let granted = codes.iter().filter(|&&c| c == 0).count();
    ensure!(granted == 1000, "{granted} granted");
    ensure!(codes[1000..].iter().all(|&c| c == SUBACK_FAILURE));
    ensure!(limit_refusals(&node, "subscriptions_per_client")? == 2000.0);
    bystander.still_served().await?;
    ensure!(hostile.subscribe(2, &[("flood/0", 1)]).await? == [1]);
    ensure!(hostile.subscribe(3, &[("flood/new", 0)]).await? == [SUBACK_FAILURE]);
    hostile.send(&wire::unsubscribe(4, &["flood/1"])).await?;
    hostile.recv().await?.expect_kind(wire::kind::UNSUBACK)?;
    ensure!(hostile.subscribe(5, &[("flood/new", 0)]).await? == [0]);
    // The cap is per client: another client subscribes freely.
    let mut other = TestClient::connect(node.addr(), &unique_id("other")).await?;
    let code = other.subscribe("flood/other", QoS::AtMostOnce).await?;
    ensure!(code == SubscribeReasonCode::Success(QoS::AtMostOnce));
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// Runs the node binary with `args` and waits (bounded) for it to exit.
fn run_to_exit(args: &[&str]) -> Result<(Option<i32>, String)> {
    let mut child = Command::new(node_binary()?)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning the node")?;
    let deadline = Instant::now() + TIMEOUT;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            anyhow::bail!("node with {args:?} still running after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output()?;
    Ok((
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Nonsensical settings stop the node at start-up with exit code 2 and a
/// message naming the setting (a zero heartbeat interval used to panic
/// inside a background task and silently stop heartbeats).
#[tokio::test]
async fn nonsensical_settings_exit_with_code_2() -> Result<()> {
    for (args, named) in [
        (
            &["--heartbeat-interval-ms", "0"][..],
            "heartbeat-interval-ms",
        ),
        (
            &[
                "--heartbeat-interval-ms",
                "500",
                "--heartbeat-ttl-ms",
                "400",
            ][..],
            "heartbeat-ttl-ms",
        ),
        (&["--max-topic-levels", "0"][..], "max-topic-levels"),
        (&["--connect-timeout", "0"][..], "connect-timeout"),
    ] {
        let (code, stderr) = run_to_exit(args)?;
        ensure!(
            code == Some(2),
            "{args:?}: exit code {code:?}, stderr {stderr}"
        );
        ensure!(
            stderr.contains("invalid configuration") && stderr.contains(named),
            "{args:?}: stderr {stderr}"
        );
    }
    Ok(())
}
