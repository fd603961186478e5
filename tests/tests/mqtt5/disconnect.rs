//! DISCONNECT sent by the node, with its reason code (§3.14, §4.13).

use super::*;

/// §3.1.0 [MQTT-3.1.0-2], §4.13.1: a second CONNECT is a Protocol Error:
/// the node sends DISCONNECT 0x82 and closes the connection.
#[tokio::test]
async fn a_second_connect_gets_disconnect_protocol_error() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("twice"));
    let mut client = Client5::connect(node.addr(), &connect).await?;
    client.send(&connect.encode()).await?;
    client
        .expect_disconnect_reason(reason::PROTOCOL_ERROR)
        .await?;
    Ok(())
}

/// §1.5.5, §2.2.2, §4.13.1: a PUBLISH whose Property Length runs past the
/// packet, and a SUBSCRIBE with a reserved Subscription Options bit set
/// ([MQTT-3.8.3-5]), are Malformed Packets: DISCONNECT 0x81 and the close.
#[tokio::test]
async fn malformed_packets_get_disconnect_0x81() -> Result<()> {
    let node = NodeProcess::start()?;
    let cases: [(&str, Vec<u8>); 2] = [
        // Topic "t", Property Length 5, one byte left.
        (
            "property length past the end",
            vec![0x30, 0x05, 0x00, 0x01, b't', 0x05, 0x01],
        ),
        (
            "reserved subscription option bits",
            p5::subscribe(1, &Properties::new(), &[("m/t", 0xC1)]),
        ),
    ];
    for (what, bytes) in cases {
        let mut client = connect(&node, "malformed").await?;
        client.send(&bytes).await?;
        client
            .expect_disconnect_reason(reason::MALFORMED_PACKET)
            .await
            .with_context(|| what.to_owned())?;
    }
    Ok(())
}

/// §3.2.2.3.6 [MQTT-3.2.2-15], §4.13: a packet larger than the Maximum
/// Packet Size the node advertised (`--max-packet-size 1024`) gets
/// DISCONNECT 0x95 (Packet too large).
#[tokio::test]
async fn a_packet_over_the_server_maximum_gets_disconnect_0x95() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-packet-size", "1024")])?;
    let mut client = connect(&node, "large").await?;
    // The fixed header declares the whole 2 KB; only the start follows, so
    // the node can refuse from the header with nothing left unread.
    let mut start = Publish5::new("big/t", 0, &[b'x'; 2000]).encode();
    start.truncate(40);
    client.send(&start).await?;
    client
        .expect_disconnect_reason(reason::PACKET_TOO_LARGE)
        .await?;
    Ok(())
}

/// §3.1.4 [MQTT-3.1.4-3], §3.14.2.1: a new connection with the same
/// Client Identifier takes the session over; the old connection gets
/// DISCONNECT 0x8E (Session taken over) and is closed.
#[tokio::test]
async fn a_taken_over_session_gets_disconnect_0x8e() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("taken"));
    let mut old = Client5::connect(node.addr(), &connect).await?;
    let mut new = Client5::connect(node.addr(), &connect).await?;
    old.expect_disconnect_reason(reason::SESSION_TAKEN_OVER)
        .await?;
    new.ping().await
}

/// §3.1.2.10 [MQTT-3.1.2-22], §4.13: a client silent for 1.5 times its
/// keep alive (1 s) is closed; if the node says why, it says 0x8D (the
/// DISCONNECT is optional, the close is not).
#[tokio::test]
async fn keep_alive_timeout_closes_with_0x8d_if_anything() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("silent")).keep_alive(1);
    let mut client = Client5::connect(node.addr(), &connect).await?;
    let start = Instant::now();
    match client.recv_for(TIMEOUT).await {
        Ok(Some(Packet5::Disconnect(d))) => {
            ensure!(
                d.reason == reason::KEEP_ALIVE_TIMEOUT,
                "keep-alive DISCONNECT {d:?}"
            );
            client.expect_closed(TIMEOUT).await?;
        }
        Ok(Some(other)) => bail!("expected DISCONNECT 0x8D or a close, got {other:?}"),
        Ok(None) => bail!("still open {TIMEOUT:?} after a 1 s keep alive"),
        // Closed without a DISCONNECT: allowed.
        Err(e) if format!("{e:#}").contains("closed the connection") => {}
        Err(e) => return Err(e),
    }
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(1000) && took <= Duration::from_millis(3500),
        "closed after {took:?} (keep alive 1 s: expected about 1.5 s)"
    );
    Ok(())
}

