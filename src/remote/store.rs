//! The remote store's operations, one round trip each.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::conn::{Pool, Timeouts};
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
        }
    }
}

/// The stamps a computation ran under: their key names and values, newline-joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamps {
    names: String,
    values: String,
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
        let pool = Pool::new(ServerUrl::new(url), settings.timeouts)?;
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

    /// The stamp keys of an entry: its memoizer's generation and the generations of the
    /// memoizer's zones (`1 + zones.len()` keys without a TTL), then its key's stamp and
    /// one stamp per dependency row.
    pub(crate) fn stamp_keys(
        &self,
        memo: u64,
        zones: &[u64],
        row: &KeyHash,
        deps: &[DepRow],
    ) -> Vec<String> {
        let mut keys = Vec::with_capacity(2 + zones.len() + deps.len());
        keys.push(self.layout.generation(memo));
        keys.extend(zones.iter().map(|z| self.layout.zone_generation(*z)));
        keys.push(self.layout.key_stamp(memo, row));
        keys.extend(deps.iter().map(|d| self.layout.stamp(d)));
        keys
    }

    /// Reads (creating) the stamps `keys` name; `generations` leading keys are
    /// generations. Done before computing.
    pub(crate) fn read_stamps(&self, keys: &[String], generations: usize) -> Result<Stamps, Error> {
        let mut call = scripts::STAMPS.prepare_invoke();
        call.arg(generations).arg(millis(self.settings.stamp_ttl));
        for k in keys {
            call.key(k).arg(self.fresh());
        }
        let values: Vec<String> = self.pool.with(|con| call.invoke(con))?;
        Ok(Stamps {
            names: keys.join("\n"),
            values: values.join("\n"),
        })
    }

    /// Stores entry bytes unless a stamp moved since `stamps` were read; `deadline_ms` is
    /// the entry's absolute deadline (0: none). Returns whether it was stored.
    pub(crate) fn put(
        &self,
        memo: u64,
        row: &KeyHash,
        bytes: &[u8],
        stamps: &Stamps,
        deadline_ms: u64,
    ) -> Result<bool, Error> {
        let key = self.layout.entry(memo, row);
        let mut call = scripts::PUT.prepare_invoke();
        call.key(key)
            .arg(bytes)
            .arg(&stamps.names)
            .arg(&stamps.values)
            .arg(deadline_ms)
            .arg(millis(self.settings.ttl_ceiling));
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

    /// Tries to take the single-flight lease of a row.
    #[cfg(test)]
    pub(crate) fn try_lease(&self, memo: u64, row: &KeyHash) -> Result<Option<Lease>, Error> {
        let lease = self.new_lease(memo, row);
        Ok(self.acquire(&lease)?.then_some(lease))
    }

    /// A lease token for a row, not yet asked for.
    pub(crate) fn new_lease(&self, memo: u64, row: &KeyHash) -> Lease {
        Lease {
            key: self.layout.lease(memo, row),
            token: self.fresh(),
        }
    }

    /// Asks for `lease`; true if it is ours now. After an error it may be ours or not
    /// (a command that timed out may still run): release it to be sure.
    pub(crate) fn acquire(&self, lease: &Lease) -> Result<bool, Error> {
        let ms = millis(Some(self.settings.lease));
        let taken: Option<String> = self.pool.with(|con| {
            redis::cmd("SET")
                .arg(&lease.key)
                .arg(&lease.token)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query(con)
        })?;
        Ok(taken.is_some())
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
