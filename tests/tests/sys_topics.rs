//! `$SYS/` broker statistics, published every `--sys-interval` seconds, and
//! kept out of reach of plain `#` subscriptions.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{anyhow, ensure, Result};
use astramq_tests::{unique_id, within_for, NodeProcess, RedisProcess, TestClient};
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

/// Enough for a node's death to be noticed and recovered, and two rounds.
const FAILOVER: Duration = Duration::from_secs(15);

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
    sys_until(
        &mut client,
        &mut latest,
        SYS_WAIT,
        "every required $SYS topic",
        |l| REQUIRED.iter().all(|topic| l.contains_key(*topic)),
    )
    .await?;

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

/// Starts a cluster node publishing `$SYS` every second, with fast failure
/// detection.
fn sys_node(redis: &RedisProcess, id: &str) -> Result<NodeProcess> {
    NodeProcess::start_named(
        id,
        &[
            ("--redis", &redis.url()),
            ("--sys-interval", "1"),
            ("--heartbeat-interval-ms", "200"),
            ("--heartbeat-ttl-ms", "1000"),
            ("--redis-timeout-ms", "500"),
        ],
    )
}

/// Reads `$SYS` publishes into `latest` until `done` holds for it.
async fn sys_until(
    client: &mut TestClient,
    latest: &mut BTreeMap<String, String>,
    limit: Duration,
    what: &str,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Result<()> {
    within_for(limit, what, async {
        while !done(latest) {
            let publish = client.next_publish().await?;
            latest.insert(
                publish.topic.clone(),
                String::from_utf8_lossy(&publish.payload).into_owned(),
            );
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|e| anyhow!("{e}; seen: {latest:?}"))?
}

fn counter(latest: &BTreeMap<String, String>, topic: &str) -> Option<u64> {
    latest.get(topic).and_then(|v| v.parse().ok())
}

/// In a cluster each node publishes its own statistics under
/// `$SYS/broker/<node-id>/` and the cluster-wide sum under `$SYS/broker/`;
/// a dead node's per-node topics are deleted once it is recovered, and the
/// sum stops counting it.
#[tokio::test]
async fn cluster_nodes_publish_their_own_sys_topics_and_the_totals() -> Result<()> {
    let redis = RedisProcess::start()?;
    let (a, b) = (unique_id("sysa"), unique_id("sysb"));
    let node_a = sys_node(&redis, &a)?;
    let mut node_b = sys_node(&redis, &b)?;
    let mut watcher = TestClient::connect(node_a.addr(), &unique_id("sysw")).await?;
    let _on_b = TestClient::connect(node_b.addr(), &unique_id("sysb1")).await?;
    let _also_on_b = TestClient::connect(node_b.addr(), &unique_id("sysb2")).await?;
    watcher.subscribe("$SYS/broker/#", QoS::AtMostOnce).await?;

    let on_a = format!("$SYS/broker/{a}/clients/connected");
    let on_b = format!("$SYS/broker/{b}/clients/connected");
    let total = "$SYS/broker/clients/connected";
    let mut latest = BTreeMap::new();
    sys_until(
        &mut watcher,
        &mut latest,
        FAILOVER,
        "per-node and total clients/connected",
        |l| {
            counter(l, &on_a) == Some(1)
                && counter(l, &on_b) == Some(2)
                && counter(l, total) == Some(3)
        },
    )
    .await?;
    ensure!(
        latest.contains_key(&format!("$SYS/broker/{a}/uptime"))
            && latest.contains_key("$SYS/broker/retained messages/count"),
        "missing per-node uptime or the cluster's retained count: {latest:?}"
    );

    node_b.kill()?;
    sys_until(
        &mut watcher,
        &mut latest,
        FAILOVER,
        "the total without the dead node",
        |l| l.get(&on_b).is_some_and(String::is_empty) && counter(l, total) == Some(1),
    )
    .await?;
    // A new subscriber finds no retained statistic of the dead node.
    let mut fresh = TestClient::connect(node_a.addr(), &unique_id("sysf")).await?;
    fresh
        .subscribe(&format!("$SYS/broker/{b}/#"), QoS::AtMostOnce)
        .await?;
    if let Some(p) = fresh
        .next_publish_within(Duration::from_millis(1500))
        .await?
    {
        anyhow::bail!("the dead node's {} is still retained", p.topic);
    }
    Ok(())
}
