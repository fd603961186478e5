//! Lua scripts for the changes that must be atomic in Redis.
//!
//! Each runs as one Redis command: no other client sees a half-claimed or
//! half-parked session, and the fencing epoch is checked in the same step
//! as the change it guards. Every script touches the keys of **one**
//! session or **one** node (one hash tag), so it also runs on Redis
//! Cluster.

/// Claims a session for a node. Nothing is deleted except what a clean
/// session discards (with the queue's byte count): the queue stays in
/// Redis until its entries are acknowledged, so a claimer that dies right
/// after loses nothing.
/// KEYS: session, subs, inflight, qos2, queue, seen.
/// ARGV: node id, clean start (0/1), will record ("" for none), persistent
/// (0/1: kept when the connection ends), session expiry in seconds (""
/// for never). A claimed session's keys lose any TTL a park gave them.
/// Returns {epoch, previous owner, had persistent state (0/1), subs
/// (flat filter/qos list), inflight (flat id/record list), qos2 (flat
/// id/record list), queue entries (XRANGE reply)}.
pub const CLAIM: &str = r#"
local previous_owner = redis.call('HGET', KEYS[1], 'owner') or ''
local had_state = redis.call('HGET', KEYS[1], 'persistent') == '1'
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local subs, inflight, qos2, queued = {}, {}, {}, {}
if had_state then
  subs = redis.call('HGETALL', KEYS[2])
  inflight = redis.call('HGETALL', KEYS[3])
  qos2 = redis.call('HGETALL', KEYS[4])
  queued = redis.call('XRANGE', KEYS[5], '-', '+')
end
if ARGV[2] == '1' or not had_state then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
  redis.call('HDEL', KEYS[1], 'qbytes')
end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'connected', '1', 'persistent', ARGV[4], 'will', ARGV[3], 'expiry', ARGV[5])
for k = 1, 6 do redis.call('PERSIST', KEYS[k]) end
return {epoch, previous_owner, had_state and 1 or 0, subs, inflight, qos2, queued}
"#;

/// Parks a persistent session whose client went away: what it has queued
/// is in Redis already; this records its subscriptions and the packet ids
/// of its unacknowledged QoS 1 messages (QoS 2 ones are recorded as sent).
/// With a 5.0 session expiry, every key of the session gets it as its TTL
/// (so the session is gone from Redis when it expires, whoever holds it),
/// and the `expiry` field records the interval.
/// KEYS: session, subs, inflight, qos2, queue, seen.
/// ARGV: epoch, n subs, (filter, subscription record)*, n inflight,
/// (packet id, record)*, expiry in seconds ("" for never).
/// Returns 1, or 0 when the epoch is stale (another node owns it now).
pub const PARK: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'connected', '0')
redis.call('HDEL', KEYS[1], 'will')
redis.call('DEL', KEYS[2])
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
local expiry = ARGV[i]
redis.call('HSET', KEYS[1], 'expiry', expiry)
if expiry ~= '' then
  for k = 1, 6 do redis.call('EXPIRE', KEYS[k], math.max(tonumber(expiry), 1)) end
end
return 1
"#;

/// A survivor takes over a dead node's session, unless its client has
/// claimed it elsewhere meanwhile. A 5.0 session with an expiry keeps the
/// TTL its park gave its keys or, connected when its node died, gets it
/// now: its client left at the death.
/// KEYS: session, subs, inflight, qos2, queue, seen. ARGV: dead owner, new
/// owner.
/// Returns {new epoch, milliseconds until it expires (-1: never)}, or 0
/// when the dead node no longer owns it.
pub const ADOPT: &str = r#"
if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'connected', '0')
redis.call('HDEL', KEYS[1], 'will')
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local left = redis.call('PTTL', KEYS[1])
local expiry = redis.call('HGET', KEYS[1], 'expiry') or ''
if left < 0 and expiry ~= '' then
  for k = 1, 6 do redis.call('EXPIRE', KEYS[k], math.max(tonumber(expiry), 1)) end
  left = redis.call('PTTL', KEYS[1])
end
if expiry == '' then left = -1 end
return {epoch, left}
"#;

/// Forgets a clean session that ended, or an expired one (whose keys may
/// be gone already: their TTL ran out).
/// KEYS: session, subs, inflight, qos2, queue, seen. ARGV: epoch.
/// Returns 1, or 0 when a newer claim holds the session.
pub const DISCARD: &str = r#"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch and epoch ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 1
"#;

