//! The outgoing in-flight window: packet id allocation and the QoS 1/2
//! acknowledgement state machine for messages sent to the client.

use std::collections::VecDeque;

use crate::message::{Delivery, Qos, QueueId};
use crate::session_state::{OutgoingInflight, OutgoingStage};

/// Unacknowledged outgoing messages, bounded by the configured window.
#[derive(Debug)]
pub struct OutgoingWindow {
    entries: VecDeque<OutgoingInflight>,
    capacity: usize,
    last_packet_id: u16,
}

/// What the session must send after a PUBREC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// PUBREC accepted: answer with PUBREL.
    SendPubrel,
    /// The id was unknown or in another stage: nothing to do.
    Ignored,
}

impl OutgoingWindow {
    /// An empty window that holds at most `capacity` messages.
    pub fn new(capacity: usize) -> OutgoingWindow {
        OutgoingWindow {
            entries: VecDeque::new(),
            capacity: capacity.max(1),
            last_packet_id: 0,
        }
    }

    /// Restores a resumed session's unacknowledged messages.
    pub fn restore(&mut self, entries: Vec<OutgoingInflight>) {
        if let Some(last) = entries.last() {
            self.last_packet_id = last.packet_id;
        }
        self.entries.extend(entries);
    }

    /// True when another QoS 1/2 message may be sent.
    pub fn has_room(&self) -> bool {
        self.entries.len() < self.capacity
    }

    /// Records `delivery` as sent and returns its packet id. Call only when
    /// [`Self::has_room`] and for QoS 1/2.
    pub fn start(&mut self, delivery: Delivery) -> u16 {
        let packet_id = self.next_free_id();
        let stage = match delivery.qos {
            Qos::ExactlyOnce => OutgoingStage::AwaitingPubrec,
            _ => OutgoingStage::AwaitingPuback,
        };
        self.entries.push_back(OutgoingInflight {
            packet_id,
            delivery,
            stage,
        });
        packet_id
    }

    fn next_free_id(&mut self) -> u16 {
        loop {
            self.last_packet_id = self.last_packet_id.checked_add(1).unwrap_or(1);
            let candidate = self.last_packet_id;
            if !self.entries.iter().any(|e| e.packet_id == candidate) {
                return candidate;
            }
        }
    }

    fn position(&self, packet_id: u16, stage: OutgoingStage) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.packet_id == packet_id && e.stage == stage)
    }

    /// PUBACK from the client: the completed message, if it was awaited.
    pub fn puback(&mut self, packet_id: u16) -> Option<OutgoingInflight> {
        self.complete(packet_id, OutgoingStage::AwaitingPuback)
    }

    /// PUBCOMP from the client: the completed message, if it was awaited.
    pub fn pubcomp(&mut self, packet_id: u16) -> Option<OutgoingInflight> {
        self.complete(packet_id, OutgoingStage::AwaitingPubcomp)
    }

    fn complete(&mut self, packet_id: u16, stage: OutgoingStage) -> Option<OutgoingInflight> {
        let index = self.position(packet_id, stage)?;
        self.entries.remove(index)
    }

    /// Where the message sent as `packet_id` sits in its session's Redis
    /// queue, if it does.
    pub fn queued(&self, packet_id: u16) -> Option<&QueueId> {
        self.entries
            .iter()
            .find(|e| e.packet_id == packet_id)
            .and_then(|e| e.delivery.queued.as_ref())
    }

    /// PUBREC from the client. A repeated PUBREC for a message already past
    /// it is answered with PUBREL again.
    pub fn pubrec(&mut self, packet_id: u16) -> AckOutcome {
        if let Some(index) = self.position(packet_id, OutgoingStage::AwaitingPubrec) {
            self.entries[index].stage = OutgoingStage::AwaitingPubcomp;
            return AckOutcome::SendPubrel;
        }
        match self.position(packet_id, OutgoingStage::AwaitingPubcomp) {
            Some(_) => AckOutcome::SendPubrel,
            None => AckOutcome::Ignored,
        }
    }

    /// The unacknowledged messages, oldest first, for re-sending on resume.
    pub fn entries(&self) -> impl Iterator<Item = &OutgoingInflight> {
        self.entries.iter()
    }

    /// The deliveries in flight, oldest first, to update in place (their
    /// packet ids and stages stay).
    pub fn deliveries_mut(&mut self) -> impl Iterator<Item = &mut Delivery> {
        self.entries.iter_mut().map(|e| &mut e.delivery)
    }

    /// Number of messages in flight.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is in flight.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Empties the window for parking the session.
    pub fn take(&mut self) -> Vec<OutgoingInflight> {
        self.entries.drain(..).collect()
    }

    /// Removes the messages that came through a shared subscription and
    /// that the client has not received for sure (QoS 1 unacknowledged,
    /// QoS 2 before PUBREC): they may go to another member of the group.
    pub fn take_shared(&mut self) -> Vec<Delivery> {
        let (shared, kept): (VecDeque<_>, VecDeque<_>) = self.entries.drain(..).partition(|e| {
            e.delivery.shared.is_some() && e.stage != OutgoingStage::AwaitingPubcomp
        });
        self.entries = kept;
        shared.into_iter().map(|e| e.delivery).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::message::Message;

    fn delivery(qos: Qos) -> Delivery {
        Delivery::forward(Arc::new(Message::new("t", Bytes::new(), qos, false)), qos)
    }

    #[test]
    fn qos1_completes_on_puback() {
        let mut w = OutgoingWindow::new(2);
        let id = w.start(delivery(Qos::AtLeastOnce));
        assert!(w.pubcomp(id).is_none());
        assert!(w.puback(id).is_some());
        assert!(w.is_empty());
    }

    #[test]
    fn qos2_walks_pubrec_then_pubcomp() {
        let mut w = OutgoingWindow::new(2);
        let id = w.start(delivery(Qos::ExactlyOnce));
        assert!(w.puback(id).is_none());
        assert_eq!(w.pubrec(id), AckOutcome::SendPubrel);
        assert_eq!(w.pubrec(id), AckOutcome::SendPubrel);
        assert!(w.pubcomp(id).is_some());
        assert!(w.pubcomp(id).is_none());
    }

    #[test]
    fn window_is_bounded_and_ids_skip_those_in_use() {
        let mut w = OutgoingWindow::new(2);
        w.last_packet_id = u16::MAX - 1;
        let a = w.start(delivery(Qos::AtLeastOnce));
        let b = w.start(delivery(Qos::AtLeastOnce));
        assert_eq!((a, b), (u16::MAX, 1));
        assert!(!w.has_room());
        w.puback(b);
        w.last_packet_id = u16::MAX - 1;
        assert_eq!(w.start(delivery(Qos::AtLeastOnce)), 1);
    }
}
