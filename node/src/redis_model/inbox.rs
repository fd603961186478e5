//! The entries of node inboxes (and of the broadcast stream): field names,
//! and the control entries one node sends another.

use redis::aio::ConnectionManager;

use super::keys;

/// Field of a stream entry holding a batch of messages.
pub const FIELD_MESSAGES: &str = "m";
/// Field of a stream entry naming the node that wrote it (broadcast).
pub const FIELD_ORIGIN: &str = "o";
/// Field of an inbox entry asking the node to release a client's session.
pub const FIELD_RELEASE: &str = "release";
/// Field of an inbox entry asking the node to drain a client's queue.
pub const FIELD_DRAIN: &str = "drain";

/// Asks `owner` to release `client_id`'s session (another node claims it).
pub async fn send_release(
    con: &mut ConnectionManager,
    owner: &str,
    client_id: &str,
) -> redis::RedisResult<()> {
    send_control(con, owner, FIELD_RELEASE, client_id).await
}

/// Tells `owner` that messages were queued for its connected `client_id`.
pub async fn send_drain(
    con: &mut ConnectionManager,
    owner: &str,
    client_id: &str,
) -> redis::RedisResult<()> {
    send_control(con, owner, FIELD_DRAIN, client_id).await
}

async fn send_control(
    con: &mut ConnectionManager,
    owner: &str,
    field: &str,
    client_id: &str,
) -> redis::RedisResult<()> {
    redis::cmd("XADD")
        .arg(keys::inbox(owner))
        .arg("*")
        .arg(field)
        .arg(client_id)
        .query_async::<redis::Value>(con)
        .await
        .map(|_| ())
}
