//! The Lua scripts that make each multi-key step atomic: a message is never
//! out of its list without being in `unacked` (or on its way to the
//! consumer that asked for no acknowledgement), never restored twice, never
//! moved from the delayed set without reaching its list.

/// Pops up to `max` messages, the lists in the order given, and (when
/// recording) records each in `unacked` / `unacked_index` in the same step,
/// as kombu's `QoS.append` records them: `[envelope, "", queue]` under a new
/// delivery tag, scored by the time of delivery in seconds.
///
/// KEYS: `unacked`, `unacked_index`, then the lists. ARGV: the time (s), the
/// most to pop, `1` to record, the tag prefix, then each list's queue name
/// as a JSON string. Returns `tag, list number (1-based), envelope` per
/// message, flat.
pub(crate) const POP: &str = r#"
local now = ARGV[1]
local max = tonumber(ARGV[2])
local record = ARGV[3] == '1'
local base = ARGV[4]
local out = {}
local n = 0
for i = 3, #KEYS do
  while n < max do
    local item = redis.call('RPOP', KEYS[i])
    if not item then break end
    n = n + 1
    local tag = base .. n
    if record then
      redis.call('HSET', KEYS[1], tag, '[' .. item .. ',"",' .. ARGV[4 + i - 2] .. ']')
      redis.call('ZADD', KEYS[2], now, tag)
    end
    out[#out + 1] = tag
    out[#out + 1] = i - 2
    out[#out + 1] = item
  end
  if n >= max then break end
end
return out
"#;

/// Puts an unacknowledged message back in its lists and forgets it, unless
/// it was settled meanwhile or (for a visibility restore) its holder said
/// it still runs it since the scan.
///
/// KEYS: `unacked`, `unacked_index`, then the lists to push to. ARGV: the
/// tag, the latest delivery score still restorable (`""`: any), the
/// envelope to push (marked redelivered), `front` (next to be popped, as
/// kombu restores) or `back`. Returns 1 when restored.
pub(crate) const RESTORE: &str = r#"
if ARGV[2] ~= '' then
  local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if score and tonumber(score) > tonumber(ARGV[2]) then
    return 0
  end
end
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
for i = 3, #KEYS do
  if ARGV[4] == 'front' then
    redis.call('RPUSH', KEYS[i], ARGV[3])
  else
    redis.call('LPUSH', KEYS[i], ARGV[3])
  end
end
return 1
"#;

/// Moves the delayed messages that are due to their lists. Each member of
/// the delayed set is `<length of the list's name>:<list><envelope>`
/// ([`delayed_member`]), scored by its due time (ms).
///
/// KEYS: the delayed set. ARGV: now (ms), the most to move. Returns the
/// number moved and the next due time (ms), or false when none is left.
pub(crate) const MOVE_DUE: &str = r#"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local at = string.find(member, ':', 1, true)
  local length = at and tonumber(string.sub(member, 1, at - 1))
  if length then
    redis.call('LPUSH', string.sub(member, at + 1, at + length), string.sub(member, at + length + 1))
  end
  redis.call('ZREM', KEYS[1], member)
end
local next = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, next[2] or false}
"#;

/// A member of the delayed set: the list it goes to, then the envelope.
pub(crate) fn delayed_member(list: &str, envelope: &str) -> String {
    format!("{}:{list}{envelope}", list.len())
}

/// Releases kombu's restore mutex if this process still holds it.
/// KEYS: the mutex. ARGV: the token it was taken with.
pub(crate) const RELEASE_MUTEX: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// Claims queues for a consumer: refused (returning the 1-based number of
/// the first queue taken) while an exclusive consumer holds one of them,
/// or, for an exclusive claim, while any consumer is on one; lapsed claims
/// are forgotten first. Returns 0 once claimed.
///
/// KEYS: per queue, its exclusive key then its consumers' set. ARGV: now
/// (ms), when the claim lapses (ms), the consumer's id, `1` for an
/// exclusive claim, the lease (ms).
pub(crate) const CLAIM: &str = r#"
local exclusive = ARGV[4] == '1'
for i = 1, #KEYS, 2 do
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', ARGV[1])
  if redis.call('EXISTS', KEYS[i]) == 1 then return (i + 1) / 2 end
  if exclusive and redis.call('ZCARD', KEYS[i + 1]) > 0 then return (i + 1) / 2 end
end
for i = 1, #KEYS, 2 do
  if exclusive then
    redis.call('SET', KEYS[i], ARGV[3], 'PX', ARGV[5])
  end
  redis.call('ZADD', KEYS[i + 1], ARGV[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[5])
end
return 0
"#;

/// Extends a consumer's claim. An exclusive claim that lapsed is taken
/// again if nobody took it meanwhile; returns on how many queues someone
/// else did.
///
/// KEYS: as [`CLAIM`]. ARGV: when the claim lapses (ms), the consumer's
/// id, `1` for an exclusive claim, the lease (ms).
pub(crate) const RENEW_CLAIM: &str = r#"
local lost = 0
for i = 1, #KEYS, 2 do
  redis.call('ZADD', KEYS[i + 1], ARGV[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[i + 1], ARGV[4])
  if ARGV[3] == '1' then
    local holder = redis.call('GET', KEYS[i])
    if holder == ARGV[2] or not holder then
      redis.call('SET', KEYS[i], ARGV[2], 'PX', ARGV[4])
    else
      lost = lost + 1
    end
  end
end
return lost
"#;

/// Gives a consumer's claim up; returns the (1-based) numbers of the
/// queues no consumer is left on (lapsed claims forgotten). KEYS: as
/// [`CLAIM`]. ARGV: the consumer's id, now (ms).
pub(crate) const RELEASE_CLAIM: &str = r#"
local emptied = {}
for i = 1, #KEYS, 2 do
  redis.call('ZREM', KEYS[i + 1], ARGV[1])
  redis.call('ZREMRANGEBYSCORE', KEYS[i + 1], '-inf', ARGV[2])
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
  end
  if redis.call('ZCARD', KEYS[i + 1]) == 0 then
    table.insert(emptied, (i + 1) / 2)
  end
end
return emptied
"#;

/// The scripts, loaded once per broker.
pub(crate) struct Scripts {
    pub(crate) pop: redis::Script,
    pub(crate) restore: redis::Script,
    pub(crate) move_due: redis::Script,
    pub(crate) release_mutex: redis::Script,
    pub(crate) claim: redis::Script,
    pub(crate) renew_claim: redis::Script,
    pub(crate) release_claim: redis::Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            pop: redis::Script::new(POP),
            restore: redis::Script::new(RESTORE),
            move_due: redis::Script::new(MOVE_DUE),
            release_mutex: redis::Script::new(RELEASE_MUTEX),
            claim: redis::Script::new(CLAIM),
            renew_claim: redis::Script::new(RENEW_CLAIM),
            release_claim: redis::Script::new(RELEASE_CLAIM),
        }
    }
}
