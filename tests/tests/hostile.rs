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
use astramq_tests::bystander::Bystander;
use astramq_tests::observability::cluster::node_metrics_addr;
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::wire::{self, Connect, Publish, Will};
use astramq_tests::{
    assert_serves_clients, unique_id, within_for, NodeProcess, RawClient, RedisProcess, TestClient,
    TIMEOUT,
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

/// A 65,000-level filter (one packet; it used to overflow the node's stack)
/// gets 0x80 under the default 64-level limit; the other filter of the same
/// SUBSCRIBE is granted and the connection stays open.
#[tokio::test]
async fn a_65000_level_filter_is_refused_in_its_suback_slot() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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
    let mut bystander = Bystander::join(node.addr()).await?;
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

/// Sends `publishes` in one write, then a QoS 1 marker, and waits for the
/// marker's PUBACK: every publish before it has been handled.
async fn publish_all(client: &mut RawClient, publishes: &[Publish]) -> Result<()> {
    let mut bytes = Vec::new();
    for publish in publishes {
        bytes.extend(publish.encode());
    }
    bytes.extend(Publish::new("marker", 1, b"m").with_packet_id(9).encode());
    client.send(&bytes).await?;
    loop {
        // Bounded, generously: thousands of retained writes through Redis
        // come before the marker.
        let packet = client
            .recv_for(Duration::from_secs(30))
            .await?
            .context("no PUBACK for the marker within 30 s")?;
        if packet.kind() == wire::kind::PUBACK {
            ensure!(packet.ack_id(wire::kind::PUBACK)? == 9);
            return Ok(());
        }
    }
}

/// Subscribes and returns the SUBACK codes and the retained PUBLISHes that
/// follow it (read until `QUIET` passes without one; live publishes the
/// new subscription also matches, without the retain flag, are skipped).
async fn subscribe_retained(
    client: &mut RawClient,
    id: u16,
    filter: &str,
) -> Result<(Vec<u8>, Vec<wire::Publish>)> {
    let codes = client.subscribe(id, &[(filter, 0)]).await?;
    let mut retained = Vec::new();
    while let Some(packet) = client.recv_for(astramq_tests::QUIET).await? {
        let publish = packet.publish()?;
        if publish.retain {
            retained.push(publish);
        }
    }
    Ok((codes, retained))
}

/// Over `max-retained-messages` a retained PUBLISH to a new topic is
/// delivered but not stored (counted); replacing and clearing still work,
/// and a cleared topic makes room. A payload over `max-retained-payload`
/// is delivered, not stored.
#[tokio::test]
async fn retained_limits_refuse_new_topics_but_deliver_them() -> Result<()> {
    // No `$SYS` topics: they are retained and count towards the limit.
    let mut node = start_node(&[
        ("--max-retained-messages", "3"),
        ("--max-retained-payload", "100"),
        ("--sys-interval", "0"),
    ])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let (mut live, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("live"))).await?;
    ensure!(live.subscribe(1, &[("lim/#", 0)]).await? == [0]);
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p"))).await?;
    let retained = |topic: &str, payload: &[u8]| Publish::new(topic, 0, payload).with_retain();
    publish_all(
        &mut publisher,
        &[
            retained("lim/1", b"a"),
            retained("lim/2", b"b"),
            retained("lim/3", b"c"),
            retained("lim/4", b"refused"),
            retained("lim/1", b"replaced"),
            retained("lim/big", &[b'x'; 101]),
        ],
    )
    .await?;
    for _ in 0..6 {
        live.recv_publish().await?; // every one is delivered live
    }
    ensure!(limit_refusals(&node, "retained_messages")? == 1.0);
    ensure!(limit_refusals(&node, "retained_payload")? == 1.0);
    let (mut late, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("late"))).await?;
    let (_, got) = subscribe_retained(&mut late, 1, "lim/#").await?;
    let mut seen: Vec<(String, Vec<u8>)> = got
        .iter()
        .map(|p| (p.topic_str(), p.payload.clone()))
        .collect();
    seen.sort();
    ensure!(
        seen == [
            ("lim/1".into(), b"replaced".to_vec()),
            ("lim/2".into(), b"b".to_vec()),
            ("lim/3".into(), b"c".to_vec()),
        ],
        "retained {seen:?}"
    );
    // Clearing makes room for a new topic. (A fresh client: `late` now
    // holds a live subscription.)
    publish_all(
        &mut publisher,
        &[retained("lim/2", b""), retained("lim/4", b"now")],
    )
    .await?;
    let (mut later, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("l2"))).await?;
    let (_, got) = subscribe_retained(&mut later, 1, "lim/4").await?;
    ensure!(got.len() == 1 && got[0].payload == b"now", "{got:?}");
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// A will payload over `max-will-payload` closes the connection without
/// CONNACK and is counted.
#[tokio::test]
async fn a_too_large_will_payload_closes_the_connection() -> Result<()> {
    let mut node = start_node(&[("--max-will-payload", "1000")])?;
    let connect = Connect::new(&unique_id("will")).with_will(Will::new("w/topic", &[b'w'; 1001]));
    let mut hostile = RawClient::connect_tcp(node.addr()).await?;
    hostile.send(&connect.encode()).await?;
    let answer = hostile.recv_for(TIMEOUT).await;
    ensure!(answer.is_err(), "expected a close, got {answer:?}");
    ensure!(limit_refusals(&node, "will_payload")? == 1.0);
    let fine = Connect::new(&unique_id("will")).with_will(Will::new("w/topic", &[b'w'; 1000]));
    RawClient::connected(node.addr(), &fine).await?;
    assert_serves_clients(&mut node).await
}

