//! Moving publishes between nodes over Redis Streams.
//!
//! **Routed** (default): every node has an inbox stream. A publish is
//! appended once to the inbox of each other node whose route set matches its
//! topic. **Broadcast**: one cluster-wide stream that every node reads,
//! skipping its own entries — simpler, but every node pays for every
//! message.
//!
//! Writes are batched: the [`Forwarder`] takes every publish waiting in its
//! channel, packs the messages for one destination into one stream entry,
//! and sends all entries — with the queue writes for this node's persistent
//! sessions and the publishers' QoS 2 records — in one pipeline. A QoS 1/2
//! publisher is answered only after that pipeline succeeded, so an
//! acknowledged message is in Redis. Messages read from an inbox are
//! delivered to local clients only and never forwarded again, so there are
//! no loops.
//!
//! **No acknowledged entry is lost (routed mode).** An inbox is never
//! capped by eviction: at `--stream-maxlen` entries it refuses appends, and
//! the publishes toward it are not acknowledged. A node trims its inbox only
//! past entries whose persistent-session deliveries are in those sessions'
//! Redis queues or were acknowledged by their clients (see
//! [`super::ledger`]).
//!
//! **QoS 1 to connected persistent sessions is served from memory.** Such a
//! delivery is not queued in its session's Redis stream: it is pinned
//! ([`crate::pin`]) to the entry that holds its message — the inbox entry
//! it came in, or, for a publish made on this node, one entry of this
//! node's **journal** per batch (`JOURNAL_APPEND`, in the same pipeline) —
//! and a survivor queues both streams for this node's sessions. A session
//! that ends or falls behind copies its pinned deliveries into its queue
//! first. QoS 2, offline and slow sessions keep the per-session queue. An inbox whose node was declared dead is fenced: appends
//! are refused, and the forwarder re-reads the route table and sends to the
//! node that adopted the sessions instead. Broadcast mode keeps the shared
//! stream capped with `MAXLEN ~` and gives no such guarantee.
//!
//! Inboxes also carry control entries: "release client X" when another node
//! claims X's session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::{mpsc, oneshot};

use super::{Cluster, LocalNode, Mode};
use crate::message::{ClientId, Delivery, Message};
use crate::pin::{Pin, PinnedStream, SpillRequest};
use crate::redis_model::inbox::send_drain;
use crate::redis_model::inbox::{FIELD_DRAIN, FIELD_MESSAGES, FIELD_ORIGIN, FIELD_RELEASE};
use crate::redis_model::metrics::ClusterMetrics;
use crate::redis_model::metrics::RedisOp;
use crate::redis_model::queue::{
    enqueue_cmd, parse_enqueue_reply, qos2_record, qos2_record_cmd, Enqueued,
};
use crate::redis_model::scripts::{evalsha, query_pipeline};
use crate::redis_model::value::{self as rv, StreamEntry};
use crate::redis_model::{keys, wire};
use crate::registry::mailbox::Mailbox;
use crate::store::SessionOwner;

/// Most publishes packed into one pipeline.
const MAX_BATCH: usize = 1024;
/// Scheduler turns the forwarder gives publishers to join a batch.
const GATHER_YIELDS: usize = 2;
/// Most entries read from the streams at a time.
const READ_COUNT: usize = 256;
/// How long a blocking read waits before looping (and noticing shutdown).
pub const READ_BLOCK: Duration = Duration::from_millis(1000);

/// How often the forwarder re-reads the route table when a destination's
/// inbox is fenced, and how long it waits in between at first.
const FENCED_RETRIES: u32 = 5;
const FENCED_RETRY_DELAY: Duration = Duration::from_millis(20);

/// One publish on its way to Redis and other nodes.
pub struct Forward {
    /// The message.
    pub message: Arc<Message>,
    /// Destination nodes (routed mode; empty in broadcast mode).
    pub destinations: Vec<ClientId>,
    /// Deliveries to queue for this node's persistent sessions.
    pub queue: Vec<QueueTarget>,
    /// The publisher's QoS 2 packet to record with it.
    pub origin: Option<Qos2Origin>,
    /// Told whether the write reached Redis (QoS 1/2 only).
    pub written: Option<oneshot::Sender<bool>>,
}

/// A QoS 1/2 delivery to a persistent session, to queue in Redis before it
/// is posted (or, offline, instead).
pub struct QueueTarget {
    /// The session.
    pub client_id: ClientId,
    /// What to queue.
    pub delivery: Delivery,
    /// Its mailbox when it is connected here.
    pub mailbox: Option<Arc<Mailbox>>,
    /// Served from memory, pinned to the journal or inbox entry that holds
    /// the message, instead of queued (see [`crate::pin`]); needs
    /// `mailbox`.
    pub pinnable: bool,
}

