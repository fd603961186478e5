//! What a connected session sends its client: deliveries from its queue
//! and mailbox, within the in-flight window.

use super::active::ActiveSession;
use super::v5::outgoing_properties;
use crate::message::{unix_millis, Delivery, Qos};
use crate::protocol::codec::{encode_publish, publish_v5_len, OutgoingPublish};
use crate::session_state::OutgoingStage;
use crate::stats::DropReason;

/// Bytes of output past which a turn encodes no more deliveries.
const WRITE_BUDGET: usize = 64 * 1024;

impl ActiveSession {
    /// Encodes pending deliveries while the in-flight window has room and
    /// less than [`WRITE_BUDGET`] bytes wait to be sent, refilling from the
    /// mailbox only when the local queue is empty (so the two together stay
    /// bounded). At the budget it stops and the loop comes back when the
    /// output has left: a slow client holds at most the budget (plus one
    /// message) encoded.
    pub(super) fn send_pending(&mut self) {
        let now_ms = unix_millis();
        self.write_budget_spent = false;
        loop {
            if self.connection.unwritten() >= WRITE_BUDGET {
                self.write_budget_spent =
                    !self.pending.is_empty() || !self.handle.mailbox.is_empty();
                return;
            }
            if self.pending.is_empty() {
                self.pending = self.handle.mailbox.take_all();
                // Entries the claim or a late drain read back from the
                // queue already (their posts raced the read).
                let mark = &self.read_mark;
                self.pending
                    .retain(|d| d.queued.as_ref().is_none_or(|id| !mark.covers(id)));
                if self.pending.is_empty() {
                    return;
                }
            }
            let needs_window = self
                .pending
                .front()
                .is_some_and(|d| d.qos != Qos::AtMostOnce);
            if needs_window && !self.window.has_room() {
                return;
            }
            let Some(delivery) = self.pending.pop_front() else {
                return;
            };
            if delivery.message.is_expired(now_ms) {
                self.broker.stats().dropped(DropReason::Expired, 1);
                continue;
            }
            self.send(delivery, now_ms);
        }
    }

    fn send(&mut self, delivery: Delivery, now_ms: u64) {
        if let Some(v5) = &self.v5 {
            // A message too large for the client is not sent to it; it is
            // done with as if it had been (5.0 §3.1.2.11.4).
            let limit = v5.client.maximum_packet_size;
            // Sized with the topic name and an alias: the most it can take.
            let message = &delivery.message;
            let mut props = outgoing_properties(message, &delivery.subscription_ids, now_ms);
            props.topic_alias = Some(1);
            let size = publish_v5_len(&message.topic, message.payload.len(), delivery.qos, &props);
            if size.is_none_or(|size| size > limit) {
                self.broker.stats().dropped(DropReason::TooLarge, 1);
                self.done_without_sending(delivery);
                return;
            }
        }
        let packet_id = match delivery.qos {
            Qos::AtMostOnce => None,
            _ => {
                self.broker.stats().inflight_messages.inc();
                let packet_id = self.window.start(delivery.clone());
                // Exactly once across a failover: the packet id is in Redis
                // before the PUBLISH leaves, so a survivor re-sends it
                // under the same id (report_progress runs before flush).
                if let (true, Qos::ExactlyOnce, Some(queued)) =
                    (self.durable, delivery.qos, &delivery.queued)
                {
                    let stage = (packet_id, OutgoingStage::AwaitingPubrec, queued.clone());
                    self.progress.stages.push(stage);
                }
                Some(packet_id)
            }
        };
        let message = &delivery.message;
        let mut topic: &str = &message.topic;
        let v5 = self.v5.as_mut().map(|v5| {
            let naming = v5.outbound_topic(&message.topic);
            if !naming.with_name {
                topic = "";
            }
            let mut props = outgoing_properties(message, &delivery.subscription_ids, now_ms);
            props.topic_alias = naming.alias;
            props
        });
        let publish = OutgoingPublish {
            topic,
            payload: &message.payload,
            qos: delivery.qos,
            packet_id,
            dup: false,
            retain: delivery.retain,
            v5,
            max_packet: usize::MAX,
        };
        match encode_publish(self.connection.output(), &publish) {
            Ok(()) => {
                self.broker
                    .stats()
                    .sent(delivery.qos, message.payload.len());
            }
            Err(error) => tracing::warn!(%error, "delivery not encoded"),
        }
    }
}
