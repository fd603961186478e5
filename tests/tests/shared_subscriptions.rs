//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 §4.8.2; also
//! for 3.1.1 clients) on one node: one member of a group per message, a
//! leaving member's unacknowledged messages go to another member, no
//! retained messages for a shared subscription, and a node in a cluster
//! refuses them (it cannot keep "one member per group" across nodes yet).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Result};
use astramq_tests::wire::{self, Connect};
use astramq_tests::{unique_id, NodeProcess, RawClient, RedisProcess, TestClient, TIMEOUT};
use rumqttc::QoS;

/// A raw 3.1.1 member of `filter` that acknowledges nothing on its own.
async fn member(node: &NodeProcess, filter: &str) -> Result<RawClient> {
    let (mut client, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("m"))).await?;
    let codes = client.subscribe(1, &[(filter, 1)]).await?;
    ensure!(codes == [1], "SUBACK {codes:?}");
    Ok(client)
}

/// Reads publishes for `period`, acknowledging each; returns the payloads.
async fn drain(client: &mut RawClient, period: Duration) -> Result<Vec<String>> {
    let mut got = Vec::new();
    let until = tokio::time::Instant::now() + period;
    while let Some(packet) = client.recv_for(until - tokio::time::Instant::now()).await? {
        let publish = packet.publish()?;
        client.send(&wire::puback(publish.packet_id)).await?;
        got.push(String::from_utf8_lossy(&publish.payload).into_owned());
        if tokio::time::Instant::now() >= until {
            break;
        }
    }
    Ok(got)
}

async fn publisher(node: &NodeProcess) -> Result<TestClient> {
    TestClient::connect(node.addr(), &unique_id("pub")).await
}

#[tokio::test]
async fn each_message_goes_to_one_member_of_each_group() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut a1 = member(&node, "$share/a/t/#").await?;
    let mut a2 = member(&node, "$share/a/t/#").await?;
    let mut b = member(&node, "$share/b/t/+").await?;
    let mut plain = member(&node, "t/#").await?;
    let mut p = publisher(&node).await?;
    let sent: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    for payload in &sent {
        p.publish("t/x", QoS::AtLeastOnce, false, payload.as_bytes())
            .await?;
    }
    let period = Duration::from_millis(800);
    let (got1, got2) = (drain(&mut a1, period).await?, drain(&mut a2, period).await?);
    let everything: BTreeSet<&String> = sent.iter().collect();
    let group_a: BTreeSet<&String> = got1.iter().chain(&got2).collect();
    ensure!(
        got1.len() + got2.len() == sent.len(),
        "group a got {got1:?} + {got2:?}"
    );
    ensure!(group_a == everything, "group a: every message once");
    // Round robin (the default) spreads them.
    ensure!(
        got1.len() == 10 && got2.len() == 10,
        "{} / {}",
        got1.len(),
        got2.len()
    );
    ensure!(
        drain(&mut b, period).await?.len() == sent.len(),
        "group b: every message"
    );
    ensure!(
        drain(&mut plain, period).await?.len() == sent.len(),
        "a plain subscriber: every message"
    );
    Ok(())
}

#[tokio::test]
async fn a_leaving_member_hands_its_unacknowledged_messages_to_another() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-inflight", "4")])?;
    let mut stays = member(&node, "$share/g/w/#").await?;
    let mut leaves = member(&node, "$share/g/w/#").await?;
    let mut p = publisher(&node).await?;
    let sent: Vec<String> = (0..12).map(|i| format!("w{i}")).collect();
    for payload in &sent {
        p.publish("w/1", QoS::AtLeastOnce, false, payload.as_bytes())
            .await?;
    }
    // The leaving member reads its share and acknowledges none of it.
    let mut unacknowledged = Vec::new();
    while let Some(packet) = leaves.recv_for(Duration::from_millis(500)).await? {
        unacknowledged.push(String::from_utf8_lossy(&packet.publish()?.payload).into_owned());
    }
    ensure!(
        !unacknowledged.is_empty(),
        "the leaving member got its share"
    );
    drop(leaves);
    let got = drain(&mut stays, Duration::from_secs(2)).await?;
    let got: BTreeSet<&String> = got.iter().collect();
    let everything: BTreeSet<&String> = sent.iter().collect();
    ensure!(
        got == everything,
        "the member that stayed has every message (its own and the {} handed back): {got:?}",
        unacknowledged.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_shared_subscription_gets_no_retained_messages() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut p = publisher(&node).await?;
    p.publish("r/1", QoS::AtLeastOnce, true, "kept").await?;
    let mut shared = member(&node, "$share/g/r/#").await?;
    shared.expect_quiet(Duration::from_millis(500)).await?;
    let mut plain = member(&node, "r/#").await?;
    let retained = plain.recv_publish().await?;
    ensure!(
        retained.retain && retained.payload == b"kept",
        "{retained:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_malformed_share_is_refused() -> Result<()> {
    let node = NodeProcess::start()?;
    let (mut client, _) =
        RawClient::connected(node.addr(), &Connect::new(&unique_id("bad"))).await?;
    let codes = client
        .subscribe(
            1,
            &[
                ("$share/g", 1),
                ("$share//t", 1),
                ("$share/g+/t", 1),
                ("$share/ok/t", 1),
            ],
        )
        .await?;
    ensure!(codes == [0x80, 0x80, 0x80, 1], "SUBACK {codes:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_in_a_cluster_refuses_shared_subscriptions() -> Result<()> {
    let redis = RedisProcess::start()?;
    let node = NodeProcess::start_with(&[("--redis", &redis.url()), ("--sys-interval", "0")])?;
    let (mut client, _) = RawClient::connected(node.addr(), &Connect::new(&unique_id("c"))).await?;
    let codes = client.subscribe(1, &[("$share/g/t", 1), ("t", 1)]).await?;
    ensure!(codes == [0x80, 1], "SUBACK {codes:?}");
    tokio::time::timeout(TIMEOUT, client.ping()).await??;
    Ok(())
}