impl QueueTarget {
    /// Posts the delivery, held in Redis by `pin`, to its connected
    /// session; gives the target back when the session has ended (it must
    /// be queued instead).
    fn post_pinned(self, pin: &Pin) -> Result<(), QueueTarget> {
        let Some(mailbox) = &self.mailbox else {
            return Err(self);
        };
        let mut delivery = self.delivery.clone();
        delivery.pin = Some(pin.clone());
        match mailbox.post_queued(delivery) {
            true => Ok(()),
            false => Err(self),
        }
    }

    /// Posts the delivery, now held by its session's Redis queue as
    /// `queued`, to the session if it is connected here.
    pub fn post(self, queued: crate::message::QueueId) {
        if let Some(mailbox) = self.mailbox {
            let mut delivery = self.delivery;
            delivery.queued = Some(queued);
            mailbox.post_queued(delivery);
        }
    }
}

/// What queueing deliveries left to do: sessions connected to another
/// node get their entries only if that node is told to read its queue
/// (it did not post them to itself), and a local session whose QoS 2
/// copy was refused as queued already (another node queued it first, and
/// did not post it here) must read its queue too.
#[derive(Default)]
struct Elsewhere {
    /// (node, client id) pairs to send a drain request to.
    owners: Vec<(ClientId, ClientId)>,
}

impl Elsewhere {
    /// Posts a queued delivery to its local session, or notes who must
    /// read it.
    fn settle(&mut self, target: QueueTarget, reply: &redis::Value, metrics: &ClusterMetrics) {
        let (enqueued, owner) = parse_enqueue_reply(reply);
        if let Some(owner) = owner {
            let pair = (owner, target.client_id.clone());
            if !self.owners.contains(&pair) {
                self.owners.push(pair);
            }
        }
        match enqueued {
            Enqueued::Queued(id) => target.post(id),
            Enqueued::Full(why) => metrics.queue_refused(why),
            Enqueued::Duplicate => {
                if let Some(mailbox) = &target.mailbox {
                    mailbox.request_drain();
                }
            }
            Enqueued::Qos0 | Enqueued::NoSession => {}
        }
    }

    /// Sends the drain requests (best effort: the session's late drains
    /// and its next claim read the queue anyway).
    async fn notify(self, con: &mut ConnectionManager) {
        for (owner, client_id) in self.owners {
            if let Err(error) = send_drain(con, &owner, &client_id).await {
                tracing::debug!(%error, %owner, "drain request not sent");
            }
        }
    }
}

/// How one persistent-session delivery of a batch is held in Redis.
enum Settle {
    /// Queued in its session's stream, with the `ENQUEUE` reply.
    Queued(QueueTarget, redis::Value),
    /// Served from memory, held by the batch's journal or inbox entry.
    Pinned(QueueTarget),
}

/// What a `JOURNAL_APPEND` answered.
enum JournalOutcome {
    /// The new entry's id.
    Appended(String),
    /// This node is fenced.
    Fenced,
    /// Full, or an answer that cannot be read.
    Refused,
}

fn journal_outcome(reply: &redis::Value) -> JournalOutcome {
    match (rv::int(reply), rv::bulk(reply)) {
        (Some(-1), _) => JournalOutcome::Fenced,
        (None, Some(id)) => JournalOutcome::Appended(String::from_utf8_lossy(&id).into_owned()),
        _ => JournalOutcome::Refused,
    }
}

/// Pins entry `id` of `stream` for deliveries to `targets`' sessions.
fn pin_entry<'a>(
    cluster: &Cluster,
    stream: PinnedStream,
    id: &str,
    targets: impl Iterator<Item = &'a QueueTarget>,
) -> Option<Pin> {
    let holders = targets
        .filter_map(|t| t.mailbox.clone())
        .map(|mailbox| {
            let holder: Arc<dyn SpillRequest> = mailbox;
            Arc::downgrade(&holder)
        })
        .collect();
    cluster.ledger.pin(stream, id, holders)
}

/// Splits `targets` into those served from memory (pinned) and those to
/// queue in Redis.
fn split_pinnable(targets: Vec<QueueTarget>) -> (Vec<QueueTarget>, Vec<QueueTarget>) {
    targets
        .into_iter()
        .partition(|t| t.pinnable && t.mailbox.is_some())
}