/// Queues one delivery for a persistent session (connected or not),
/// within the queue's bound of entries and of bytes (topic plus payload,
/// counted in the session hash's `qbytes`; see `redis_model::queue`).
/// KEYS: session, queue, seen.
/// ARGV: max queue length, qos, publish id ("" for none), record, now
/// (ms), how long publish ids are remembered (ms), the queueing node, max
/// queued bytes, this delivery's size.
/// Returns the new entry id, or 'n' (no persistent session), 'z' (QoS 0:
/// not queued), 'd' (this publish id is queued already), 'f' (queue full:
/// entries), 'b' (queue full: bytes); when a new entry is for a session
/// connected to another node, returns {entry id, that node} instead: the
/// caller tells that node to read it. An empty queue resets the count (a
/// count that drifted cannot outlive it). The queue of a session whose
/// keys expire (see [`PARK`]) expires with them, even if created after.
pub const ENQUEUE: &str = r#"
local session = redis.call('HMGET', KEYS[1], 'persistent', 'owner', 'connected', 'qbytes')
if session[1] ~= '1' then return 'n' end
if ARGV[2] == '0' then return 'z' end
local publish_id = ARGV[3]
if publish_id ~= '' and redis.call('ZSCORE', KEYS[3], publish_id) then return 'd' end
local length = redis.call('XLEN', KEYS[2])
if length >= tonumber(ARGV[1]) then return 'f' end
local bytes = tonumber(session[4]) or 0
if length == 0 then bytes = 0 end
local size = tonumber(ARGV[9])
if bytes + size > tonumber(ARGV[8]) then return 'b' end
local id = redis.call('XADD', KEYS[2], '*', 'd', ARGV[4])
redis.call('HSET', KEYS[1], 'qbytes', string.format('%d', bytes + size))
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
if publish_id ~= '' then
  local now = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[3], now, publish_id)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[6]))
  if ttl > 0 then redis.call('PEXPIRE', KEYS[3], ttl) end
end
if session[3] == '1' and session[2] and session[2] ~= ARGV[7] then
  return {id, session[2]}
end
return id
"#;

/// Records where a publisher's incoming QoS 2 message stands.
/// KEYS: session, qos2. ARGV: epoch, packet id, record ("" deletes).
/// Returns 1, or 0 when the epoch is stale.
pub const QOS2_RECORD: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[2], ARGV[2])
else
  redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
end
return 1
"#;

/// A connected session's outgoing progress: in-flight records set and
/// removed, and acknowledged queue entries deleted, their sizes taken off
/// the queue's byte count (only for entries this call removed; an empty
/// queue resets the count).
/// KEYS: session, inflight, queue.
/// ARGV: epoch, n removed, packet id*, n set, (packet id, record)*,
/// (acknowledged entry id, its size)*. Removals go first: a packet id
/// completed and reused in the same report keeps its new record.
/// Returns 1, or 0 when the epoch is stale (then only the acknowledged
/// entries are deleted: the client has them, whoever owns the session).
pub const SESSION_PROGRESS: &str = r#"
local current = redis.call('HGET', KEYS[1], 'epoch') == ARGV[1]
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  if current then redis.call('HDEL', KEYS[2], ARGV[i]) end
  i = i + 1
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  if current then redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
  i = i + 2
end
local freed = 0
while i < #ARGV do
  if redis.call('XDEL', KEYS[3], ARGV[i]) == 1 then freed = freed + tonumber(ARGV[i + 1]) end
  i = i + 2
end
if freed > 0 and redis.call('HEXISTS', KEYS[1], 'qbytes') == 1 then
  if redis.call('XLEN', KEYS[3]) == 0 or redis.call('HINCRBY', KEYS[1], 'qbytes', string.format('%d', -freed)) < 0 then
    redis.call('HDEL', KEYS[1], 'qbytes')
  end
end
return current and 1 or 0
"#;

/// Writes subscription changes of a connected session.
/// KEYS: session, subs. ARGV: epoch, n added, (filter, qos)*, removed filter*.
pub const UPDATE_SUBSCRIPTIONS: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'persistent') ~= '1' then return 1 end
local n = tonumber(ARGV[2])
local i = 3
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
for j = i, #ARGV do redis.call('HDEL', KEYS[2], ARGV[j]) end
return 1
"#;

/// Appends to a node's inbox unless the node has been fenced (it is dead
/// and being recovered) or its inbox holds its bound already. Nothing is
/// ever evicted: a full inbox refuses, and the publish is not acknowledged.
/// KEYS: inbox, fenced. ARGV: max entries, field, value.
/// Returns 1 (appended), 0 (full) or -1 (fenced).
pub const INBOX_APPEND: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
return 1
"#;

/// Appends to a node's own journal (publishes made on it, held there for
/// its connected persistent sessions; see `crate::pin`) unless the node
/// has been fenced — a survivor that adopted its sessions has read the
/// journal, so an entry added after that would be lost — or the journal
/// holds its bound.
/// KEYS: journal, fenced. ARGV: max entries, field, value.
/// Returns the new entry id, 0 (full) or -1 (fenced).
pub const JOURNAL_APPEND: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3])
"#;

