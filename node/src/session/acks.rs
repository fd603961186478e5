//! Acknowledgements owed to a publishing client, released in order once
//! their messages are safe.
//!
//! In a cluster a QoS 1/2 message is safe only when the forwarder's Redis
//! pipeline has written it. Waiting for that inline would let each client
//! have one publish in flight to Redis; instead the session keeps reading,
//! queues the PUBACK/PUBREC here, and sends it when its write completes.
//! Writes complete in the order they were queued, so the front decides.

use std::collections::VecDeque;

use tokio::sync::oneshot::error::TryRecvError;

use crate::cluster::Durability;
use crate::protocol::codec::Ack;

/// An acknowledgement waiting for its message's write.
#[derive(Debug)]
struct Owed {
    ack: Ack,
    packet_id: u16,
    /// The 5.0 reason code (0x00 on 3.1.1, which sends none).
    code: u8,
    durability: Durability,
}

/// A settled acknowledgement: send it, or (when the write failed) don't.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// PUBACK or PUBREC.
    pub ack: Ack,
    /// The publisher's packet id.
    pub packet_id: u16,
    /// The 5.0 reason code to send with it.
    pub code: u8,
    /// True when the message is safe and the ack may be sent.
    pub written: bool,
}

/// The acknowledgements a session owes, oldest first.
#[derive(Debug, Default)]
pub struct OwedAcks {
    queue: VecDeque<Owed>,
    /// How many of them are PUBACKs (the 5.0 Receive Maximum counts them).
    pubacks: usize,
}

impl OwedAcks {
    /// Owes `ack` for `packet_id` (with 5.0 reason `code`) once
    /// `durability` is settled.
    pub fn push(&mut self, ack: Ack, packet_id: u16, code: u8, durability: Durability) {
        if ack == Ack::Puback {
            self.pubacks += 1;
        }
        self.queue.push_back(Owed {
            ack,
            packet_id,
            code,
            durability,
        });
    }

    /// Acknowledgements owed for QoS 1 PUBLISH (PUBACK not yet sent).
    pub fn pubacks(&self) -> usize {
        self.pubacks
    }

    fn take_front(&mut self) -> Option<Owed> {
        let owed = self.queue.pop_front()?;
        if owed.ack == Ack::Puback {
            self.pubacks -= 1;
        }
        Some(owed)
    }

    /// The oldest acknowledgement, if its write has settled.
    pub fn pop_settled(&mut self) -> Option<Settled> {
        let front = self.queue.front_mut()?;
        let written = match &mut front.durability {
            Durability::Done => true,
            Durability::Failed => false,
            Durability::Pending(rx) => match rx.try_recv() {
                Ok(written) => written,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Closed) => false,
            },
        };
        let owed = self.take_front()?;
        Some(Settled {
            ack: owed.ack,
            packet_id: owed.packet_id,
            code: owed.code,
            written,
        })
    }

    /// True when the oldest acknowledgement still waits for Redis.
    pub fn is_waiting(&self) -> bool {
        matches!(
            self.queue.front(),
            Some(Owed {
                durability: Durability::Pending(_),
                ..
            })
        )
    }

    /// Resolves when the oldest pending write settles.
    pub async fn front_settled(&mut self) {
        if let Some(Owed {
            durability: Durability::Pending(rx),
            ..
        }) = self.queue.front_mut()
        {
            let settled = (&mut *rx).await.unwrap_or(false);
            // Keep the outcome for pop_settled.
            self.queue[0].durability = if settled {
                Durability::Done
            } else {
                Durability::Failed
            };
        }
    }

    /// Waits for every owed write; returns those that failed.
    pub async fn settle_all(&mut self) -> Vec<Settled> {
        let mut failed = Vec::new();
        while let Some(owed) = self.take_front() {
            if !owed.durability.wait().await {
                failed.push(Settled {
                    ack: owed.ack,
                    packet_id: owed.packet_id,
                    code: owed.code,
                    written: false,
                });
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::oneshot;

    use super::*;

    #[tokio::test]
    async fn acknowledgements_leave_in_order_once_written() {
        let mut owed = OwedAcks::default();
        let (tx, rx) = oneshot::channel();
        owed.push(Ack::Puback, 1, 0, Durability::Pending(rx));
        owed.push(Ack::Pubrec, 2, 0, Durability::Done);
        assert_eq!(owed.pop_settled(), None, "the older write is still pending");
        assert!(owed.is_waiting());
        tx.send(true).unwrap();
        owed.front_settled().await;
        assert_eq!(
            owed.pop_settled().map(|s| (s.packet_id, s.written)),
            Some((1, true))
        );
        assert_eq!(
            owed.pop_settled().map(|s| (s.packet_id, s.written)),
            Some((2, true))
        );
        assert_eq!(owed.pop_settled(), None);
    }

    #[tokio::test]
    async fn a_failed_write_is_reported_not_acknowledged() {
        let mut owed = OwedAcks::default();
        let (tx, rx) = oneshot::channel::<bool>();
        owed.push(Ack::Pubrec, 7, 0, Durability::Pending(rx));
        drop(tx);
        let failed = owed.settle_all().await;
        assert_eq!(failed.len(), 1);
        assert!(!failed[0].written);
    }
}