/// A persistent publisher's incoming QoS 2 packet: recorded as "written,
/// fan-out maybe unfinished" before the fan-out and "done" after it, in one
/// pipeline, so that a re-send after this node's death re-runs an
/// unfinished fan-out (deduplicated by publish id) and nothing else.
pub struct Qos2Origin {
    /// The publisher's session.
    pub owner: SessionOwner,
    /// Its packet id.
    pub packet_id: u16,
}

/// The task that writes forwarded publishes to Redis in batches.
pub struct Forwarder {
    cluster: Arc<Cluster>,
    connection: ConnectionManager,
    queue: mpsc::Receiver<Forward>,
}

impl Forwarder {
    /// A forwarder draining `queue`.
    pub fn new(
        cluster: Arc<Cluster>,
        connection: ConnectionManager,
        queue: mpsc::Receiver<Forward>,
    ) -> Forwarder {
        Forwarder {
            cluster,
            connection,
            queue,
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.gather_more(&mut batch).await;
            let ok = self.write(&mut batch).await;
            for (forward, ok) in batch.drain(..).zip(ok) {
                if let Some(written) = forward.written {
                    let _ = written.send(ok);
                }
            }
        }
    }

    /// Lets the sessions that are ready to run add their publishes to the
    /// batch before it leaves (group commit): one round trip for a wave
    /// of publishes rather than one per publish. By default this costs no
    /// timer, only a turn of the scheduler; with `--forward-linger-ms` the
    /// batch first waits that long (tokio's timer: at least 1 ms).
    async fn gather_more(&mut self, batch: &mut Vec<Forward>) {
        let linger = self.cluster.options.forward_linger;
        if !linger.is_zero() && batch.len() < MAX_BATCH {
            tokio::time::sleep(linger).await;
            let room = MAX_BATCH - batch.len();
            if !self.queue.is_empty() {
                self.queue.recv_many(batch, room).await;
            }
        }
        for _ in 0..GATHER_YIELDS {
            if batch.len() >= MAX_BATCH {
                return;
            }
            tokio::task::yield_now().await;
            let room = MAX_BATCH - batch.len();
            if self.queue.is_empty() || self.queue.recv_many(batch, room).await == 0 {
                return;
            }
        }
    }

