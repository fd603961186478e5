//! The cluster's retained messages: payloads in Redis, and on every node
//! an index of the topics that have one, so a SUBSCRIBE fetches (`HMGET`)
//! only the messages its filters can match.
//!
//! Redis keys (one hash slot: see [`keys::retained_log`]):
//! `astramq:retained` topic → record; `{astramq:retained}:meta` with the
//! `bytes` stored and the `seq` of the last change; `{astramq:retained}:log`
//! a stream of topic **set changes** (a topic got its first message, or
//! was cleared), each with its `seq`. Replacing a topic's message changes
//! no topic set and is not logged.
//!
//! Guarantees:
//! - **Limits are cluster-wide and atomic**: one Lua script checks the
//!   count and bytes and writes the message, the counters and the log
//!   entry in one step, so nodes racing for the last slot cannot both win.
//! - **A retained write acknowledged anywhere is seen by any later
//!   SUBSCRIBE on any node**: before matching, the node reads the log past
//!   its cursor (atomically with the current `seq`), so its index holds
//!   every topic set change that completed before the SUBSCRIBE began.
//! - **Gaps are detected, not guessed**: entries carry consecutive `seq`
//!   numbers; a missing one (the log was trimmed past the node's cursor,
//!   Redis restarted empty) makes the node reload the whole topic list
//!   once. A topic in the index whose message is gone returns nothing.
//!
//! Not guaranteed: order between a retained write and a SUBSCRIBE that
//! run at the same time (either outcome is correct MQTT); the log is
//! bounded (`LOG_MAXLEN`), a node that falls that far behind reloads.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;

use super::index::TopicIndex;
use super::{RetainOutcome, RetainRefusal, RetainedLimits};
use crate::message::Message;
use crate::redis_model::metrics::{ClusterMetrics, RedisOp};
use crate::redis_model::{keys, value as rv, wire};

