//! The outgoing in-flight window: packet id allocation and the QoS 1/2
//! acknowledgement state machine for messages sent to the client.

use std::collections::VecDeque;

use super::state::{OutgoingInflight, OutgoingStage};
use crate::message::{Delivery, Qos};

/// Unacknowledged outgoing messages, bounded by the configured window.
#[derive(Debug)]
pub struct OutgoingWindow {
    entries: VecDeque<OutgoingInflight>,
    capacity: usize,
    last_packet_id: u16,
}

/// What the session must send after an acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckOutcome {
    /// The message is done; the window has room again.
    Completed,
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

    /// PUBACK from the client.
    pub fn puback(&mut self, packet_id: u16) -> AckOutcome {
        self.complete(packet_id, OutgoingStage::AwaitingPuback)
    }

    /// PUBCOMP from the client.
    pub fn pubcomp(&mut self, packet_id: u16) -> AckOutcome {
        self.complete(packet_id, OutgoingStage::AwaitingPubcomp)
    }

    fn complete(&mut self, packet_id: u16, stage: OutgoingStage) -> AckOutcome {
        match self.position(packet_id, stage) {
            Some(index) => {
                self.entries.remove(index);
                AckOutcome::Completed
            }
            None => AckOutcome::Ignored,
        }
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
        assert_eq!(w.pubcomp(id), AckOutcome::Ignored);
        assert_eq!(w.puback(id), AckOutcome::Completed);
        assert!(w.is_empty());
    }

    #[test]
    fn qos2_walks_pubrec_then_pubcomp() {
        let mut w = OutgoingWindow::new(2);
        let id = w.start(delivery(Qos::ExactlyOnce));
        assert_eq!(w.puback(id), AckOutcome::Ignored);
        assert_eq!(w.pubrec(id), AckOutcome::SendPubrel);
        assert_eq!(w.pubrec(id), AckOutcome::SendPubrel);
        assert_eq!(w.pubcomp(id), AckOutcome::Completed);
        assert_eq!(w.pubcomp(id), AckOutcome::Ignored);
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