    /// Writes a batch; returns, per forward, whether it is safe in Redis.
    async fn write(&mut self, batch: &mut [Forward]) -> Vec<bool> {
        let cluster = self.cluster.clone();
        let scripts = &cluster.scripts;
        // Deliveries to this node's persistent sessions: served from
        // memory and held by one journal entry for the whole batch, or
        // queued one by one (the forward's index with each).
        let mut pinned: Vec<(usize, QueueTarget)> = Vec::new();
        let mut queued: Vec<(usize, QueueTarget)> = Vec::new();
        for (i, forward) in batch.iter_mut().enumerate() {
            let (pin, queue) = split_pinnable(std::mem::take(&mut forward.queue));
            pinned.extend(pin.into_iter().map(|t| (i, t)));
            queued.extend(queue.into_iter().map(|t| (i, t)));
        }
        let mut journaled: Vec<usize> = pinned.iter().map(|(i, _)| *i).collect();
        journaled.dedup();
        let mut pipe = redis::pipe();
        // Reply layout, in order: QoS 2 "written" records, inbox appends,
        // the journal append, queue writes, QoS 2 "done" records.
        for forward in batch.iter() {
            if let Some(cmd) = origin_cmd(&cluster, forward, false) {
                pipe.add_command(cmd);
            }
        }
        let appends = self.add_appends(&mut pipe, batch.iter().enumerate());
        if !journaled.is_empty() {
            pipe.add_command(self.journal_cmd(journaled.iter().map(|&i| &batch[i].message)));
        }
        for (_, target) in &queued {
            pipe.add_command(enqueue_target_cmd(&cluster, target));
        }
        for forward in batch.iter() {
            if let Some(cmd) = origin_cmd(&cluster, forward, true) {
                pipe.add_command(cmd);
            }
        }
        let metrics = &cluster.metrics;
        let written = query_pipeline::<Vec<redis::Value>>(scripts, &mut self.connection, &pipe);
        let replies = match metrics.timed(RedisOp::Forward, written).await {
            Ok(replies) => replies,
            Err(error) => {
                tracing::warn!(%error, messages = batch.len(), "writing publishes to Redis failed");
                return vec![false; batch.len()];
            }
        };
        let mut ok = vec![true; batch.len()];
        let mut replies = replies.into_iter();
        for (i, forward) in batch.iter().enumerate() {
            if forward.origin.is_some() && replies.next().is_none_or(|r| rv::int(&r) != Some(1)) {
                ok[i] = false;
            }
        }
        let mut fenced = Vec::new();
        for (indices, node) in appends {
            let reply = replies.next().as_ref().and_then(rv::int);
            match reply {
                Some(1) => {}
                Some(-1) => fenced.push((indices, node)),
                _ => {
                    metrics.inbox_full.inc();
                    tracing::warn!(%node, "inbox full: publishes toward it are not acknowledged");
                    indices.iter().for_each(|&i| ok[i] = false);
                }
            }
        }
        let journal_reply =
            (!journaled.is_empty()).then(|| replies.next().unwrap_or(redis::Value::Nil));
        let mut outcomes: Vec<(usize, Settle)> = queued
            .into_iter()
            .map(|(i, target)| {
                (
                    i,
                    Settle::Queued(target, replies.next().unwrap_or(redis::Value::Nil)),
                )
            })
            .collect();
        // Held until every delivery from it is posted or queued, so the
        // entry is not trimmed before.
        let mut journal_entry = None;
        match journal_reply.as_ref().map(journal_outcome) {
            None => {}
            Some(JournalOutcome::Fenced) => {
                // This node is fenced: a survivor has read its journal.
                // Not acknowledged; the publisher re-sends elsewhere.
                pinned.iter().for_each(|(i, _)| ok[*i] = false);
            }
            Some(JournalOutcome::Appended(id)) => {
                let holders = pinned.iter().map(|(_, t)| t);
                match pin_entry(&cluster, PinnedStream::Journal, &id, holders) {
                    Some(pin) => {
                        outcomes.extend(pinned.into_iter().map(|(i, t)| (i, Settle::Pinned(t))));
                        journal_entry = Some((pin, id));
                    }
                    None => self.queue_first(pinned, &mut outcomes, &mut ok).await,
                }
            }
            Some(JournalOutcome::Refused) => {
                // Full: queued one by one instead, before anything is posted.
                self.queue_first(pinned, &mut outcomes, &mut ok).await
            }
        }
        // Posted in publish order, whichever way each delivery is held.
        outcomes.sort_by_key(|(i, _)| *i);
        let mut elsewhere = Elsewhere::default();
        let mut ended = Vec::new();
        let mut posted = 0u64;
        for (i, outcome) in outcomes {
            match (outcome, &journal_entry) {
                (Settle::Queued(target, reply), _) => elsewhere.settle(target, &reply, metrics),
                (Settle::Pinned(target), Some((pin, _))) => match target.post_pinned(pin) {
                    Ok(()) => posted += 1,
                    Err(target) => ended.push((i, target)),
                },
                (Settle::Pinned(target), None) => ended.push((i, target)),
            }
        }
        metrics.pinned.inc_by(posted);
        if !ended.is_empty() {
            // Their sessions ended meanwhile: what a pin held must now be
            // in their queues.
            let mut queued = Vec::new();
            self.queue_first(ended, &mut queued, &mut ok).await;
            for (_, outcome) in queued {
                if let Settle::Queued(target, reply) = outcome {
                    elsewhere.settle(target, &reply, metrics);
                }
            }
        }
        if let Some((_, id)) = &journal_entry {
            cluster.ledger.passed(PinnedStream::Journal, id);
        }
        drop(journal_entry);
        elsewhere.notify(&mut self.connection).await;
        // The "done" records' replies need no reading: a failed one only
        // makes a re-send re-run a fan-out that dedupes itself.
        if !fenced.is_empty() {
            self.resend_fenced(batch, fenced, &mut ok).await;
        }
        if ok.iter().any(|ok| *ok) {
            metrics.appended.inc_by(batch.len() as u64);
        }
        ok
    }

    /// Queues deliveries that were to be served from memory but cannot be
    /// (the journal refused them, or their session ended meanwhile), adding
    /// them to `outcomes` with their replies; a forward whose delivery is
    /// not written is not acknowledged.
    async fn queue_first(
        &mut self,
        targets: Vec<(usize, QueueTarget)>,
        outcomes: &mut Vec<(usize, Settle)>,
        ok: &mut [bool],
    ) {
        let sent = enqueue_targets(
            &self.cluster,
            &mut self.connection,
            targets.iter().map(|(_, t)| t),
        );
        match sent.await {
            Ok(replies) => {
                let mut replies = replies.into_iter();
                outcomes.extend(targets.into_iter().map(|(i, target)| {
                    (
                        i,
                        Settle::Queued(target, replies.next().unwrap_or(redis::Value::Nil)),
                    )
                }));
            }
            Err(error) => {
                tracing::warn!(%error, "queueing deliveries failed: publishes not acknowledged");
                targets.iter().for_each(|(i, _)| ok[*i] = false);
            }
        }
    }