/// 20,000 retained messages, then 300 SUBSCRIBEs: each gets exactly the
/// messages its filter matches (the index reads no others), the node keeps
/// serving, and its memory stays bounded.
#[tokio::test]
async fn twenty_thousand_retained_then_hundreds_of_subscribes() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p"))).await?;
    let payload = [b'r'; 100];
    let publishes: Vec<Publish> = (0..20_000)
        .map(|i| Publish::new(&format!("bulk/{}/{}", i / 100, i % 100), 0, &payload).with_retain())
        .collect();
    publish_all(&mut publisher, &publishes).await?;
    let before = node.rss_kib()?;
    let (mut subscriber, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("s"))).await?;
    let started = Instant::now();
    for i in 0..300u16 {
        let filter = match i % 30 {
            0 => format!("bulk/{}/+", i / 2),
            _ => format!("bulk/{}/{}", i / 2, i % 100),
        };
        subscriber
            .send(&wire::subscribe(i + 1, &[(&filter, 0)]))
            .await?;
        let (acked, codes) = subscriber.recv().await?.suback()?;
        ensure!(acked == i + 1 && codes == [0], "SUBACK {acked} {codes:?}");
        let expected = if i % 30 == 0 { 100 } else { 1 };
        for _ in 0..expected {
            let got = subscriber.recv_publish().await?;
            ensure!(got.retain, "retain flag on {}", got.topic_str());
        }
    }
    subscriber.expect_quiet(astramq_tests::QUIET).await?;
    let took = started.elapsed();
    let after = node.rss_kib()?;
    ensure!(
        took < Duration::from_secs(10),
        "300 SUBSCRIBEs took {took:?}"
    );
    ensure!(
        after < before + 32 * 1024 && after < 256 * 1024,
        "RSS {before} KiB before, {after} KiB after the SUBSCRIBEs"
    );
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// CONNACK "server unavailable".
const CONNACK_SERVER_UNAVAILABLE: u8 = 0x03;

/// Over `max-connections-per-ip` a new connection from the same address is
/// closed before its CONNECT is read; closing one makes room.
#[tokio::test]
async fn connections_beyond_the_per_ip_limit_are_closed_at_accept() -> Result<()> {
    let mut node = start_node(&[("--max-connections-per-ip", "3")])?;
    let mut bystander = Bystander::join(node.addr()).await?; // two connections
    let (first, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("ip"))).await?;
    let mut refused = RawClient::connect_tcp(node.addr()).await?;
    refused.expect_closed(TIMEOUT).await?;
    ensure!(limit_refusals(&node, "connections_per_ip")? == 1.0);
    drop(first);
    let fine = Connect::new(&unique_id("ip"));
    let deadline = Instant::now() + TIMEOUT;
    // The closed connection's slot comes back once its session has ended.
    while RawClient::connected(node.addr(), &fine).await.is_err() {
        ensure!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bystander.still_served().await?;
    node.assert_running()
}

