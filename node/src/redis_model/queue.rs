//! Commands that write a persistent session's queue and a publisher's
//! QoS 2 record, shared by the store, the forwarder, the inbox reader and
//! recovery (they go into their pipelines).

use std::time::Duration;

use redis::Value;

use super::scripts::{evalsha, Scripts};
use super::{keys, value as rv, wire};
use crate::message::{unix_millis, Delivery, Qos, QueueId};
use crate::session_state::SessionOwner;

/// How long a session remembers the QoS 2 publish ids queued for it: a
/// re-run of an unfinished QoS 2 fan-out within this window is not queued
/// twice.
pub const SEEN_WINDOW: Duration = Duration::from_secs(3600);

/// What queueing one delivery for a persistent session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Queued under this entry id.
    Queued(QueueId),
    /// Its publish id was queued for the session already (exactly once).
    Duplicate,
    /// The session's queue holds its bound: dropped and counted.
    Full,
    /// QoS 0: not queued.
    Qos0,
    /// The client has no persistent session (anymore).
    NoSession,
}

/// The command that queues `delivery` for `client_id`'s persistent session.
pub fn enqueue_cmd(
    scripts: &Scripts,
    max_queued: usize,
    client_id: &str,
    delivery: &Delivery,
) -> redis::Cmd {
    let session = keys::session(client_id);
    let queue = keys::queue(client_id);
    let seen = keys::seen(client_id);
    let mut cmd = evalsha(&scripts.enqueue, &[&session, &queue, &seen]);
    // A retained message answering a SUBSCRIBE is a new delivery even when
    // the same publish reached the session live: no exactly-once check.
    let publish_id = match delivery.qos {
        Qos::ExactlyOnce if !delivery.retain => {
            delivery.message.publish_id.as_deref().unwrap_or("")
        }
        _ => "",
    };
    cmd.arg(max_queued)
        .arg(delivery.qos.as_u8())
        .arg(publish_id)
        .arg(wire::encode_delivery(delivery).as_ref())
        .arg(unix_millis())
        .arg(SEEN_WINDOW.as_millis() as u64);
    cmd
}

/// Reads the reply of an [`enqueue_cmd`].
pub fn parse_enqueued(reply: &Value) -> Enqueued {
    match rv::bulk(reply).as_deref() {
        Some(b"d") => Enqueued::Duplicate,
        Some(b"f") => Enqueued::Full,
        Some(b"z") => Enqueued::Qos0,
        Some(b"n") | None => Enqueued::NoSession,
        Some(id) => Enqueued::Queued(String::from_utf8_lossy(id).into()),
    }
}

/// The command that records a publisher's incoming QoS 2 message
/// (`record` empty: forgets it).
pub fn qos2_record_cmd(
    scripts: &Scripts,
    owner: &SessionOwner,
    packet_id: u16,
    record: &str,
) -> redis::Cmd {
    let session = keys::session(&owner.client_id);
    let qos2 = keys::incoming_qos2(&owner.client_id);
    let mut cmd = evalsha(&scripts.qos2_record, &[&session, &qos2]);
    cmd.arg(owner.epoch).arg(packet_id).arg(record);
    cmd
}

/// The `qos2` hash value of an incoming QoS 2 message whose fan-out is
/// `done` (or may be unfinished).
pub fn qos2_record(publish_id: &str, done: bool) -> String {
    format!("{}:{publish_id}", if done { "d" } else { "p" })
}
