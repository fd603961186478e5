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
use super::v5::{
    outgoing_properties, reason, reason_string, ClientLimits, SessionV5, RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
};
use super::will::Will;
use super::window::{AckOutcome, OutgoingWindow};
use super::ShutdownSignal;
use crate::broker::Broker;
use crate::connection::{Connection, ConnectionError, Input};
use crate::limits::queue::queued_size;
use crate::message::unix_millis;
use crate::message::{ClientId, Delivery, QueueId};
use crate::protocol::codec::{
    encode_ack, encode_ack_v5, encode_connack, encode_connack_v5, encode_disconnect_v5,
    encode_pingresp, encode_publish, encode_unsuback_v5, Ack, ConnackV5, DisconnectPacket,
    EncodeError, OutgoingPublish,
};
use crate::protocol::frame::FrameError;
use crate::protocol::{Inbound, ProtocolError};
use crate::registry::{Kick, SessionHandle};
use crate::session_state::{IncomingQos2, OutgoingInflight, OutgoingStage, Progress, SessionState};
use crate::stats::Stats;
use crate::store::{SessionClaim, SessionOwner};
use crate::subscription::Subscription;

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
    /// Drop what the session held (3.1.1 clean session, 5.0 clean start).
    pub clean_start: bool,
    /// Forget the session when the connection ends.
    pub clean_session: bool,
    /// 1.5 × the client's keep-alive; `None` when disabled.
    pub keep_alive: Option<Duration>,
    /// Published if the connection ends without DISCONNECT.
    pub will: Option<Will>,
    /// The CONNECT's user name, for the ACL's `user` and `%u`.
    pub user: Option<String>,
    /// This session's entry in the registry.
    pub handle: SessionHandle,
    /// Set when the session has parked its state (takeover waits on it).
    pub finished: watch::Sender<bool>,
    /// Ownership and previous state from the store.
    pub claim: SessionClaim,
    /// 5.0 only: what the CONNECT said and the CONNACK must say.
    pub v5: Option<Box<SetupV5>>,
}

/// What a 5.0 CONNECT brings to the session.
pub struct SetupV5 {
    /// The client's limits.
    pub client: ClientLimits,
    /// The CONNECT's Session Expiry Interval.
    pub session_expiry: u32,
    /// True when the node made the client id up (it goes in the CONNACK).
    pub assigned_client_id: bool,
    /// The keep-alive the node holds the client to, when not the asked one.
    pub server_keep_alive: Option<u16>,
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
    /// DISCONNECT with reason 0x04 (5.0): the will is published.
    DisconnectWithWill,
    /// The client broke the protocol: the 5.0 reason code, and why.
    ProtocolError(u8, String),
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
    /// The reason code of the DISCONNECT a 5.0 client is sent for this
    /// end, if one is sent (5.0 §4.13: not when the client disconnected).
    fn disconnect_reason(&self) -> Option<u8> {
        match self {
            End::Disconnect | End::DisconnectWithWill | End::ConnectionLost => None,
            End::KeepAliveTimeout => Some(reason::KEEP_ALIVE_TIMEOUT),
            End::ProtocolError(code, _) => Some(*code),
            End::TakenOver | End::Released | End::Superseded | End::Fenced => {
                Some(reason::SESSION_TAKEN_OVER)
            }
            End::Shutdown => Some(reason::SERVER_SHUTTING_DOWN),
            End::StoreUnavailable(_) => Some(reason::UNSPECIFIED),
        }
    }

    fn publishes_will(&self) -> bool {
        // Fenced: the survivor that declared this node dead published it.
        !matches!(
            self,
            End::Disconnect | End::Shutdown | End::Fenced | End::Superseded
        )
    }
}

/// What the CONNACK says beyond session present, from the handshake.
struct Greeting {
    /// Drop the previous state rather than resume it.
    clean_start: bool,
    /// 5.0: the client id was made up by the node.
    assigned_client_id: bool,
    /// 5.0: the keep-alive the node holds the client to, when not its own.
    server_keep_alive: Option<u16>,
}

/// The session expiry of a session that never expires (3.1.1 persistent
/// sessions; 5.0's 0xFFFFFFFF).
const NEVER_EXPIRES: Duration = Duration::MAX;