/// Beyond `max-connection-rate` the node stops accepting until its bucket
/// refills: a burst waits in the listen backlog and every client of it is
/// served, the last ones about two seconds later, none refused.
#[tokio::test]
async fn connections_beyond_the_rate_wait_and_are_all_served() -> Result<()> {
    const BURST: usize = 13;
    let mut node = start_node(&[("--max-connection-rate", "5")])?;
    let mut bystander = Bystander::join(node.addr()).await?; // uses two tokens
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let addr = node.addr();
        clients.spawn(async move {
            let connect = Connect::new(&unique_id("burst"));
            let (client, connack) = RawClient::handshake(addr, &connect).await?;
            anyhow::Ok((client, connack.code, start.elapsed()))
        });
    }
    let mut served = Vec::new();
    for joined in clients.join_all().await {
        served.push(joined.context("a client of the burst was not served")?);
    }
    ensure!(served.iter().all(|(_, code, _)| *code == 0));
    // 3 tokens left after the bystander, then 5 per second: the 13th
    // connection is accepted about 2 s after the burst.
    let last = served
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or_default();
    ensure!(
        last >= Duration::from_millis(1500),
        "burst served in {last:?}"
    );
    let page = Exposition::scrape(node_metrics_addr(&node)?)?;
    ensure!(page.total("astramq_accept_pauses_total", &[]) >= 1.0);
    ensure!(page.total("astramq_accept_paused_seconds_total", &[]) >= 1.5);
    ensure!(page.total("astramq_connections_refused_total", &[]) == 0.0);
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// Over `max-sessions` a new session gets CONNACK 0x03; a client whose
/// session the node holds still connects.
#[tokio::test]
async fn sessions_beyond_the_limit_get_connack_0x03() -> Result<()> {
    let mut node = start_node(&[("--max-sessions", "2")])?;
    let kept = unique_id("kept");
    let persistent = Connect::new(&kept).with_clean_session(false);
    let (mut one, _) = RawClient::connected(node.addr(), &persistent).await?;
    let (_two, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("s"))).await?;
    let (mut third, connack) =
        RawClient::handshake(node.addr(), &Connect::new(&unique_id("s"))).await?;
    ensure!(connack.code == CONNACK_SERVER_UNAVAILABLE, "{connack:?}");
    third.expect_closed(TIMEOUT).await?;
    ensure!(limit_refusals(&node, "sessions")? == 1.0);
    // The persistent session goes offline and is still held: it resumes.
    one.send(&wire::disconnect()).await?;
    one.expect_closed(TIMEOUT).await?;
    let (_again, present) = RawClient::connected(node.addr(), &persistent).await?;
    ensure!(present, "session not resumed");
    node.assert_running()
}

/// A client asking for keep-alive 0 is held to `default-keep-alive`, one
/// asking for more than `max-keep-alive` to the maximum: silent, both are
/// closed after 1.5 × that.
#[tokio::test]
async fn keep_alive_is_held_to_the_maximum_and_zero_gets_the_default() -> Result<()> {
    // No bystander: its client's keep-alive would be held to the maximum too.
    let mut node = start_node(&[("--max-keep-alive", "2"), ("--default-keep-alive", "1")])?;
    let (mut zero, _) = RawClient::connected(
        node.addr(),
        &Connect::new(&unique_id("ka0")).with_keep_alive(0),
    )
    .await?;
    let (mut long, _) = RawClient::connected(
        node.addr(),
        &Connect::new(&unique_id("ka")).with_keep_alive(600),
    )
    .await?;
    let took = zero.expect_closed(Duration::from_secs(4)).await?;
    ensure!(took >= Duration::from_millis(1200), "closed after {took:?}");
    let took = long.expect_closed(Duration::from_secs(5)).await?;
    ensure!(took <= Duration::from_secs(4), "closed after {took:?}");
    ensure!(limit_refusals(&node, "keep_alive")? == 1.0);
    assert_serves_clients(&mut node).await
}