    /// The fence-checked, bounded append of `messages` to this node's
    /// journal.
    fn journal_cmd<'a>(&self, messages: impl IntoIterator<Item = &'a Arc<Message>>) -> redis::Cmd {
        let me = &self.cluster.node_id;
        let script = &self.cluster.scripts.journal_append;
        self.bounded_append_cmd(script, &keys::journal(me), me, messages)
    }

    /// `script` (INBOX_APPEND or JOURNAL_APPEND) appending `messages` as
    /// one entry to `stream`, refused while `node` is fenced or `stream`
    /// holds `--stream-maxlen` entries.
    fn bounded_append_cmd<'a>(
        &self,
        script: &redis::Script,
        stream: &str,
        node: &str,
        messages: impl IntoIterator<Item = &'a Arc<Message>>,
    ) -> redis::Cmd {
        let fence = keys::node_fenced(node);
        let mut cmd = evalsha(script, &[stream, &fence]);
        cmd.arg(self.cluster.options.stream_maxlen)
            .arg(FIELD_MESSAGES)
            .arg(wire::encode_batch(messages).as_ref());
        cmd
    }

    /// Adds the inbox appends for `forwards` (one entry per destination,
    /// packing its messages); returns which forwards each append carries.
    fn add_appends<'a>(
        &self,
        pipe: &mut redis::Pipeline,
        forwards: impl Iterator<Item = (usize, &'a Forward)>,
    ) -> Vec<(Vec<usize>, ClientId)> {
        let cluster = &self.cluster;
        match cluster.mode {
            Mode::Routed => {
                let forwards: Vec<(usize, &Forward)> = forwards.collect();
                let mut by_node: HashMap<ClientId, Vec<usize>> = HashMap::new();
                let mut order: Vec<ClientId> = Vec::new();
                for (position, (_, forward)) in forwards.iter().enumerate() {
                    for node in &forward.destinations {
                        by_node
                            .entry(node.clone())
                            .or_insert_with(|| {
                                order.push(node.clone());
                                Vec::new()
                            })
                            .push(position);
                    }
                }
                let mut out = Vec::with_capacity(order.len());
                for node in order {
                    let positions = by_node.remove(&node).unwrap_or_default();
                    let messages = positions.iter().map(|&p| &forwards[p].1.message);
                    pipe.add_command(self.append_cmd(&node, messages));
                    out.push((positions.iter().map(|&p| forwards[p].0).collect(), node));
                }
                out
            }
            Mode::Broadcast => {
                let all: Vec<(usize, &Forward)> = forwards.collect();
                if !all.is_empty() {
                    pipe.cmd("XADD")
                        .arg(keys::bus())
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(cluster.options.stream_maxlen)
                        .arg("*")
                        .arg(FIELD_ORIGIN)
                        .arg(&*cluster.node_id)
                        .arg(FIELD_MESSAGES)
                        .arg(wire::encode_batch(all.iter().map(|(_, f)| &f.message)).as_ref())
                        .ignore();
                }
                Vec::new()
            }
        }
    }

    /// Publishes whose destination turned out to be fenced (dead, being
    /// recovered): re-read the routes — the survivor has announced the
    /// adopted sessions' filters — and send to the nodes that have them
    /// now, a few times with a growing pause.
    async fn resend_fenced(
        &mut self,
        batch: &[Forward],
        mut fenced: Vec<(Vec<usize>, ClientId)>,
        ok: &mut [bool],
    ) {
        let cluster = self.cluster.clone();
        let mut excluded: Vec<ClientId> = Vec::new();
        let mut delay = FENCED_RETRY_DELAY;
        for _ in 0..FENCED_RETRIES {
            excluded.extend(fenced.iter().map(|(_, node)| node.clone()));
            let pending: std::collections::BTreeSet<usize> = fenced
                .iter()
                .flat_map(|(indices, _)| indices.iter().copied())
                .collect();
            tokio::time::sleep(delay).await;
            delay *= 2;
            if let Err(error) = cluster.routes.reload(&mut self.connection).await {
                tracing::warn!(%error, "route reload for a fenced destination failed");
            }
            let mut retry: Vec<(usize, Vec<ClientId>)> = Vec::new();
            for &i in &pending {
                // This node included: it may be the one that adopted the
                // sessions, and its own inbox reader then queues for them
                // (a QoS 2 copy it queued already is refused by publish id).
                let nodes = cluster.routes.remote_nodes(&batch[i].message.topic, "");
                let (open, closed): (Vec<ClientId>, Vec<ClientId>) =
                    nodes.into_iter().partition(|n| !excluded.contains(n));
                if open.is_empty() && !closed.is_empty() {
                    // Only fenced nodes still announce subscribers for it:
                    // the adopter has not announced them yet, or a fenced
                    // node back from a freeze took clients before seeing
                    // its fence. Acknowledging now could lose the message.
                    ok[i] = false;
                    cluster.metrics.fenced_refusals.inc();
                    continue;
                }
                retry.push((i, open));
            }
            let mut pipe = redis::pipe();
            let mut appends: Vec<(Vec<usize>, ClientId)> = Vec::new();
            let mut by_node: HashMap<ClientId, Vec<usize>> = HashMap::new();
            for (i, nodes) in &retry {
                for node in nodes {
                    by_node.entry(node.clone()).or_default().push(*i);
                }
            }
            for (node, indices) in by_node {
                pipe.add_command(
                    self.append_cmd(&node, indices.iter().map(|&i| &batch[i].message)),
                );
                appends.push((indices, node));
            }
            if appends.is_empty() {
                return;
            }
            let sent =
                query_pipeline::<Vec<redis::Value>>(&cluster.scripts, &mut self.connection, &pipe)
                    .await;
            let Ok(replies) = sent else {
                appends
                    .iter()
                    .flat_map(|(i, _)| i)
                    .for_each(|&i| ok[i] = false);
                return;
            };
            fenced = Vec::new();
            for ((indices, node), reply) in appends.into_iter().zip(replies) {
                match rv::int(&reply) {
                    Some(1) => {}
                    Some(-1) => fenced.push((indices, node)),
                    _ => indices.iter().for_each(|&i| ok[i] = false),
                }
            }
            if fenced.is_empty() {
                return;
            }
        }
        tracing::warn!("destinations stayed fenced: publishes not acknowledged");
        fenced
            .iter()
            .flat_map(|(i, _)| i)
            .for_each(|&i| ok[i] = false);
    }

    /// The bounded, fence-checked append of `messages` to `node`'s inbox.
    fn append_cmd<'a>(
        &self,
        node: &str,
        messages: impl IntoIterator<Item = &'a Arc<Message>>,
    ) -> redis::Cmd {
        let script = &self.cluster.scripts.inbox_append;
        self.bounded_append_cmd(script, &keys::inbox(node), node, messages)
    }
}

