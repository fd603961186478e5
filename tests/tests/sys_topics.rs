//! `$SYS/` broker statistics, published every `--sys-interval` seconds, and
//! kept out of reach of plain `#` subscriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use astramq_tests::{unique_id, within_for, NodeProcess, TestClient};
use rumqttc::QoS;

/// Every `$SYS` topic the node must publish. All but the version are decimal.
const REQUIRED: [&str; 8] = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/subscriptions/count",
    "$SYS/broker/retained messages/count",
    "$SYS/broker/messages/dropped",
];

/// Enough for two publish rounds at `--sys-interval 1` on a busy machine.
const SYS_WAIT: Duration = Duration::from_secs(6);

/// Parses a `$SYS` payload as a decimal counter.
fn decimal(topic: &str, payload: &str) -> Result<u64> {
    payload
        .trim()
        .parse()
        .map_err(|_| anyhow!("{topic} payload {payload:?} is not decimal"))
}

/// Subscribing to `$SYS/#` yields every required statistic in the right format.
#[tokio::test]
async fn sys_topics_are_published_periodically() -> Result<()> {
    let node = NodeProcess::start_with(&[("--sys-interval", "1")])?;
    let mut client = TestClient::connect(node.addr(), &unique_id("sys")).await?;
    client.subscribe("$SYS/#", QoS::AtMostOnce).await?;

    let mut latest = BTreeMap::new();
    within_for(SYS_WAIT, "every required $SYS topic", async {
        while !REQUIRED.iter().all(|topic| latest.contains_key(*topic)) {
            let publish = client.next_publish().await?;
            latest.insert(
                publish.topic.clone(),
                String::from_utf8_lossy(&publish.payload).into_owned(),
            );
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|e| anyhow!("{e}; seen so far: {latest:?}"))??;

    ensure!(
        !latest["$SYS/broker/version"].trim().is_empty(),
        "empty version"
    );
    for topic in &REQUIRED[1..] {
        decimal(topic, &latest[*topic])?;
    }
    Ok(())
}

/// The connected-clients counter counts this client.
#[tokio::test]
async fn sys_clients_connected_counts_connected_clients() -> Result<()> {
    let node = NodeProcess::start_with(&[("--sys-interval", "1")])?;
    let _other = TestClient::connect(node.addr(), &unique_id("other")).await?;
    let mut client = TestClient::connect(node.addr(), &unique_id("sys")).await?;
    client
        .subscribe("$SYS/broker/clients/connected", QoS::AtMostOnce)
        .await?;
    // A snapshot taken just before our CONNECT could show less; a later one cannot.
    within_for(SYS_WAIT, "clients/connected >= 2", async {
        loop {
            let publish = client.next_publish().await?;
            let count = decimal(&publish.topic, &String::from_utf8_lossy(&publish.payload))?;
            if count >= 2 {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await?
}

/// A `#` subscriber never receives `$SYS` messages.
#[tokio::test]
async fn sys_topics_are_not_matched_by_hash() -> Result<()> {
    let node = NodeProcess::start_with(&[("--sys-interval", "1")])?;
    let mut everything = TestClient::connect(node.addr(), &unique_id("hash")).await?;
    everything.subscribe("#", QoS::AtMostOnce).await?;
    let mut sys = TestClient::connect(node.addr(), &unique_id("sys")).await?;
    sys.subscribe("$SYS/broker/uptime", QoS::AtMostOnce).await?;

    // Two uptime rounds seen by `sys` means `#` had its chance to (wrongly) match.
    sys.publishes(2).await?;
    sys.publish("sentinel", QoS::AtLeastOnce, false, "").await?;
    let leaked = everything.publishes_until("sentinel").await?;
    ensure!(
        leaked.is_empty(),
        "# matched $SYS topics: {:?}",
        leaked.iter().map(|p| &p.topic).collect::<Vec<_>>()
    );
    Ok(())
}