/// Writes a node's heartbeat unless the node has been fenced.
/// KEYS: alive, fenced. ARGV: value, TTL (ms). Returns 1, or 0 if fenced.
pub const HEARTBEAT: &str = r#"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Extends a lock held with `token`. KEYS: lock. ARGV: token, TTL (ms).
/// Returns 1, or 0 when the lock is not (any longer) held with the token.
pub const LOCK_RENEW: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#;

/// Releases a lock only if it is held with `token`. KEYS: lock. ARGV: token.
pub const LOCK_RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Every script, compiled once; called by SHA (`EVALSHA`) so pipelines
/// can carry them. Redis forgets loaded scripts when it restarts: callers
/// that see `NOSCRIPT` call [`Scripts::load`] and retry.
pub struct Scripts {
    /// [`CLAIM`].
    pub claim: redis::Script,
    /// [`PARK`].
    pub park: redis::Script,
    /// [`DISCARD`].
    pub discard: redis::Script,
    /// [`ADOPT`].
    pub adopt: redis::Script,
    /// [`ENQUEUE`].
    pub enqueue: redis::Script,
    /// [`QOS2_RECORD`].
    pub qos2_record: redis::Script,
    /// [`SESSION_PROGRESS`].
    pub session_progress: redis::Script,
    /// [`UPDATE_SUBSCRIPTIONS`].
    pub update_subscriptions: redis::Script,
    /// [`INBOX_APPEND`].
    pub inbox_append: redis::Script,
    /// [`JOURNAL_APPEND`].
    pub journal_append: redis::Script,
    /// [`HEARTBEAT`].
    pub heartbeat: redis::Script,
    /// [`LOCK_RENEW`].
    pub lock_renew: redis::Script,
    /// [`LOCK_RELEASE`].
    pub lock_release: redis::Script,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts {
            claim: redis::Script::new(CLAIM),
            park: redis::Script::new(PARK),
            discard: redis::Script::new(DISCARD),
            adopt: redis::Script::new(ADOPT),
            enqueue: redis::Script::new(ENQUEUE),
            qos2_record: redis::Script::new(QOS2_RECORD),
            session_progress: redis::Script::new(SESSION_PROGRESS),
            update_subscriptions: redis::Script::new(UPDATE_SUBSCRIPTIONS),
            inbox_append: redis::Script::new(INBOX_APPEND),
            journal_append: redis::Script::new(JOURNAL_APPEND),
            heartbeat: redis::Script::new(HEARTBEAT),
            lock_renew: redis::Script::new(LOCK_RENEW),
            lock_release: redis::Script::new(LOCK_RELEASE),
        }
    }
}

impl Scripts {
    /// Loads every script into Redis (after a start or a Redis restart).
    pub async fn load(&self, con: &mut impl redis::aio::ConnectionLike) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for source in SOURCES {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
        }
        pipe.query_async(con).await
    }
}

const SOURCES: [&str; 13] = [
    CLAIM,
    PARK,
    DISCARD,
    ADOPT,
    ENQUEUE,
    QOS2_RECORD,
    SESSION_PROGRESS,
    UPDATE_SUBSCRIPTIONS,
    INBOX_APPEND,
    JOURNAL_APPEND,
    HEARTBEAT,
    LOCK_RENEW,
    LOCK_RELEASE,
];

/// An `EVALSHA` of `script` with `keys`; add its arguments with `.arg`.
pub fn evalsha(script: &redis::Script, keys: &[&str]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(*key);
    }
    cmd
}

/// True when Redis does not know a script (it restarted): load and retry.
pub fn is_noscript(error: &redis::RedisError) -> bool {
    error.kind() == redis::ErrorKind::NoScriptError
}

/// Runs `pipe`, loading the scripts and retrying once if Redis forgot them.
pub async fn query_pipeline<T: redis::FromRedisValue>(
    scripts: &Scripts,
    con: &mut (impl redis::aio::ConnectionLike + Send),
    pipe: &redis::Pipeline,
) -> redis::RedisResult<T> {
    match pipe.query_async(con).await {
        Err(error) if is_noscript(&error) => {
            scripts.load(con).await?;
            pipe.query_async(con).await
        }
        other => other,
    }
}

/// Runs one command, loading the scripts and retrying once if needed.
pub async fn query_cmd<T: redis::FromRedisValue>(
    scripts: &Scripts,
    con: &mut (impl redis::aio::ConnectionLike + Send),
    cmd: &redis::Cmd,
) -> redis::RedisResult<T> {
    let mut pipe = redis::pipe();
    pipe.add_command(cmd.clone());
    let (reply,): (T,) = query_pipeline(scripts, con, &pipe).await?;
    Ok(reply)
}