/// The QoS 2 record command of a forward's origin (`done`: after fan-out).
/// ENQUEUEs each target's delivery into its session's queue in one timed
/// pipeline; one reply per target, in order. Nothing is sent for none.
async fn enqueue_targets<'a>(
    cluster: &Cluster,
    con: &mut ConnectionManager,
    targets: impl Iterator<Item = &'a QueueTarget>,
) -> redis::RedisResult<Vec<redis::Value>> {
    let mut pipe = redis::pipe();
    for target in targets {
        pipe.add_command(enqueue_target_cmd(cluster, target));
    }
    if pipe.is_empty() {
        return Ok(Vec::new());
    }
    let queued = query_pipeline::<Vec<redis::Value>>(&cluster.scripts, con, &pipe);
    cluster.metrics.timed(RedisOp::Enqueue, queued).await
}

/// The bounded ENQUEUE of `target`'s delivery into its session's queue.
fn enqueue_target_cmd(cluster: &Cluster, target: &QueueTarget) -> redis::Cmd {
    enqueue_cmd(
        &cluster.scripts,
        cluster.queue_bound,
        &cluster.node_id,
        &target.client_id,
        &target.delivery,
    )
}

fn origin_cmd(cluster: &Cluster, forward: &Forward, done: bool) -> Option<redis::Cmd> {
    let origin = forward.origin.as_ref()?;
    let publish_id = forward.message.publish_id.as_deref()?;
    Some(qos2_record_cmd(
        &cluster.scripts,
        &origin.owner,
        origin.packet_id,
        &qos2_record(publish_id, done),
    ))
}

