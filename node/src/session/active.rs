//! A connected session: the loop that reads packets, writes deliveries and
//! watches keep-alive, and the end of the session (will, parking).

use astramq_shared::log_text::untrusted;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::acks::OwedAcks;
use super::read_mark::ReadMark;
use super::window::{AckOutcome, OutgoingWindow};
use super::ShutdownSignal;
use crate::broker::Broker;
use crate::connection::{Connection, ConnectionError, Input};
use crate::limits::queue::queued_size;
use crate::message::{ClientId, Delivery, Message, Qos, QueueId};
use crate::protocol::codec::{
    encode_ack, encode_connack, encode_pingresp, encode_publish, Ack, ConnackCode,
};
use crate::protocol::Inbound;
use crate::registry::{Kick, SessionHandle};
use crate::session_state::{IncomingQos2, OutgoingInflight, OutgoingStage, Progress, SessionState};
use crate::stats::Stats;
use crate::store::{SessionClaim, SessionOwner};

/// When a resumed session looks once more for messages queued by the
/// node that owned it before, and looks again after the old owner's grace
/// ([`crate::broker::RELEASE_GRACE`]) is over.
const LATE_DRAIN_AFTER: Duration = Duration::from_secs(1);
const LAST_DRAIN_AFTER: Duration = Duration::from_secs(5);

/// After those, a persistent session in a cluster reads what follows its
/// read mark this often: an entry whose drain request was lost (Redis
/// restarting, the owner's inbox refusing) reaches the client within this
/// period rather than at its next reconnect. One `XRANGE` from the mark.
const SAFETY_DRAIN_EVERY: Duration = Duration::from_secs(10);

/// Longest wait for pending bytes to leave when a connection is closed.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handshake hands to the active session.
pub struct SessionSetup {
    /// The (possibly assigned) client id.
    pub client_id: ClientId,
    /// Forget the session when the connection ends.
    pub clean_session: bool,
    /// 1.5 × the client's keep-alive; `None` when disabled.
    pub keep_alive: Option<Duration>,
    /// Published if the connection ends without DISCONNECT.
    pub will: Option<Arc<Message>>,
    /// The CONNECT's user name, for the ACL's `user` and `%u`.
    pub user: Option<String>,
    /// This session's entry in the registry.
    pub handle: SessionHandle,
    /// Set when the session has parked its state (takeover waits on it).
    pub finished: watch::Sender<bool>,
    /// Ownership and previous state from the store.
    pub claim: SessionClaim,
}

/// When the session's timer must next fire: the keep-alive deadline or
/// the late drain, whichever is sooner (far away when neither applies).
fn next_due(
    last_read: Instant,
    keep_alive: Option<Duration>,
    late_drain: Option<Instant>,
    progress_due: Option<Instant>,
) -> Instant {
    let keep_alive_due = keep_alive.map(|limit| last_read + limit);
    [keep_alive_due, late_drain, progress_due]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(last_read + Duration::from_secs(86_400 * 365))
}

/// Acknowledged queue entries are deleted in Redis in batches: when this
/// many are waiting, or this long after the first of them, whichever comes
/// first (a packet that must not leave before its state is in Redis is
/// never held back by this).
const ACK_BATCH: usize = 64;
const ACK_LINGER: Duration = Duration::from_millis(20);

/// Queue entries acknowledged lately, remembered so a drain that reads
/// them before their deletion reached Redis does not send them again.
const RECENTLY_ACKNOWLEDGED: usize = 4096;

/// A bounded memory of acknowledged queue entries.
#[derive(Default)]
pub(super) struct RecentlyAcknowledged {
    ids: HashSet<QueueId>,
    order: VecDeque<QueueId>,
}

impl RecentlyAcknowledged {
    fn insert(&mut self, id: QueueId) {
        if self.ids.insert(id.clone()) {
            self.order.push_back(id);
            if self.order.len() > RECENTLY_ACKNOWLEDGED {
                if let Some(old) = self.order.pop_front() {
                    self.ids.remove(&old);
                }
            }
        }
    }

    fn contains(&self, id: &QueueId) -> bool {
        self.ids.contains(id)
    }
}

/// Keeps the in-flight gauge right when an outgoing message completes.
fn count_completion(stats: &Stats, completed: &Option<OutgoingInflight>) {
    if completed.is_some() {
        stats.inflight_messages.dec();
    }
}