/// Packets after DISCONNECT (in the same write) are not acted on: the
/// PUBLISH that follows is not delivered, and the connection ends.
#[tokio::test]
async fn packets_after_disconnect_are_ignored() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let topic = unique_id("after");
    let (mut watcher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("w"))).await?;
    ensure!(watcher.subscribe(1, &[(topic.as_str(), 0)]).await? == [0]);
    let (mut hostile, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("h"))).await?;
    let mut bytes = wire::disconnect();
    bytes.extend(Publish::new(&topic, 0, b"late").encode());
    bytes.extend(wire::subscribe(2, &[("x", 0)]));
    hostile.send(&bytes).await?;
    hostile.expect_closed(TIMEOUT).await?;
    watcher.expect_quiet(Duration::from_millis(500)).await?;
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// Thousands of sockets that never send CONNECT: the node keeps serving,
/// its memory stays bounded while they are open, and each is closed after
/// the connect timeout.
#[tokio::test]
async fn thousands_of_idle_sockets_are_closed_after_the_connect_timeout() -> Result<()> {
    let mut node = start_node(&[("--connect-timeout", "2"), ("--max-connection-rate", "0")])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let before = node.rss_kib()?;
    let mut idle = Vec::with_capacity(3000);
    for _ in 0..3000 {
        idle.push(RawClient::connect_tcp(node.addr()).await?);
    }
    // Opening them takes seconds on a busy machine; the last one opened
    // must still be closed about one connect timeout (2 s) later.
    let all_open = Instant::now();
    bystander.still_served().await?;
    let during = node.rss_kib()?;
    ensure!(
        during < before + 64 * 1024,
        "RSS {before} KiB before, {during} KiB with 3000 idle sockets"
    );
    for socket in &mut idle {
        socket.expect_closed(Duration::from_secs(10)).await?;
    }
    let took = all_open.elapsed();
    ensure!(
        took < Duration::from_secs(8),
        "the last idle socket was closed {took:?} after it was opened (connect timeout 2 s)"
    );
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// A subscriber that never reads: deliveries beyond its in-memory byte
/// bound are dropped and counted, another subscriber keeps getting every
/// message, and the node's memory stays bounded.
#[tokio::test]
async fn a_client_that_never_reads_costs_bounded_memory() -> Result<()> {
    let mut node = start_node(&[("--max-queued-bytes-per-session", "2097152")])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let topic = unique_id("flood");
    let (mut stuck, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("stuck"))).await?;
    ensure!(stuck.subscribe(1, &[(topic.as_str(), 0)]).await? == [0]);
    let (mut reader, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("r"))).await?;
    ensure!(reader.subscribe(1, &[(topic.as_str(), 0)]).await? == [0]);
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p"))).await?;
    let before = node.rss_kib()?;
    let payload = vec![b'f'; 64 * 1024];
    // 64 MiB in 1024 publishes, 1 MiB at a time (within the reader's
    // bound), while `stuck` reads nothing.
    for round in 0..64 {
        let batch: Vec<Publish> = (0..16).map(|_| Publish::new(&topic, 0, &payload)).collect();
        publish_all(&mut publisher, &batch).await?;
        for _ in 0..16 {
            reader.recv_publish().await?;
        }
        if round % 16 == 0 {
            bystander.still_served().await?;
        }
    }
    let after = node.rss_kib()?;
    ensure!(
        after < before + 48 * 1024,
        "RSS {before} KiB before, {after} KiB after 64 MiB to a client that does not read"
    );
    ensure!(limit_refusals(&node, "queued_bytes")? > 0.0);
    drop(stuck);
    bystander.still_served().await?;
    assert_serves_clients(&mut node).await
}

/// A cluster node with a metrics endpoint on `redis`, plus `flags`.
fn start_cluster_node(redis: &RedisProcess, flags: &[(&str, &str)]) -> Result<NodeProcess> {
    let url = redis.url();
    let mut all = vec![
        ("--metrics-listen", "127.0.0.1:0"),
        ("--redis", url.as_str()),
        ("--sys-interval", "0"),
    ];
    all.extend_from_slice(flags);
    NodeProcess::start_named(&unique_id("n"), &all)
}

