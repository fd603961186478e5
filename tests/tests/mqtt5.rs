//! MQTT 5.0 on one node, checked against the normative statements of the
//! OASIS MQTT Version 5.0 standard (section numbers in each test's doc),
//! with clients that share no code with the node: the hand-encoded
//! [`Client5`] (`astramq_tests::v5`), `rumqttc::v5`, the mosquitto
//! command-line clients with `-V 5`, and paho-mqtt with `MQTTv5`.
//!
//! A step that must not happen is checked after a positive signal (a
//! sentinel message, a PINGRESP) has shown the node processed everything
//! sent before it; every wait is bounded by the harness's `TIMEOUT`.

use std::process::{Command as StdCommand, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::proxy::ProxyProcess;
use astramq_tests::users::TempDir;
use astramq_tests::v5::packet::{self as p5, puback};
use astramq_tests::v5::{id, reason, sub, Client5, Connect5, Packet5, Properties, Publish5, Will5};
use astramq_tests::wire::kind;
use astramq_tests::{unique_id, within, within_for, NodeProcess, RawClient, QUIET, TIMEOUT};
use tokio::io::{AsyncBufReadExt, BufReader};

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

// ---------------------------------------------------------------------
// 1. CONNECT and CONNACK (§3.1, §3.2)
// ---------------------------------------------------------------------

/// §3.1.2.2, §3.2.2.2: a level-5 CONNECT is accepted (reason 0x00).
/// §3.2.2.3: the CONNACK advertises Receive Maximum (§3.2.2.3.3),
/// Maximum Packet Size equal to `--max-packet-size` (§3.2.2.3.6) and a
/// non-zero Topic Alias Maximum (§3.2.2.3.8); Retain Available and Wildcard
/// Subscription Available are absent or 1 (the node serves both,
/// §3.2.2.3.5, §3.2.2.3.11). A PINGREQ is then served.
#[tokio::test]
async fn level_5_connect_is_accepted_and_connack_advertises_the_server_limits() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-packet-size", "4096")])?;
    let mut client = connect(&node, "v5").await?;
    let props = &client.connack.props;
    ensure!(
        !client.session_present(),
        "clean start with session present"
    );
    let receive_max = props.get_two(id::RECEIVE_MAXIMUM);
    ensure!(
        receive_max.is_some_and(|r| r > 0),
        "Receive Maximum not advertised: {props:?}"
    );
    ensure!(
        props.get_four(id::MAXIMUM_PACKET_SIZE) == Some(4096),
        "Maximum Packet Size is not --max-packet-size 4096: {props:?}"
    );
    ensure!(
        props
            .get_two(id::TOPIC_ALIAS_MAXIMUM)
            .is_some_and(|t| t > 0),
        "Topic Alias Maximum not advertised: {props:?}"
    );
    for flag in [id::RETAIN_AVAILABLE, id::WILDCARD_SUBSCRIPTION_AVAILABLE] {
        let value = props.get_byte(flag);
        ensure!(
            value.is_none() || value == Some(1),
            "property {flag:#04x} says {value:?}: {props:?}"
        );
    }
    ensure!(
        props.get_text(id::ASSIGNED_CLIENT_IDENTIFIER).is_none(),
        "an identifier assigned to a client that chose one: {props:?}"
    );
    client.ping().await?;
    client.disconnect().await
}

/// §3.1.3.1 [MQTT-3.1.3-6], §3.2.2.3.7: an empty Client Identifier is
/// accepted and the CONNACK carries an Assigned Client Identifier. It is a
/// real identifier: its session (expiry 60 s) is resumed by a later CONNECT
/// that names it with Clean Start 0 (Session Present 1, the subscription
/// kept).
#[tokio::test]
async fn an_empty_client_id_gets_an_assigned_identifier_that_names_the_session() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut first = Client5::connect(node.addr(), &Connect5::new("").session_expiry(60)).await?;
    let assigned = first
        .connack
        .props
        .get_text(id::ASSIGNED_CLIENT_IDENTIFIER)
        .with_context(|| format!("no Assigned Client Identifier: {:?}", first.connack))?;
    ensure!(!assigned.is_empty(), "the assigned identifier is empty");
    ensure!(first.subscribe(1, &[("assigned/t", 1)]).await?.reasons == [1]);
    first.disconnect().await?;

    let mut publisher = connect(&node, "pub").await?;
    ack_reason(
        publisher
            .publish(&Publish5::new("assigned/t", 1, b"kept"))
            .await?,
        0,
    )?;
    let resume = Connect5::new(&assigned)
        .clean_start(false)
        .session_expiry(60);
    let mut again = Client5::connect(node.addr(), &resume).await?;
    ensure!(
        again.session_present(),
        "{assigned} did not resume its session"
    );
    let got = again.recv_publish_acked().await?;
    ensure!(got.payload == b"kept", "got {got:?}");
    Ok(())
}

/// §3.1.2.10, §3.2.2.3.14 [MQTT-3.2.2-21]: when the node clamps the keep
/// alive (`--max-keep-alive 10`), a client asking for 60 s is told the
/// Server Keep Alive it must use (10); one asking for 5 s is not clamped
/// (no Server Keep Alive, or 5).
#[tokio::test]
async fn a_clamped_keep_alive_is_announced_as_server_keep_alive() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-keep-alive", "10")])?;
    let long = Connect5::new(&unique_id("ka60")).keep_alive(60);
    let client = Client5::connect(node.addr(), &long).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told == Some(10),
        "Server Keep Alive {told:?}, expected 10: {:?}",
        client.connack
    );
    let short = Connect5::new(&unique_id("ka5")).keep_alive(5);
    let client = Client5::connect(node.addr(), &short).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told.is_none() || told == Some(5),
        "keep alive 5 answered with Server Keep Alive {told:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// 2. Reason codes (§3.4.2.1, §3.9.3, §3.11.3)
// ---------------------------------------------------------------------

/// §3.9.3: SUBACK grants the requested QoS per filter, in order, and
/// gives 0x8F (or 0x80) for an invalid filter (`a/#/b`, §4.7.1.2) without
/// failing the others. §3.4.2.1: PUBACK 0x00 for a QoS 1 PUBLISH that
/// has a subscriber. §3.11.3: UNSUBACK 0x00 for a held filter and 0x11
/// for one that was never subscribed.
#[tokio::test]
async fn suback_puback_and_unsuback_carry_the_reason_codes_of_the_standard() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = connect(&node, "codes").await?;
    let ack = client
        .subscribe(1, &[("rc/a", 0), ("rc/+", 1), ("rc/#", 2), ("rc/#/b", 1)])
        .await?;
    ensure!(ack.reasons.len() == 4, "SUBACK {ack:?}");
    ensure!(ack.reasons[..3] == [0, 1, 2], "granted QoS: {ack:?}");
    ensure!(
        [reason::TOPIC_FILTER_INVALID, reason::UNSPECIFIED_ERROR].contains(&ack.reasons[3]),
        "invalid filter rc/#/b: {ack:?}"
    );
    let puback = client
        .publish(&Publish5::new("rc/a", 1, b"x").id(5))
        .await?;
    ack_reason(puback, reason::SUCCESS)?;
    let unsuback = client.unsubscribe(2, &["rc/a", "rc/never"]).await?;
    ensure!(
        unsuback.reasons == [reason::SUCCESS, reason::NO_SUBSCRIPTION_EXISTED],
        "UNSUBACK {unsuback:?}"
    );
    client.disconnect().await
}

/// §3.9.3 and §3.4.2.1 with `--acl-file`: a denied filter gets 0x87 (Not
/// authorized) while the other filter of the same SUBSCRIBE is granted; a
/// denied QoS 1 PUBLISH gets PUBACK 0x87 and reaches no subscriber.
#[tokio::test]
async fn acl_denials_answer_suback_and_puback_with_0x87() -> Result<()> {
    let dir = TempDir::new("astramq-acl5")?;
    let path = dir.join("acl.toml");
    std::fs::write(
        &path,
        r#"
default = "allow"

[[rule]]
action = "subscribe"
topic = "acl5/nosub"
permission = "deny"

[[rule]]
action = "publish"
topic = "acl5/nopub"
permission = "deny"
"#,
    )?;
    let node = NodeProcess::start_with(&[("--acl-file", &path.display().to_string())])?;
    let mut client = connect(&node, "acl5").await?;
    let ack = client
        .subscribe(1, &[("acl5/nosub", 1), ("acl5/nopub", 1), ("acl5/end", 1)])
        .await?;
    ensure!(
        ack.reasons == [reason::NOT_AUTHORIZED, 1, 1],
        "SUBACK {ack:?}"
    );
    let mut publisher = connect(&node, "acl5pub").await?;
    let denied = publisher
        .publish(&Publish5::new("acl5/nopub", 1, b"no").id(3))
        .await?;
    ack_reason(denied, reason::NOT_AUTHORIZED)?;
    sentinel(&mut publisher, "acl5/end").await?;
    let seen = within("the sentinel", client.publishes_until("acl5/end")).await??;
    ensure!(seen.is_empty(), "a denied PUBLISH was delivered: {seen:?}");
    Ok(())
}

