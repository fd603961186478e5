//! [`Receiver`]: the client side of a subscriber's session, deciding which
//! incoming PUBLISH is a new application message and which packet answers
//! it.
//!
//! MQTT 3.1.1 (4.3.3, method B on the receiver): a QoS 2 message is handed
//! to the application when its PUBLISH first arrives; its packet id is then
//! remembered until PUBREL, and a PUBLISH with that id in between (the
//! sender's re-send, with DUP, after a reconnect) is the same message, not
//! a new one. A PUBREL is answered with PUBCOMP even for an id not
//! remembered. QoS 1 has no such state: every PUBLISH is a delivery, and a
//! re-send is a duplicate the application sees (counted, allowed).
//!
//! The state belongs to the client's session, so it outlives connections
//! and is cleared only when the broker says the session is gone.

use std::collections::BTreeSet;

use crate::wire::{self, Publish};

/// What an incoming PUBLISH means for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// A message the application receives now.
    New,
    /// A re-send of a QoS 2 message already received (same packet id, no
    /// PUBREL yet): acknowledged again, not delivered again.
    SameQos2Message,
}

/// Client-side session state of one subscriber.
#[derive(Debug, Default)]
pub struct Receiver {
    /// QoS 2 packet ids received whose PUBREL has not arrived yet.
    awaiting_release: BTreeSet<u16>,
}

impl Receiver {
    /// Classifies `publish` and updates the state.
    pub fn on_publish(&mut self, publish: &Publish) -> Arrival {
        if publish.qos == 2 && !self.awaiting_release.insert(publish.packet_id) {
            return Arrival::SameQos2Message;
        }
        Arrival::New
    }

    /// Forgets a released QoS 2 id; returns the PUBCOMP to send.
    pub fn on_pubrel(&mut self, packet_id: u16) -> Vec<u8> {
        self.awaiting_release.remove(&packet_id);
        wire::pubcomp(packet_id)
    }

    /// The broker has no session for us (CONNACK session-present = 0).
    pub fn session_lost(&mut self) {
        self.awaiting_release.clear();
    }

    /// The acknowledgement a PUBLISH calls for: PUBACK (QoS 1), PUBREC
    /// (QoS 2) or none (QoS 0).
    pub fn ack_for(publish: &Publish) -> Option<Vec<u8>> {
        match publish.qos {
            1 => Some(wire::puback(publish.packet_id)),
            2 => Some(wire::pubrec(publish.packet_id)),
            _ => None,
        }
    }
}

/// The sequence number a harness publisher put in a payload (decimal
/// text), or `None` for anything else (probes, foreign payloads).
pub fn sequence_number(payload: &[u8]) -> Option<u64> {
    std::str::from_utf8(payload).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qos2(id: u16) -> Publish {
        Publish::new("t", 2, b"1").with_packet_id(id)
    }

    #[test]
    fn a_qos2_resend_before_pubrel_is_the_same_message() {
        let mut receiver = Receiver::default();
        assert_eq!(receiver.on_publish(&qos2(7)), Arrival::New);
        assert_eq!(
            receiver.on_publish(&qos2(7).with_dup()),
            Arrival::SameQos2Message
        );
        assert_eq!(receiver.on_pubrel(7), wire::pubcomp(7));
        assert_eq!(receiver.on_publish(&qos2(7)), Arrival::New);
    }

    #[test]
    fn qos1_resends_are_always_new() {
        let mut receiver = Receiver::default();
        let publish = Publish::new("t", 1, b"1").with_packet_id(3);
        assert_eq!(receiver.on_publish(&publish), Arrival::New);
        assert_eq!(receiver.on_publish(&publish.with_dup()), Arrival::New);
    }

    #[test]
    fn sequence_numbers_are_decimal_payloads() {
        assert_eq!(sequence_number(b"42"), Some(42));
        assert_eq!(sequence_number(b"probe"), None);
    }
}
