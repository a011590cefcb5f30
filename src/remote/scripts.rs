//! The Lua scripts. Each runs atomically on the server; together they carry the remote
//! store's invariants (ARCHITECTURE.md, "The remote store"):
//!
//! - an entry is served only while every stamp it was computed under still holds the
//!   value it had then (`HIT`), so an invalidation is one write of one stamp key;
//! - an entry is stored only if those stamps did not move while it was computed (`PUT`);
//! - `max_hits` is counted on the server, in the same script as the check (`HIT`).
//!
//! A miss costs three round trips when the memoizer has no dependency keys, four with
//! them: `HIT` (absent), `LEAD` (the lease, whether the entry appeared meanwhile, and the
//! stamps known before the dependency rows), [`STAMPS`] for the dependency rows' stamps
//! (only if there are any), then `PUT`, which also gives the lease back.
//!
//! Stamp key names travel inside the entry (`sk`), so a hit needs nothing but the entry's
//! key. All keys of a namespace share one hash tag, so in a Cluster the keys a script
//! reads lie in the slot of the key it was given.

use std::sync::LazyLock;

/// Functions the scripts share (each script is sent with them in front).
///
/// `stamps(from, gens, ttl, fresh)`: reads the stamp keys `KEYS[from..]`, creating a
/// missing one with the value `ARGV[fresh + its index - from]`; the first `gens` are
/// generations (no TTL), the others get `ttl` ms (0: none). Returns the values.
///
/// `holds(names, values)`: whether the stamp keys `names` (newline-separated) all exist
/// and hold `values` (newline-separated) - the one check of both `HIT` and `PUT`.
///
/// `release(key, token)`: deletes the lease `key` if it holds `token`.
const PRELUDE: &str = r"
local function holds(names, values)
  local cur = {}
  for k in string.gmatch(names, '[^\n]+') do
    local v = redis.call('GET', k)
    if not v then return false end
    cur[#cur + 1] = v
  end
  return table.concat(cur, '\n') == values
end
local function stamps(from, gens, ttl, fresh)
  local out = {}
  for i = from, #KEYS do
    local k = KEYS[i]
    local v = redis.call('GET', k)
    if not v then
      v = ARGV[fresh + i - from]
      if i - from >= gens and ttl > 0 then
        redis.call('SET', k, v, 'PX', ttl)
      else
        redis.call('SET', k, v)
      end
    end
    out[#out + 1] = v
  end
  return out
end
local function release(key, token)
  if redis.call('GET', key) == token then return redis.call('DEL', key) end
  return 0
end
";

fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// Reads the stamps a computation depends on, creating missing ones with the fresh
/// values given. KEYS: the stamp keys. ARGV[1]: how many leading keys are generations
/// (kept without a TTL); ARGV[2]: TTL in ms given to created dependency stamps (0: none);
/// ARGV[3..]: one fresh value per key. Returns the values, in order.
pub(crate) static STAMPS: LazyLock<redis::Script> =
    LazyLock::new(|| script("return stamps(1, tonumber(ARGV[1]), tonumber(ARGV[2]), 3)"));

/// Takes a single-flight lease for a computation and, if taken, reads the stamps it
/// starts under. KEYS[1]: the lease; KEYS[2]: the entry; KEYS[3..]: stamp keys. ARGV[1]:
/// the token; ARGV[2]: the lease in ms; ARGV[3], ARGV[4], ARGV[5..]: as `STAMPS`'s
/// ARGV[1..]. Returns `{0}` if another holder has the lease, else `{1, exists, stamps}`
/// (`exists`: whether the entry is there, stored by the previous holder, say).
pub(crate) static LEAD: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local exists = redis.call('EXISTS', KEYS[2])
return {1, exists, stamps(3, tonumber(ARGV[3]), tonumber(ARGV[4]), 5)}
",
    )
});

/// Stores an entry unless a stamp moved, and gives the lease back. KEYS[1]: the entry;
/// KEYS[2] (optional): the computation's lease. ARGV[1]: entry bytes; ARGV[2]: stamp key
/// names, newline-separated; ARGV[3]: the values read before computing,
/// newline-separated; ARGV[4]: absolute deadline in unix ms (0: none); ARGV[5]: TTL
/// ceiling in ms (0: none); ARGV[6]: the lease's token. Returns 1 if stored, 0 if
/// refused.
pub(crate) static PUT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
local function put()
  if not holds(ARGV[2], ARGV[3]) then return 0 end
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
end
local stored = put()
if KEYS[2] then release(KEYS[2], ARGV[6]) end
return stored
",
    )
});

/// Serves an entry if its stamps still hold. KEYS[1]: the entry. ARGV[1]: max_hits (0:
/// unlimited). Returns `{0}` absent, `{1, bytes}` served, `{2}` stale (removed), `{3}`
/// used up (removed). The n-th counted hit is served and removes the entry.
pub(crate) static HIT: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
local e = redis.call('HMGET', KEYS[1], 'v', 'sk', 'st')
if not e[1] then return {0} end
if not e[2] or not e[3] or not holds(e[2], e[3]) then
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
pub(crate) static RELEASE: LazyLock<redis::Script> =
    LazyLock::new(|| script("return release(KEYS[1], ARGV[1])"));

/// Extends a lease if it is still ours. KEYS[1]: the lease; ARGV[1]: our token; ARGV[2]:
/// the new TTL in ms. Returns 1 if extended.
pub(crate) static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
",
    )
});
