//! The remote store's operations, one round trip each.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::conn::{Pool, Timeouts, Tls};
use super::layout::Layout;
use super::scripts;
use super::url::ServerUrl;
use crate::error::Error;
use crate::key::DepRow;
use crate::key::KeyHash;

/// Settings of a remote store.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub timeouts: Timeouts,
    /// Every entry expires on the server after at most this long (space of invalidated
    /// entries is reclaimed by it); `None`: only by deadline or eviction.
    pub ttl_ceiling: Option<Duration>,
    /// Dependency stamps expire this long after they were created (entries depending on
    /// one then read as misses once).
    pub stamp_ttl: Option<Duration>,
    /// How long a single-flight lease lasts without renewal.
    pub lease: Duration,
    /// Certificates for a `rediss://` server.
    pub tls: Tls,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            timeouts: Timeouts {
                connect: Duration::from_millis(250),
                response: Duration::from_millis(250),
            },
            ttl_ceiling: Some(Duration::from_secs(24 * 3600)),
            stamp_ttl: Some(Duration::from_secs(7 * 24 * 3600)),
            lease: Duration::from_secs(5),
            tls: Tls::default(),
        }
    }
}

/// The stamps a computation ran under: their key names and values, newline-joined.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Stamps {
    names: String,
    values: String,
}

impl Stamps {
    /// These stamps followed by `keys` holding `values`.
    fn then(&self, keys: &[String], values: &[String]) -> Stamps {
        self.then_all(&Stamps {
            names: keys.join("\n"),
            values: values.join("\n"),
        })
    }

    /// These stamps followed by `more`.
    fn then_all(&self, more: &Stamps) -> Stamps {
        if self.names.is_empty() {
            return more.clone();
        }
        if more.names.is_empty() {
            return self.clone();
        }
        Stamps {
            names: format!("{}\n{}", self.names, more.names),
            values: format!("{}\n{}", self.values, more.values),
        }
    }
}

/// What asking for a computation's lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Led {
    /// Another holder computes the entry.
    Busy,
    /// The lease is ours; the stamps the computation starts under were read. `exists`:
    /// an entry is there already (look at it before computing).
    Taken { exists: bool, stamps: Stamps },
}

/// What the hit script found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Absent,
    Served(Vec<u8>),
    /// An invalidated entry (a stamp moved or vanished); it was removed.
    Stale,
    /// A `max_hits` entry whose hits are spent; it was removed.
    UsedUp,
}

/// A single-flight lease held by this process.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    key: String,
    token: String,
}

/// One namespace on one server.
pub(crate) struct Remote {
    pub(crate) pool: Pool,
    pub(crate) layout: Layout,
    pub(crate) settings: Settings,
    random: RandomState,
    counter: AtomicU64,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("server", &self.pool.url)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

fn millis(d: Option<Duration>) -> u64 {
    d.map_or(0, |d| (d.as_millis() as u64).max(1))
}

impl Remote {
    pub(crate) fn new(url: &str, namespace: &str, settings: Settings) -> Result<Self, Error> {
        let layout = Layout::new(namespace)?;
        let pool = Pool::new(
            ServerUrl::new(url),
            settings.timeouts,
            &settings.tls,
            layout.slot_key().to_string(),
        )?;
        Ok(Remote {
            pool,
            layout,
            settings,
            random: RandomState::new(),
            counter: AtomicU64::new(0),
        })
    }

    /// A fresh unpredictable value (stamps, generations, lease tokens): a process-random
    /// keyed hash of a counter. Two values collide with probability 2^-64.
    pub(crate) fn fresh(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{:x}", self.random.hash_one(n))
    }

    /// The stamp keys an entry starts under before its dependency rows are known: its
    /// memoizer's generation and the generations of the memoizer's zones (`1 +
    /// zones.len()` keys without a TTL), then its key's stamp.
    pub(crate) fn fixed_stamp_keys(&self, memo: u64, zones: &[u64], row: &KeyHash) -> Vec<String> {
        let mut keys = Vec::with_capacity(2 + zones.len());
        keys.push(self.layout.generation(memo));
        keys.extend(zones.iter().map(|z| self.layout.zone_generation(*z)));
        keys.push(self.layout.key_stamp(memo, row));
        keys
    }

