//! The Lua scripts of a [`RedisStore`](super::RedisStore). Each runs as one
//! atomic step in Redis (`EVALSHA`, loaded again by redis-rs after a
//! `NOSCRIPT`), so a version check and the write it guards cannot be split
//! by another client's command.
//!
//! Every script gets the session's keys in the same order:
//! `KEYS[1]` the hash of small fields, `KEYS[2]` the snapshot, `KEYS[3]` the
//! delta log, `KEYS[4]` the frames, `KEYS[5]` the shared expiry sorted set.
//!
//! Numbers that may pass 2^53 (versions, epochs, times) stay strings: Lua
//! numbers are doubles, so versions are compared as decimal strings, never
//! through `tonumber`. Only seqs and byte counts are read as numbers.

/// Shared helpers, prepended to the scripts that write a whole record.
const PUT: &str = r#"
local function expire_all(at)
  for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], at) end
end
-- ARGV: 1 id, 2 template, 3 version, 4 seq, 5 generation, 6 epoch,
-- 7 created_ms, 8 last_access_ms, 9 expires_ms, 10 applied (JSON),
-- 11 data (JSON), 12 the keys' deadline (unix ms), 15 the write's nonce
local function put()
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('HSET', KEYS[1],
    'template', ARGV[2], 'version', ARGV[3], 'seq', ARGV[4],
    'generation', ARGV[5], 'epoch', ARGV[6], 'created_ms', ARGV[7],
    'last_access_ms', ARGV[8], 'expires_ms', ARGV[9], 'applied', ARGV[10],
    'snap_version', ARGV[3], 'snap_bytes', string.len(ARGV[11]), 'log_bytes', 0,
    'writer', ARGV[15])
  redis.call('SET', KEYS[2], ARGV[11])
  -- Frames above the record's seq are not this record's history.
  local seq = tonumber(ARGV[4])
  while true do
    local last = redis.call('LINDEX', KEYS[4], -1)
    if not last then break end
    local s = tonumber(string.match(last, '^(%d+) '))
    if s and s <= seq then break end
    redis.call('RPOP', KEYS[4])
  end
  expire_all(ARGV[12])
  redis.call('ZADD', KEYS[5], ARGV[9], ARGV[1])
end
"#;

/// Creates a record unless one exists: returns 1, or 0 when the id is
/// taken (1 when this very write took it: its nonce, ARGV 15, is the
/// record's, a second try after a lost answer). Leftover frames of an id whose keys expired are dropped. In a
/// cluster (ARGV 13 this instance's name, 14 the owner key's expiry), the
/// creating instance owns the session (`KEYS[6]`).
pub(super) fn create() -> String {
    format!(
        "{PUT}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'writer') == ARGV[15] then return 1 end
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
put()
if ARGV[13] ~= '' then redis.call('SET', KEYS[6], ARGV[13], 'PX', ARGV[14]) end
return 1
"
    )
}