// ---------------------------------------------------------------------
// 3. DISCONNECT from the server (§3.14, §4.13)
// ---------------------------------------------------------------------

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
        Err(_) => {}
    }
    let took = start.elapsed();
    ensure!(
        took >= Duration::from_millis(1000) && took <= Duration::from_millis(3500),
        "closed after {took:?} (keep alive 1 s: expected about 1.5 s)"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// 4. PUBLISH properties (§3.3.2.3)
// ---------------------------------------------------------------------

/// The properties a publisher sets that a subscriber must get unchanged.
fn application_properties() -> Properties {
    Properties::new()
        .byte(id::PAYLOAD_FORMAT_INDICATOR, 1)
        .text(id::CONTENT_TYPE, "application/json; charset=utf-8")
        .text(id::RESPONSE_TOPIC, "reply/to/me")
        .binary(id::CORRELATION_DATA, &[0x00, 0x01, 0xFE, 0xFF, b'c'])
        .user("a", "1")
        .user("b", "2")
        .user("a", "3")
        .user("ünï", "cödé")
}

/// Requires `got` to carry every property of [`application_properties`]
/// with its value, and the User Properties in order with duplicates.
fn check_application_properties(got: &Properties) -> Result<()> {
    let sent = application_properties();
    for prop in [
        id::PAYLOAD_FORMAT_INDICATOR,
        id::CONTENT_TYPE,
        id::RESPONSE_TOPIC,
        id::CORRELATION_DATA,
    ] {
        ensure!(
            got.get(prop) == sent.get(prop) && got.count(prop) == 1,
            "property {prop:#04x}: sent {:?}, got {got:?}",
            sent.get(prop)
        );
    }
    ensure!(
        got.users() == sent.users(),
        "User Properties: sent {:?}, got {:?}",
        sent.users(),
        got.users()
    );
    Ok(())
}

/// §3.3.2.3.2, §3.3.2.3.5–.7, §3.3.2.3.9 [MQTT-3.3.2-4], [MQTT-3.3.2-15],
/// [MQTT-3.3.2-16], [MQTT-3.3.2-17], [MQTT-3.3.2-18], [MQTT-3.3.2-20]:
/// Payload Format Indicator, Content Type, Response Topic, Correlation
/// Data and User Properties (order kept, duplicates kept) reach a raw 5.0
/// subscriber and a `rumqttc::v5` subscriber unchanged, with the payload.
#[tokio::test]
async fn publish_properties_reach_subscribers_unchanged() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::Packet as RPacket;
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let node = NodeProcess::start()?;
    let mut raw_sub = subscriber(&node, "props/#", "props/end").await?;

    let mut options = MqttOptions::new(unique_id("rumqttc5"), "127.0.0.1", node.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (rumq, mut eventloop) = AsyncClient::new(options, 16);
    rumq.subscribe("props/#", RQoS::AtLeastOnce).await?;
    within("rumqttc v5 SUBACK", async {
        loop {
            if let Event::Incoming(RPacket::SubAck(_)) = eventloop.poll().await? {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await??;

    let mut publisher = connect(&node, "pub").await?;
    let sent = Publish5::new("props/x", 1, "{\"ünï\": 1}".as_bytes())
        .id(7)
        .props(application_properties());
    ack_reason(publisher.publish(&sent).await?, reason::SUCCESS)?;
    sentinel(&mut publisher, "props/end").await?;

    let got = within(
        "the raw subscriber's messages",
        raw_sub.publishes_until("props/end"),
    )
    .await??;
    ensure!(got.len() == 1, "raw subscriber got {got:?}");
    ensure!(
        got[0].topic == sent.topic && got[0].payload == sent.payload,
        "{got:?}"
    );
    check_application_properties(&got[0].props)?;

    let publish = within("the rumqttc v5 subscriber's message", async {
        loop {
            if let Event::Incoming(RPacket::Publish(p)) = eventloop.poll().await? {
                return Ok::<_, anyhow::Error>(p);
            }
        }
    })
    .await??;
    ensure!(&publish.topic[..] == b"props/x", "{publish:?}");
    let props = publish.properties.clone().context("no properties")?;
    let sent_users = application_properties().users();
    ensure!(
        props.payload_format_indicator == Some(1)
            && props.content_type.as_deref() == Some("application/json; charset=utf-8")
            && props.response_topic.as_deref() == Some("reply/to/me")
            && props.correlation_data.as_deref() == Some(&[0x00, 0x01, 0xFE, 0xFF, b'c'][..])
            && props.user_properties == sent_users,
        "rumqttc v5 saw {props:?}"
    );
    Ok(())
}

/// Whether `name` is an executable on `PATH`.
fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
}

/// §3.3.2.3 with the mosquitto clients (`-V 5`): properties set by
/// `mosquitto_pub -D publish ...` are printed unchanged by `mosquitto_sub
/// -F` (content type %C, response topic %R, correlation data %D, message
/// expiry %E (at most what was sent, §3.3.2.3.3), payload format %F, user
/// properties %P in order).
#[tokio::test]
async fn mosquitto_v5_clients_carry_publish_properties() -> Result<()> {
    ensure!(
        ["mosquitto_pub", "mosquitto_sub", "stdbuf"]
            .iter()
            .all(|tool| on_path(tool)),
        "mosquitto clients or stdbuf missing: run scripts/test, which installs them"
    );
    let node = NodeProcess::start()?;
    let port = node.port().to_string();
    let mut sub = tokio::process::Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-V",
            "5",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
        ])
        .args([
            "-i",
            &unique_id("mosq-sub"),
            "-t",
            "mosq/#",
            "-q",
            "1",
            "-C",
            "1",
        ])
        .args(["-d", "-W", "20", "-F", "MSG|%t|%C|%R|%D|%E|%F|%P|%p"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("spawning mosquitto_sub")?;
    let mut lines = BufReader::new(sub.stdout.take().context("stdout")?).lines();
    within("mosquitto_sub's SUBACK", async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("SUBACK") {
                return Ok(());
            }
        }
        bail!("mosquitto_sub exited before its SUBACK")
    })
    .await??;
    let publish = tokio::process::Command::new("mosquitto_pub")
        .args(["-V", "5", "-h", "127.0.0.1", "-p", &port, "-q", "1"])
        .args(["-t", "mosq/x", "-m", "hello-props"])
        .args(["-D", "publish", "content-type", "text/plain"])
        .args(["-D", "publish", "response-topic", "mosq/reply"])
        .args(["-D", "publish", "correlation-data", "corr-17"])
        .args(["-D", "publish", "message-expiry-interval", "120"])
        .args(["-D", "publish", "payload-format-indicator", "1"])
        .args(["-D", "publish", "user-property", "k1", "v1"])
        .args(["-D", "publish", "user-property", "k2", "v2"])
        .args(["-D", "publish", "user-property", "k1", "v3"])
        .kill_on_drop(true)
        .output();
    let out = within("mosquitto_pub", publish).await??;
    ensure!(
        out.status.success(),
        "mosquitto_pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = within("mosquitto_sub's message line", async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("MSG|") {
                return Ok(rest.to_owned());
            }
        }
        bail!("mosquitto_sub exited without printing the message")
    })
    .await??;
    let fields: Vec<&str> = line.split('|').collect();
    ensure!(fields.len() == 8, "mosquitto_sub printed {line:?}");
    ensure!(
        fields[0] == "mosq/x"
            && fields[1] == "text/plain"
            && fields[2] == "mosq/reply"
            && fields[3] == "corr-17"
            && fields[5] == "1"
            && fields[7] == "hello-props",
        "mosquitto_sub printed {line:?}"
    );
    let expiry: u32 = fields[4]
        .trim()
        .parse()
        .with_context(|| format!("no message expiry in {line:?}"))?;
    ensure!((100..=120).contains(&expiry), "message expiry {expiry}");
    let users = fields[6];
    let at = |needle: &str| {
        users
            .find(needle)
            .with_context(|| format!("{needle} missing from %P {users:?}"))
    };
    ensure!(
        at("k1:v1")? < at("k2:v2")? && at("k2:v2")? < at("k1:v3")?,
        "user properties out of order: {users:?}"
    );
    Ok(())
}

