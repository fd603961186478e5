//! Will messages: properties, Will Delay Interval, DISCONNECT 0x04 (§3.1.3.2, §3.14.2.1).

use super::*;

/// Connects `client_id` with `will` and `expiry`; returns the client.
async fn with_will(
    node: &NodeProcess,
    client_id: &str,
    will: Will5,
    expiry: u32,
) -> Result<Client5> {
    let connect = Connect5::new(client_id).session_expiry(expiry).will(will);
    Client5::connect(node.addr(), &connect).await
}

/// §3.1.3.2.3–.8 [MQTT-3.1.3-9]: Will Properties (Payload Format, Content
/// Type, Response Topic, Correlation Data, User Properties in order) are
/// carried in the will's PUBLISH when the connection drops without a
/// DISCONNECT.
#[tokio::test]
async fn will_properties_reach_the_subscriber() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "will5/#", "will5/end").await?;
    let will = Will5::new("will5/gone", b"bye")
        .with_qos(1)
        .with_props(application_properties());
    let client = with_will(&node, &unique_id("dying"), will, 0).await?;
    drop(client);
    let got = within_for(TIMEOUT, "the will", sub.recv_publish_acked()).await??;
    ensure!(
        got.topic == b"will5/gone" && got.payload == b"bye",
        "got {got:?}"
    );
    check_application_properties(&got.props)
}

/// §3.1.3.2.2 [MQTT-3.1.3-9]: with Will Delay Interval 2 s (session expiry
/// 60 s) the will is not published at the drop but about 2 s later.
#[tokio::test]
async fn the_will_waits_for_the_will_delay_interval() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "delay/#", "delay/end").await?;
    let will = Will5::new("delay/will", b"late")
        .with_props(Properties::new().four(id::WILL_DELAY_INTERVAL, 2));
    let client = with_will(&node, &unique_id("delayed"), will, 60).await?;
    let dropped = Instant::now();
    drop(client);
    let early = sub.recv_for(Duration::from_millis(1200)).await?;
    ensure!(early.is_none(), "the will came before its delay: {early:?}");
    let got = within_for(
        Duration::from_secs(6),
        "the delayed will",
        sub.recv_publish(),
    )
    .await??;
    let took = dropped.elapsed();
    ensure!(got.topic == b"delay/will", "got {got:?}");
    ensure!(
        took >= Duration::from_millis(1800),
        "will published after {took:?}, delay 2 s"
    );
    Ok(())
}

/// §3.1.3.2.2, §3.1.2.5: a reconnect to the session within the Will Delay
/// Interval (3 s) cancels the will.
#[tokio::test]
async fn a_reconnect_within_the_will_delay_cancels_the_will() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "cancel/#", "cancel/end").await?;
    let client_id = unique_id("returning");
    let will = Will5::new("cancel/will", b"never")
        .with_props(Properties::new().four(id::WILL_DELAY_INTERVAL, 3));
    let client = with_will(&node, &client_id, will, 60).await?;
    drop(client);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut back = resume(&node, &client_id, 60).await?;
    ensure!(back.session_present(), "the session was not kept");
    let quiet = sub.recv_for(Duration::from_secs(4)).await?;
    ensure!(
        quiet.is_none(),
        "the cancelled will was published: {quiet:?}"
    );
    back.ping().await
}

/// §3.14.2.1 [MQTT-3.1.2-8], [MQTT-3.1.2-10]: DISCONNECT with reason 0x04
/// (Disconnect with Will Message) publishes the will; a normal DISCONNECT
/// (0x00) does not.
#[tokio::test]
async fn disconnect_0x04_publishes_the_will_and_0x00_does_not() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "dw/#", "dw/end").await?;
    let mut normal = with_will(
        &node,
        &unique_id("normal"),
        Will5::new("dw/normal", b"n"),
        0,
    )
    .await?;
    normal.disconnect_with(0, &Properties::new()).await?;
    normal.expect_closed(TIMEOUT).await?;
    let mut wills = with_will(&node, &unique_id("wills"), Will5::new("dw/asked", b"w"), 0).await?;
    wills
        .disconnect_with(reason::DISCONNECT_WITH_WILL, &Properties::new())
        .await?;
    wills.expect_closed(TIMEOUT).await?;
    let got = within("the will", sub.recv_publish_acked()).await??;
    ensure!(
        got.topic == b"dw/asked",
        "got {got:?} (dw/normal must not come)"
    );
    let mut publisher = connect(&node, "dwpub").await?;
    sentinel(&mut publisher, "dw/end").await?;
    let rest = within("the sentinel", sub.publishes_until("dw/end")).await??;
    ensure!(rest.is_empty(), "a normal DISCONNECT published: {rest:?}");
    Ok(())
}

/// §3.1.3.2.2 [MQTT-3.1.3-9], §3.1.2.5: the will is published when the
/// Will Delay Interval passes *or the session ends*, whichever is first:
/// with Will Delay 30 s and Session Expiry 1 s it comes after about 1 s.
#[tokio::test]
async fn the_will_comes_when_the_session_ends_before_the_will_delay() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "ends/#", "ends/end").await?;
    let will = Will5::new("ends/will", b"session over")
        .with_props(Properties::new().four(id::WILL_DELAY_INTERVAL, 30));
    let client = with_will(&node, &unique_id("short-session"), will, 1).await?;
    let dropped = Instant::now();
    drop(client);
    let got = within_for(
        Duration::from_secs(6),
        "the will at session end",
        sub.recv_publish(),
    )
    .await??;
    let took = dropped.elapsed();
    ensure!(got.topic == b"ends/will", "got {got:?}");
    ensure!(
        took >= Duration::from_millis(800),
        "the will came {took:?} after the drop, before the 1 s session ended"
    );
    Ok(())
}

/// §3.1.3.2.3, §3.2.2.2: a will whose Payload Format
/// Indicator says UTF-8 but whose payload is not is refused with CONNACK
/// 0x99 (Payload format invalid), and the same will with valid UTF-8 is
/// accepted.
#[tokio::test]
async fn a_will_marked_utf8_that_is_not_gets_connack_0x99() -> Result<()> {
    let node = NodeProcess::start()?;
    let utf8 = || Properties::new().byte(id::PAYLOAD_FORMAT_INDICATOR, 1);
    let bad = Will5::new("w/bad", &[0xC3, 0x28]).with_props(utf8());
    let code = refusal(&node, &Connect5::new(&unique_id("bad")).will(bad)).await?;
    ensure!(
        code == 0x99,
        "a will with an invalid UTF-8 payload got {code:#04x}"
    );
    let good = Will5::new("w/good", "ünï".as_bytes()).with_props(utf8());
    let mut client = with_will(&node, &unique_id("good"), good, 0).await?;
    client.ping().await
}