    /// Adds the stamps `keys` name to a call (after its other arguments), with one fresh
    /// value each for those the script has to create.
    fn stamp_args(&self, call: &mut redis::ScriptInvocation<'_>, keys: &[String]) {
        for k in keys {
            call.key(k).arg(self.fresh());
        }
    }

    /// Reads (creating) the stamps `keys` name, the first `generations` of them
    /// generations (no TTL).
    pub(crate) fn read_stamps(&self, keys: &[String], generations: usize) -> Result<Stamps, Error> {
        let mut call = scripts::STAMPS.prepare_invoke();
        call.arg(generations).arg(millis(self.settings.stamp_ttl));
        self.stamp_args(&mut call, keys);
        let values: Vec<String> = self.pool.with(|con| call.invoke(con))?;
        Ok(Stamps::default().then(keys, &values))
    }

    /// The stamps `before` (read when the computation's lease was taken) and those of
    /// the dependency rows `deps`, read (created) now: no round trip without rows.
    pub(crate) fn read_dep_stamps(
        &self,
        before: &Stamps,
        deps: &[DepRow],
    ) -> Result<Stamps, Error> {
        if deps.is_empty() {
            return Ok(before.clone());
        }
        let keys: Vec<String> = deps.iter().map(|d| self.layout.stamp(d)).collect();
        let deps = self.read_stamps(&keys, 0)?;
        Ok(before.then_all(&deps))
    }

    /// Tries to take `lease` for a computation of entry `row`; if taken, reads (creating)
    /// the stamps `keys` of [`fixed_stamp_keys`](Self::fixed_stamp_keys), `generations`
    /// of them generations. After an error the lease may be ours or not (a command that
    /// timed out may still run): release it to be sure.
    pub(crate) fn lead(
        &self,
        lease: &Lease,
        memo: u64,
        row: &KeyHash,
        keys: &[String],
        generations: usize,
    ) -> Result<Led, Error> {
        let mut call = scripts::LEAD.prepare_invoke();
        call.key(&lease.key)
            .key(self.layout.entry(memo, row))
            .arg(&lease.token)
            .arg(millis(Some(self.settings.lease)))
            .arg(generations)
            .arg(millis(self.settings.stamp_ttl));
        self.stamp_args(&mut call, keys);
        let (taken, exists, values): (i64, i64, Vec<String>) =
            match self.pool.with(|con| call.invoke::<redis::Value>(con))? {
                redis::Value::Array(parts) if parts.len() == 1 => (0, 0, Vec::new()),
                reply => redis::from_redis_value(reply).map_err(|_| self.unexpected("lead"))?,
            };
        if taken == 0 {
            return Ok(Led::Busy);
        }
        Ok(Led::Taken {
            exists: exists == 1,
            stamps: Stamps::default().then(keys, &values),
        })
    }

    /// Stores entry bytes unless a stamp moved since `stamps` were read, and gives
    /// `lease` back (if any); `deadline_ms` is the entry's absolute deadline (0: none).
    /// Returns whether it was stored.
    pub(crate) fn put(
        &self,
        memo: u64,
        row: &KeyHash,
        bytes: &[u8],
        stamps: &Stamps,
        deadline_ms: u64,
        lease: Option<&Lease>,
    ) -> Result<bool, Error> {
        let key = self.layout.entry(memo, row);
        let mut call = scripts::PUT.prepare_invoke();
        call.key(key)
            .arg(bytes)
            .arg(&stamps.names)
            .arg(&stamps.values)
            .arg(deadline_ms)
            .arg(millis(self.settings.ttl_ceiling));
        if let Some(lease) = lease {
            call.key(&lease.key).arg(&lease.token);
        }
        let stored: i64 = self.pool.with(|con| call.invoke(con))?;
        Ok(stored == 1)
    }