/// §3.3.2.3.3 [MQTT-3.3.2-5], [MQTT-3.3.2-6]: messages queued for an
/// offline persistent session: one whose Message Expiry Interval (1 s)
/// passes while it waits is not delivered; one with 60 s is delivered with
/// the interval less the time it waited (≤ 58 after ≥ 2 s); one without
/// an interval is delivered without one.
#[tokio::test]
async fn message_expiry_drops_expired_queued_messages_and_counts_down_the_rest() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("expiring");
    let persistent = Connect5::new(&client_id).session_expiry(300);
    let mut sub = Client5::connect(node.addr(), &persistent).await?;
    ensure!(sub.subscribe(1, &[("exp/#", 1)]).await?.reasons == [1]);
    sub.disconnect().await?;

    let mut publisher = connect(&node, "pub").await?;
    for (i, expiry) in [(1u16, Some(1u32)), (2, Some(60)), (3, None)] {
        let mut props = Properties::new();
        if let Some(seconds) = expiry {
            props = props.four(id::MESSAGE_EXPIRY_INTERVAL, seconds);
        }
        let publish = Publish5::new(&format!("exp/{i}"), 1, b"m")
            .id(i)
            .props(props);
        publisher.publish(&publish).await?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut sub = Client5::connect(node.addr(), &persistent.clean_start(false)).await?;
    ensure!(sub.session_present(), "the session was not kept");
    let first = sub.recv_publish_acked().await?;
    let second = sub.recv_publish_acked().await?;
    ensure!(
        first.topic == b"exp/2" && second.topic == b"exp/3",
        "delivered {first:?} then {second:?} (exp/1 had expired)"
    );
    let left = first.props.get_four(id::MESSAGE_EXPIRY_INTERVAL);
    ensure!(
        left.is_some_and(|s| s <= 58 && s > 0),
        "exp/2 waited 2.5 s of 60 but says {left:?}"
    );
    ensure!(
        second.props.get(id::MESSAGE_EXPIRY_INTERVAL).is_none(),
        "exp/3 gained an expiry: {second:?}"
    );
    sub.ping().await?;
    sub.expect_quiet(QUIET).await
}

/// §3.3.2.3.2 [MQTT-3.3.2-4] and §2.4: a PUBLISH marked UTF-8 (Payload
/// Format Indicator 1) whose payload is not UTF-8 is refused, with PUBACK
/// 0x99 or DISCONNECT 0x99, and is not delivered.
#[tokio::test]
async fn a_payload_marked_utf8_that_is_not_is_refused_with_0x99() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "pfi/#", "pfi/end").await?;
    let mut publisher = connect(&node, "pfi").await?;
    let bad = Publish5::new("pfi/x", 1, &[b'o', 0xFF, 0xFE, b'k'])
        .id(4)
        .props(Properties::new().byte(id::PAYLOAD_FORMAT_INDICATOR, 1));
    publisher.send(&bad.encode()).await?;
    match publisher.recv().await {
        Ok(Packet5::Ack(a)) if a.kind == kind::PUBACK && a.packet_id == 4 => ensure!(
            a.reason == reason::PAYLOAD_FORMAT_INVALID,
            "PUBACK {a:?}, expected 0x99"
        ),
        Ok(Packet5::Disconnect(d)) => {
            ensure!(
                d.reason == reason::PAYLOAD_FORMAT_INVALID,
                "DISCONNECT {d:?}, expected 0x99"
            );
            publisher = connect(&node, "pfi2").await?;
        }
        other => bail!("expected PUBACK or DISCONNECT 0x99, got {other:?}"),
    }
    sentinel(&mut publisher, "pfi/end").await?;
    let seen = within("the sentinel", sub.publishes_until("pfi/end")).await??;
    ensure!(
        seen.is_empty(),
        "the invalid payload was delivered: {seen:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// 5. Topic aliases from the client (§3.3.2.3.4)
// ---------------------------------------------------------------------

/// §3.3.2.3.4 [MQTT-3.3.2-12], §3.3.4: a PUBLISH with a topic and Topic
/// Alias 1 sets the alias; PUBLISHes with an empty topic and alias 1 are
/// delivered on that topic; re-setting alias 1 to another topic moves it.
/// The subscriber set no Topic Alias Maximum, so what it gets carries the
/// full topic and no alias [MQTT-3.3.2-10].
#[tokio::test]
async fn a_client_topic_alias_stands_for_its_topic() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut sub = subscriber(&node, "alias/#", "alias/end").await?;
    let mut publisher = connect(&node, "aliaser").await?;
    let max = publisher.connack.props.get_two(id::TOPIC_ALIAS_MAXIMUM);
    ensure!(
        max.is_some_and(|m| m >= 1),
        "Topic Alias Maximum {max:?}: aliases cannot be tested"
    );
    let alias = |topic: &str, n: u16, payload: &[u8]| {
        Publish5::new(topic, 1, payload)
            .id(n)
            .props(Properties::new().two(id::TOPIC_ALIAS, 1))
    };
    for publish in [
        alias("alias/x", 1, b"set"),
        alias("", 2, b"use"),
        alias("alias/y", 3, b"reset"),
        alias("", 4, b"use-again"),
    ] {
        ack_reason(publisher.publish(&publish).await?, reason::SUCCESS)?;
    }
    sentinel(&mut publisher, "alias/end").await?;
    let got = within("the aliased messages", sub.publishes_until("alias/end")).await??;
    let seen: Vec<(String, String)> = got
        .iter()
        .map(|p| {
            (
                p.topic_str(),
                String::from_utf8_lossy(&p.payload).into_owned(),
            )
        })
        .collect();
    let expected = [
        ("alias/x", "set"),
        ("alias/x", "use"),
        ("alias/y", "reset"),
        ("alias/y", "use-again"),
    ]
    .map(|(t, p)| (t.to_owned(), p.to_owned()));
    ensure!(seen == expected, "delivered {seen:?}");
    ensure!(
        got.iter().all(|p| p.props.get(id::TOPIC_ALIAS).is_none()),
        "an alias sent to a client that allowed none: {got:?}"
    );
    Ok(())
}