/// In a cluster each node's retained index sees another node's retained
/// writes at once (set through A, acknowledged, then subscribed on B), a
/// cleared topic is gone on B too, and the count limit is cluster-wide:
/// once the topics of both nodes reach it, a new topic is refused on
/// either node while replacing one still works.
#[tokio::test]
async fn retained_writes_are_seen_across_nodes_at_once_and_limits_are_cluster_wide() -> Result<()> {
    let redis = RedisProcess::start()?;
    let limit = [("--max-retained-messages", "20")];
    let a = start_cluster_node(&redis, &limit)?;
    let b = start_cluster_node(&redis, &limit)?;
    let (mut on_a, _) = RawClient::connected(a.addr(), &Connect::new(&unique_id("pa"))).await?;
    let (mut on_b, _) = RawClient::connected(b.addr(), &Connect::new(&unique_id("sb"))).await?;
    for i in 0..20u16 {
        let topic = format!("cr/{i}");
        on_a.send(
            &Publish::new(&topic, 1, b"v")
                .with_retain()
                .with_packet_id(i + 1)
                .encode(),
        )
        .await?;
        ensure!(on_a.recv().await?.ack_id(wire::kind::PUBACK)? == i + 1);
        let (_, got) = subscribe_retained(&mut on_b, i + 1, &topic).await?;
        ensure!(
            got.len() == 1 && got[0].topic_str() == topic,
            "{topic}: {got:?}"
        );
    }
    // Cleared through A: gone on B. (A fresh client: `on_b` holds live
    // subscriptions now.)
    drop(on_b);
    let (mut late, _) = RawClient::connected(b.addr(), &Connect::new(&unique_id("lb"))).await?;
    publish_all(&mut on_a, &[Publish::new("cr/0", 0, b"").with_retain()]).await?;
    let (_, got) = subscribe_retained(&mut late, 100, "cr/0").await?;
    ensure!(got.is_empty(), "cleared topic still retained: {got:?}");
    // 19 topics: one more fits (through B), then neither node stores a new one.
    let (mut pub_b, _) = RawClient::connected(b.addr(), &Connect::new(&unique_id("pb"))).await?;
    publish_all(
        &mut pub_b,
        &[
            Publish::new("cr/b1", 0, b"1").with_retain(),
            Publish::new("cr/b2", 0, b"2").with_retain(),
        ],
    )
    .await?;
    publish_all(
        &mut on_a,
        &[
            Publish::new("cr/a1", 0, b"1").with_retain(),
            Publish::new("cr/1", 0, b"replaced").with_retain(),
        ],
    )
    .await?;
    ensure!(limit_refusals(&b, "retained_messages")? == 1.0);
    ensure!(limit_refusals(&a, "retained_messages")? == 1.0);
    let (_, got) = subscribe_retained(&mut late, 101, "cr/#").await?;
    ensure!(got.len() == 20, "{} retained, expected 20", got.len());
    ensure!(got
        .iter()
        .any(|p| p.topic_str() == "cr/1" && p.payload == b"replaced"));
    ensure!(got.iter().any(|p| p.topic_str() == "cr/b1"));
    Ok(())
}