/// Why a session ended; decides whether the will is published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum End {
    /// DISCONNECT received: the will is discarded.
    Disconnect,
    /// Nothing heard within 1.5 × keep-alive.
    KeepAliveTimeout,
    /// The client went away without DISCONNECT.
    ConnectionLost,
    /// The client broke the protocol.
    ProtocolError(String),
    /// A newer connection on this node took the client id over.
    TakenOver,
    /// A connection on another node claimed the session.
    Released,
    /// This node was declared dead; a survivor owns the session now.
    Fenced,
    /// A write found the session owned elsewhere (a newer epoch): another
    /// node claimed it without this node's release.
    Superseded,
    /// The node is shutting down; sessions are kept, wills are not sent.
    Shutdown,
    /// A QoS 1/2 message could not be stored: the client is disconnected
    /// without an acknowledgement, and will re-send it.
    StoreUnavailable(String),
}

impl End {
    fn publishes_will(&self) -> bool {
        // Fenced: the survivor that declared this node dead published it.
        !matches!(
            self,
            End::Disconnect | End::Shutdown | End::Fenced | End::Superseded
        )
    }
}

/// A session with a live connection.
pub struct ActiveSession {
    pub(super) broker: Arc<Broker>,
    pub(super) connection: Connection,
    pub(super) client_id: ClientId,
    pub(super) owner: SessionOwner,
    pub(super) clean_session: bool,
    pub(super) will: Option<Arc<Message>>,
    /// The CONNECT's user name (ACL checks); `None` when anonymous.
    pub(super) user: Option<Box<str>>,
    pub(super) handle: SessionHandle,
    /// Filter → granted QoS, kept to park or undo on disconnect.
    pub(super) subscriptions: HashMap<String, Qos>,
    pub(super) window: OutgoingWindow,
    /// Incoming QoS 2 ids between PUBLISH and PUBREL.
    pub(super) incoming_qos2: HashMap<u16, IncomingQos2>,
    /// True for a persistent session in a cluster: its QoS 1/2 state lives
    /// in Redis, and progress is reported there.
    pub(super) durable: bool,
    /// Progress not yet written to Redis (see [`Progress`]).
    pub(super) progress: Progress,
    /// Incoming QoS 2 ids released by PUBREL this turn: forgotten in Redis
    /// before their PUBCOMP leaves.
    pub(super) released_qos2: Vec<u16>,
    /// Entries acknowledged lately (see [`RecentlyAcknowledged`]).
    pub(super) acknowledged: RecentlyAcknowledged,
    /// How far the claim and late drains have read the session's queue:
    /// mailbox posts of entries they returned are repeats.
    pub(super) read_mark: ReadMark,
    /// Late drains still to schedule after the next one.
    pub(super) late_drains: u8,
    /// Since when acknowledged entries wait to be deleted in Redis.
    pub(super) progress_since: Option<Instant>,
    /// Deliveries taken from the mailbox (or resumed) but not yet sent
    /// because the in-flight window is full.
    pub(super) pending: VecDeque<Delivery>,
    /// PUBACK/PUBREC owed to this client, waiting for Redis.
    pub(super) owed: OwedAcks,
    /// True when the last `send_pending` stopped at the write budget with
    /// deliveries left: the loop comes back once the output has left.
    pub(super) write_budget_spent: bool,
}

impl ActiveSession {
    /// Answers CONNACK, resumes what the previous connection left, and runs
    /// the session to its end.
    ///
    /// Everything but the packet loop is boxed: a connected session spends
    /// its life awaiting in [`Self::run`], and the task's size (memory per
    /// idle connection) is that of its largest await point.
    pub async fn start(
        broker: Arc<Broker>,
        connection: Connection,
        setup: SessionSetup,
        shutdown: ShutdownSignal,
    ) {
        let keep_alive = setup.keep_alive;
        let (mut session, previous, finished) = ActiveSession::open(broker, connection, setup);
        let late_drain = Box::pin(session.begin(previous))
            .await
            .or_else(|| session.safety_drain_due());
        let end = session.run(keep_alive, shutdown, late_drain).await;
        tracing::debug!(client_id = %session.client_id, ?end, "session ended");
        Box::pin(session.finish(end)).await;
        finished.send_replace(true);
    }

