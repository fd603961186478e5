//! Zero loss of acknowledged messages when a node dies: the filed bug,
//! reproduced exactly.
//!
//! Three nodes share one Redis. A persistent (clean session = false)
//! subscriber on node A receives messages but withholds its
//! acknowledgements, so its in-flight window (node default
//! `--max-inflight 32`) fills and the rest queue. A publisher (on A, or on
//! another node C) publishes 200 messages with the sequence number as the
//! payload and records which ones the node acknowledged. Then node A is
//! killed (`kill -9`), and the subscriber resumes its session, same client
//! id, on node B.
//!
//! What must hold: every acknowledged message reaches the subscriber.
//! - QoS 1: the subscriber never acknowledged any message, so the session
//!   must re-deliver every acknowledged one after the reconnect (duplicates
//!   allowed, counted).
//! - QoS 2: every acknowledged message (PUBREC received by the publisher)
//!   reaches the application exactly once, counting what it got before the
//!   kill. On the byte-level client a PUBLISH re-sent with the packet id of
//!   one received and not yet released is the same message (MQTT 3.1.1
//!   4.3.3); every PUBREL is answered with PUBCOMP after the reconnect.
//!
//! Each test prints one line with its numbers, so `--nocapture` shows them
//! even when the test passes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use astramq_tests::chaos::cluster::{ChaosCluster, ClusterShape};
use astramq_tests::chaos::ledger::{ranges, Verdict};
use astramq_tests::chaos::receiver::{sequence_number, Arrival, Receiver};
use astramq_tests::observability::exposition::Exposition;
use astramq_tests::wire::{self, kind, Connect, Publish};
use astramq_tests::{unique_id, within_for, RawClient};

/// Messages the publisher sends.
const MESSAGES: u64 = 200;

/// How long the cluster may take to notice the dead node and let its
/// client resume elsewhere.
const FAILOVER: Duration = Duration::from_secs(15);

/// Silence that ends a collection phase once nothing more is expected.
const SETTLE: Duration = Duration::from_secs(3);

/// Upper bound on one collection phase, however busy the node is.
const COLLECT_LIMIT: Duration = Duration::from_secs(30);

/// Which acknowledgement the subscriber withholds before the kill.
#[derive(Debug, Clone, Copy)]
enum Withhold {
    /// QoS 1 PUBACK or QoS 2 PUBREC: the message stays unacknowledged.
    FirstAck,
    /// QoS 2 only: PUBREC is sent, the PUBCOMP answering PUBREL is not.
    Pubcomp,
    /// QoS 2 only: even sequence numbers get PUBREC (and their PUBCOMP is
    /// withheld), odd ones get nothing: both stages in one window.
    Alternate,
}

/// When the subscriber reconnects after the kill.
#[derive(Debug, Clone, Copy)]
enum Resume {
    /// Once a survivor has logged that it recovered node A: isolates the
    /// loss from the resume-before-recovery race.
    AfterRecovery,
    /// At once, retrying until node B accepts (as a real client would).
    AtOnce,
}

/// One run of the bug's recipe.
struct Scenario {
    /// Node the publisher connects to: 0 is the subscriber's node A.
    publisher_node: usize,
    /// QoS of the publish and of the subscription.
    qos: u8,
    withhold: Withhold,
    resume: Resume,
    /// Wait before the kill until node A has spilled every pinned delivery
    /// into the session queue and trimmed its journal and inbox: what
    /// survives then is the queue alone.
    spill_first: bool,
}

/// The subscriber, across its two connections.
struct Subscriber {
    client_id: String,
    topic: String,
    qos: u8,
    receiver: Receiver,
    /// Application deliveries before the kill: seq → times.
    before_kill: BTreeMap<u64, u32>,
    /// Application deliveries after the reconnect: seq → times.
    after_reconnect: BTreeMap<u64, u32>,
}

