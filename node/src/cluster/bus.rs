//! Moving publishes between nodes over Redis Streams.
//!
//! **Routed** (default): every node has an inbox stream. A publish is
//! appended once to the inbox of each other node whose route set matches its
//! topic. **Broadcast**: one cluster-wide stream that every node reads,
//! skipping its own entries — simpler, but every node pays for every
//! message.
//!
//! Writes are batched: the [`Forwarder`] takes every publish waiting in its
//! channel, packs the messages for one destination into one stream entry,
//! and sends all entries in one pipeline. A QoS 1/2 publisher is answered
//! only after that pipeline succeeded, so an acknowledged message is in
//! Redis. Messages read from an inbox are delivered to local clients only
//! and never forwarded again, so there are no loops.
//!
//! Inboxes also carry control entries: "release client X" when another node
//! claims X's session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, MultiplexedConnection};
use tokio::sync::{mpsc, oneshot};

use super::metrics::RedisOp;
use super::redis_value::{self as rv, StreamEntry};
use super::{keys, wire, Cluster, Mode};
use crate::broker::Broker;
use crate::message::{ClientId, Message};

/// Most publishes packed into one pipeline.
const MAX_BATCH: usize = 1024;
/// Most entries read from the streams at a time.
const READ_COUNT: usize = 256;
/// Trim the inbox after this many entries read...
const TRIM_EVERY_ENTRIES: usize = 1024;
/// ...or this long after the last trim, whichever comes first.
const TRIM_EVERY: Duration = Duration::from_millis(100);
/// How long a blocking read waits before looping (and noticing shutdown).
pub const READ_BLOCK: Duration = Duration::from_millis(1000);

/// Field of a stream entry holding a batch of messages.
const FIELD_MESSAGES: &str = "m";
/// Field of a stream entry naming the node that wrote it (broadcast).
const FIELD_ORIGIN: &str = "o";
/// Field of an inbox entry asking the node to release a client's session.
const FIELD_RELEASE: &str = "release";
/// Field of an inbox entry asking the node to drain a client's queue.
const FIELD_DRAIN: &str = "drain";

/// One publish on its way to other nodes.
pub struct Forward {
    /// The message.
    pub message: Arc<Message>,
    /// Destination nodes (routed mode; empty in broadcast mode).
    pub destinations: Vec<ClientId>,
    /// Told whether the write reached Redis (QoS 1/2 only).
    pub written: Option<oneshot::Sender<bool>>,
}

/// The task that writes forwarded publishes to Redis in batches.
pub struct Forwarder {
    cluster: Arc<Cluster>,
    connection: ConnectionManager,
    queue: mpsc::Receiver<Forward>,
}

impl Forwarder {
    /// A forwarder draining `queue`.
    pub fn new(
        cluster: Arc<Cluster>,
        connection: ConnectionManager,
        queue: mpsc::Receiver<Forward>,
    ) -> Forwarder {
        Forwarder {
            cluster,
            connection,
            queue,
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while self.queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
            let ok = self.write(&batch).await;
            for forward in batch.drain(..) {
                if let Some(written) = forward.written {
                    let _ = written.send(ok);
                }
            }
        }
    }

    async fn write(&mut self, batch: &[Forward]) -> bool {
        let maxlen = self.cluster.options.stream_maxlen;
        let mut pipe = redis::pipe();
        match self.cluster.mode {
            Mode::Routed => {
                let mut by_node: HashMap<&str, Vec<&Arc<Message>>> = HashMap::new();
                for forward in batch {
                    for node in &forward.destinations {
                        by_node.entry(node).or_default().push(&forward.message);
                    }
                }
                for (node, messages) in by_node {
                    pipe.cmd("XADD")
                        .arg(keys::inbox(node))
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(maxlen)
                        .arg("*")
                        .arg(FIELD_MESSAGES)
                        .arg(wire::encode_batch(messages).as_ref())
                        .ignore();
                }
            }
            Mode::Broadcast => {
                pipe.cmd("XADD")
                    .arg(keys::bus())
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(maxlen)
                    .arg("*")
                    .arg(FIELD_ORIGIN)
                    .arg(&*self.cluster.node_id)
                    .arg(FIELD_MESSAGES)
                    .arg(wire::encode_batch(batch.iter().map(|f| &f.message)).as_ref())
                    .ignore();
            }
        }
        let metrics = &self.cluster.metrics;
        let written = pipe.query_async::<()>(&mut self.connection);
        match metrics.timed(RedisOp::Forward, written).await {
            Ok(()) => {
                metrics.appended.inc_by(batch.len() as u64);
                true
            }
            Err(error) => {
                tracing::warn!(%error, messages = batch.len(), "forwarding to other nodes failed");
                false
            }
        }
    }
}

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

/// Where the reader has got to in each stream it follows.
struct Cursors {
    inbox: String,
    routes: String,
    bus: String,
}

/// The task that reads this node's inbox (and the route log, and in
/// broadcast mode the shared stream) and acts on what it finds.
pub struct InboxReader {
    cluster: Arc<Cluster>,
    broker: Arc<Broker>,
    client: redis::Client,
    /// For trimming and cursor writes, off the blocking connection.
    writer: ConnectionManager,
    cursors: Cursors,
    /// Entries read since the inbox was last trimmed.
    untrimmed: usize,
    /// When the inbox was last trimmed.
    last_trim: std::time::Instant,
}