/// 20,000 retained messages in a cluster, set through one node, then 200
/// SUBSCRIBEs on another: each gets exactly its match, quickly, and the
/// node's memory stays bounded (it indexes topics, not payloads).
#[tokio::test]
async fn twenty_thousand_retained_in_a_cluster_then_hundreds_of_subscribes() -> Result<()> {
    let redis = RedisProcess::start()?;
    let a = start_cluster_node(&redis, &[])?;
    let mut b = start_cluster_node(&redis, &[])?;
    let (mut publisher, _) = RawClient::connected(a.addr(), &Connect::new(&unique_id("p"))).await?;
    let payload = [b'r'; 100];
    let publishes: Vec<Publish> = (0..20_000)
        .map(|i| Publish::new(&format!("cb/{}/{}", i / 100, i % 100), 0, &payload).with_retain())
        .collect();
    within_for(
        Duration::from_secs(30),
        "20,000 retained writes",
        publish_all(&mut publisher, &publishes),
    )
    .await??;
    let before = b.rss_kib()?;
    let (mut subscriber, _) =
        RawClient::connected(b.addr(), &Connect::new(&unique_id("s"))).await?;
    let started = Instant::now();
    for i in 0..200u16 {
        let filter = format!("cb/{}/{}", i, i % 100);
        subscriber
            .send(&wire::subscribe(i + 1, &[(&filter, 0)]))
            .await?;
        let (acked, codes) = subscriber.recv().await?.suback()?;
        ensure!(acked == i + 1 && codes == [0], "SUBACK {acked} {codes:?}");
        let got = subscriber.recv_publish().await?;
        ensure!(
            got.topic_str() == filter && got.retain,
            "got {}",
            got.topic_str()
        );
    }
    subscriber.expect_quiet(astramq_tests::QUIET).await?;
    let took = started.elapsed();
    let after = b.rss_kib()?;
    ensure!(
        took < Duration::from_secs(10),
        "200 SUBSCRIBEs took {took:?}"
    );
    ensure!(
        after < before + 32 * 1024,
        "RSS {before} KiB before, {after} KiB after the SUBSCRIBEs"
    );
    assert_serves_clients(&mut b).await
}

/// A client whose writes are blocked (it reads nothing) still has its
/// packets read: its DISCONNECT ends the session at once — not after the
/// 30 s write timeout — and, being a DISCONNECT, discards its will.
#[tokio::test]
async fn a_blocked_client_still_has_its_disconnect_read() -> Result<()> {
    let mut node = start_node(&[("--max-queued-bytes-per-session", "1048576")])?;
    let topic = unique_id("blocked");
    let will_topic = unique_id("will");
    let (mut watcher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("w"))).await?;
    ensure!(watcher.subscribe(1, &[(will_topic.as_str(), 0)]).await? == [0]);
    let connect = Connect::new(&unique_id("stuck")).with_will(Will::new(&will_topic, b"gone"));
    let (mut stuck, _) = RawClient::connected(node.addr(), &connect).await?;
    ensure!(stuck.subscribe(1, &[(topic.as_str(), 0)]).await? == [0]);
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p"))).await?;
    let payload = vec![b'b'; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(10);
    while limit_refusals(&node, "queued_bytes")? == 0.0 {
        ensure!(
            Instant::now() < deadline,
            "the stuck client's writes never blocked"
        );
        let batch: Vec<Publish> = (0..16).map(|_| Publish::new(&topic, 0, &payload)).collect();
        publish_all(&mut publisher, &batch).await?;
    }
    let connected = |node: &NodeProcess| -> Result<f64> {
        Ok(Exposition::scrape(node_metrics_addr(node)?)?.total("astramq_connections", &[]))
    };
    let before = connected(&node)?;
    stuck.send(&wire::disconnect()).await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while connected(&node)? >= before {
        ensure!(
            Instant::now() < deadline,
            "DISCONNECT not acted on while writes were blocked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    watcher.expect_quiet(Duration::from_millis(500)).await?;
    assert_serves_clients(&mut node).await
}

/// A flood of SUBSCRIBE packets in one write (5,000 packets, 10,000
/// filters): every one is answered, in order, filters beyond the per-client
/// cap get 0x80, and the node keeps serving others with bounded memory.
#[tokio::test]
async fn a_flood_of_subscribe_packets_is_answered_in_order() -> Result<()> {
    let mut node = start_node(&[])?;
    let mut bystander = Bystander::join(node.addr()).await?;
    let (mut hostile, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("flood"))).await?;
    let before = node.rss_kib()?;
    let mut bytes = Vec::new();
    for id in 1..=5000u16 {
        let a = format!("sf/{id}/a");
        let b = format!("sf/{id}/+");
        bytes.extend(wire::subscribe(id, &[(&a, 0), (&b, 1)]));
    }
    hostile.send(&bytes).await?;
    let mut granted = 0;
    for id in 1..=5000u16 {
        let (acked, codes) = hostile.recv().await?.suback()?;
        ensure!(acked == id && codes.len() == 2, "SUBACK {acked} {codes:?}");
        granted += codes.iter().filter(|&&c| c != SUBACK_FAILURE).count();
    }
    ensure!(granted == 1000, "{granted} filters granted");
    bystander.still_served().await?;
    let after = node.rss_kib()?;
    ensure!(
        after < before + 64 * 1024,
        "RSS {before} KiB before, {after} KiB after the flood"
    );
    assert_serves_clients(&mut node).await
}

/// Concurrent CONNECTs for new sessions (200, all at once) never take the
/// node past `max-sessions`: the handshakes under way count too. Those
/// beyond it get CONNACK 0x03, each counted; once sessions end, new ones
/// are admitted again (the slots come back).
#[tokio::test]
async fn concurrent_connects_never_pass_max_sessions() -> Result<()> {
    const MAX: usize = 20;
    const CONNECTS: usize = 200;
    let mut node = start_node(&[("--max-sessions", "20")])?;
    // The bystander holds two of the sessions.
    let mut bystander = Bystander::join(node.addr()).await?;
    let addr = node.addr();
    let mut handshakes = tokio::task::JoinSet::new();
    for _ in 0..CONNECTS {
        let connect = Connect::new(&unique_id("race"));
        handshakes.spawn(async move { RawClient::handshake(addr, &connect).await });
    }
    let (mut admitted, mut refused) = (Vec::new(), 0);
    while let Some(joined) = handshakes.join_next().await {
        let (client, connack) = joined??;
        match connack.code {
            0 => admitted.push(client),
            CONNACK_SERVER_UNAVAILABLE => refused += 1,
            other => anyhow::bail!("unexpected CONNACK code {other:#x}"),
        }
    }
    ensure!(
        admitted.len() <= MAX - 2,
        "{} sessions admitted beside the bystander's 2 under max-sessions {MAX}",
        admitted.len()
    );
    ensure!(!admitted.is_empty() && admitted.len() + refused == CONNECTS);
    ensure!(limit_refusals(&node, "sessions")? == refused as f64);
    let online = Exposition::scrape(node_metrics_addr(&node)?)?
        .total("astramq_sessions", &[("state", "online")]);
    ensure!(online <= MAX as f64, "{online} sessions online");
    bystander.still_served().await?;
    for mut client in admitted {
        client.send(&wire::disconnect()).await?;
        client.expect_closed(TIMEOUT).await?;
    }
    let (_again, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("after"))).await?;
    assert_serves_clients(&mut node).await
}