    /// The session as the handshake hands it over, not yet resumed.
    fn open(
        broker: Arc<Broker>,
        connection: Connection,
        setup: SessionSetup,
    ) -> (ActiveSession, Option<SessionState>, watch::Sender<bool>) {
        broker.session_resumed(&setup.client_id);
        broker.stats().clients_connected.inc();
        let durable = !setup.clean_session && broker.cluster().is_some();
        let session = ActiveSession {
            durable,
            progress: Progress::default(),
            released_qos2: Vec::new(),
            acknowledged: RecentlyAcknowledged::default(),
            read_mark: ReadMark::default(),
            late_drains: 1,
            progress_since: None,
            window: OutgoingWindow::new(broker.limits().max_inflight),
            broker,
            connection,
            client_id: setup.client_id,
            owner: setup.claim.owner,
            clean_session: setup.clean_session,
            will: setup.will,
            user: setup.user.map(String::into_boxed_str),
            handle: setup.handle,
            subscriptions: HashMap::new(),
            incoming_qos2: HashMap::new(),
            pending: VecDeque::new(),
            owed: OwedAcks::default(),
            write_budget_spent: false,
        };
        (session, setup.claim.previous, setup.finished)
    }

    /// Answers CONNACK and, for a persistent session, resumes what the
    /// previous connection left; a clean session undoes its subscriptions
    /// instead. Returns when to look for straggling queued messages.
    async fn begin(&mut self, previous: Option<SessionState>) -> Option<Instant> {
        let resumed = match (self.clean_session, previous) {
            (true, Some(previous)) => {
                let filters = previous.subscriptions.keys().map(String::as_str);
                self.broker.unsubscribe(&self.client_id, filters).await;
                None
            }
            (_, previous) => previous,
        };
        encode_connack(
            self.connection.output(),
            resumed.is_some(),
            ConnackCode::Accepted,
        );
        let state = resumed?;
        self.resume(state).await;
        Some(Instant::now() + LATE_DRAIN_AFTER)
    }

    /// Restores a parked session and re-sends its unacknowledged messages
    /// with DUP set (MQTT-4.4.0-1).
    async fn resume(&mut self, mut state: SessionState) {
        self.drop_denied_subscriptions(&mut state.subscriptions)
            .await;
        for (filter, qos) in &state.subscriptions {
            self.broker.subscribe(&self.client_id, filter, *qos).await;
        }
        self.subscriptions = state.subscriptions;
        self.incoming_qos2 = state.incoming_qos2.into_iter().collect();
        if let Some(cluster) = &self.broker.cluster() {
            let resent = state.outgoing.len() + state.pending.len();
            cluster.metrics.redeliveries.inc_by(resent as u64);
        }
        self.pending = state.pending;
        self.read_mark.advance(
            self.pending
                .iter()
                .chain(state.outgoing.iter().map(|e| &e.delivery))
                .filter_map(|d| d.queued.as_ref()),
        );
        self.broker
            .stats()
            .inflight_messages
            .add(state.outgoing.len() as i64);
        self.window.restore(state.outgoing);
        let out = self.connection.output();
        for entry in self.window.entries() {
            let result = match entry.stage {
                OutgoingStage::AwaitingPubcomp => encode_ack(out, Ack::Pubrel, entry.packet_id),
                _ => {
                    let d = &entry.delivery;
                    encode_publish(
                        out,
                        &d.message.topic,
                        &d.message.payload,
                        d.qos,
                        Some(entry.packet_id),
                        true,
                        d.retain,
                    )
                }
            };
            if let Err(error) = result {
                tracing::warn!(%error, "in-flight message not re-sent");
            }
        }
    }

