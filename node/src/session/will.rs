//! A session's last will: the message, and when it is published.
//!
//! 3.1.1 publishes the will as soon as the connection ends without a
//! DISCONNECT. 5.0 adds the will's properties (carried with the message)
//! and the Will Delay Interval (5.0 §3.1.3.2.2): the will waits that long,
//! or until the session ends if that is sooner, and is not published at
//! all if a new connection resumes the session meanwhile.
//!
//! Guaranteed: a delayed will is published at most once, and not when the
//! session was claimed again (on any node: the claim moves the session's
//! epoch in the store, which is what is checked). Not guaranteed: a will
//! still waiting for its delay when its node dies is not published (the
//! survivor that adopts the session publishes only the wills of clients
//! that were connected).

use std::sync::Arc;
use std::time::Duration;

use astramq_shared::log_text::untrusted;

use crate::broker::Broker;
use crate::message::Message;
use crate::protocol::codec::WillPacket;
use crate::session_state::SessionOwner;

use super::v5::message_properties;

/// A will as the session keeps it.
#[derive(Debug, Clone)]
pub struct Will {
    /// What is published.
    pub message: Arc<Message>,
    /// The 5.0 Will Delay Interval (zero for 3.1.1).
    pub delay: Duration,
}

impl Will {
    /// The will of a CONNECT, with its 5.0 properties.
    pub fn from_packet(will: WillPacket) -> Will {
        let mut message = Message::new(will.topic.as_str(), will.payload, will.qos, will.retain);
        let mut delay = Duration::ZERO;
        if let Some(v5) = will.v5 {
            message.properties = Some(Box::new(message_properties(&v5.properties)));
            delay = Duration::from_secs(u64::from(v5.delay_interval.unwrap_or(0)));
        }
        Will {
            message: Arc::new(message),
            delay,
        }
    }

    /// Publishes the will now, or — with a delay, for a session that
    /// outlives its connection — after `min(delay, session_expiry)`
    /// unless the session is claimed again by then.
    pub async fn publish(
        self,
        broker: &Arc<Broker>,
        owner: &SessionOwner,
        session_expiry: Option<Duration>,
    ) {
        let wait = session_expiry.map_or(self.delay, |expiry| self.delay.min(expiry));
        if wait.is_zero() {
            if let Err(error) = broker.publish_and_wait(self.message).await {
                tracing::warn!(%error, client_id = %untrusted(&owner.client_id), "will not published");
            }
            return;
        }
        let broker = broker.clone();
        let owner = owner.clone();
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            // Claimed again since (a newer epoch): the client is back. Gone
            // (expired meanwhile) or still ours: the will is due.
            match broker.store().session_epoch(&owner.client_id).await {
                Ok(Some(epoch)) if epoch != owner.epoch => return,
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, client_id = %untrusted(&owner.client_id), "delayed will not published: store unavailable");
                    return;
                }
            }
            if broker.registry().read().contains_key(&owner.client_id) {
                return;
            }
            if let Err(error) = broker.publish_and_wait(self.message).await {
                tracing::warn!(%error, client_id = %untrusted(&owner.client_id), "delayed will not published");
            }
        });
    }
}