/// §3.3.4 [MQTT-3.3.4-6], §3.8.2.1.2, §3.8.3.1 [MQTT-3.8.3-4]: well-formed
/// packets the standard calls Protocol Errors get DISCONNECT 0x82, not
/// 0x81 (Malformed Packet is for what cannot be parsed, §2.4): a client
/// PUBLISH with a Subscription Identifier, a Subscription Identifier of 0,
/// and (where shared subscriptions are served) No Local on a shared
/// subscription. Every case is tried and all wrong answers reported.
#[tokio::test]
async fn protocol_errors_in_publish_and_subscribe_get_disconnect_0x82() -> Result<()> {
    let node = NodeProcess::start()?;
    let cases = [
        (
            "Subscription Identifier in a client PUBLISH",
            Publish5::new("sid/t", 0, b"x")
                .props(Properties::new().varint(id::SUBSCRIPTION_IDENTIFIER, 5))
                .encode(),
        ),
        (
            "Subscription Identifier 0",
            p5::subscribe(
                1,
                &Properties::new().varint(id::SUBSCRIPTION_IDENTIFIER, 0),
                &[("sid/t", 1)],
            ),
        ),
    ];
    let shared = connect(&node, "sid-probe")
        .await?
        .connack
        .props
        .get_byte(id::SHARED_SUBSCRIPTION_AVAILABLE)
        != Some(0);
    let mut cases = cases.to_vec();
    if shared {
        cases.push((
            "No Local on a shared subscription",
            p5::subscribe(
                1,
                &Properties::new(),
                &[("$share/g/sid/t", 1 | sub::NO_LOCAL)],
            ),
        ));
    }
    let mut wrong = Vec::new();
    for (what, bytes) in cases {
        let mut client = connect(&node, "sid").await?;
        client.send(&bytes).await?;
        match client.expect_disconnect().await {
            Ok(d) if d.reason == reason::PROTOCOL_ERROR => {}
            Ok(d) => wrong.push(format!("{what}: DISCONNECT {:#04x}", d.reason)),
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "wrong answers: {wrong:?}");
    Ok(())
}

/// §3.3.2.3.5 [MQTT-3.3.2-14]: a Response Topic must not contain
/// wildcards; a PUBLISH whose Response Topic does gets DISCONNECT 0x82.
#[tokio::test]
async fn a_wildcard_response_topic_gets_disconnect_0x82() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = connect(&node, "wild-reply").await?;
    let publish = Publish5::new("req/t", 1, b"q")
        .id(1)
        .props(Properties::new().text(id::RESPONSE_TOPIC, "reply/#"));
    client.send(&publish.encode()).await?;
    client
        .expect_disconnect_reason(reason::PROTOCOL_ERROR)
        .await?;
    Ok(())
}

/// §3.14.2.1: a node shutting down (SIGTERM) tells its 5.0 clients with
/// DISCONNECT 0x8B (Server shutting down) before it closes them.
#[tokio::test]
async fn a_node_shutting_down_sends_disconnect_0x8b() -> Result<()> {
    let mut node = NodeProcess::start()?;
    let mut client = connect(&node, "bystander5").await?;
    node.terminate()?;
    let d = within_for(
        Duration::from_secs(10),
        "the shutdown DISCONNECT",
        client.expect_disconnect(),
    )
    .await??;
    ensure!(d.reason == 0x8B, "shutdown DISCONNECT {d:?}");
    node.wait_for_exit(Duration::from_secs(10)).await?;
    Ok(())
}