    async fn run(
        &mut self,
        keep_alive: Option<Duration>,
        mut shutdown: ShutdownSignal,
        mut late_drain: Option<Instant>,
    ) -> End {
        let kick = self.handle.kick.clone();
        let mailbox = self.handle.mailbox.clone();
        let mut last_read = Instant::now();
        // One timer for keep-alive and the late drain, re-armed only when it
        // fires: resetting it on every packet would cost a timer-wheel update
        // per packet.
        let timer = tokio::time::sleep_until(next_due(last_read, keep_alive, late_drain, None));
        // Created once, not per turn of the loop: kicked and shut down end
        // the session, and a new wait for the mailbox starts only after the
        // previous one fired.
        let kicked = kick.notified();
        let shut_down = shutdown.changed();
        let posted = mailbox.posted();
        tokio::pin!(timer, kicked, shut_down, posted);
        loop {
            if let Some(end) = self.release_acks() {
                return end;
            }
            self.send_pending();
            if let Some(end) = self.report_progress(false).await {
                return end;
            }
            // Acknowledgements held back for a batch: make sure the timer
            // fires for them.
            if let Some(due) = self.progress_since.map(|at| at + ACK_LINGER) {
                if timer.deadline() > due {
                    timer.as_mut().reset(due);
                }
            }
            // What the socket does not take now leaves while the next
            // frame is awaited: a client that does not read still has its
            // control packets read.
            if let Err(error) = self.connection.write_now() {
                tracing::debug!(%error, "write failed");
                return End::ConnectionLost;
            }
            let write_timeout = self.broker.limits().write_timeout;
            tokio::select! {
                biased;
                _ = &mut kicked => return match self.handle.kick_reason() {
                    Kick::TakenOver => End::TakenOver,
                    Kick::Released => End::Released,
                    Kick::Fenced => End::Fenced,
                },
                _ = &mut shut_down => return End::Shutdown,
                input = self.connection.next_input(write_timeout, self.write_budget_spent) => {
                    let frame = match input {
                        Ok(Input::Drained) => continue,
                        Ok(Input::Packet(packet)) => Ok(packet),
                        Err(ConnectionError::WriteTimeout) => {
                            tracing::debug!("write timed out: the client does not read");
                            return End::ConnectionLost;
                        }
                        Err(error) => Err(error),
                    };
                    last_read = Instant::now();
                    // Boxed: packet handling (publish, subscribe, Redis
                    // round trips) is a large future that an idle session
                    // should not carry inline.
                    if let Some(end) = Box::pin(self.on_read(frame)).await {
                        return end;
                    }
                }
                _ = &mut posted => {
                    posted.set(mailbox.posted());
                    if mailbox.take_drain_request() {
                        Box::pin(self.drain_stragglers()).await;
                    }
                    if mailbox.take_spill_request() {
                        // Slow: what it holds pins an old journal or inbox
                        // entry. Failing is fine; the next request retries.
                        Box::pin(self.spill_pinned()).await;
                    }
                }
                _ = self.owed.front_settled(), if self.owed.is_waiting() => {}
                () = &mut timer => {
                    let now = Instant::now();
                    if keep_alive.is_some_and(|limit| now >= last_read + limit) {
                        return End::KeepAliveTimeout;
                    }
                    if late_drain.is_some_and(|at| now >= at) {
                        late_drain = match self.late_drains {
                            0 => self.safety_drain_due(),
                            _ => Some(now + LAST_DRAIN_AFTER - LATE_DRAIN_AFTER),
                        };
                        self.late_drains = self.late_drains.saturating_sub(1);
                        Box::pin(self.drain_stragglers()).await;
                    }
                    let progress_due = self.progress_since.map(|at| at + ACK_LINGER);
                    timer
                        .as_mut()
                        .reset(next_due(last_read, keep_alive, late_drain, progress_due));
                }
            }
        }
    }

    /// Handles a packet read from the socket and every further packet
    /// already buffered, so one turn of the loop answers them all in one
    /// write.
    async fn on_read(&mut self, first: Result<Option<Inbound>, ConnectionError>) -> Option<End> {
        let mut next = match first {
            Ok(Some(packet)) => packet,
            Ok(None) => return Some(End::ConnectionLost),
            Err(ConnectionError::Protocol(error)) => {
                return Some(self.protocol_error(error.to_string()))
            }
            Err(error) => {
                tracing::debug!(%error, "read failed");
                return Some(End::ConnectionLost);
            }
        };
        loop {
            if let Some(end) = self.on_packet(next).await {
                return Some(end);
            }
            next = match self.connection.buffered_packet() {
                Ok(Some(packet)) => packet,
                Ok(None) => return None,
                Err(error) => return Some(self.protocol_error(error.to_string())),
            };
        }
    }

    /// When the next periodic read of the queue is due (persistent
    /// sessions in a cluster only; see [`SAFETY_DRAIN_EVERY`]).
    fn safety_drain_due(&self) -> Option<Instant> {
        self.durable.then(|| Instant::now() + SAFETY_DRAIN_EVERY)
    }

