//! A node that restarts keeps its offline sessions listed as its own, so
//! when it dies later a survivor still finds and adopts them.
//!
//! Three nodes share one Redis. A persistent (clean session = false) QoS 1
//! subscriber subscribes on node A and disconnects: its session is parked
//! on A. A is killed and restarted at once, before the others declare it
//! dead, so A takes over its own previous run (the rejoin) and owns the
//! session again. Then A is killed for good. A survivor must adopt the
//! session (and announce its filter), so what a publisher on node C sends
//! meanwhile is acknowledged only once it is queued for the session; the
//! subscriber resuming on node B gets every acknowledged message.
//!
//! Before the fix, the rejoin deleted A's client list after adopting its
//! own sessions: the survivor of the second death found none, dropped A's
//! routes, and every publish was acknowledged to no one.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use astramq_tests::chaos::cluster::{ChaosCluster, ClusterShape};
use astramq_tests::wire::{self, kind, Connect, Publish};
use astramq_tests::{unique_id, within_for, RawClient};

/// Messages the publisher sends after the second death.
const MESSAGES: u16 = 20;

/// How long the cluster may take to notice a dead node and act.
const FAILOVER: Duration = Duration::from_secs(15);

/// Silence that ends collecting once nothing more is expected.
const SETTLE: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_session_survives_a_restart_then_a_death_of_its_node() -> Result<()> {
    let shape = ClusterShape {
        nodes: 3,
        with_proxy: false,
        partitionable_node: false,
    };
    let mut cluster = tokio::task::block_in_place(|| ChaosCluster::start(&shape))?;
    let client_id = unique_id("rtd");
    let topic = format!("rtd/{client_id}");
    let connect = Connect::new(&client_id).with_clean_session(false);

    let (mut sub, _) = RawClient::connected(cluster.node_addr(0)?, &connect).await?;
    sub.subscribe(1, &[(&topic, 1)]).await?;
    sub.send(&wire::disconnect()).await?;
    drop(sub);

    let node_a = cluster.nodes[0].id.clone();
    cluster.kill(0)?;
    tokio::task::block_in_place(|| cluster.start_node(0))?;
    ensure!(
        cluster.session_owner(&client_id).as_deref() == Some(node_a.as_str()),
        "premise: the restarted node {node_a} should own the session again, not {:?} \
         (was it declared dead before it restarted?)",
        cluster.session_owner(&client_id)
    );

    cluster.kill(0)?;
    cluster.wait_for_recovery_of(&node_a, FAILOVER).await?;
    // The adopter's announced filter reaches node C's route table.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let (mut publisher, _) =
        RawClient::connected(cluster.node_addr(2)?, &Connect::new(&unique_id("rtd-pub"))).await?;
    let acked = publish_all(&mut publisher, &topic).await?;
    ensure!(!acked.is_empty(), "no publish was acknowledged");

    let (mut resumed, present) = resume(cluster.node_addr(1)?, &connect).await?;
    ensure!(present, "session-present must be 1 on node B");
    let received = collect(&mut resumed).await?;
    let lost: Vec<_> = acked.difference(&received).collect();
    println!(
        "restart then death: {} acknowledged, {} received, lost {:?}, owner now {:?}",
        acked.len(),
        received.len(),
        lost,
        cluster.session_owner(&client_id)
    );
    ensure!(lost.is_empty(), "acknowledged messages lost: {lost:?}");
    Ok(())
}

/// Publishes QoS 1 messages 1..=[`MESSAGES`] and returns the acknowledged
/// packet ids (= sequence numbers).
async fn publish_all(publisher: &mut RawClient, topic: &str) -> Result<BTreeSet<u16>> {
    let mut bytes = Vec::new();
    for seq in 1..=MESSAGES {
        let publish = Publish::new(topic, 1, seq.to_string().as_bytes()).with_packet_id(seq);
        bytes.extend(publish.encode());
    }
    publisher.send(&bytes).await?;
    let mut acked = BTreeSet::new();
    while acked.len() < usize::from(MESSAGES) {
        let Some(packet) = publisher.recv_for(SETTLE).await? else {
            break;
        };
        if packet.kind() == kind::PUBACK {
            acked.insert(packet.ack_id(kind::PUBACK)?);
        }
    }
    Ok(acked)
}

/// Resumes the session on `addr`, retrying while it is refused.
async fn resume(addr: std::net::SocketAddr, connect: &Connect) -> Result<(RawClient, bool)> {
    within_for(FAILOVER, "resuming the session on node B", async {
        loop {
            match RawClient::handshake(addr, connect).await {
                Ok((conn, ack)) if ack.code == 0 => {
                    return Ok::<_, anyhow::Error>((conn, ack.session_present))
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await?
}

/// Reads deliveries until the line is quiet, acknowledging each; returns
/// the sequence numbers received.
async fn collect(conn: &mut RawClient) -> Result<BTreeSet<u16>> {
    let mut received = BTreeSet::new();
    let deadline = Instant::now() + FAILOVER;
    while Instant::now() < deadline {
        let Some(packet) = conn.recv_for(SETTLE).await? else {
            break;
        };
        let Ok(publish) = packet.publish() else {
            continue;
        };
        let text = String::from_utf8_lossy(&publish.payload).into_owned();
        received.insert(text.parse().context("sequence number payload")?);
        if publish.qos == 1 {
            conn.send(&wire::puback(publish.packet_id)).await?;
        }
    }
    Ok(received)
}
