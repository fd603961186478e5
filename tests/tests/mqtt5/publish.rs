//! PUBLISH properties (§3.3.2.3), Message Expiry (§3.3.2.3.3), Payload Format (§3.3.2.3.2), and messages between 3.1.1 and 5.0 clients.

use super::*;

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
