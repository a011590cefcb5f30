//! The Lua scripts. Each runs atomically on the server; together they carry the remote
//! store's invariants (ARCHITECTURE.md, "The remote store"):
//!
//! - an entry is served only while every stamp it was computed under still holds the
//!   value it had then (`HIT`), so an invalidation is one write of one stamp key;
//! - an entry is stored only if those stamps did not move while it was computed (`PUT`);
//! - `max_hits` is counted on the server, in the same script as the check (`HIT`).
//!
//! Stamp key names travel inside the entry (`sk`), so a hit needs nothing but the entry's
//! key. All keys of a namespace share one hash tag, so in a Cluster the keys a script
//! reads lie in the slot of the key it was given.

use std::sync::LazyLock;

/// Reads the stamps a computation depends on, creating missing ones with the fresh
/// values given. KEYS: the stamp keys. ARGV[1]: how many leading keys are generations
/// (kept without a TTL); ARGV[2]: TTL in ms given to created dependency stamps (0: none);
/// ARGV[3..]: one fresh value per key. Returns the values, in order.
pub(crate) static STAMPS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local gens = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local out = {}
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if not v then
    v = ARGV[i + 2]
    if i > gens and ttl > 0 then
      redis.call('SET', k, v, 'PX', ttl)
    else
      redis.call('SET', k, v)
    end
  end
  out[i] = v
end
return out
",
    )
});

/// Stores an entry unless a stamp moved. KEYS[1]: the entry. ARGV[1]: entry bytes;
/// ARGV[2]: stamp key names, newline-separated; ARGV[3]: the values read before
/// computing, newline-separated; ARGV[4]: absolute deadline in unix ms (0: none);
/// ARGV[5]: TTL ceiling in ms (0: none). Returns 1 if stored, 0 if refused.
pub(crate) static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = {}
for k in string.gmatch(ARGV[2], '[^\n]+') do
  local v = redis.call('GET', k)
  if not v then return 0 end
  cur[#cur + 1] = v
end
if table.concat(cur, '\n') ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'sk', ARGV[2], 'st', ARGV[3], 'h', 0)
local deadline = tonumber(ARGV[4])
if deadline > 0 then redis.call('PEXPIREAT', KEYS[1], deadline) end
local ceiling = tonumber(ARGV[5])
if ceiling > 0 then
  local left = redis.call('PTTL', KEYS[1])
  if left == -1 or left > ceiling then redis.call('PEXPIRE', KEYS[1], ceiling) end
end
return redis.call('EXISTS', KEYS[1])
",
    )
});

/// Serves an entry if its stamps still hold. KEYS[1]: the entry. ARGV[1]: max_hits (0:
/// unlimited). Returns `{0}` absent, `{1, bytes}` served, `{2}` stale (removed), `{3}`
/// used up (removed). The n-th counted hit is served and removes the entry.
pub(crate) static HIT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local e = redis.call('HMGET', KEYS[1], 'v', 'sk', 'st')
if not e[1] then return {0} end
if not e[2] or not e[3] then
  redis.call('UNLINK', KEYS[1])
  return {2}
end
local cur = {}
for k in string.gmatch(e[2], '[^\n]+') do
  local v = redis.call('GET', k)
  if not v then
    redis.call('UNLINK', KEYS[1])
    return {2}
  end
  cur[#cur + 1] = v
end
if table.concat(cur, '\n') ~= e[3] then
  redis.call('UNLINK', KEYS[1])
  return {2}
end
local n = tonumber(ARGV[1])
if n > 0 then
  local h = redis.call('HINCRBY', KEYS[1], 'h', 1)
  if h > n then
    redis.call('UNLINK', KEYS[1])
    return {3}
  end
  if h == n then redis.call('UNLINK', KEYS[1]) end
end
return {1, e[1]}
",
    )
});

/// Releases a lease if it is still ours. KEYS[1]: the lease; ARGV[1]: our token.
pub(crate) static RELEASE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Extends a lease if it is still ours. KEYS[1]: the lease; ARGV[1]: our token; ARGV[2]:
/// the new TTL in ms. Returns 1 if extended.
pub(crate) static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
",
    )
});