/// One test per scenario: `name: publisher_node, qos, withhold, resume,
/// spill_first`.
macro_rules! scenarios {
    ($($(#[$doc:meta])* $name:ident: $node:expr, $qos:expr, $withhold:ident, $resume:ident, $spill:expr;)*) => {$(
        $(#[$doc])*
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() -> Result<()> {
            run(Scenario {
                publisher_node: $node,
                qos: $qos,
                withhold: Withhold::$withhold,
                resume: Resume::$resume,
                spill_first: $spill,
            })
            .await
        }
    )*};
}

scenarios! {
    qos1_acknowledged_messages_survive_the_subscriber_node_dying_publisher_on_same_node:
        0, 1, FirstAck, AfterRecovery, false;
    qos1_acknowledged_messages_survive_the_subscriber_node_dying_publisher_on_other_node:
        2, 1, FirstAck, AfterRecovery, false;
    qos2_messages_arrive_once_when_pubrec_was_withheld_publisher_on_other_node:
        2, 2, FirstAck, AfterRecovery, false;
    qos2_messages_arrive_once_when_pubcomp_was_withheld_publisher_on_same_node:
        0, 2, Pubcomp, AfterRecovery, false;
    qos2_messages_arrive_once_with_acks_withheld_at_mixed_stages_publisher_on_other_node:
        2, 2, Alternate, AfterRecovery, false;
    qos1_acknowledged_messages_survive_an_immediate_resume_publisher_on_other_node:
        2, 1, FirstAck, AtOnce, false;
    /// Deliveries to a connected session are pinned in node A's journal (or
    /// inbox), not queued; held past the spill age they are copied into the
    /// session queue and the streams trimmed. Killing A after that must
    /// still lose nothing.
    qos1_deliveries_spilled_while_held_survive_the_subscriber_node_dying_publisher_on_same_node:
        0, 1, FirstAck, AfterRecovery, true;
    qos1_deliveries_spilled_while_held_survive_the_subscriber_node_dying_publisher_on_other_node:
        2, 1, FirstAck, AfterRecovery, true;
}

async fn run(scenario: Scenario) -> Result<()> {
    let shape = ClusterShape {
        nodes: 3,
        with_proxy: false,
        partitionable_node: false,
    };
    let mut cluster = tokio::task::block_in_place(|| ChaosCluster::start(&shape))?;
    let mut subscriber = Subscriber::new(scenario.qos);
    let (mut sub_conn, _) =
        RawClient::connected(cluster.node_addr(0)?, &subscriber.connect()).await?;
    sub_conn
        .subscribe(1, &[(&subscriber.topic, scenario.qos)])
        .await?;
    let publisher_addr = cluster.node_addr(scenario.publisher_node)?;
    let mut publisher = await_route(publisher_addr, &subscriber.topic, &mut sub_conn).await?;

    let acked = publish_all(&mut publisher, &subscriber.topic, scenario.qos).await?;
    subscriber
        .collect_withholding(&mut sub_conn, scenario.withhold)
        .await?;

    let dead = cluster.nodes[0].id.clone();
    if scenario.spill_first {
        await_spill_and_trim(&cluster, &dead, acked.len()).await?;
    }
    cluster.kill(0)?;
    drop(sub_conn);
    drop(publisher);
    let recovered = match scenario.resume {
        Resume::AfterRecovery => cluster.wait_for_recovery_of(&dead, FAILOVER).await.is_ok(),
        Resume::AtOnce => false,
    };
    let mut resumed = subscriber.resume(cluster.node_addr(1)?).await?;
    subscriber.collect_acking(&mut resumed, &acked).await?;

    subscriber.judge(&scenario, &acked, recovered)
}

impl Subscriber {
    fn new(qos: u8) -> Self {
        let client_id = unique_id(&format!("zl-q{qos}"));
        Self {
            topic: format!("zl/{client_id}"),
            client_id,
            qos,
            receiver: Receiver::default(),
            before_kill: BTreeMap::new(),
            after_reconnect: BTreeMap::new(),
        }
    }

    fn connect(&self) -> Connect {
        Connect::new(&self.client_id).with_clean_session(false)
    }

    /// Reads what node A sends until it has been quiet for [`SETTLE`]
    /// (its window is full), acknowledging only as `withhold` allows.
    async fn collect_withholding(
        &mut self,
        conn: &mut RawClient,
        withhold: Withhold,
    ) -> Result<()> {
        let deadline = Instant::now() + COLLECT_LIMIT;
        while Instant::now() < deadline {
            let Some(packet) = conn.recv_for(SETTLE).await? else {
                return Ok(());
            };
            if packet.kind() == kind::PUBREL {
                // PUBREL only follows a PUBREC we sent; PUBCOMP is withheld
                // in every stage that sends PUBREC.
                continue;
            }
            let Ok(publish) = packet.publish() else {
                continue;
            };
            let Some(seq) = self.deliver(&publish, true) else {
                continue;
            };
            let send_pubrec = match withhold {
                Withhold::FirstAck => false,
                Withhold::Pubcomp => true,
                Withhold::Alternate => seq % 2 == 0,
            };
            if send_pubrec && publish.qos == 2 {
                conn.send(&wire::pubrec(publish.packet_id)).await?;
            }
        }
        Ok(())
    }

    /// Resumes the session on `addr`, retrying while the dead node still
    /// owns it; requires session-present.
    async fn resume(&mut self, addr: SocketAddr) -> Result<RawClient> {
        let connect = self.connect();
        let (conn, present) = within_for(FAILOVER, "resuming the session on node B", async {
            loop {
                match RawClient::handshake(addr, &connect).await {
                    Ok((conn, ack)) if ack.code == 0 => {
                        return Ok::<_, anyhow::Error>((conn, ack.session_present))
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await??;
        ensure!(
            present,
            "{} resumed on node B without its session (session-present = 0): \
             every acknowledged message is lost",
            self.client_id
        );
        Ok(conn)
    }

    /// Reads and acknowledges everything node B sends until every
    /// acknowledged message has arrived or it has been quiet for [`SETTLE`].
    async fn collect_acking(&mut self, conn: &mut RawClient, acked: &BTreeSet<u64>) -> Result<()> {
        let deadline = Instant::now() + COLLECT_LIMIT;
        while Instant::now() < deadline && !self.has_all(acked) {
            let Some(packet) = conn.recv_for(SETTLE).await? else {
                return Ok(());
            };
            if packet.kind() == kind::PUBREL {
                let id = packet.ack_id(kind::PUBREL)?;
                conn.send(&self.receiver.on_pubrel(id)).await?;
                continue;
            }
            let Ok(publish) = packet.publish() else {
                continue;
            };
            self.deliver(&publish, false);
            if let Some(ack) = Receiver::ack_for(&publish) {
                conn.send(&ack).await?;
            }
        }
        Ok(())
    }

    /// Records an application delivery; returns its sequence number (`None`
    /// for probes and for a QoS 2 re-send of a message already received).
    fn deliver(&mut self, publish: &Publish, before_kill: bool) -> Option<u64> {
        let seq = sequence_number(&publish.payload)?;
        if self.receiver.on_publish(publish) == Arrival::SameQos2Message {
            return None;
        }
        let log = if before_kill {
            &mut self.before_kill
        } else {
            &mut self.after_reconnect
        };
        *log.entry(seq).or_default() += 1;
        Some(seq)
    }

    fn has_all(&self, acked: &BTreeSet<u64>) -> bool {
        let got = |seq: &u64| {
            self.after_reconnect.contains_key(seq)
                || (self.qos == 2 && self.before_kill.contains_key(seq))
        };
        acked.iter().all(got)
    }

    /// Prints the numbers and fails on any loss or QoS 2 duplicate.
    fn judge(&self, scenario: &Scenario, acked: &BTreeSet<u64>, recovered: bool) -> Result<()> {
        let before: BTreeSet<u64> = self.before_kill.keys().copied().collect();
        let context = format!(
            "[QoS {} publisher on node {}, withheld {:?}, resumed {:?}] {} of {MESSAGES} publishes \
             acknowledged; before the kill the subscriber received {} (seq {}) without completing \
             them; survivor logged recovery of node A before the resume: {recovered}",
            scenario.qos,
            ["A", "B", "C"][scenario.publisher_node],
            scenario.withhold,
            scenario.resume,
            acked.len(),
            before.len(),
            ranges(&before),
        );
        let verdict = if self.qos == 1 {
            Verdict::judge(acked, &self.after_reconnect)
        } else {
            let mut all = self.before_kill.clone();
            for (seq, times) in &self.after_reconnect {
                *all.entry(*seq).or_default() += times;
            }
            Verdict::judge(acked, &all)
        };
        let phase = if self.qos == 1 {
            "after reconnecting to node B the subscriber"
        } else {
            "the subscriber's application (before and after the kill)"
        };
        println!("zero-loss: {context}; {phase} {}", verdict.describe());
        if !verdict.missing.is_empty() || (self.qos == 2 && verdict.duplicates > 0) {
            bail!("{phase} {}; {context}", verdict.describe());
        }
        Ok(())
    }
}

/// Waits until node A reports at least `held` spilled deliveries and its
/// journal and inbox are empty (trimmed past everything it was holding).
async fn await_spill_and_trim(cluster: &ChaosCluster, node_id: &str, held: usize) -> Result<()> {
    let streams = [
        format!("astramq:n:{{{node_id}}}:journal"),
        format!("astramq:n:{{{node_id}}}:inbox"),
    ];
    let deadline = Instant::now() + COLLECT_LIMIT;
    loop {
        let metrics = Exposition::scrape(cluster.node_metrics_addr(0)?)?;
        let spilled = metrics
            .sum("astramq_spilled_deliveries_total", &[])
            .unwrap_or(0.0);
        let mut lengths = Vec::new();
        for stream in &streams {
            let len: u64 = cluster.redis.cli(&["XLEN", stream])?.trim().parse()?;
            lengths.push(len);
        }
        if spilled >= held as f64 && lengths.iter().all(|&len| len == 0) {
            println!("zero-loss: node A spilled {spilled} deliveries; journal and inbox trimmed");
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "node A spilled {spilled} of {held} held deliveries; journal/inbox lengths {lengths:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Connects the publisher and sends QoS 0 probes until the subscriber sees
/// one: its subscription has reached the publisher's node.
async fn await_route(addr: SocketAddr, topic: &str, sub: &mut RawClient) -> Result<RawClient> {
    let (mut publisher, _) =
        RawClient::connected(addr, &Connect::new(&unique_id("zl-pub"))).await?;
    within_for(
        FAILOVER,
        "the subscription to reach the publisher's node",
        async {
            loop {
                publisher
                    .send(&Publish::new(topic, 0, b"probe").encode())
                    .await?;
                if let Some(packet) = sub.recv_for(Duration::from_millis(100)).await? {
                    if packet.publish().is_ok_and(|p| p.payload == b"probe") {
                        return Ok::<_, anyhow::Error>(());
                    }
                }
            }
        },
    )
    .await??;
    Ok(publisher)
}

/// Publishes seq 1..=[`MESSAGES`] pipelined (packet id = seq) and returns
/// the acknowledged ones: PUBACK for QoS 1, PUBREC for QoS 2 (whose
/// exchange is then completed with PUBREL).
async fn publish_all(publisher: &mut RawClient, topic: &str, qos: u8) -> Result<BTreeSet<u64>> {
    let mut bytes = Vec::new();
    for seq in 1..=MESSAGES {
        let id = u16::try_from(seq).context("packet id")?;
        bytes.extend(
            Publish::new(topic, qos, seq.to_string().as_bytes())
                .with_packet_id(id)
                .encode(),
        );
    }
    publisher.send(&bytes).await?;
    let mut acked = BTreeSet::new();
    let mut completed = 0;
    let deadline = Instant::now() + COLLECT_LIMIT;
    let finished = |acked: &BTreeSet<u64>, completed: u64| match qos {
        1 => acked.len() as u64 == MESSAGES,
        _ => completed == MESSAGES,
    };
    while !finished(&acked, completed) && Instant::now() < deadline {
        let Some(packet) = publisher.recv_for(SETTLE).await? else {
            break;
        };
        match packet.kind() {
            kind::PUBACK => {
                acked.insert(u64::from(packet.ack_id(kind::PUBACK)?));
            }
            kind::PUBREC => {
                let id = packet.ack_id(kind::PUBREC)?;
                acked.insert(u64::from(id));
                publisher.send(&wire::pubrel(id)).await?;
            }
            kind::PUBCOMP => completed += 1,
            _ => {}
        }
    }
    Ok(acked)
}

/// A retained QoS 1 message answering a persistent session's SUBSCRIBE is
/// delivered like any other: the subscriber withholds its PUBACK, its node
/// is killed, and the session resumed on another node gets the message
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_delivery_not_yet_acknowledged_survives_the_subscriber_node_dying() -> Result<()>
{
    let shape = ClusterShape {
        nodes: 2,
        with_proxy: false,
        partitionable_node: false,
    };
    let mut cluster = tokio::task::block_in_place(|| ChaosCluster::start(&shape))?;
    let topic = format!("zl/{}", unique_id("retained"));
    let (mut publisher, _) =
        RawClient::connected(cluster.node_addr(0)?, &Connect::new(&unique_id("zl-rpub"))).await?;
    publisher
        .send(
            &Publish::new(&topic, 1, b"kept")
                .with_packet_id(1)
                .with_retain()
                .encode(),
        )
        .await?;
    ensure!(
        publisher
            .recv_for(SETTLE)
            .await?
            .is_some_and(|p| p.kind() == kind::PUBACK),
        "the retained publish was not acknowledged"
    );

    let mut subscriber = Subscriber::new(1);
    let (mut conn, _) = RawClient::connected(cluster.node_addr(0)?, &subscriber.connect()).await?;
    conn.subscribe(1, &[(&topic, 1)]).await?;
    let first = conn.recv_publish().await?;
    ensure!(
        first.payload == b"kept" && first.retain,
        "got {first:?} instead of the retained message"
    );
    // The PUBACK is withheld: the delivery is in flight when the node dies.
    cluster.kill(0)?;
    drop(conn);
    let mut resumed = subscriber.resume(cluster.node_addr(1)?).await?;
    let again = within_for(
        FAILOVER,
        "the retained delivery re-sent after the failover",
        resumed.recv_publish(),
    )
    .await??;
    ensure!(
        again.payload == b"kept" && again.qos == 1,
        "after the failover got {again:?}"
    );
    println!(
        "retained delivery re-sent after the kill: dup = {}, retain = {}",
        again.dup, again.retain
    );
    Ok(())
}
