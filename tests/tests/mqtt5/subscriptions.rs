//! Subscription options (§3.8.3.1) and Subscription Identifiers (§3.8.2.1.2).

use super::*;

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