    /// Looks an entry up, checking its stamps and counting `max_hits` (0: unlimited).
    pub(crate) fn hit(&self, memo: u64, row: &KeyHash, max_hits: u32) -> Result<Found, Error> {
        let key = self.layout.entry(memo, row);
        let mut call = scripts::HIT.prepare_invoke();
        call.key(key).arg(max_hits);
        let reply: redis::Value = self.pool.with(|con| call.invoke(con))?;
        let parts = match reply {
            redis::Value::Array(parts) => parts,
            _ => return Err(self.unexpected("hit")),
        };
        Ok(match parts.as_slice() {
            [redis::Value::Int(0)] => Found::Absent,
            [redis::Value::Int(1), redis::Value::BulkString(bytes)] => Found::Served(bytes.clone()),
            [redis::Value::Int(2)] => Found::Stale,
            [redis::Value::Int(3)] => Found::UsedUp,
            _ => return Err(self.unexpected("hit")),
        })
    }

    fn unexpected(&self, what: &str) -> Error {
        Error::Remote {
            server: self.pool.url.to_string(),
            detail: format!("unexpected reply to the {what} script"),
        }
    }

    /// A lease token for a row, not yet asked for.
    pub(crate) fn new_lease(&self, memo: u64, row: &KeyHash) -> Lease {
        Lease {
            key: self.layout.lease(memo, row),
            token: self.fresh(),
        }
    }

    /// Extends a lease by the lease duration; false if it was lost (expired, taken over).
    pub(crate) fn renew(&self, lease: &Lease) -> Result<bool, Error> {
        let mut call = scripts::RENEW.prepare_invoke();
        call.key(&lease.key)
            .arg(&lease.token)
            .arg(millis(Some(self.settings.lease)));
        let renewed: i64 = self.pool.with(|con| call.invoke(con))?;
        Ok(renewed == 1)
    }

    /// Gives a lease back if it is still ours.
    pub(crate) fn release(&self, lease: &Lease) -> Result<bool, Error> {
        let mut call = scripts::RELEASE.prepare_invoke();
        call.key(&lease.key).arg(&lease.token);
        let released: i64 = self.pool.with(|con| call.invoke(con))?;
        Ok(released == 1)
    }

    /// Invalidates one key: its stamp is deleted (a computation of it that is running
    /// will not store, and local tiers hear of it), and its entry with it. Returns
    /// whether the entry existed.
    pub(crate) fn remove(&self, memo: u64, row: &KeyHash) -> Result<bool, Error> {
        let key = self.layout.entry(memo, row);
        let stamp = self.layout.key_stamp(memo, row);
        let (n, _): (i64, i64) = self.pool.with(|con| {
            redis::pipe()
                .atomic()
                .cmd("UNLINK")
                .arg(&key)
                .cmd("UNLINK")
                .arg(&stamp)
                .query(con)
        })?;
        Ok(n > 0)
    }

    /// Invalidates every entry of a memoizer: a new generation, O(1).
    pub(crate) fn bump_memoizer(&self, memo: u64) -> Result<(), Error> {
        self.set(self.layout.generation(memo))
    }

    /// Invalidates every entry of every member of a zone: a new zone generation, O(1).
    pub(crate) fn bump_zone(&self, zone: u64) -> Result<(), Error> {
        self.set(self.layout.zone_generation(zone))
    }

    /// Invalidates every entry that depends on `row`: its stamp is deleted, O(1). Returns
    /// whether the stamp existed (if not, no live entry depended on it).
    pub(crate) fn drop_stamp(&self, row: &DepRow) -> Result<bool, Error> {
        let key = self.layout.stamp(row);
        let n: i64 = self
            .pool
            .with(|con| redis::cmd("UNLINK").arg(&key).query(con))?;
        Ok(n > 0)
    }

    fn set(&self, key: String) -> Result<(), Error> {
        let value = self.fresh();
        self.pool
            .with(|con| redis::cmd("SET").arg(&key).arg(&value).query::<()>(con))
    }
}