/// Where the reader has got to in each stream it follows.
struct Cursors {
    inbox: String,
    routes: String,
    bus: String,
}

/// The task that reads this node's inbox (and the route log, and in
/// broadcast mode the shared stream) and acts on what it finds.
pub struct InboxReader {
    cluster: Arc<Cluster>,
    broker: Arc<dyn LocalNode>,
    client: redis::Client,
    /// For trimming and cursor writes, off the blocking connection.
    writer: ConnectionManager,
    cursors: Cursors,
}

impl InboxReader {
    /// A reader starting after the given route-log and bus positions.
    pub fn new(
        cluster: Arc<Cluster>,
        broker: Arc<dyn LocalNode>,
        client: redis::Client,
        writer: ConnectionManager,
        route_position: String,
        bus_position: String,
    ) -> InboxReader {
        InboxReader {
            cluster,
            broker,
            client,
            writer,
            cursors: Cursors {
                inbox: "0-0".into(),
                routes: route_position,
                bus: bus_position,
            },
        }
    }

    /// Reads forever, reconnecting with backoff when Redis goes away.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut connection = match self.connect().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "inbox reader cannot reach Redis; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if self.cluster.routes.is_stale() {
                if let Err(error) = self.resync_routes().await {
                    tracing::warn!(%error, "route table reload failed; retrying");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            }
            loop {
                match self.read_once(&mut connection).await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(error) => {
                        self.cluster.routes.mark_stale();
                        tracing::warn!(%error, "inbox read failed; reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        break;
                    }
                }
            }
        }
    }

    /// Reloads the route table in full and follows the log from where it
    /// ends now (as at start): changes missed while Redis was away are in
    /// the reload.
    async fn resync_routes(&mut self) -> anyhow::Result<()> {
        let position = super::stream_end(&mut self.writer, &keys::route_log()).await?;
        self.cluster.routes.reload(&mut self.writer).await?;
        self.cursors.routes = position;
        Ok(())
    }

    /// A connection of its own: a blocking read would stall every command
    /// queued behind it on a shared one.
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.cluster.options.redis_timeout)
            .set_response_timeout(READ_BLOCK + self.cluster.options.redis_timeout);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn read_once(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::inbox(&self.cluster.node_id))
            .arg(keys::route_log());
        if self.cluster.mode == Mode::Broadcast {
            cmd.arg(keys::bus());
        }
        cmd.arg(&self.cursors.inbox).arg(&self.cursors.routes);
        if self.cluster.mode == Mode::Broadcast {
            cmd.arg(&self.cursors.bus);
        }
        let reply: redis::Value = cmd.query_async(connection).await?;
        let streams = rv::xread_reply(reply)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::TypeError, e.0)))?;
        for (stream, entries) in streams {
            let Some(last) = entries.last().map(|e| e.id.clone()) else {
                continue;
            };
            if stream == keys::route_log() {
                self.on_route_changes(&entries).await;
                self.cursors.routes = last;
            } else if stream == keys::bus() {
                self.on_bus(&entries).await?;
                self.cursors.bus = last;
                self.save_bus_cursor().await;
            } else {
                self.on_inbox(&entries).await?;
                // Trimmed by the ledger, past what is handled and pinned.
                self.cluster.ledger.passed(PinnedStream::Inbox, &last);
                self.cursors.inbox = last;
            }
        }
        Ok(())
    }

    async fn on_route_changes(&mut self, entries: &[StreamEntry]) {
        let mut reload = false;
        for entry in entries {
            reload |= entry.get(b"op").is_some_and(|op| op.as_ref() == b"drop");
            self.cluster.routes.apply(entry);
        }
        if reload {
            if let Err(error) = self.cluster.routes.reload(&mut self.writer).await {
                tracing::warn!(%error, "route table reload failed");
            }
        }
    }

    async fn on_inbox(&mut self, entries: &[StreamEntry]) -> redis::RedisResult<()> {
        let mut targets = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if let Some(client_id) = entry.get(FIELD_RELEASE.as_bytes()) {
                let client_id: ClientId = String::from_utf8_lossy(client_id).into();
                self.broker.release_session(&client_id).await;
            }
            if let Some(client_id) = entry.get(FIELD_DRAIN.as_bytes()) {
                let client_id: ClientId = String::from_utf8_lossy(client_id).into();
                self.broker.drain_session(&client_id);
            }
            targets.extend(self.deliver(entry).into_iter().map(|t| (i, t)));
        }
        self.queue_durably(entries, targets).await
    }

    async fn on_bus(&mut self, entries: &[StreamEntry]) -> redis::RedisResult<()> {
        let me = self.cluster.node_id.as_bytes();
        let mut targets = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            if entry
                .get(FIELD_ORIGIN.as_bytes())
                .is_some_and(|o| o.as_ref() != me)
            {
                targets.extend(self.deliver(entry).into_iter().map(|t| (i, t)));
            }
        }
        self.queue_durably(entries, targets).await
    }

    /// Posts an entry's messages to local clean sessions and returns the
    /// deliveries for persistent sessions.
    fn deliver(&self, entry: &StreamEntry) -> Vec<QueueTarget> {
        let Some(raw) = entry.get(FIELD_MESSAGES.as_bytes()) else {
            return Vec::new();
        };
        match wire::decode_batch(raw.clone()) {
            Ok(messages) => {
                self.cluster.metrics.read.inc_by(messages.len() as u64);
                let mut targets = Vec::new();
                for message in messages {
                    targets.extend(self.broker.deliver_from_cluster(&message));
                }
                targets
            }
            Err(error) => {
                tracing::warn!(%error, id = %entry.id, "unreadable stream entry skipped");
                Vec::new()
            }
        }
    }

    /// Serves the persistent sessions' deliveries that can be from memory,
    /// pinned to the inbox entry they came in (`targets` name it by its
    /// index in `entries`), and queues the others in Redis before posting
    /// them. Until this succeeds the inbox cursor does not move, so the
    /// entries are read (and queued) again.
    async fn queue_durably(
        &mut self,
        entries: &[StreamEntry],
        targets: Vec<(usize, QueueTarget)>,
    ) -> redis::RedisResult<()> {
        let cluster = self.cluster.clone();
        // One pin per entry, shared by its deliveries served from memory.
        let mut pinnable: Vec<Vec<&QueueTarget>> = vec![Vec::new(); entries.len()];
        for (i, target) in &targets {
            if target.pinnable && target.mailbox.is_some() {
                pinnable[*i].push(target);
            }
        }
        let pins: Vec<Option<Pin>> = pinnable
            .into_iter()
            .enumerate()
            .map(|(i, held)| match held.is_empty() {
                true => None,
                false => pin_entry(
                    &cluster,
                    PinnedStream::Inbox,
                    &entries[i].id,
                    held.into_iter(),
                ),
            })
            .collect();
        let mut outcomes = Vec::with_capacity(targets.len());
        let mut queue = Vec::new();
        for (i, target) in targets {
            if target.pinnable && pins[i].is_some() {
                outcomes.push((i, Settle::Pinned(target)));
            } else {
                queue.push((i, target));
            }
        }
        let replies =
            enqueue_targets(&cluster, &mut self.writer, queue.iter().map(|(_, t)| t)).await?;
        let mut replies = replies.into_iter();
        outcomes.extend(queue.into_iter().map(|(i, t)| {
            (
                i,
                Settle::Queued(t, replies.next().unwrap_or(redis::Value::Nil)),
            )
        }));
        // Posted in the order the entries came, however each is held.
        outcomes.sort_by_key(|(i, _)| *i);
        let mut elsewhere = Elsewhere::default();
        let mut ended = Vec::new();
        for (i, outcome) in outcomes {
            match (outcome, &pins[i]) {
                (Settle::Queued(target, reply), _) => {
                    elsewhere.settle(target, &reply, &cluster.metrics)
                }
                (Settle::Pinned(target), Some(pin)) => match target.post_pinned(pin) {
                    Ok(()) => cluster.metrics.pinned.inc(),
                    Err(target) => ended.push(target),
                },
                (Settle::Pinned(target), None) => ended.push(target),
            }
        }
        if !ended.is_empty() {
            // Their sessions ended meanwhile: queued now, or read again.
            let replies = enqueue_targets(&cluster, &mut self.writer, ended.iter()).await?;
            for (target, reply) in ended.into_iter().zip(replies) {
                elsewhere.settle(target, &reply, &cluster.metrics);
            }
        }
        elsewhere.notify(&mut self.writer).await;
        Ok(())
    }

    async fn save_bus_cursor(&mut self) {
        let saved: redis::RedisResult<redis::Value> = redis::cmd("SET")
            .arg(keys::bus_cursor(&self.cluster.node_id))
            .arg(&self.cursors.bus)
            .query_async(&mut self.writer)
            .await;
        if let Err(error) = saved {
            tracing::debug!(%error, "bus cursor not saved");
        }
    }
}