/// Why a retained read or write failed.
#[derive(Debug, thiserror::Error)]
pub enum RetainedError {
    /// Redis could not be reached or refused the command.
    #[error("retained messages: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with something unexpected.
    #[error("retained messages: {0}")]
    Reply(#[from] rv::UnexpectedReply),
    /// A stored message could not be decoded.
    #[error("retained messages: {0}")]
    Record(#[from] wire::WireError),
}

/// Stores, replaces or clears one topic's retained message.
/// KEYS: hash, meta, log. ARGV: topic, record ("" clears), max messages,
/// max bytes, log length bound.
/// Returns 's' (stored), 'c' (cleared), 'm' / 'b' (refused: messages /
/// bytes limit).
const SET: &str = r#"
local topic = ARGV[1]
local exists = redis.call('HEXISTS', KEYS[1], topic) == 1
local op
if ARGV[2] == '' then
  if not exists then return 'c' end
  local old = redis.call('HSTRLEN', KEYS[1], topic)
  redis.call('HDEL', KEYS[1], topic)
  redis.call('HINCRBY', KEYS[2], 'bytes', -(old + #topic))
  op = 'c'
else
  local size = #ARGV[2] + #topic
  if exists then
    local old = redis.call('HSTRLEN', KEYS[1], topic)
    redis.call('HSET', KEYS[1], topic, ARGV[2])
    redis.call('HINCRBY', KEYS[2], 'bytes', size - old - #topic)
    return 's'
  end
  if redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then return 'm' end
  local bytes = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
  if bytes + size > tonumber(ARGV[4]) then return 'b' end
  redis.call('HSET', KEYS[1], topic, ARGV[2])
  redis.call('HINCRBY', KEYS[2], 'bytes', size)
  op = 's'
end
local seq = redis.call('HINCRBY', KEYS[2], 'seq', 1)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[5], '*', 's', seq, 'o', op, 't', topic)
return op
"#;

/// A consistent snapshot to start (or restart) an index from; counts the
/// bytes of data stored before the counters existed.
/// KEYS: hash, meta, log. Returns {seq, last log id, topics}.
const LOAD: &str = r#"
if redis.call('HEXISTS', KEYS[2], 'bytes') == 0 then
  local total = 0
  for _, t in ipairs(redis.call('HKEYS', KEYS[1])) do
    total = total + #t + redis.call('HSTRLEN', KEYS[1], t)
  end
  redis.call('HSET', KEYS[2], 'bytes', total)
end
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local id = '0-0'
if last[1] then id = last[1][1] end
return {redis.call('HGET', KEYS[2], 'seq') or '0', id, redis.call('HKEYS', KEYS[1])}
"#;

/// The log past a cursor, with the current `seq`, in one step.
/// KEYS: meta, log. ARGV: cursor (exclusive), count.
/// Returns {seq, entries}.
const CATCH_UP: &str = r#"
return {redis.call('HGET', KEYS[1], 'seq') or '0',
        redis.call('XRANGE', KEYS[2], '(' .. ARGV[1], '+', 'COUNT', ARGV[2])}
"#;

/// Bound of the change log, in entries (approximate trimming).
const LOG_MAXLEN: usize = 100_000;

/// Log entries read per call.
const CATCH_UP_PAGE: usize = 1_000;

/// Fields per `HMGET` when fetching matched messages.
const FETCH_CHUNK: usize = 1_000;

/// How often the index is brought up to date without a SUBSCRIBE asking,
/// so catching up at a SUBSCRIBE stays short.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The node's index and how far into the log it is.
#[derive(Default)]
struct Follower {
    /// Topics with a retained message, as of `seq`.
    topics: TopicIndex<Arc<str>>,
    /// Id of the last log entry applied.
    cursor: String,
    /// `seq` of the last log entry applied.
    seq: u64,
    /// False until the first snapshot is loaded (and after a gap).
    loaded: bool,
}

/// What reading the log found.
enum Caught {
    /// The index is at the current `seq`.
    UpToDate,
    /// A full page was applied: read again.
    More,
    /// Entries are missing: reload.
    Gap,
}

/// Retained messages of a cluster.
pub struct RedisRetained {
    connection: ConnectionManager,
    metrics: Arc<ClusterMetrics>,
    limits: RetainedLimits,
    /// The index; the lock also makes one task at a time read the log.
    follower: tokio::sync::Mutex<Follower>,
    set: redis::Script,
    load: redis::Script,
    catch_up: redis::Script,
}

impl RedisRetained {
    /// Retained messages over `connection`, bounded by `limits`.
    pub fn new(
        connection: ConnectionManager,
        metrics: Arc<ClusterMetrics>,
        limits: RetainedLimits,
    ) -> RedisRetained {
        RedisRetained {
            connection,
            metrics,
            limits,
            follower: tokio::sync::Mutex::new(Follower::default()),
            set: redis::Script::new(SET),
            load: redis::Script::new(LOAD),
            catch_up: redis::Script::new(CATCH_UP),
        }
    }

    /// Stores, replaces or clears `message`'s topic (see [`SET`]).
    pub async fn set(&self, message: &Message) -> Result<RetainOutcome, RetainedError> {
        let record = match message.payload.is_empty() {
            true => bytes::Bytes::new(),
            false => wire::encode_message(message),
        };
        let mut invocation = self.set.key(keys::retained());
        invocation
            .key(keys::retained_meta())
            .key(keys::retained_log())
            .arg(&*message.topic)
            .arg(record.as_ref())
            .arg(self.limits.max_messages)
            .arg(self.limits.max_bytes)
            .arg(LOG_MAXLEN);
        let mut con = self.connection.clone();
        let reply: String = self
            .metrics
            .timed(RedisOp::Retained, invocation.invoke_async(&mut con))
            .await?;
        Ok(match reply.as_str() {
            "s" => RetainOutcome::Stored,
            "c" => RetainOutcome::Cleared,
            "m" => RetainOutcome::Refused(RetainRefusal::Messages),
            "b" => RetainOutcome::Refused(RetainRefusal::Bytes),
            _ => return Err(rv::UnexpectedReply("retained set reply").into()),
        })
    }

    /// The retained messages any of `filters` matches, each once, read
    /// after bringing the index up to date.
    pub async fn matching(&self, filters: &[&str]) -> Result<Vec<Arc<Message>>, RetainedError> {
        let topics: Vec<Arc<str>> = {
            let mut follower = self.follower.lock().await;
            self.sync(&mut follower).await?;
            let mut seen = HashSet::new();
            filters
                .iter()
                .flat_map(|f| follower.topics.matching(f))
                .filter(|t| seen.insert(Arc::clone(t)))
                .cloned()
                .collect()
        };
        self.fetch(&topics).await
    }

    /// Keeps the index close to Redis between SUBSCRIBEs; runs until the
    /// task is dropped.
    pub async fn follow_periodically(self: Arc<Self>) {
        let mut tick = tokio::time::interval(FOLLOW_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut follower = self.follower.lock().await;
            if let Err(error) = self.sync(&mut follower).await {
                tracing::debug!(%error, "retained index not brought up to date");
            }
        }
    }

    /// Loads the index if needed, then applies the log until up to date.
    async fn sync(&self, follower: &mut Follower) -> Result<(), RetainedError> {
        // Bounded: a reload happens at most once per call.
        let mut reloaded = false;
        loop {
            if !follower.loaded {
                self.reload(follower).await?;
                reloaded = true;
            }
            match self.read_log(follower).await? {
                Caught::UpToDate => return Ok(()),
                Caught::More => {}
                Caught::Gap if reloaded => {
                    return Err(rv::UnexpectedReply("retained log out of step").into())
                }
                Caught::Gap => follower.loaded = false,
            }
        }
    }

    /// Replaces the index with a snapshot of every topic.
    async fn reload(&self, follower: &mut Follower) -> Result<(), RetainedError> {
        let mut invocation = self.load.key(keys::retained());
        invocation
            .key(keys::retained_meta())
            .key(keys::retained_log());
        let mut con = self.connection.clone();
        let reply: Value = self
            .metrics
            .timed(RedisOp::Retained, invocation.invoke_async(&mut con))
            .await?;
        let mut parts = rv::array(reply)?.into_iter();
        let seq = parts.next().and_then(|v| rv::int(&v));
        let cursor = parts.next().as_ref().and_then(rv::bulk);
        let topics = rv::bulk_list(parts.next().as_ref())?;
        let (Some(seq), Some(cursor)) = (seq, cursor) else {
            return Err(rv::UnexpectedReply("retained snapshot").into());
        };
        follower.topics.clear();
        for topic in topics {
            let topic: Arc<str> = String::from_utf8_lossy(&topic).into();
            follower.topics.insert(&topic, topic.clone());
        }
        follower.seq = seq.max(0) as u64;
        follower.cursor = String::from_utf8_lossy(&cursor).into_owned();
        follower.loaded = true;
        tracing::debug!(topics = follower.topics.len(), "retained index loaded");
        Ok(())
    }

    /// Applies one page of the log past the cursor.
    async fn read_log(&self, follower: &mut Follower) -> Result<Caught, RetainedError> {
        let mut invocation = self.catch_up.key(keys::retained_meta());
        invocation
            .key(keys::retained_log())
            .arg(&follower.cursor)
            .arg(CATCH_UP_PAGE);
        let mut con = self.connection.clone();
        let reply: Value = self
            .metrics
            .timed(RedisOp::Retained, invocation.invoke_async(&mut con))
            .await?;
        let mut parts = rv::array(reply)?.into_iter();
        let current = parts
            .next()
            .and_then(|v| rv::int(&v))
            .ok_or(rv::UnexpectedReply("retained log seq"))?;
        let entries = rv::stream_entries(&parts.next().unwrap_or(Value::Nil))?;
        let full_page = entries.len() >= CATCH_UP_PAGE;
        for entry in entries {
            let change = LogChange::parse(&entry)?;
            if change.seq != follower.seq + 1 {
                return Ok(Caught::Gap);
            }
            match change.cleared {
                true => drop(follower.topics.remove(&change.topic)),
                false => drop(follower.topics.insert(&change.topic, change.topic.clone())),
            }
            follower.seq = change.seq;
            follower.cursor = entry.id;
        }
        Ok(match (full_page, follower.seq == current.max(0) as u64) {
            (true, _) => Caught::More,
            (false, true) => Caught::UpToDate,
            (false, false) => Caught::Gap,
        })
    }

    /// The current messages of `topics` (those cleared meanwhile are
    /// skipped), a pipeline of bounded `HMGET`s.
    async fn fetch(&self, topics: &[Arc<str>]) -> Result<Vec<Arc<Message>>, RetainedError> {
        if topics.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for chunk in topics.chunks(FETCH_CHUNK) {
            let cmd = pipe.cmd("HMGET").arg(keys::retained());
            for topic in chunk {
                cmd.arg(&**topic);
            }
        }
        let mut con = self.connection.clone();
        let replies: Vec<Value> = self
            .metrics
            .timed(RedisOp::Retained, pipe.query_async(&mut con))
            .await?;
        let mut out = Vec::with_capacity(topics.len());
        for reply in replies {
            for value in rv::array(reply)? {
                if let Some(record) = rv::bulk(&value) {
                    out.push(Arc::new(wire::decode_message(record)?));
                }
            }
        }
        Ok(out)
    }
}

/// One entry of the change log.
#[derive(Debug, PartialEq, Eq)]
struct LogChange {
    seq: u64,
    cleared: bool,
    topic: Arc<str>,
}

impl LogChange {
    fn parse(entry: &rv::StreamEntry) -> Result<LogChange, rv::UnexpectedReply> {
        let bad = rv::UnexpectedReply("retained log entry");
        let seq = entry.get(b"s").and_then(|s| rv::parse_u64(s)).ok_or(bad)?;
        let cleared = match entry.get(b"o").map(|o| o.as_ref()) {
            Some(b"s") => false,
            Some(b"c") => true,
            _ => return Err(rv::UnexpectedReply("retained log op")),
        };
        let topic = entry
            .get(b"t")
            .ok_or(rv::UnexpectedReply("retained log topic"))?;
        Ok(LogChange {
            seq,
            cleared,
            topic: String::from_utf8_lossy(topic).into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn log_entries_are_parsed_and_checked() {
        let entry = |fields: &[(&'static str, &'static str)]| rv::StreamEntry {
            id: "1-0".into(),
            fields: fields
                .iter()
                .map(|(f, v)| {
                    (
                        Bytes::from_static(f.as_bytes()),
                        Bytes::from_static(v.as_bytes()),
                    )
                })
                .collect(),
        };
        assert_eq!(
            LogChange::parse(&entry(&[("s", "7"), ("o", "c"), ("t", "a/b")])).unwrap(),
            LogChange {
                seq: 7,
                cleared: true,
                topic: "a/b".into()
            }
        );
        assert!(LogChange::parse(&entry(&[("s", "7"), ("o", "x"), ("t", "a")])).is_err());
        assert!(LogChange::parse(&entry(&[("o", "s"), ("t", "a")])).is_err());
        assert!(LogChange::parse(&entry(&[("s", "1"), ("o", "s")])).is_err());
    }
}