impl InboxReader {
    /// A reader starting after the given route-log and bus positions.
    pub fn new(
        cluster: Arc<Cluster>,
        broker: Arc<Broker>,
        client: redis::Client,
        writer: ConnectionManager,
        route_position: String,
        bus_position: String,
    ) -> InboxReader {
        InboxReader {
            cluster,
            broker,
            client,
            writer,
            cursors: Cursors {
                inbox: "0-0".into(),
                routes: route_position,
                bus: bus_position,
            },
            untrimmed: 0,
            last_trim: std::time::Instant::now(),
        }
    }

    /// Reads forever, reconnecting with backoff when Redis goes away.
    pub async fn run(mut self) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut connection = match self.connect().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, "inbox reader cannot reach Redis; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                match self.read_once(&mut connection).await {
                    Ok(()) => backoff = Duration::from_millis(50),
                    Err(error) => {
                        tracing::warn!(%error, "inbox read failed; reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        break;
                    }
                }
            }
        }
    }

    /// A connection of its own: a blocking read would stall every command
    /// queued behind it on a shared one.
    async fn connect(&self) -> redis::RedisResult<MultiplexedConnection> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(self.cluster.options.redis_timeout)
            .set_response_timeout(READ_BLOCK + self.cluster.options.redis_timeout);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    async fn read_once(
        &mut self,
        connection: &mut MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(READ_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(keys::inbox(&self.cluster.node_id))
            .arg(keys::route_log());
        if self.cluster.mode == Mode::Broadcast {
            cmd.arg(keys::bus());
        }
        cmd.arg(&self.cursors.inbox).arg(&self.cursors.routes);
        if self.cluster.mode == Mode::Broadcast {
            cmd.arg(&self.cursors.bus);
        }
        let reply: redis::Value = cmd.query_async(connection).await?;
        let streams = rv::xread_reply(reply)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::TypeError, e.0)))?;
        for (stream, entries) in streams {
            let Some(last) = entries.last().map(|e| e.id.clone()) else {
                continue;
            };
            if stream == keys::route_log() {
                self.on_route_changes(&entries).await;
                self.cursors.routes = last;
            } else if stream == keys::bus() {
                self.on_bus(&entries).await;
                self.cursors.bus = last;
                self.save_bus_cursor().await;
            } else {
                self.on_inbox(&entries).await;
                self.cursors.inbox = last;
                self.untrimmed += entries.len();
                if self.untrimmed >= TRIM_EVERY_ENTRIES || self.last_trim.elapsed() >= TRIM_EVERY {
                    self.trim_inbox().await;
                }
            }
        }
        Ok(())
    }

    async fn on_route_changes(&mut self, entries: &[StreamEntry]) {
        let mut reload = false;
        for entry in entries {
            reload |= entry.get(b"op").is_some_and(|op| op.as_ref() == b"drop");
            self.cluster.routes.apply(entry);
        }
        if reload {
            if let Err(error) = self.cluster.routes.reload(&mut self.writer).await {
                tracing::warn!(%error, "route table reload failed");
            }
        }
    }

    async fn on_inbox(&self, entries: &[StreamEntry]) {
        for entry in entries {
            if let Some(client_id) = entry.get(FIELD_RELEASE.as_bytes()) {
                let client_id: ClientId = String::from_utf8_lossy(client_id).into();
                self.broker.release_session(&client_id).await;
            }
            if let Some(client_id) = entry.get(FIELD_DRAIN.as_bytes()) {
                let client_id: ClientId = String::from_utf8_lossy(client_id).into();
                self.broker.drain_session(&client_id);
            }
            self.deliver(entry).await;
        }
    }

    async fn on_bus(&self, entries: &[StreamEntry]) {
        let me = self.cluster.node_id.as_bytes();
        for entry in entries {
            if entry
                .get(FIELD_ORIGIN.as_bytes())
                .is_some_and(|o| o.as_ref() != me)
            {
                self.deliver(entry).await;
            }
        }
    }

    async fn deliver(&self, entry: &StreamEntry) {
        let Some(raw) = entry.get(FIELD_MESSAGES.as_bytes()) else {
            return;
        };
        match wire::decode_batch(raw.clone()) {
            Ok(messages) => {
                self.cluster.metrics.read.inc_by(messages.len() as u64);
                for message in messages {
                    self.broker.deliver_from_cluster(message).await;
                }
            }
            Err(error) => tracing::warn!(%error, id = %entry.id, "unreadable stream entry skipped"),
        }
    }

    /// Drops what has been read, so the inbox holds (nearly) only unread
    /// entries: what a survivor takes over if this node dies. Entries read
    /// but not yet trimmed would be queued again for adopted sessions — at
    /// most [`TRIM_EVERY`] worth, delivered twice rather than lost.
    async fn trim_inbox(&mut self) {
        self.untrimmed = 0;
        self.last_trim = std::time::Instant::now();
        let Some(min_id) = rv::next_stream_id(&self.cursors.inbox) else {
            return;
        };
        let trimmed: redis::RedisResult<redis::Value> = redis::cmd("XTRIM")
            .arg(keys::inbox(&self.cluster.node_id))
            .arg("MINID")
            .arg(min_id)
            .query_async(&mut self.writer)
            .await;
        if let Err(error) = trimmed {
            tracing::debug!(%error, "inbox trim failed; entries are trimmed next time");
        }
    }

    async fn save_bus_cursor(&mut self) {
        let saved: redis::RedisResult<redis::Value> = redis::cmd("SET")
            .arg(keys::bus_cursor(&self.cluster.node_id))
            .arg(&self.cursors.bus)
            .query_async(&mut self.writer)
            .await;
        if let Err(error) = saved {
            tracing::debug!(%error, "bus cursor not saved");
        }
    }
}