    /// Picks up deliveries queued for this session that it was not handed:
    /// by a node that owned it until this connection claimed it (routed
    /// before the ownership change reached every node), or by any node
    /// whose drain request did not arrive.
    async fn drain_stragglers(&mut self) {
        let after = self.read_mark.highest().cloned();
        let store = self.broker.store();
        let deliveries = match store.drain_offline(&self.owner, after.as_deref()).await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::debug!(%error, "late queue drain failed");
                return;
            }
        };
        // A durable queue still holds what this session has (or had and
        // got acknowledged): take only what it does not know. What waits
        // in the mailbox is taken here too; posts of it are dropped later
        // as covered by the read mark.
        let known: HashSet<QueueId> = self
            .pending
            .iter()
            .chain(self.window.entries().map(|e| &e.delivery))
            .filter_map(|d| d.queued.clone())
            .collect();
        self.read_mark
            .advance(deliveries.iter().filter_map(|d| d.queued.as_ref()));
        for delivery in deliveries {
            let fresh = delivery
                .queued
                .as_ref()
                .is_none_or(|id| !known.contains(id) && !self.acknowledged.contains(id));
            if fresh {
                self.pending.push_back(delivery);
            }
        }
    }

    /// Writes this turn's progress to Redis before the packets it gates
    /// leave: QoS 2 stages before their PUBLISH/PUBREL, released incoming
    /// QoS 2 ids before their PUBCOMP, and acknowledged entries. Ends the
    /// session if Redis is unreachable or the session is owned elsewhere.
    async fn report_progress(&mut self, force: bool) -> Option<End> {
        if !self.durable {
            return None;
        }
        let batch_due = self.progress.acknowledged.len() >= ACK_BATCH
            || self
                .progress_since
                .is_some_and(|at| at.elapsed() >= ACK_LINGER);
        let must_write = force || batch_due || self.progress.gates_output();
        if !must_write && self.released_qos2.is_empty() {
            if !self.progress.is_empty() && self.progress_since.is_none() {
                self.progress_since = Some(Instant::now());
            }
            return None;
        }
        self.progress_since = None;
        if !self.released_qos2.is_empty() {
            let released = std::mem::take(&mut self.released_qos2);
            let store = &self.broker.store();
            if let Err(error) = store.release_incoming_qos2(&self.owner, &released).await {
                return Some(self.unrecorded(End::StoreUnavailable(error.to_string())));
            }
        }
        if self.progress.is_empty() {
            return None;
        }
        let progress = std::mem::take(&mut self.progress);
        match self
            .broker
            .store()
            .record_progress(&self.owner, &progress)
            .await
        {
            Ok(true) => None,
            Ok(false) => Some(self.unrecorded(End::Superseded)),
            Err(error) if progress.gates_output() => {
                Some(self.unrecorded(End::StoreUnavailable(error.to_string())))
            }
            Err(error) => {
                // Only acknowledgements: the entries are sent again after a
                // failover (QoS 1 duplicates), never lost.
                tracing::debug!(%error, "acknowledged entries not deleted yet");
                self.progress.acknowledged.extend(progress.acknowledged);
                self.progress.completed.extend(progress.completed);
                None
            }
        }
    }

    /// Ends the session after a write that gates output failed: what this
    /// turn encoded (PUBLISH, PUBREL, PUBCOMP whose state is not in Redis)
    /// must not leave, not even when the connection is closed.
    fn unrecorded(&mut self, end: End) -> End {
        self.connection.output().clear();
        end
    }

    /// An outgoing message the client has fully acknowledged.
    fn completed(&mut self, entry: Option<OutgoingInflight>) {
        count_completion(self.broker.stats(), &entry);
        let Some(entry) = entry else { return };
        let size = queued_size(&entry.delivery);
        let Some(queued) = entry.delivery.queued else {
            return;
        };
        // Its in-flight record (QoS 2 stages, or a parked QoS 1 id) is done.
        self.progress.completed.push(entry.packet_id);
        self.acknowledged.insert(queued.clone());
        self.progress.acknowledged.push((queued, size));
    }

    pub(super) fn protocol_error(&self, reason: String) -> End {
        self.broker.stats().protocol_errors.inc();
        End::ProtocolError(reason)
    }

    async fn on_packet(&mut self, packet: Inbound) -> Option<End> {
        let out = self.connection.output();
        let written = match packet {
            Inbound::Connect(_) => return Some(self.protocol_error("second CONNECT".into())),
            Inbound::Publish(publish) => return self.on_publish(publish).await,
            Inbound::Puback(ack) => {
                let entry = self.window.puback(ack.packet_id);
                self.completed(entry);
                Ok(())
            }
            Inbound::Pubrec(ack) => match self.window.pubrec(ack.packet_id) {
                AckOutcome::SendPubrel => {
                    let id = ack.packet_id;
                    if let (true, Some(queued)) = (self.durable, self.window.queued(id)) {
                        let stage = (id, OutgoingStage::AwaitingPubcomp, queued.clone());
                        self.progress.stages.push(stage);
                    }
                    encode_ack(self.connection.output(), Ack::Pubrel, id)
                }
                AckOutcome::Ignored => Ok(()),
            },
            Inbound::Pubrel(ack) => {
                let id = ack.packet_id;
                if self.incoming_qos2.remove(&id).is_some() && self.durable {
                    self.released_qos2.push(id);
                }
                encode_ack(out, Ack::Pubcomp, id)
            }
            Inbound::Pubcomp(ack) => {
                let entry = self.window.pubcomp(ack.packet_id);
                self.completed(entry);
                Ok(())
            }
            // 5.0 subscription options are not served yet (5.0 CONNECTs
            // are refused): `v5` is always `None` here.
            Inbound::Subscribe {
                packet_id, filters, ..
            } => {
                self.on_subscribe(packet_id, filters).await;
                Ok(())
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                self.on_unsubscribe(filters).await;
                encode_ack(self.connection.output(), Ack::Unsuback, packet_id)
            }
            Inbound::Pingreq => {
                encode_pingresp(out);
                Ok(())
            }
            Inbound::Disconnect(_) => return Some(End::Disconnect),
            Inbound::Auth(_) => {
                return Some(self.protocol_error("AUTH without a 5.0 CONNECT".into()))
            }
        };
        written.err().map(|e| self.protocol_error(e.to_string()))
    }

    /// Publishes the will when due, then parks (persistent) or forgets
    /// (clean) the session.
    async fn finish(mut self, end: End) {
        if let End::ProtocolError(reason) = &end {
            tracing::info!(client_id = %untrusted(&self.client_id), %reason, "closing connection: protocol error");
        }
        if let (true, Some(will)) = (end.publishes_will(), self.will.take()) {
            if let Err(error) = self.broker.publish_and_wait(will).await {
                tracing::warn!(%error, client_id = %untrusted(&self.client_id), "will not published");
            }
        }
        for failed in self.owed.settle_all().await {
            self.unwritten(failed);
        }
        if !matches!(end, End::Fenced | End::Superseded) {
            // What the client acknowledged before going away.
            let _ = self.report_progress(true).await;
        }
        // Deliveries posted from now on are refused and go to the store.
        let leftovers = self.handle.mailbox.close();
        self.pending.extend(leftovers);
        if end != End::Fenced {
            // Fenced: a survivor has queued this node's journal and inbox
            // for the session already; every other end queues what it
            // served from memory before the session moves on.
            self.spill_before_leaving().await;
        }
        // Best effort: a client that does not read must not hold up takeover.
        let timeout = self.broker.limits().write_timeout.min(CLOSE_TIMEOUT);
        self.connection.close(timeout).await;
        let inflight = self.window.len() as i64;
        self.broker.stats().inflight_messages.sub(inflight);
        let gone = matches!(end, End::Fenced | End::Superseded);
        let result = if self.clean_session || gone {
            // Fenced or superseded: the session belongs to another node
            // now; forget it here and write nothing (the epoch is stale).
            let filters = self.subscriptions.keys().map(String::as_str);
            self.broker.unsubscribe(&self.client_id, filters).await;
            match gone {
                true => Ok(()),
                false => self.broker.store().discard_session(&self.owner).await,
            }
        } else {
            let filters: Vec<String> = self.subscriptions.keys().cloned().collect();
            if end == End::Released {
                // Claimed by another node, which queues for it now; what
                // still reaches this node is queued in Redis for a while.
                self.broker.session_released(&self.client_id, filters);
            } else {
                self.broker.session_parked(&self.client_id, filters);
            }
            let state = SessionState {
                subscriptions: std::mem::take(&mut self.subscriptions),
                outgoing: self.window.take(),
                incoming_qos2: self.incoming_qos2.drain().collect(),
                pending: std::mem::take(&mut self.pending),
            };
            self.broker.store().park_session(&self.owner, state).await
        };
        if let Err(error) = result {
            tracing::warn!(%error, client_id = %untrusted(&self.client_id), "session state not saved");
        }
        // Only now may a new connection with this client id register: it
        // must find the state parked, not race the park.
        self.broker
            .registry()
            .remove(&self.client_id, self.handle.connection_id);
        self.broker.stats().clients_connected.dec();
    }
}
