//! Commands that write a persistent session's queue and a publisher's
//! QoS 2 record, shared by the store, the forwarder, the inbox reader and
//! recovery (they go into their pipelines).
//!
//! A session's queue is bounded by a [`QueueBound`]: entries, and bytes of
//! topic plus payload. The byte count lives in the session hash (field
//! `qbytes`, so every script touching it stays in the session's hash
//! slot). What is guaranteed, as long as only the scripts change a queue:
//! `ENQUEUE` adds each entry's size, `SESSION_PROGRESS` subtracts the
//! sizes of the entries its deletes actually removed (an entry deleted
//! twice is subtracted once), and a claim that empties the queue or a
//! discard resets it; so the count is exactly the bytes queued. Not
//! guaranteed: entries deleted by hand, or queued by a version without the
//! count, make it drift — it is then reset whenever the queue is found
//! empty, so drift can delay a session's deliveries until its client has
//! drained its queue, never refuse them for good. A refused delivery is
//! dropped and counted ([`Enqueued::Full`]); nothing queued is evicted.

use std::time::Duration;

use redis::Value;

use super::scripts::{evalsha, Scripts};
use super::{keys, value as rv, wire};
use crate::limits::queue::{queued_size, QueueBound, QueueFull};
use crate::message::{unix_millis, ClientId, Delivery, Qos, QueueId};
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
    /// The session's queue holds its bound (of entries or of bytes):
    /// dropped and counted.
    Full(QueueFull),
    /// QoS 0: not queued.
    Qos0,
    /// The client has no persistent session (anymore).
    NoSession,
}

/// The command that queues `delivery` for `client_id`'s persistent session,
/// within `bound`.
pub fn enqueue_cmd(
    scripts: &Scripts,
    bound: QueueBound,
    node_id: &str,
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
    cmd.arg(bound.messages)
        .arg(delivery.qos.as_u8())
        .arg(publish_id)
        .arg(wire::encode_delivery(delivery).as_ref())
        .arg(unix_millis())
        .arg(SEEN_WINDOW.as_millis() as u64)
        .arg(node_id)
        .arg(bound.bytes)
        .arg(queued_size(delivery));
    cmd
}

/// Reads the reply of an [`enqueue_cmd`].
pub fn parse_enqueued(reply: &Value) -> Enqueued {
    parse_enqueue_reply(reply).0
}

/// Reads the reply of an [`enqueue_cmd`], with the node the session is
/// connected to when that is not the queueing node: that node must be
/// told (`send_drain`), or its client gets the entry only at its next
/// claim.
pub fn parse_enqueue_reply(reply: &Value) -> (Enqueued, Option<ClientId>) {
    match reply {
        Value::Array(parts) => {
            let enqueued = parts.first().map_or(Enqueued::NoSession, parse_status);
            let owner = parts
                .get(1)
                .and_then(rv::bulk)
                .map(|o| ClientId::from(String::from_utf8_lossy(&o).as_ref()));
            (enqueued, owner)
        }
        other => (parse_status(other), None),
    }
}

fn parse_status(reply: &Value) -> Enqueued {
    match rv::bulk(reply).as_deref() {
        Some(b"d") => Enqueued::Duplicate,
        Some(b"f") => Enqueued::Full(QueueFull::Messages),
        Some(b"b") => Enqueued::Full(QueueFull::Bytes),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_plain_reply_names_no_other_node() {
        assert_eq!(
            parse_enqueue_reply(&bulk("5-1")),
            (Enqueued::Queued("5-1".into()), None)
        );
        assert_eq!(parse_enqueue_reply(&bulk("d")), (Enqueued::Duplicate, None));
        assert_eq!(
            parse_enqueued(&bulk("f")),
            Enqueued::Full(QueueFull::Messages)
        );
        assert_eq!(parse_enqueued(&bulk("b")), Enqueued::Full(QueueFull::Bytes));
        assert_eq!(
            parse_enqueue_reply(&Value::Nil),
            (Enqueued::NoSession, None)
        );
    }

    #[test]
    fn an_entry_for_a_session_connected_elsewhere_names_that_node() {
        let reply = Value::Array(vec![bulk("7-0"), bulk("node-b")]);
        assert_eq!(
            parse_enqueue_reply(&reply),
            (Enqueued::Queued("7-0".into()), Some("node-b".into()))
        );
        assert_eq!(parse_enqueued(&reply), Enqueued::Queued("7-0".into()));
    }
}