/// Replaces the record (a new snapshot, no deltas) unless the stored one
/// has a higher version: returns 1, or `conflict <stored version>`.
/// Versions are decimal strings without leading zeros, so the longer is
/// the higher, and of equal length the later in byte order.
pub(super) fn save() -> String {
    format!(
        "{PUT}
local stored = redis.call('HGET', KEYS[1], 'version')
if stored and (#stored > #ARGV[3] or (#stored == #ARGV[3] and stored > ARGV[3])) then
  return 'conflict ' .. stored
end
put()
return 1
"
    )
}

/// The append: compare-and-set on the version, then the small fields, the
/// delta, the frame, the deadlines and the expiry, all in this one step.
///
/// ARGV: 1 id, 2 the version the stored record must have, 3 the new
/// version, 4 seq, 5 generation, 6 epoch, 7 last_access_ms, 8 expires_ms,
/// 9 applied (JSON), 10 the delta (JSON), 11 the frame, 12 `1` when there
/// is a frame, 13 frames kept, 14 the keys' deadline, 15 snapshot byte
/// limit (0: the snapshot's size, at least 4096), 16 snapshot delta limit
/// (0: none), 17 this instance's name in a cluster (empty: no cluster),
/// 18 the channel the frame is published on, 19 the owner key's expiry,
/// 20 the write's nonce (kept as `writer`). `KEYS[6]` is the owner key:
/// in a cluster, an append from an instance that does not own the session
/// is refused (`owner <NAME>`), and the frame is published with the write.
///
/// Returns `none` (no record), `conflict <stored version> <its writer>`
/// (the nonce of the write that made it), `owner <NAME>`,
/// `ok` or
/// `ok snapshot` (the log reached the limit: the caller writes a snapshot
/// of the new version with [`snapshot`]).
pub(super) const APPEND: &str = r#"
local stored = redis.call('HGET', KEYS[1], 'version')
if not stored then return 'none' end
if stored ~= ARGV[2] then
  return 'conflict ' .. stored .. ' ' .. (redis.call('HGET', KEYS[1], 'writer') or '')
end
if ARGV[17] ~= '' then
  local o = redis.call('GET', KEYS[6])
  if o and o ~= ARGV[17] then return 'owner ' .. o end
  if not o then redis.call('SET', KEYS[6], ARGV[17], 'PX', ARGV[19]) end
  if ARGV[12] == '1' then redis.call('PUBLISH', ARGV[18], ARGV[4] .. ' ' .. ARGV[11]) end
end
redis.call('HSET', KEYS[1],
  'version', ARGV[3], 'seq', ARGV[4], 'generation', ARGV[5], 'epoch', ARGV[6],
  'last_access_ms', ARGV[7], 'expires_ms', ARGV[8], 'applied', ARGV[9],
  'writer', ARGV[20])
local log_bytes = redis.call('HINCRBY', KEYS[1], 'log_bytes', string.len(ARGV[10]))
local deltas = redis.call('RPUSH', KEYS[3], ARGV[3] .. ' ' .. ARGV[10])
local kept = tonumber(ARGV[13])
if ARGV[12] == '1' and kept > 0 then
  local seq = tonumber(ARGV[4])
  while true do
    local last = redis.call('LINDEX', KEYS[4], -1)
    if not last then break end
    local s = tonumber(string.match(last, '^(%d+) '))
    if s and s < seq then break end
    redis.call('RPOP', KEYS[4])
  end
  redis.call('RPUSH', KEYS[4], ARGV[4] .. ' ' .. ARGV[11])
  redis.call('LTRIM', KEYS[4], -kept, -1)
end
for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], ARGV[14]) end
redis.call('ZADD', KEYS[5], ARGV[8], ARGV[1])
local limit = tonumber(ARGV[15])
if limit == 0 then
  limit = math.max(tonumber(redis.call('HGET', KEYS[1], 'snap_bytes')) or 0, 4096)
end
local every = tonumber(ARGV[16])
if log_bytes >= limit or (every > 0 and deltas >= every) then
  return 'ok snapshot'
end
return 'ok'
"#;

/// Writes the snapshot of version ARGV[1] (data ARGV[2]) and drops the log
/// before it, if the record still is at that version (else a newer append
/// came first: nothing is written). Keeps the snapshot key's deadline.
/// Returns 1 when written.
pub(super) const SNAPSHOT: &str = r#"
if redis.call('HGET', KEYS[1], 'version') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'KEEPTTL')
redis.call('DEL', KEYS[3])
redis.call('HSET', KEYS[1], 'snap_version', ARGV[1],
  'snap_bytes', string.len(ARGV[2]), 'log_bytes', 0)
return 1
"#;

/// Sets the times (ARGV: 1 id, 2 last_access_ms, 3 expires_ms, 4 the keys'
/// deadline) of an existing record: returns 1, or 0 when there is none.
pub(super) const TOUCH: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_access_ms', ARGV[2], 'expires_ms', ARGV[3])
for i = 1, 4 do redis.call('PEXPIREAT', KEYS[i], ARGV[4]) end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
return 1
"#;

/// Deletes every key of the record (its owner key `KEYS[6]` and its groups
/// `KEYS[7]` too) and its
/// expiry entry (ARGV[1] the id): returns 1 when the record existed.
pub(super) const DELETE: &str = r#"
local n = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[5], ARGV[1])
return n
"#;
