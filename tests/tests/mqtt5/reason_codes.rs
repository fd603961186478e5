//! Reason codes on acknowledgements (§3.4.2.1, §3.7.2.1, §3.9.3, §3.11.3).

use super::*;

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

/// §3.2.2.3.13, §4.8.2, §3.9.3: a node that announces Shared Subscription
/// Available 0 answers a SUBSCRIBE to `$share/...` with 0x9E (Shared
/// Subscriptions not supported), the other filters granted. One that
/// serves them delivers each message to exactly one member of the group,
/// and sends no retained message when a shared subscription is made
/// (§3.3.1.3: only a new non-shared subscription gets them).
#[tokio::test]
async fn shared_subscriptions_deliver_once_per_group_or_are_refused_with_0x9e() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut publisher = connect(&node, "share-pub").await?;
    publisher
        .publish(&Publish5::new("sh/t", 1, b"old").id(1).retain())
        .await?;
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
    client.ping().await?;
    client
        .expect_quiet(QUIET)
        .await
        .context("a retained message sent to a new shared subscription")?;
    let mut other = connect(&node, "sharer2").await?;
    ensure!(other.subscribe(1, &[("$share/g/sh/t", 1)]).await?.reasons == [1]);
    for i in 2..=11u16 {
        publisher
            .publish(&Publish5::new("sh/t", 1, b"m").id(i))
            .await?;
    }
    let mut got = Vec::new();
    for member in [&mut client, &mut other] {
        let mut n = 0;
        while let Some(packet) = member.recv_for(QUIET).await? {
            let Packet5::Publish(p) = packet else {
                bail!("unexpected {packet:?}")
            };
            member.send(&puback(p.packet_id)).await?;
            n += 1;
        }
        got.push(n);
    }
    ensure!(
        got.iter().sum::<usize>() == 10,
        "a group of two got {got:?} of 10 messages"
    );
    publisher
        .publish(&Publish5::new("sh/t", 1, b"").id(12).retain())
        .await?;
    Ok(())
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
