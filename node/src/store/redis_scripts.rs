//! Lua scripts for the session changes that must be atomic in Redis.
//!
//! Each runs as one Redis command: no other client sees a half-claimed or
//! half-parked session, and the fencing epoch is checked and written in the
//! same step as the change it guards.

/// Claims a session for a node.
/// KEYS: session, subs, inflight, qos2, queue, new owner's client set.
/// ARGV: node id, clean (0/1), will record ("" for none), client id.
/// Returns {epoch, previous owner, had persistent state (0/1), subs
/// (flat filter/qos list), inflight records, qos2 ids, queued records}.
pub const CLAIM: &str = r#"
local previous_owner = redis.call('HGET', KEYS[1], 'owner') or ''
local had_state = redis.call('HGET', KEYS[1], 'persistent') == '1'
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local subs, inflight, qos2, queued = {}, {}, {}, {}
if had_state then
  subs = redis.call('HGETALL', KEYS[2])
  inflight = redis.call('HVALS', KEYS[3])
  qos2 = redis.call('SMEMBERS', KEYS[4])
  queued = redis.call('LRANGE', KEYS[5], 0, -1)
end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
end
local persistent = '1'
if ARGV[2] == '1' then persistent = '0' end
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'connected', '1', 'persistent', persistent, 'will', ARGV[3])
redis.call('SADD', KEYS[6], ARGV[4])
return {epoch, previous_owner, had_state and 1 or 0, subs, inflight, qos2, queued}
"#;

/// Parks a persistent session whose client went away.
/// KEYS: session, subs, inflight, qos2, queue.
/// ARGV: epoch, n subs, (filter, qos)*, n inflight, (packet id, record)*,
/// n qos2, id*, n pending, record* (oldest first).
/// Returns 1, or 0 when the epoch is stale (another node owns it now).
pub const PARK: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'connected', '0')
redis.call('HDEL', KEYS[1], 'will')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]); i = i + 2 end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do redis.call('SADD', KEYS[4], ARGV[i]); i = i + 1 end
n = tonumber(ARGV[i]); i = i + 1
-- Parked deliveries are older than anything queued meanwhile: prepend.
for j = i + n - 1, i, -1 do redis.call('LPUSH', KEYS[5], ARGV[j]) end
return 1
"#;

/// Forgets a clean session that ended.
/// KEYS: session, subs, inflight, qos2, queue, owner's client set.
/// ARGV: epoch, client id.
pub const DISCARD: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('SREM', KEYS[6], ARGV[2])
return 1
"#;

/// Queues deliveries for offline sessions.
/// KEYS: (session, queue)* per delivery. ARGV: max queue length, then
/// (qos, record)* per delivery.
/// Returns {queued, dropped because full, dropped QoS 0, no session}.
pub const ENQUEUE: &str = r#"
local max = tonumber(ARGV[1])
local counts = {0, 0, 0, 0}
for j = 1, #KEYS / 2 do
  local session, queue = KEYS[2 * j - 1], KEYS[2 * j]
  local qos, record = ARGV[2 * j], ARGV[2 * j + 1]
  if redis.call('HGET', session, 'persistent') ~= '1' then
    counts[4] = counts[4] + 1
  elseif qos == '0' then
    counts[3] = counts[3] + 1
  elseif redis.call('LLEN', queue) >= max then
    counts[2] = counts[2] + 1
  else
    redis.call('RPUSH', queue, record)
    counts[1] = counts[1] + 1
  end
end
return counts
"#;

/// Takes what was queued for a session its owner has connected.
/// KEYS: session, queue. ARGV: epoch.
pub const DRAIN: &str = r#"
if redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[1] then return {} end
local queued = redis.call('LRANGE', KEYS[2], 0, -1)
redis.call('DEL', KEYS[2])
return queued
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