/// §3.3.2.3.4 [MQTT-3.3.2-8], [MQTT-3.3.2-9], §3.14.2.1: an alias above
/// the server's Topic Alias Maximum gets DISCONNECT 0x94 (Topic Alias
/// invalid); Topic Alias 0, which is never permitted, gets 0x94 or 0x82
/// (Protocol Error) — it is well formed, so not 0x81 (Malformed Packet,
/// §2.4 defines it as a packet that cannot be parsed). An empty topic with
/// an alias never set (§3.3.2.3.4) gets 0x94 or 0x82. Every case is tried
/// and all wrong answers are reported together.
#[tokio::test]
async fn an_invalid_topic_alias_gets_disconnect_0x94() -> Result<()> {
    let node = NodeProcess::start()?;
    let probe = connect(&node, "alias-max").await?;
    let max = probe
        .connack
        .props
        .get_two(id::TOPIC_ALIAS_MAXIMUM)
        .unwrap_or(0);
    drop(probe);
    let invalid = [reason::TOPIC_ALIAS_INVALID, reason::PROTOCOL_ERROR];
    let mut cases = vec![
        ("alias 0", "bad/t", 0u16, &invalid[..]),
        ("unset alias, empty topic", "", 1, &invalid[..]),
    ];
    if max < u16::MAX {
        cases.push(("alias above the maximum", "bad/t", max + 1, &invalid[..1]));
    }
    let mut wrong = Vec::new();
    for (what, topic, alias, expected) in cases {
        let mut client = connect(&node, "bad-alias").await?;
        let publish =
            Publish5::new(topic, 0, b"x").props(Properties::new().two(id::TOPIC_ALIAS, alias));
        client.send(&publish.encode()).await?;
        match client.expect_disconnect().await {
            Ok(d) if expected.contains(&d.reason) => {}
            Ok(d) => wrong.push(format!("{what}: DISCONNECT {:#04x}", d.reason)),
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    ensure!(
        wrong.is_empty(),
        "Topic Alias Maximum {max}; wrong answers: {wrong:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// 6. Flow control (§4.9)
// ---------------------------------------------------------------------

/// §4.9 [MQTT-3.3.4-9]: a client that connects with Receive Maximum 2 and
/// does not acknowledge has at most 2 QoS 1 PUBLISHes in flight; each
/// PUBACK lets one more through, and all 5 arrive in order.
#[tokio::test]
async fn the_client_receive_maximum_bounds_unacknowledged_deliveries() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect =
        Connect5::new(&unique_id("slow")).props(Properties::new().two(id::RECEIVE_MAXIMUM, 2));
    let mut slow = Client5::connect(node.addr(), &connect).await?;
    ensure!(slow.subscribe(1, &[("flow/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "fast").await?;
    for i in 1..=5u16 {
        let publish = Publish5::new(&format!("flow/{i}"), 1, b"m").id(i);
        ack_reason(publisher.publish(&publish).await?, reason::SUCCESS)?;
    }
    let mut held = vec![slow.recv_publish().await?, slow.recv_publish().await?];
    slow.expect_quiet(QUIET)
        .await
        .context("a third PUBLISH in flight with Receive Maximum 2")?;
    let mut topics: Vec<String> = held.iter().map(Publish5::topic_str).collect();
    while topics.len() < 5 {
        let oldest = held.remove(0);
        slow.send(&puback(oldest.packet_id)).await?;
        let next = slow.recv_publish().await?;
        topics.push(next.topic_str());
        held.push(next);
        if topics.len() < 5 {
            slow.expect_quiet(QUIET)
                .await
                .context("more than 2 in flight after one PUBACK")?;
        }
    }
    let expected: Vec<String> = (1..=5).map(|i| format!("flow/{i}")).collect();
    ensure!(topics == expected, "delivered {topics:?}");
    Ok(())
}

/// §4.9 [MQTT-3.3.4-7], [MQTT-3.3.4-8]: a client that has more
/// unacknowledged QoS 2 PUBLISHes (PUBREC received, no PUBREL sent) than
/// the server's Receive Maximum gets DISCONNECT 0x93.
#[tokio::test]
async fn exceeding_the_server_receive_maximum_gets_disconnect_0x93() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-inflight", "4")])?;
    let mut client = connect(&node, "flood").await?;
    let max = client
        .connack
        .props
        .get_two(id::RECEIVE_MAXIMUM)
        .unwrap_or(u16::MAX);
    ensure!(
        max <= 1024,
        "server Receive Maximum {max} is too large to exceed in a test"
    );
    for i in 1..=max {
        let publish = Publish5::new("flood/t", 2, b"q2").id(i);
        client.send(&publish.encode()).await?;
        match client.recv().await? {
            Packet5::Ack(a) if a.kind == kind::PUBREC && a.packet_id == i => {}
            other => bail!("QoS 2 PUBLISH {i} of {max}: expected PUBREC, got {other:?}"),
        }
    }
    let over = Publish5::new("flood/t", 2, b"q2").id(max + 1);
    client.send(&over.encode()).await?;
    client
        .expect_disconnect_reason(reason::RECEIVE_MAXIMUM_EXCEEDED)
        .await
        .with_context(|| format!("QoS 2 PUBLISH {} with Receive Maximum {max}", max + 1))?;
    Ok(())
}

// ---------------------------------------------------------------------
// 7. The client's Maximum Packet Size (§3.1.2.11.4)
// ---------------------------------------------------------------------

/// §3.1.2.11.4 [MQTT-3.1.2-24], [MQTT-3.1.2-25]: a client that connects
/// with Maximum Packet Size 256 is not sent a message that would exceed
/// it; a small message on the same subscription still arrives.
#[tokio::test]
async fn the_client_maximum_packet_size_is_never_exceeded() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("small"))
        .props(Properties::new().four(id::MAXIMUM_PACKET_SIZE, 256));
    let mut small = Client5::connect(node.addr(), &connect).await?;
    ensure!(small.subscribe(1, &[("mps/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "big").await?;
    publisher
        .publish(&Publish5::new("mps/big", 1, &[b'B'; 1000]).id(1))
        .await?;
    publisher
        .publish(&Publish5::new("mps/small", 1, b"tiny").id(2))
        .await?;
    publisher
        .publish(&Publish5::new("mps/end", 1, b"end").id(3))
        .await?;
    let got = within("the small messages", small.publishes_until("mps/end")).await??;
    let topics: Vec<String> = got.iter().map(Publish5::topic_str).collect();
    ensure!(topics == ["mps/small"], "delivered {topics:?}");
    Ok(())
}

// ---------------------------------------------------------------------
// 8. Session expiry (§3.1.2.11.2, §4.1)
// ---------------------------------------------------------------------

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

// ---------------------------------------------------------------------
// 9. Will (§3.1.3.2)
// ---------------------------------------------------------------------

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

// ---------------------------------------------------------------------
// 10. Enhanced authentication (§4.12)
// ---------------------------------------------------------------------

/// §4.12 [MQTT-4.12.0-1], §3.2.2.2: a CONNECT with an Authentication
/// Method the node does not support gets CONNACK 0x8C (Bad authentication
/// method) and the connection is closed.
#[tokio::test]
async fn an_unsupported_authentication_method_gets_connack_0x8c() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("scram")).props(
        Properties::new()
            .text(id::AUTHENTICATION_METHOD, "SCRAM-SHA-1")
            .binary(id::AUTHENTICATION_DATA, b"n,,n=user,r=nonce"),
    );
    let mut client = Client5::handshake(node.addr(), &connect).await?;
    ensure!(
        client.connack.reason == reason::BAD_AUTHENTICATION_METHOD,
        "CONNACK {:?}",
        client.connack
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

// ---------------------------------------------------------------------
// 11. Subscription options (§3.8.3.1) and identifiers (§3.8.2.1.2)
// ---------------------------------------------------------------------

/// §3.8.3.1 [MQTT-3.8.3-3]: with No Local, a client's own PUBLISH is not
/// sent back to it; another subscriber without No Local gets it.
#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut talker = connect(&node, "talker").await?;
    let ack = talker
        .subscribe(1, &[("nl/t", 1 | sub::NO_LOCAL), ("nl/end", 1)])
        .await?;
    ensure!(ack.reasons == [1, 1], "SUBACK {ack:?}");
    let mut other = subscriber(&node, "nl/t", "nl/end").await?;
    ack_reason(
        talker
            .publish(&Publish5::new("nl/t", 1, b"mine").id(2))
            .await?,
        reason::SUCCESS,
    )?;
    sentinel(&mut talker, "nl/end").await?;
    let echoed = within("the talker's sentinel", talker.publishes_until("nl/end")).await??;
    ensure!(echoed.is_empty(), "No Local echoed {echoed:?}");
    let heard = within("the other's messages", other.publishes_until("nl/end")).await??;
    ensure!(heard.len() == 1 && heard[0].payload == b"mine", "{heard:?}");
    Ok(())
}

/// §3.8.3.1, §3.3.1.3 [MQTT-3.3.1-12], [MQTT-3.3.1-13]: a retained PUBLISH
/// forwarded to an existing subscription keeps RETAIN 1 with Retain As
/// Published and has RETAIN 0 without it.
#[tokio::test]
async fn retain_as_published_keeps_the_retain_flag() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut kept = connect(&node, "rap").await?;
    ensure!(
        kept.subscribe(
            1,
            &[("rap/t", 1 | sub::RETAIN_AS_PUBLISHED), ("rap/end", 1)]
        )
        .await?
        .reasons
            == [1, 1]
    );
    let mut cleared = subscriber(&node, "rap/t", "rap/end").await?;
    let mut publisher = connect(&node, "rap-pub").await?;
    publisher
        .publish(&Publish5::new("rap/t", 1, b"r").id(1).retain())
        .await?;
    sentinel(&mut publisher, "rap/end").await?;
    let with_rap = within("the RAP subscriber", kept.publishes_until("rap/end")).await??;
    let without = within("the other subscriber", cleared.publishes_until("rap/end")).await??;
    ensure!(
        with_rap.len() == 1 && with_rap[0].retain,
        "Retain As Published: {with_rap:?}"
    );
    ensure!(
        without.len() == 1 && !without[0].retain,
        "without Retain As Published: {without:?}"
    );
    // Leave no retained message behind for other tests of this node.
    publisher
        .publish(&Publish5::new("rap/t", 1, b"").id(2).retain())
        .await?;
    Ok(())
}

/// The retained messages `client` is sent right after subscribing to
/// `filter` with `options`: those before a PINGRESP.
async fn retained_on_subscribe(
    client: &mut Client5,
    packet_id: u16,
    filter: &str,
    options: u8,
) -> Result<usize> {
    ensure!(
        client
            .subscribe(packet_id, &[(filter, options)])
            .await?
            .reasons
            == [options & 3]
    );
    client.ping().await?;
    let mut count = 0;
    while let Some(packet) = client.recv_for(QUIET).await? {
        match packet {
            Packet5::Publish(p) if p.retain => {
                count += 1;
                if p.qos == 1 {
                    client.send(&puback(p.packet_id)).await?;
                }
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    Ok(count)
}

/// §3.8.3.1 [MQTT-3.3.1-9], [MQTT-3.3.1-10], [MQTT-3.3.1-11]: Retain
/// Handling 0 sends the retained message at every SUBSCRIBE; 1 only when
/// the subscription did not exist; 2 never.
#[tokio::test]
async fn retain_handling_0_1_and_2() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = connect(&node, "rh-pub").await?;
    publisher
        .publish(&Publish5::new("rh/t", 1, b"kept").id(1).retain())
        .await?;
    let mut counts = Vec::new();
    for handling in 0..3u8 {
        let mut client = connect(&node, &format!("rh{handling}")).await?;
        let options = 1 | sub::retain_handling(handling);
        let first = retained_on_subscribe(&mut client, 1, "rh/t", options).await?;
        let again = retained_on_subscribe(&mut client, 2, "rh/t", options).await?;
        counts.push((handling, first, again));
    }
    ensure!(
        counts == [(0, 1, 1), (1, 1, 0), (2, 0, 0)],
        "(retain handling, retained at first SUBSCRIBE, at the repeat): {counts:?}"
    );
    Ok(())
}

/// §3.8.2.1.2, §3.3.2.3.8 [MQTT-3.3.4-3], [MQTT-3.3.4-4], [MQTT-3.3.4-5]:
/// a Subscription Identifier given in SUBSCRIBE comes back in every
/// PUBLISH that subscription matches. With two matching subscriptions
/// (ids 7 and 9) the client gets both ids, either in one PUBLISH or one in
/// each; a subscription without an id adds none.
#[tokio::test]
async fn subscription_identifiers_come_back_once_per_matching_subscription() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = connect(&node, "subid").await?;
    let available = client
        .connack
        .props
        .get_byte(id::SUBSCRIPTION_IDENTIFIER_AVAILABLE);
    ensure!(
        available != Some(0),
        "the node says Subscription Identifiers are not available"
    );
    let with_id = |n| Properties::new().varint(id::SUBSCRIPTION_IDENTIFIER, n);
    ensure!(
        client
            .subscribe_with(1, &with_id(7), &[("si/#", 1)])
            .await?
            .reasons
            == [1]
    );
    ensure!(
        client
            .subscribe_with(2, &with_id(9), &[("si/+", 1)])
            .await?
            .reasons
            == [1]
    );
    ensure!(client.subscribe(3, &[("si-end", 1)]).await?.reasons == [1]);
    let mut publisher = connect(&node, "subid-pub").await?;
    publisher
        .publish(&Publish5::new("si/a", 1, b"both").id(1))
        .await?;
    publisher
        .publish(&Publish5::new("si/a/b", 1, b"seven").id(2))
        .await?;
    publisher
        .publish(&Publish5::new("si-end", 1, b"end").id(3))
        .await?;
    let mut both = Vec::new();
    let mut seven = Vec::new();
    loop {
        let p = within("the identified messages", client.recv_publish_acked()).await??;
        match p.topic_str().as_str() {
            "si/a" => both.extend(p.props.subscription_ids()),
            "si/a/b" => seven.extend(p.props.subscription_ids()),
            "si-end" => {
                ensure!(
                    p.props.subscription_ids().is_empty(),
                    "an id on a subscription without one: {p:?}"
                );
                break;
            }
            other => bail!("unexpected topic {other}"),
        }
    }
    both.sort_unstable();
    ensure!(both == [7, 9], "si/a carried identifiers {both:?}");
    ensure!(seven == [7], "si/a/b carried identifiers {seven:?}");
    Ok(())
}

// ---------------------------------------------------------------------
// 12. Request / response (§4.10)
// ---------------------------------------------------------------------

/// paho-mqtt with MQTTv5: subscribes to the response topic, publishes a
/// request with Response Topic and Correlation Data, prints the hex of the
/// Correlation Data and the payload of the response it gets.
const PAHO_REQUESTER: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, request, response, client_id = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
subscribed, answered = threading.Event(), threading.Event()
got = {}
def on_connect(c, userdata, flags, rc, props=None):
    c.subscribe(response, qos=1)
def on_subscribe(c, userdata, mid, codes, props=None):
    subscribed.set()
def on_message(c, userdata, msg):
    got["corr"] = getattr(msg.properties, "CorrelationData", b"")
    got["payload"] = msg.payload
    answered.set()
c = mqtt.Client(client_id=client_id, protocol=mqtt.MQTTv5)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect(host, port, keepalive=30)
c.loop_start()
if not subscribed.wait(5):
    print("no SUBACK"); sys.exit(2)
props = Properties(PacketTypes.PUBLISH)
props.ResponseTopic = response
props.CorrelationData = b"\x00req-42\xff"
c.publish(request, b"what time is it", qos=1, properties=props)
if not answered.wait(5):
    print("no response"); sys.exit(3)
print(got["corr"].hex(), got["payload"].decode())
c.disconnect()
c.loop_stop()
"#;

/// Debian's python3, where python3-paho-mqtt lives.
const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Makes paho-mqtt importable by [`DEBIAN_PYTHON`] (scripts/ensure-deps.sh).
fn ensure_paho() -> Result<()> {
    let importable = || {
        StdCommand::new(DEBIAN_PYTHON)
            .args(["-c", "import paho.mqtt.client"])
            .output()
            .is_ok_and(|out| out.status.success())
    };
    if importable() {
        return Ok(());
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    StdCommand::new("bash")
        .args(["-c", "source scripts/ensure-deps.sh && ensure_python3_paho"])
        .current_dir(root)
        .status()
        .context("running scripts/ensure-deps.sh")?;
    ensure!(importable(), "cannot install python3-paho-mqtt");
    Ok(())
}

/// §4.10 [MQTT-3.3.2-15], [MQTT-3.3.2-16]: a `rumqttc::v5` responder
/// subscribed to the request topic answers on the request's Response
/// Topic with its Correlation Data; the paho-mqtt (MQTTv5) requester gets
/// the answer with the Correlation Data it sent.
#[tokio::test]
async fn request_response_between_rumqttc_and_paho() -> Result<()> {
    use rumqttc::v5::mqttbytes::v5::{Packet as RPacket, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS as RQoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    ensure_paho()?;
    let node = NodeProcess::start()?;
    let request = unique_id("svc/time");
    let response = unique_id("reply/time");

    let mut options = MqttOptions::new(unique_id("responder"), "127.0.0.1", node.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (responder, mut eventloop) = AsyncClient::new(options, 16);
    responder
        .subscribe(request.as_str(), RQoS::AtLeastOnce)
        .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let serve = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(RPacket::SubAck(_))) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(RPacket::Publish(req))) => {
                    let props = req.properties.clone().unwrap_or_default();
                    let Some(topic) = props.response_topic else {
                        continue;
                    };
                    let answer = PublishProperties {
                        correlation_data: props.correlation_data,
                        ..Default::default()
                    };
                    let body = format!("answer to {}", String::from_utf8_lossy(&req.payload));
                    let _ = responder.try_publish_with_properties(
                        topic,
                        RQoS::AtLeastOnce,
                        false,
                        body,
                        answer,
                    );
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    within("the responder's SUBACK", ready_rx).await??;

    let run = tokio::process::Command::new(DEBIAN_PYTHON)
        .args(["-c", PAHO_REQUESTER, "127.0.0.1", &node.port().to_string()])
        .args([&request, &response, &unique_id("requester")])
        .kill_on_drop(true)
        .output();
    let output = within_for(Duration::from_secs(15), "the paho requester", run).await??;
    serve.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.trim() == "007265712d3432ff answer to what time is it",
        "paho requester: {} {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------
// 13. Through astramq-proxy
// ---------------------------------------------------------------------

/// A 5.0 client through the proxy is routed to the node and served with
/// 5.0 semantics: a CONNACK with properties, SUBACK and PUBACK reason
/// codes, and User Properties carried.
#[tokio::test]
async fn a_v5_client_through_the_proxy_is_served() -> Result<()> {
    let node = NodeProcess::start()?;
    let proxy = ProxyProcess::start(&[("--backends", &node.addr().to_string())])?;
    let mut sub = Client5::connect(proxy.addr, &Connect5::new(&unique_id("psub"))).await?;
    ensure!(
        sub.connack.props.get_two(id::RECEIVE_MAXIMUM).is_some(),
        "the CONNACK through the proxy lost its properties: {:?}",
        sub.connack
    );
    ensure!(sub.subscribe(1, &[("px5/t", 1)]).await?.reasons == [1]);
    let mut publisher = Client5::connect(proxy.addr, &Connect5::new(&unique_id("ppub"))).await?;
    let sent = Publish5::new("px5/t", 1, b"via proxy")
        .id(3)
        .props(Properties::new().user("hop", "proxy"));
    ack_reason(publisher.publish(&sent).await?, reason::SUCCESS)?;
    let got = sub.recv_publish_acked().await?;
    ensure!(
        got.payload == b"via proxy" && got.props.users() == [("hop".into(), "proxy".into())],
        "got {got:?}"
    );
    Ok(())
}

/// §3.2.2.2: with no live node, the proxy answers a 5.0 CONNECT with the
/// 5.0 CONNACK 0x88 (Server unavailable): exactly `20 03 00 88 00`, then
/// the close. (A 3.1.1 client gets the 3.1.1 code 0x03, tests/proxy.rs.)
#[tokio::test]
async fn without_a_node_the_proxy_answers_v5_with_connack_0x88() -> Result<()> {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let proxy = ProxyProcess::start(&[("--backends", &dead.to_string())])?;
    let mut client = RawClient::connect_tcp(proxy.addr).await?;
    client
        .send(&Connect5::new(&unique_id("nowhere")).encode())
        .await?;
    let answer = client.recv().await?;
    let mut bytes = vec![answer.first_byte];
    bytes.extend(astramq_tests::wire::remaining_length(answer.body.len()));
    bytes.extend(&answer.body);
    ensure!(
        bytes == [0x20, 0x03, 0x00, reason::SERVER_UNAVAILABLE, 0x00],
        "proxy answered {bytes:02x?}"
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

// ---------------------------------------------------------------------
// 3.1.1 and 5.0 side by side
// ---------------------------------------------------------------------

/// A message crosses protocol versions in the receiver's framing: a 5.0
/// PUBLISH with properties reaches a 3.1.1 subscriber as a 3.1.1 PUBLISH
/// (no Property Length, the payload intact, exact bytes), and a 3.1.1
/// PUBLISH reaches a 5.0 subscriber with a Property Length (§3.3.2.3.1).
#[tokio::test]
async fn messages_cross_between_3_1_1_and_5_0_in_the_receivers_framing() -> Result<()> {
    use astramq_tests::wire::{self, Connect};

    let node = NodeProcess::start()?;
    let (mut old, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("v311"))).await?;
    ensure!(old.subscribe(1, &[("mix/v5", 1)]).await? == [1]);
    let mut new = connect(&node, "v5").await?;
    ensure!(new.subscribe(1, &[("mix/v311", 1)]).await?.reasons == [1]);

    let sent = Publish5::new("mix/v5", 1, b"from five")
        .id(3)
        .props(application_properties());
    ack_reason(new.publish(&sent).await?, reason::SUCCESS)?;
    let got = old.recv().await?;
    let publish = got.publish()?;
    let mut expected = vec![0x00, 0x06];
    expected.extend(b"mix/v5");
    expected.extend(publish.packet_id.to_be_bytes());
    expected.extend(b"from five");
    ensure!(
        got.first_byte == 0x32 && got.body == expected,
        "the 3.1.1 subscriber got {got:?} (body {:02x?})",
        got.body
    );
    old.send(&wire::puback(publish.packet_id)).await?;

    old.send(
        &wire::Publish::new("mix/v311", 1, b"from three")
            .with_packet_id(4)
            .encode(),
    )
    .await?;
    let acked = old.recv().await?.ack_id(kind::PUBACK)?;
    ensure!(acked == 4, "PUBACK for {acked}");
    let got = new.recv_publish_acked().await?;
    ensure!(
        got.topic == b"mix/v311" && got.payload == b"from three" && got.props.is_empty(),
        "the 5.0 subscriber got {got:?}"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// More normative statements around the groups above
// ---------------------------------------------------------------------

/// §3.3.1.3, §3.3.2.3.3 [MQTT-3.3.2-5], [MQTT-3.3.2-6], [MQTT-3.3.2-17],
/// [MQTT-3.3.2-18]: a retained message keeps its properties for a later
/// subscriber (User Properties in order, Content Type, Correlation Data),
/// its Message Expiry Interval counts down while it is stored, and once
/// expired it is no longer sent.
#[tokio::test]
async fn retained_messages_keep_their_properties_and_expire() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = connect(&node, "ret-pub").await?;
    let kept = Publish5::new("ret5/kept", 1, "kept ✓".as_bytes())
        .id(1)
        .retain()
        .props(application_properties().four(id::MESSAGE_EXPIRY_INTERVAL, 60));
    let short = Publish5::new("ret5/short", 1, b"short")
        .id(2)
        .retain()
        .props(Properties::new().four(id::MESSAGE_EXPIRY_INTERVAL, 1));
    for publish in [&kept, &short] {
        ack_reason(publisher.publish(publish).await?, reason::SUCCESS)?;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut late = connect(&node, "ret-sub").await?;
    ensure!(late.subscribe(1, &[("ret5/#", 1)]).await?.reasons == [1]);
    late.ping().await?;
    let mut got = Vec::new();
    while let Some(packet) = late.recv_for(QUIET).await? {
        match packet {
            Packet5::Publish(p) => got.push(p),
            other => bail!("unexpected {other:?}"),
        }
    }
    ensure!(
        got.len() == 1 && got[0].topic == b"ret5/kept" && got[0].retain,
        "retained messages sent: {got:?} (ret5/short had expired)"
    );
    check_application_properties(&got[0].props)?;
    let left = got[0].props.get_four(id::MESSAGE_EXPIRY_INTERVAL);
    ensure!(
        left.is_some_and(|s| s > 0 && s <= 58),
        "stored 2.5 s of 60 but says {left:?}"
    );
    for topic in ["ret5/kept", "ret5/short"] {
        publisher
            .publish(&Publish5::new(topic, 1, b"").id(3).retain())
            .await?;
    }
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

/// §3.1.2.11.2, §3.1.2.11.3, §3.1.2.11.4, §3.1.2.11.5: "It is a Protocol
/// Error to include" a CONNECT property more than once, Receive Maximum 0
/// or Maximum Packet Size 0. Such a CONNECT is refused: by §3.1.4 and
/// §4.13.1 the node MAY answer CONNACK 0x82 (if it answers, with that
/// code) and MUST close. Every case is tried.
#[tokio::test]
async fn invalid_connect_properties_are_refused() -> Result<()> {
    let node = NodeProcess::start()?;
    let cases = [
        (
            "Session Expiry Interval twice",
            Properties::new()
                .four(id::SESSION_EXPIRY_INTERVAL, 10)
                .four(id::SESSION_EXPIRY_INTERVAL, 20),
        ),
        (
            "Receive Maximum 0",
            Properties::new().two(id::RECEIVE_MAXIMUM, 0),
        ),
        (
            "Maximum Packet Size 0",
            Properties::new().four(id::MAXIMUM_PACKET_SIZE, 0),
        ),
        (
            "Topic Alias Maximum twice",
            Properties::new()
                .two(id::TOPIC_ALIAS_MAXIMUM, 1)
                .two(id::TOPIC_ALIAS_MAXIMUM, 2),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, props) in cases {
        let connect = Connect5::new(&unique_id("badprops")).props(props);
        match Client5::handshake(node.addr(), &connect).await {
            Ok(mut client) if client.connack.reason == reason::PROTOCOL_ERROR => {
                if let Err(e) = client.expect_closed(TIMEOUT).await {
                    wrong.push(format!("{what}: {e:#}"));
                }
            }
            Ok(client) => wrong.push(format!("{what}: CONNACK {:#04x}", client.connack.reason)),
            // Closed without a CONNACK: allowed.
            Err(e) if format!("{e:#}").contains("closed the connection") => {}
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "wrong answers: {wrong:?}");
    Ok(())
}

/// §3.3.4 [MQTT-3.3.4-6] and §3.8.2.1.2: a client's PUBLISH must not carry
/// a Subscription Identifier, and a Subscription Identifier of 0 is a
/// Protocol Error: each gets DISCONNECT 0x82.
#[tokio::test]
async fn misused_subscription_identifiers_get_disconnect_0x82() -> Result<()> {
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

/// §3.1.2.11.7 [MQTT-3.1.2-29]: with Request Problem Information 0 the
/// server sends no Reason String or User Property on a PUBACK, even one
/// refusing the message (0x99 for a payload marked UTF-8 that is not).
#[tokio::test]
async fn request_problem_information_0_keeps_reason_strings_off_acks() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("quiet-errors"))
        .props(Properties::new().byte(id::REQUEST_PROBLEM_INFORMATION, 0));
    let mut client = Client5::connect(node.addr(), &connect).await?;
    let bad = Publish5::new("rpi/t", 1, &[0xFF, 0xFE])
        .id(9)
        .props(Properties::new().byte(id::PAYLOAD_FORMAT_INDICATOR, 1));
    client.send(&bad.encode()).await?;
    match client.recv().await? {
        Packet5::Ack(a) if a.kind == kind::PUBACK => ensure!(
            a.props.get(id::REASON_STRING).is_none() && a.props.users().is_empty(),
            "PUBACK with problem information the client declined: {a:?}"
        ),
        // A DISCONNECT may carry a Reason String whatever was requested.
        Packet5::Disconnect(_) => {}
        other => bail!("expected PUBACK or DISCONNECT, got {other:?}"),
    }
    Ok(())
}

/// §4.9 [MQTT-3.3.4-9]: the client's Receive Maximum counts QoS 2
/// deliveries until PUBCOMP: with Receive Maximum 1, the second QoS 2
/// PUBLISH waits until the first one's PUBCOMP has been sent, not just its
/// PUBREC.
#[tokio::test]
async fn the_client_receive_maximum_counts_qos_2_until_pubcomp() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("one-at-a-time"))
        .props(Properties::new().two(id::RECEIVE_MAXIMUM, 1));
    let mut slow = Client5::connect(node.addr(), &connect).await?;
    ensure!(slow.subscribe(1, &[("flow2/#", 2)]).await?.reasons == [2]);
    let mut publisher = self::connect(&node, "q2pub").await?;
    for i in 1..=2u16 {
        let publish = Publish5::new(&format!("flow2/{i}"), 2, b"m").id(i);
        ack_reason(publisher.publish(&publish).await?, reason::SUCCESS)?;
    }
    let first = slow.recv_publish().await?;
    ensure!(first.topic == b"flow2/1" && first.qos == 2, "{first:?}");
    slow.send(&p5::pubrec(first.packet_id)).await?;
    match slow.recv().await? {
        Packet5::Ack(a) if a.kind == kind::PUBREL && a.packet_id == first.packet_id => {}
        other => bail!("expected PUBREL, got {other:?}"),
    }
    slow.expect_quiet(QUIET)
        .await
        .context("a second QoS 2 PUBLISH before PUBCOMP with Receive Maximum 1")?;
    slow.send(&p5::pubcomp(first.packet_id)).await?;
    let second = slow.recv_publish().await?;
    ensure!(second.topic == b"flow2/2", "{second:?}");
    Ok(())
}

/// §3.3.2.3.4 [MQTT-3.3.2-10], [MQTT-3.3.2-11]: a client that allows
/// Topic Alias Maximum 2 may be sent aliases, but only 1 or 2, and an
/// empty topic only with an alias the server set before on this
/// connection. Every message is delivered on its topic.
#[tokio::test]
async fn server_topic_aliases_stay_within_the_client_maximum() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("alias-taker"))
        .props(Properties::new().two(id::TOPIC_ALIAS_MAXIMUM, 2));
    let mut sub = Client5::connect(node.addr(), &connect).await?;
    ensure!(sub.subscribe(1, &[("sa/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "sa-pub").await?;
    let topics: Vec<String> = (0..12).map(|i| format!("sa/t{}", i % 4)).collect();
    for (i, topic) in topics.iter().enumerate() {
        let publish = Publish5::new(topic, 1, b"m").id(i as u16 + 1);
        publisher.publish(&publish).await?;
    }
    let mut aliases = std::collections::HashMap::new();
    for expected in &topics {
        let p = sub.recv_publish_acked().await?;
        let topic = match p.props.get_two(id::TOPIC_ALIAS) {
            None => p.topic_str(),
            Some(alias) => {
                ensure!(
                    (1..=2).contains(&alias),
                    "alias {alias} beyond the client's maximum 2: {p:?}"
                );
                if !p.topic.is_empty() {
                    aliases.insert(alias, p.topic_str());
                }
                aliases
                    .get(&alias)
                    .cloned()
                    .with_context(|| format!("empty topic with unset alias {alias}: {p:?}"))?
            }
        };
        ensure!(&topic == expected, "expected {expected}, resolved {topic}");
    }
    Ok(())
}

/// §3.2.2.3.14 [MQTT-3.2.2-21], [MQTT-3.2.2-22]: a client asking for no
/// keep alive (0) that the node holds to `--default-keep-alive 20` anyway
/// is told so with Server Keep Alive 20; otherwise it would be closed for
/// a silence it was never told to break.
#[tokio::test]
async fn an_imposed_default_keep_alive_is_announced_as_server_keep_alive() -> Result<()> {
    let node = NodeProcess::start_with(&[("--default-keep-alive", "20")])?;
    let connect = Connect5::new(&unique_id("ka0")).keep_alive(0);
    let client = Client5::connect(node.addr(), &connect).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told == Some(20),
        "keep alive 0 held to 20 s, but Server Keep Alive is {told:?}"
    );
    Ok(())
}

/// §3.7.2.1, §4.3.3: a PUBREL for a Packet Identifier the node does not
/// hold is answered with PUBCOMP 0x92 (Packet Identifier not found).
#[tokio::test]
async fn a_pubrel_for_an_unknown_id_gets_pubcomp_0x92() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = connect(&node, "stray-pubrel").await?;
    client.send(&p5::pubrel(77)).await?;
    match client.recv().await? {
        Packet5::Ack(a) if a.kind == kind::PUBCOMP && a.packet_id == 77 => {
            ensure!(a.reason == 0x92, "PUBCOMP {a:?}, expected 0x92")
        }
        other => bail!("expected PUBCOMP, got {other:?}"),
    }
    client.ping().await
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

/// §3.2.2.3.13, §4.8.2, §3.9.3: a node that announces Shared Subscription
/// Available 0 answers a SUBSCRIBE to `$share/...` with 0x9E (Shared
/// Subscriptions not supported), the other filters of the SUBSCRIBE
/// granted; one that announces them must deliver each message to one
/// member of the group.
#[tokio::test]
async fn shared_subscriptions_are_refused_with_0x9e_when_announced_unavailable() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut client = connect(&node, "sharer").await?;
    let available = client
        .connack
        .props
        .get_byte(id::SHARED_SUBSCRIPTION_AVAILABLE);
    let ack = client
        .subscribe(1, &[("$share/g/sh/t", 1), ("sh/other", 1)])
        .await?;
    if available == Some(0) {
        ensure!(ack.reasons == [0x9E, 1], "SUBACK {ack:?}");
        return Ok(());
    }
    ensure!(
        ack.reasons == [1, 1],
        "shared subscriptions announced but {ack:?}"
    );
    let mut other = connect(&node, "sharer2").await?;
    ensure!(other.subscribe(1, &[("$share/g/sh/t", 1)]).await?.reasons == [1]);
    let mut publisher = connect(&node, "share-pub").await?;
    for i in 1..=10u16 {
        publisher
            .publish(&Publish5::new("sh/t", 1, b"m").id(i))
            .await?;
    }
    let mut got = 0;
    for member in [&mut client, &mut other] {
        while let Some(Packet5::Publish(p)) = member.recv_for(QUIET).await? {
            member.send(&puback(p.packet_id)).await?;
            got += 1;
        }
    }
    ensure!(got == 10, "a group of two got {got} of 10 messages");
    Ok(())
}

/// §3.3.2.3.3 [MQTT-3.3.2-5]: a message that expires while it waits behind
/// the client's in-flight window (Receive Maximum 1, the first message not
/// acknowledged) is not sent once the window opens; one that has not
/// expired is.
#[tokio::test]
async fn a_message_expiring_behind_the_in_flight_window_is_not_sent() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect =
        Connect5::new(&unique_id("narrow")).props(Properties::new().two(id::RECEIVE_MAXIMUM, 1));
    let mut slow = Client5::connect(node.addr(), &connect).await?;
    ensure!(slow.subscribe(1, &[("win/#", 1)]).await?.reasons == [1]);
    let mut publisher = self::connect(&node, "win-pub").await?;
    let sent = [
        ("win/first", None),
        ("win/expires", Some(1)),
        ("win/lasts", Some(60)),
    ];
    for (i, (topic, expiry)) in sent.into_iter().enumerate() {
        let mut props = Properties::new();
        if let Some(seconds) = expiry {
            props = props.four(id::MESSAGE_EXPIRY_INTERVAL, seconds);
        }
        let publish = Publish5::new(topic, 1, b"m").id(i as u16 + 1).props(props);
        publisher.publish(&publish).await?;
    }
    let first = slow.recv_publish().await?;
    ensure!(first.topic == b"win/first", "{first:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    slow.send(&puback(first.packet_id)).await?;
    let next = slow.recv_publish_acked().await?;
    ensure!(
        next.topic == b"win/lasts",
        "after the window opened: {next:?} (win/expires had expired)"
    );
    slow.ping().await?;
    slow.expect_quiet(QUIET).await
}

/// §3.3.4 [MQTT-3.3.4-3], §3.8.2.1.2: retained messages sent because of a
/// SUBSCRIBE carry that subscription's Subscription Identifier.
#[tokio::test]
async fn retained_messages_carry_the_subscription_identifier() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = connect(&node, "sidret-pub").await?;
    publisher
        .publish(&Publish5::new("sidret/t", 1, b"r").id(1).retain())
        .await?;
    let mut client = connect(&node, "sidret").await?;
    let props = Properties::new().varint(id::SUBSCRIPTION_IDENTIFIER, 300);
    ensure!(
        client
            .subscribe_with(1, &props, &[("sidret/#", 1)])
            .await?
            .reasons
            == [1]
    );
    let got = client.recv_publish_acked().await?;
    ensure!(
        got.retain && got.props.subscription_ids() == [300],
        "retained message {got:?}"
    );
    publisher
        .publish(&Publish5::new("sidret/t", 1, b"").id(2).retain())
        .await?;
    Ok(())
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

/// §3.2.2.2, §3.1.3.1, §3.1.3.5: refusals carry 5.0 reason codes: a client
/// identifier over `--max-client-id-length` gets 0x85 (Client Identifier
/// not valid), a wrong password 0x86 (Bad User Name or Password), no
/// credentials where anonymous clients are refused 0x86 or 0x87 (Not
/// authorized), and a session beyond `--max-sessions` 0x97 (Quota
/// exceeded) or 0x89 (Server busy); each followed by the close.
#[tokio::test]
async fn connack_refusals_carry_5_0_reason_codes() -> Result<()> {
    let short_ids = NodeProcess::start_with(&[("--max-client-id-length", "23")])?;
    let long_id = Connect5::new("a-client-id-of-28-chars-and-more");
    let code = refusal(&short_ids, &long_id).await?;
    ensure!(code == 0x85, "a too-long client id got {code:#04x}");

    let dir = TempDir::new("astramq-auth5")?;
    let file = dir.join("passwords").display().to_string();
    astramq_tests::users::add_user(&["--password-file", &file], "alice", "in wonderland")?;
    let secured =
        NodeProcess::start_with(&[("--allow-anonymous", "false"), ("--password-file", &file)])?;
    let wrong = Connect5::new(&unique_id("alice")).credentials("alice", "not it");
    let code = refusal(&secured, &wrong).await?;
    ensure!(code == 0x86, "a wrong password got {code:#04x}");
    let anonymous = Connect5::new(&unique_id("anon"));
    let code = refusal(&secured, &anonymous).await?;
    ensure!(
        code == 0x86 || code == reason::NOT_AUTHORIZED,
        "an anonymous client got {code:#04x}"
    );
    let right = Connect5::new(&unique_id("alice")).credentials("alice", "in wonderland");
    Client5::connect(secured.addr(), &right)
        .await?
        .ping()
        .await?;

    let one = NodeProcess::start_with(&[("--max-sessions", "1")])?;
    let mut first = connect(&one, "only").await?;
    let code = refusal(&one, &Connect5::new(&unique_id("second"))).await?;
    ensure!(
        code == 0x97 || code == 0x89,
        "a session beyond --max-sessions got {code:#04x}"
    );
    first.ping().await
}

/// §3.9.3: a filter beyond `--max-subscriptions-per-client` gets 0x97
/// (Quota exceeded) in its SUBACK slot while the one before it is granted.
#[tokio::test]
async fn a_subscription_beyond_the_quota_gets_0x97() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-subscriptions-per-client", "1")])?;
    let mut client = connect(&node, "quota").await?;
    let ack = client.subscribe(1, &[("q/a", 1), ("q/b", 1)]).await?;
    ensure!(ack.reasons == [1, 0x97], "SUBACK {ack:?}");
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

/// paho-mqtt with MQTTv5 over WebSocket (`/mqtt`): a subscriber and a
/// publisher; prints the User Properties and Content Type the subscriber
/// got.
const PAHO_WS_V5: &str = r#"
import sys, threading
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes
host, port, topic = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got, subscribed = threading.Event(), threading.Event()
seen = {}
def client(suffix):
    c = mqtt.Client(client_id=topic.replace("/", "-") + suffix, protocol=mqtt.MQTTv5, transport="websockets")
    c.ws_set_options(path="/mqtt")
    return c
def on_message(c, u, m):
    seen["users"] = getattr(m.properties, "UserProperty", [])
    seen["type"] = getattr(m.properties, "ContentType", "")
    got.set()
sub = client("-sub")
sub.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
sub.on_subscribe = lambda c, u, mid, codes, p=None: subscribed.set()
sub.on_message = on_message
sub.connect(host, port, 30)
sub.loop_start()
if not subscribed.wait(10):
    sys.exit("no SUBACK")
pub = client("-pub")
pub.connect(host, port, 30)
pub.loop_start()
props = Properties(PacketTypes.PUBLISH)
props.UserProperty = ("a", "1")
props.UserProperty = ("b", "2")
props.ContentType = "text/x-ws"
pub.publish(topic, "over ws", qos=1, properties=props)
if not got.wait(10):
    sys.exit("message not received")
print(seen["type"], ",".join(k + "=" + v for k, v in seen["users"]))
"#;

/// 5.0 on the WebSocket listener (`--ws-listen`): paho-mqtt with MQTTv5
/// over WebSocket subscribes and publishes, and the subscriber gets the
/// Content Type and User Properties (in order) the publisher set.
#[tokio::test]
async fn paho_v5_over_websocket_carries_properties() -> Result<()> {
    ensure_paho()?;
    let node = NodeProcess::start_with(&[("--ws-listen", "127.0.0.1:0")])?;
    let log = node.log();
    let ws = log
        .lines()
        .find_map(|line| line.strip_prefix("astramq-node listening on ws://"))
        .and_then(|addr| addr.trim().parse::<std::net::SocketAddr>().ok())
        .with_context(|| format!("no ws:// line; output:\n{}", node.log_tail()))?;
    let run = tokio::process::Command::new(DEBIAN_PYTHON)
        .args(["-c", PAHO_WS_V5, "127.0.0.1", &ws.port().to_string()])
        .arg(unique_id("ws5/t"))
        .kill_on_drop(true)
        .output();
    let output = within_for(Duration::from_secs(20), "paho over WebSocket", run).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    ensure!(
        output.status.success() && stdout.trim() == "text/x-ws a=1,b=2",
        "paho: {} {stdout} {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