/// Size of each payload in the queue-bytes tests, and the bound: three
/// deliveries (payload plus topic) fit, a fourth does not.
const QUEUED_PAYLOAD: usize = 16 * 1024;
const QUEUE_BYTES_BOUND: &str = "65536";

/// Publishes one QoS 1 message per payload, each answered by its PUBACK.
async fn publish_acked(client: &mut RawClient, topic: &str, payloads: &[Vec<u8>]) -> Result<()> {
    for (i, payload) in payloads.iter().enumerate() {
        let id = i as u16 + 1;
        let publish = Publish::new(topic, 1, payload).with_packet_id(id);
        client.send(&publish.encode()).await?;
        ensure!(client.recv().await?.ack_id(wire::kind::PUBACK)? == id);
    }
    Ok(())
}

/// `count` payloads of [`QUEUED_PAYLOAD`] bytes, the `i`th filled with
/// the letter `first + i`.
fn letters(first: u8, count: u8) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| vec![first + i; QUEUED_PAYLOAD])
        .collect()
}

/// Resumes `session` and requires exactly `expected`, in order, at QoS 1
/// (each acknowledged), then leaves again.
async fn resume_and_receive(
    node: &NodeProcess,
    session: &Connect,
    expected: &[Vec<u8>],
) -> Result<()> {
    let (mut client, present) = RawClient::connected(node.addr(), session).await?;
    ensure!(present, "the persistent session was not resumed");
    for want in expected {
        let publish = client.recv_publish().await?;
        ensure!(publish.qos == 1, "QoS {}", publish.qos);
        ensure!(
            publish.payload == *want,
            "got a payload of {:?}, expected {:?}",
            publish.payload.first(),
            want.first()
        );
        client.send(&wire::puback(publish.packet_id)).await?;
    }
    client.expect_quiet(astramq_tests::QUIET).await?;
    client.send(&wire::disconnect()).await?;
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// `astramq_messages_dropped_total{reason="queue_full"}`.
fn dropped_queue_full(node: &NodeProcess) -> Result<f64> {
    let page = Exposition::scrape(node_metrics_addr(node)?)?;
    Ok(page.total(
        "astramq_messages_dropped_total",
        &[("reason", "queue_full")],
    ))
}

/// The Redis view of a session's queue: entries, and its byte count.
fn redis_queue(redis: &RedisProcess, client_id: &str) -> Result<(u64, String)> {
    let entries = redis.cli(&["XLEN", &format!("astramq:s:{{{client_id}}}:q")])?;
    let bytes = redis.cli(&["HGET", &format!("astramq:s:{{{client_id}}}"), "qbytes"])?;
    let entries = entries.trim().parse().context("XLEN reply")?;
    Ok((entries, bytes.trim().to_owned()))
}

/// An offline persistent session with a 64 KiB bound, sent 16 KiB
/// payloads: three are queued, the rest refused and counted (as drops and
/// as `queued_bytes` refusals) and the queue stops growing; the client
/// then gets exactly those three; once it has acknowledged them the bytes
/// are free again. A bystander is served throughout. With `redis`, the
/// queue's length and byte count in Redis are checked at each step.
async fn offline_queue_bytes_are_bounded(
    node: &mut NodeProcess,
    redis: Option<&RedisProcess>,
) -> Result<()> {
    let mut bystander = Bystander::join(node.addr()).await?;
    let topic = unique_id("qb");
    let id = unique_id("offline");
    let session = Connect::new(&id).with_clean_session(false);
    let (mut subscriber, _) = RawClient::connected(node.addr(), &session).await?;
    ensure!(subscriber.subscribe(1, &[(topic.as_str(), 1)]).await? == [1]);
    subscriber.send(&wire::disconnect()).await?;
    subscriber.expect_closed(TIMEOUT).await?;
    let (mut publisher, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("p"))).await?;
    let first = letters(b'a', 10);
    publish_acked(&mut publisher, &topic, &first).await?;
    ensure!(limit_refusals(node, "queued_bytes")? == 7.0);
    ensure!(dropped_queue_full(node)? == 7.0);
    let queued_bytes = (3 * (QUEUED_PAYLOAD + topic.len())).to_string();
    if let Some(redis) = redis {
        ensure!(redis_queue(redis, &id)? == (3, queued_bytes.clone()));
    }
    publish_acked(&mut publisher, &topic, &letters(b'k', 10)).await?;
    ensure!(limit_refusals(node, "queued_bytes")? == 17.0);
    if let Some(redis) = redis {
        ensure!(redis_queue(redis, &id)? == (3, queued_bytes));
    }
    bystander.still_served().await?;
    resume_and_receive(node, &session, &first[..3]).await?;
    if let Some(redis) = redis {
        // Acknowledged and deleted: the queue is empty, its count reset.
        ensure!(redis_queue(redis, &id)? == (0, String::new()));
    }
    let again = letters(b'A', 3);
    publish_acked(&mut publisher, &topic, &again).await?;
    ensure!(
        limit_refusals(node, "queued_bytes")? == 17.0,
        "bytes not freed"
    );
    resume_and_receive(node, &session, &again).await?;
    bystander.still_served().await?;
    assert_serves_clients(node).await
}

/// The byte bound on the embedded store's offline queue.
#[tokio::test]
async fn offline_queue_bytes_are_bounded_in_the_embedded_store() -> Result<()> {
    let mut node = start_node(&[("--max-queued-bytes-per-session", QUEUE_BYTES_BOUND)])?;
    offline_queue_bytes_are_bounded(&mut node, None).await
}

/// The byte bound on a persistent session's Redis queue.
#[tokio::test]
async fn offline_queue_bytes_are_bounded_in_redis() -> Result<()> {
    let redis = RedisProcess::start()?;
    let mut node = start_cluster_node(
        &redis,
        &[("--max-queued-bytes-per-session", QUEUE_BYTES_BOUND)],
    )?;
    offline_queue_bytes_are_bounded(&mut node, Some(&redis)).await
}