/// A session with a live connection.
pub struct ActiveSession {
    pub(super) broker: Arc<Broker>,
    pub(super) connection: Connection,
    pub(super) client_id: ClientId,
    pub(super) owner: SessionOwner,
    pub(super) clean_session: bool,
    pub(super) will: Option<Will>,
    /// The CONNECT's user name (ACL checks); `None` when anonymous.
    pub(super) user: Option<Box<str>>,
    pub(super) handle: SessionHandle,
    /// Filter → what the client subscribed with, kept to park or undo on
    /// disconnect.
    pub(super) subscriptions: HashMap<String, Subscription>,
    /// True when one of them is 5.0 No Local: this client's publishes then
    /// carry its id, so no node sends them back to it.
    pub(super) has_no_local: bool,
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
    /// 5.0 connections only: the client's limits, topic aliases, expiry.
    pub(super) v5: Option<Box<SessionV5>>,
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
        let greeting = Greeting {
            clean_start: setup.clean_start,
            assigned_client_id: setup.v5.as_ref().is_some_and(|v| v.assigned_client_id),
            server_keep_alive: setup.v5.as_ref().and_then(|v| v.server_keep_alive),
        };
        let (mut session, previous, finished) = ActiveSession::open(broker, connection, setup);
        let late_drain = Box::pin(session.begin(previous, greeting))
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
        let v5 = setup
            .v5
            .map(|v5| Box::new(SessionV5::new(v5.client, v5.session_expiry)));
        // The client's Receive Maximum bounds what is in flight to it.
        let window = v5.as_ref().map_or(broker.limits().max_inflight, |v5| {
            broker
                .limits()
                .max_inflight
                .min(usize::from(v5.client.receive_maximum))
        });
        let session = ActiveSession {
            durable,
            progress: Progress::default(),
            released_qos2: Vec::new(),
            acknowledged: RecentlyAcknowledged::default(),
            read_mark: ReadMark::default(),
            late_drains: 1,
            progress_since: None,
            window: OutgoingWindow::new(window),
            broker,
            connection,
            client_id: setup.client_id,
            owner: setup.claim.owner,
            clean_session: setup.clean_session,
            will: setup.will,
            user: setup.user.map(String::into_boxed_str),
            handle: setup.handle,
            subscriptions: HashMap::new(),
            has_no_local: false,
            incoming_qos2: HashMap::new(),
            pending: VecDeque::new(),
            owed: OwedAcks::default(),
            write_budget_spent: false,
            v5,
        };
        (session, setup.claim.previous, setup.finished)
    }

    /// Answers CONNACK and, for a persistent session, resumes what the
    /// previous connection left; a clean session undoes its subscriptions
    /// instead. Returns when to look for straggling queued messages.
    async fn begin(
        &mut self,
        previous: Option<SessionState>,
        greeting: Greeting,
    ) -> Option<Instant> {
        let resumed = match (greeting.clean_start, previous) {
            (true, Some(previous)) => {
                let filters = previous.subscriptions.keys().map(String::as_str);
                self.broker.unsubscribe(&self.client_id, filters).await;
                None
            }
            (_, previous) => previous,
        };
        self.answer_connect(resumed.is_some(), &greeting);
        let state = resumed?;
        self.resume(state).await;
        Some(Instant::now() + LATE_DRAIN_AFTER)
    }

    /// The CONNACK that accepts the connection: 3.1.1's four bytes, or
    /// 5.0's with the node's limits and what it decided for the client.
    fn answer_connect(&mut self, session_present: bool, greeting: &Greeting) {
        if self.v5.is_none() {
            encode_connack(self.connection.output(), session_present);
            return;
        }
        let limits = self.broker.limits();
        let connack = ConnackV5 {
            session_present,
            receive_maximum: RECEIVE_MAXIMUM,
            maximum_packet_size: u32::try_from(limits.max_packet_size).unwrap_or(u32::MAX),
            assigned_client_id: greeting
                .assigned_client_id
                .then(|| self.client_id.to_string()),
            topic_alias_maximum: TOPIC_ALIAS_MAXIMUM,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: self.broker.serves_shared_subscriptions(),
            server_keep_alive: greeting.server_keep_alive,
            ..ConnackV5::default()
        };
        if let Err(error) = encode_connack_v5(self.connection.output(), &connack) {
            tracing::warn!(%error, "CONNACK not encoded");
        }
    }

    /// Restores a parked session and re-sends its unacknowledged messages
    /// with DUP set (MQTT-4.4.0-1).
    async fn resume(&mut self, mut state: SessionState) {
        self.drop_denied_subscriptions(&mut state.subscriptions)
            .await;
        for (filter, subscription) in &state.subscriptions {
            self.broker
                .subscribe(&self.client_id, filter, *subscription)
                .await;
        }
        self.subscriptions = state.subscriptions;
        self.refresh_no_local();
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
        let now_ms = unix_millis();
        let max_packet = self
            .v5
            .as_ref()
            .map_or(usize::MAX, |v5| v5.client.maximum_packet_size);
        for entry in self.window.entries() {
            let result = match entry.stage {
                OutgoingStage::AwaitingPubcomp => encode_ack(out, Ack::Pubrel, entry.packet_id),
                _ => {
                    let d = &entry.delivery;
                    encode_publish(
                        out,
                        &OutgoingPublish {
                            topic: &d.message.topic,
                            payload: &d.message.payload,
                            qos: d.qos,
                            packet_id: Some(entry.packet_id),
                            dup: true,
                            retain: d.retain,
                            v5: self.v5.as_ref().map(|_| {
                                outgoing_properties(&d.message, &d.subscription_ids, now_ms)
                            }),
                            max_packet,
                        },
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
            Err(ConnectionError::Protocol(error)) => return Some(self.unreadable(error)),
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
                Err(error) => return Some(self.unreadable(error)),
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

    /// A delivery the client cannot take (over its Maximum Packet Size):
    /// done with as if acknowledged, so its queue entry goes too.
    pub(super) fn done_without_sending(&mut self, delivery: Delivery) {
        let size = queued_size(&delivery);
        if let Some(queued) = delivery.queued {
            self.acknowledged.insert(queued.clone());
            self.progress.acknowledged.push((queued, size));
        }
    }

    /// The client broke the protocol (5.0: DISCONNECT 0x82).
    pub(super) fn protocol_error(&self, reason: String) -> End {
        self.violation(reason::PROTOCOL_ERROR, reason)
    }

    /// The client broke a rule that 5.0 names with `code`.
    pub(super) fn violation(&self, code: u8, reason: String) -> End {
        self.broker.stats().protocol_errors.inc();
        End::ProtocolError(code, reason)
    }

    /// A packet that could not be read: too large (0x95), breaking a rule
    /// with its own code (a 5.0 protocol error, 0x82 or 0x94), or
    /// malformed (0x81).
    fn unreadable(&self, error: ProtocolError) -> End {
        let code = match &error {
            ProtocolError::Frame(FrameError::TooLarge { .. }) => reason::PACKET_TOO_LARGE,
            ProtocolError::Violation { code, .. } => *code,
            _ => reason::MALFORMED_PACKET,
        };
        self.violation(code, error.to_string())
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
                let known = self.incoming_qos2.remove(&id).is_some();
                if known && self.durable {
                    self.released_qos2.push(id);
                }
                let code = match known {
                    true => reason::SUCCESS,
                    false => reason::PACKET_ID_NOT_FOUND,
                };
                self.encode_ack(Ack::Pubcomp, id, code)
            }
            Inbound::Pubcomp(ack) => {
                let entry = self.window.pubcomp(ack.packet_id);
                self.completed(entry);
                Ok(())
            }
            Inbound::Subscribe {
                packet_id,
                filters,
                v5,
            } => {
                if let Some(end) = self.on_subscribe(packet_id, filters, v5).await {
                    return Some(end);
                }
                Ok(())
            }
            Inbound::Unsubscribe { packet_id, filters } => {
                let codes = self.on_unsubscribe(filters).await;
                self.encode_unsuback(packet_id, &codes)
            }
            Inbound::Pingreq => {
                encode_pingresp(out);
                Ok(())
            }
            Inbound::Disconnect(disconnect) => return Some(self.on_disconnect(disconnect)),
            Inbound::Auth(_) => {
                // No authentication method was agreed at CONNECT (any is
                // refused there), so any AUTH breaks the protocol (4.12).
                return Some(self.protocol_error("AUTH without an authentication method".into()));
            }
        };
        written.err().map(|e| self.protocol_error(e.to_string()))
    }

    /// Gives what this member of shared groups has not acknowledged to
    /// other members (5.0 §4.8.2); what no other member can take stays.
    async fn hand_back_shared(&mut self) {
        let from_window = self.window.take_shared();
        self.broker
            .stats()
            .inflight_messages
            .sub(from_window.len() as i64);
        let (shared, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|d| d.shared.is_some());
        self.pending = kept.into();
        let mut back = from_window;
        back.extend(shared);
        if back.is_empty() {
            return;
        }
        let stay = self.broker.hand_back_shared(&self.client_id, back).await;
        self.pending.extend(stay);
    }

    /// How long the session outlives its connection: zero for a clean
    /// session, [`NEVER_EXPIRES`] for a 3.1.1 persistent one, the Session
    /// Expiry Interval (as last set) for 5.0.
    fn session_expiry(&self) -> Duration {
        match (&self.v5, self.clean_session) {
            (_, true) => Duration::ZERO,
            (None, false) => NEVER_EXPIRES,
            (Some(v5), false) if v5.session_expiry == u32::MAX => NEVER_EXPIRES,
            (Some(v5), false) => Duration::from_secs(u64::from(v5.session_expiry)),
        }
    }

    /// A DISCONNECT from the client; 5.0 may change the session expiry
    /// (not from 0, 5.0 §3.14.2.2.2) and ask for the will (0x04).
    fn on_disconnect(&mut self, disconnect: DisconnectPacket) -> End {
        let Some(v5) = self.v5.as_mut() else {
            return End::Disconnect;
        };
        if let Some(expiry) = disconnect.session_expiry_interval {
            if v5.expiry_was_zero && expiry > 0 {
                return self.protocol_error("DISCONNECT sets a session expiry after 0".into());
            }
            v5.session_expiry = expiry;
            if expiry == 0 {
                // Ends with the connection now: forgotten, not parked.
                self.clean_session = true;
            }
        }
        match disconnect.reason_code {
            reason::DISCONNECT_WITH_WILL => End::DisconnectWithWill,
            _ => End::Disconnect,
        }
    }

    /// Appends an acknowledgement; a 5.0 one carries `code`.
    pub(super) fn encode_ack(
        &mut self,
        ack: Ack,
        packet_id: u16,
        code: u8,
    ) -> Result<(), EncodeError> {
        let out = self.connection.output();
        match self.v5 {
            Some(_) => encode_ack_v5(out, ack, packet_id, code, None),
            None => encode_ack(out, ack, packet_id),
        }
    }

    /// Appends an UNSUBACK: 3.1.1's bare one, or 5.0's with a reason code
    /// per filter.
    fn encode_unsuback(&mut self, packet_id: u16, codes: &[u8]) -> Result<(), EncodeError> {
        let out = self.connection.output();
        match self.v5 {
            Some(_) => encode_unsuback_v5(out, packet_id, codes),
            None => encode_ack(out, Ack::Unsuback, packet_id),
        }
    }

    /// Publishes the will when due, then parks (persistent) or forgets
    /// (clean) the session.
    async fn finish(mut self, end: End) {
        if let End::ProtocolError(code, reason) = &end {
            tracing::info!(client_id = %untrusted(&self.client_id), %reason, code, "closing connection: protocol error");
        }
        if let (true, Some(will)) = (end.publishes_will(), self.will.take()) {
            let expiry = self.session_expiry();
            will.publish(&self.broker, &self.owner, Some(expiry)).await;
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
        if !matches!(end, End::Shutdown | End::Fenced) {
            self.hand_back_shared().await;
        }
        if end != End::Fenced {
            // Fenced: a survivor has queued this node's journal and inbox
            // for the session already; every other end queues what it
            // served from memory before the session moves on.
            self.spill_before_leaving().await;
        }
        if let (Some(_), Some(code)) = (&self.v5, end.disconnect_reason()) {
            // What this turn encoded and must not leave was cleared
            // already (`unrecorded`); the DISCONNECT goes last.
            // A protocol error says what was wrong (a DISCONNECT may carry a
            // Reason String whatever Request Problem Information says).
            let why = match &end {
                End::ProtocolError(_, reason) => Some(reason_string(reason)),
                _ => None,
            };
            encode_disconnect_v5(self.connection.output(), code, why);
        }
        let expiry = self.session_expiry();
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
                false => self
                    .broker
                    .store()
                    .discard_session(&self.owner)
                    .await
                    .map(|_| ()),
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
                expiry: (expiry != NEVER_EXPIRES).then_some(expiry.as_secs() as u32),
            };
            let parked = self.broker.store().park_session(&self.owner, state).await;
            if parked.is_ok() && end != End::Released && expiry != NEVER_EXPIRES {
                self.broker.expire_session_after(self.owner.clone(), expiry);
            }
            parked
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
