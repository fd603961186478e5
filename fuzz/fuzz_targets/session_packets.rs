//! A sequence of client packets and broker events driving the session's
//! pure state machines, each checked against a simple model:
//!
//! - the outgoing window (`session::window`): packet ids unique and non-zero,
//!   never more in flight than the window holds, PUBACK/PUBREC/PUBCOMP
//!   accepted exactly when the model says the message waits for them, and
//!   parking/resuming (`take`/`restore`) keeps everything;
//! - the owed-acks queue (`session::acks`): acknowledgements leave in the
//!   order they were owed, only once their write has settled, with the
//!   write's outcome;
//! - the subscription tree (`router::tree`): after any subscribes and
//!   unsubscribes, `matches`, `has_filter`, `filters` and `len` agree with
//!   a list of (filter, client, QoS) matched by `filter_matches`.
#![no_main]

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use arbitrary::Arbitrary;
use astramq_node::cluster::Durability;
use astramq_node::message::{ClientId, Delivery, Message, Qos};
use astramq_node::protocol::codec::Ack;
use astramq_node::router::topic::{filter_matches, is_valid_filter, is_valid_topic_name};
use astramq_node::router::SubscriptionTree;
use astramq_node::session::acks::OwedAcks;
use astramq_node::session::window::{AckOutcome, OutgoingWindow};
use astramq_node::session_state::OutgoingStage;
use astramq_node::subscription::Subscription;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::sync::oneshot;

/// Levels topics and filters are built from: few enough that filters and
/// topics collide often.
const LEVELS: [&str; 8] = ["a", "b", "", "ab", "$SYS", "+", "#", "a+"];

