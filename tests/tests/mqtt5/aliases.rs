//! Topic aliases (§3.3.2.3.4), from the client and to it.

use super::*;

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

/// §3.3.2.3.4 [MQTT-3.3.2-7]: Topic Alias mappings last only for the
/// Network Connection: after a reconnect (same session), an alias set on
/// the old connection is unset, and using it with an empty topic gets
/// DISCONNECT 0x94 or 0x82.
#[tokio::test]
async fn topic_aliases_do_not_outlive_the_connection() -> Result<()> {
    let node = NodeProcess::start()?;
    let client_id = unique_id("forgetful");
    let connect = Connect5::new(&client_id).session_expiry(60);
    let mut first = Client5::connect(node.addr(), &connect).await?;
    let set = Publish5::new("forget/t", 1, b"set")
        .id(1)
        .props(Properties::new().two(id::TOPIC_ALIAS, 1));
    first.publish(&set).await?.context("no PUBACK")?;
    first.disconnect().await?;
    let mut second = Client5::connect(node.addr(), &connect.clean_start(false)).await?;
    let reuse = Publish5::new("", 0, b"old alias").props(Properties::new().two(id::TOPIC_ALIAS, 1));
    second.send(&reuse.encode()).await?;
    let d = second.expect_disconnect().await?;
    ensure!(
        [reason::TOPIC_ALIAS_INVALID, reason::PROTOCOL_ERROR].contains(&d.reason),
        "an alias from the previous connection: {d:?}"
    );
    Ok(())
}