#[derive(Arbitrary, Debug)]
enum Step {
    /// The broker sends a QoS 1 (false) or 2 (true) message, if there is room.
    Send(bool),
    /// Client acknowledgements; `Id` picks a packet id.
    Puback(Id),
    Pubrec(Id),
    Pubcomp(Id),
    /// The session is parked and resumed.
    Park,
    /// A PUBLISH from the client owes a PUBACK (false) or PUBREC (true)
    /// whose write is done, failed or pending.
    Owe(bool, u16, Write),
    /// A pending write settles: (which pending, written or failed/dropped).
    Settle(u8, Settlement),
    /// The session flushes the settled acknowledgements.
    PopSettled,
    Subscribe(Topic, u8, u8),
    Unsubscribe(Topic, u8),
    /// A subscription on a deep filter: (level, depth, client).
    SubscribeDeep(u8, u16, u8),
    Match(Topic),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Id {
    /// The id of the n-th message in flight.
    InFlight(u8),
    /// Any id.
    Any(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Write {
    Done,
    Failed,
    Pending,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Settlement {
    Written,
    Failed,
    Dropped,
}

/// A topic or filter as indices into [`LEVELS`].
#[derive(Arbitrary, Debug)]
struct Topic(Vec<u8>);

impl Topic {
    fn text(&self) -> String {
        let levels: Vec<&str> = self
            .0
            .iter()
            .take(12)
            .map(|&i| LEVELS[usize::from(i) % LEVELS.len()])
            .collect();
        levels.join("/")
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    window_capacity: u8,
    steps: Vec<Step>,
}

/// What the model knows of one owed acknowledgement.
enum OwedWrite {
    Done,
    Failed,
    /// The n-th pending write (index into `Sessions::senders`).
    Pending(usize),
}

/// A pending write's sender, and what became of it.
enum Sender {
    Waiting(oneshot::Sender<bool>),
    Sent(bool),
    Dropped,
}

fn delivery(qos: Qos) -> Delivery {
    Delivery::forward(Arc::new(Message::new("t", Bytes::new(), qos, false)), qos)
}

fn qos(bits: u8) -> Qos {
    Qos::from_bits(bits % 3).expect("0..=2 is a QoS")
}

fuzz_target!(|input: Input| {
    let capacity = usize::from(input.window_capacity % 32).max(1);
    let mut window = OutgoingWindow::new(capacity);
    // (packet id, stage), oldest first.
    let mut in_flight: Vec<(u16, OutgoingStage)> = Vec::new();

    let mut owed = OwedAcks::default();
    let mut owed_model: VecDeque<(Ack, u16, OwedWrite)> = VecDeque::new();
    let mut senders: Vec<Sender> = Vec::new();

    let mut tree = SubscriptionTree::default();
    let clients: Vec<ClientId> = (0..4).map(|i| format!("c{i}").into()).collect();
    let mut subscriptions: HashMap<(String, usize), Qos> = HashMap::new();

    for step in input.steps.iter().take(512) {
        match step {
            Step::Send(exactly_once) => {
                if window.has_room() != (in_flight.len() < capacity) {
                    panic!("has_room disagrees with {} of {capacity}", in_flight.len());
                }
                if !window.has_room() {
                    continue;
                }
                let (qos, stage) = if *exactly_once {
                    (Qos::ExactlyOnce, OutgoingStage::AwaitingPubrec)
                } else {
                    (Qos::AtLeastOnce, OutgoingStage::AwaitingPuback)
                };
                let id = window.start(delivery(qos));
                assert_ne!(id, 0, "packet id 0 is not allowed");
                assert!(
                    in_flight.iter().all(|&(other, _)| other != id),
                    "packet id {id} is already in flight"
                );
                in_flight.push((id, stage));
            }
            Step::Puback(id) | Step::Pubcomp(id) => {
                let id = pick(*id, &in_flight);
                let (stage, done) = match step {
                    Step::Puback(_) => (OutgoingStage::AwaitingPuback, window.puback(id)),
                    _ => (OutgoingStage::AwaitingPubcomp, window.pubcomp(id)),
                };
                let expected = in_flight.iter().position(|&e| e == (id, stage));
                assert_eq!(done.as_ref().map(|e| e.packet_id), expected.map(|_| id));
                if let Some(index) = expected {
                    assert_eq!(done.map(|e| e.stage), Some(stage));
                    in_flight.remove(index);
                }
            }
            Step::Pubrec(id) => {
                let id = pick(*id, &in_flight);
                let outcome = window.pubrec(id);
                let awaiting = in_flight
                    .iter()
                    .position(|&e| e == (id, OutgoingStage::AwaitingPubrec));
                let released = in_flight.contains(&(id, OutgoingStage::AwaitingPubcomp));
                if let Some(index) = awaiting {
                    in_flight[index].1 = OutgoingStage::AwaitingPubcomp;
                }
                let expected = if awaiting.is_some() || released {
                    AckOutcome::SendPubrel
                } else {
                    AckOutcome::Ignored
                };
                assert_eq!(outcome, expected);
            }
            Step::Park => {
                let parked = window.take();
                assert!(window.is_empty());
                let mut resumed = OutgoingWindow::new(capacity);
                resumed.restore(parked);
                window = resumed;
            }
            Step::Owe(pubrec, packet_id, write) => {
                let ack = if *pubrec { Ack::Pubrec } else { Ack::Puback };
                let (durability, model) = match write {
                    Write::Done => (Durability::Done, OwedWrite::Done),
                    Write::Failed => (Durability::Failed, OwedWrite::Failed),
                    Write::Pending => {
                        let (tx, rx) = oneshot::channel();
                        senders.push(Sender::Waiting(tx));
                        (
                            Durability::Pending(rx),
                            OwedWrite::Pending(senders.len() - 1),
                        )
                    }
                };
                owed.push(ack, *packet_id, 0, durability);
                owed_model.push_back((ack, *packet_id, model));
            }
            Step::Settle(which, settlement) => {
                if senders.is_empty() {
                    continue;
                }
                let index = usize::from(*which) % senders.len();
                if !matches!(senders[index], Sender::Waiting(_)) {
                    continue; // already settled: a write settles once
                }
                let Sender::Waiting(tx) = std::mem::replace(&mut senders[index], Sender::Dropped)
                else {
                    unreachable!("checked above");
                };
                senders[index] = match settlement {
                    Settlement::Written | Settlement::Failed => {
                        let written = matches!(settlement, Settlement::Written);
                        // An owed ack is popped only once settled, so its
                        // receiver is still there: the send cannot fail.
                        assert!(tx.send(written).is_ok());
                        Sender::Sent(written)
                    }
                    Settlement::Dropped => Sender::Dropped,
                };
            }
            Step::PopSettled => {
                let expected = owed_model.front().and_then(|(ack, id, write)| {
                    let written = match write {
                        OwedWrite::Done => true,
                        OwedWrite::Failed => false,
                        OwedWrite::Pending(i) => match senders[*i] {
                            Sender::Waiting(_) => return None,
                            Sender::Sent(written) => written,
                            Sender::Dropped => false,
                        },
                    };
                    Some((*ack, *id, written))
                });
                let waiting = matches!(owed_model.front(), Some((_, _, OwedWrite::Pending(_))));
                assert_eq!(owed.is_waiting(), waiting);
                let settled = owed.pop_settled();
                assert_eq!(settled.map(|s| (s.ack, s.packet_id, s.written)), expected);
                if expected.is_some() {
                    owed_model.pop_front();
                }
            }
            Step::Subscribe(filter, client, granted) => {
                let filter = filter.text();
                if !is_valid_filter(&filter) {
                    continue;
                }
                let client = usize::from(*client) % clients.len();
                let granted = qos(*granted);
                let had_filter = subscriptions.keys().any(|(f, _)| *f == filter);
                let outcome = tree.subscribe(&filter, &clients[client], Subscription::at(granted));
                let previous = subscriptions.insert((filter, client), granted);
                assert_eq!(outcome.new_subscription, previous.is_none());
                assert_eq!(outcome.new_filter, !had_filter);
            }
            Step::SubscribeDeep(level, depth, client) => {
                let level = LEVELS[usize::from(*level) % 3];
                let depth = usize::from(*depth % 4096) + 1;
                let filter = vec![level; depth].join("/");
                let client = usize::from(*client) % clients.len();
                tree.subscribe(&filter, &clients[client], Subscription::at(Qos::AtMostOnce));
                subscriptions.insert((filter, client), Qos::AtMostOnce);
            }
            Step::Unsubscribe(filter, client) => {
                let filter = filter.text();
                if !is_valid_filter(&filter) {
                    continue;
                }
                let client = usize::from(*client) % clients.len();
                let outcome = tree.unsubscribe(&filter, &clients[client]);
                let existed = subscriptions.remove(&(filter.clone(), client)).is_some();
                let still_there = subscriptions.keys().any(|(f, _)| *f == filter);
                assert_eq!(outcome.removed, existed);
                assert_eq!(outcome.filter_gone, existed && !still_there);
                assert_eq!(tree.has_filter(&filter), still_there);
            }
            Step::Match(topic) => {
                let topic = topic.text();
                if !is_valid_topic_name(&topic) {
                    continue;
                }
                let mut expected: HashMap<ClientId, Qos> = HashMap::new();
                for ((filter, client), &granted) in &subscriptions {
                    if filter_matches(filter, &topic) {
                        let best = expected.entry(clients[*client].clone()).or_insert(granted);
                        *best = (*best).max(granted);
                    }
                }
                let got: HashMap<ClientId, Qos> = tree
                    .matches(&topic, None)
                    .into_iter()
                    .map(|(client, matched)| (client, matched.qos))
                    .collect();
                assert_eq!(got, expected, "topic {topic:?}");
            }
        }
        // Invariants after every step.
        assert_eq!(window.len(), in_flight.len());
        assert!(window.len() <= capacity);
        let ids: Vec<(u16, OutgoingStage)> =
            window.entries().map(|e| (e.packet_id, e.stage)).collect();
        assert_eq!(ids, in_flight, "window and model differ");
        assert_eq!(tree.len(), subscriptions.len());
    }
    let filters: BTreeSet<String> = tree.filters().into_iter().collect();
    let expected: BTreeSet<String> = subscriptions.keys().map(|(f, _)| f.clone()).collect();
    assert_eq!(filters, expected);
});

/// The packet id an [`Id`] stands for.
fn pick(id: Id, in_flight: &[(u16, OutgoingStage)]) -> u16 {
    match id {
        Id::InFlight(n) if !in_flight.is_empty() => in_flight[usize::from(n) % in_flight.len()].0,
        Id::InFlight(n) => u16::from(n),
        Id::Any(id) => id,
    }
}
