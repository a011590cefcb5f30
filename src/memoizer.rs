//! `Memoizer`: one memoized function - its key encoding, policies and store.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use rkyv::util::AlignedVec;
use serde::Serialize;

use crate::aligned::{archive_align, with_aligned};
use crate::error::{Error, Result};
use crate::flight::Caller;
use crate::hit::ArchivedHit;
use crate::inner::{CacheInner, check_name};
use crate::key::{DepRow, EncodedKey, KeyBytes, KeyHasher, xxh3_key_hash};
use crate::memory::{Bound, Weigher};
use crate::stats::{Counters, Stats};
use crate::storage::ops;
use crate::tiers::{Looked, Persistent, Policy, Read, Remove, Step, Tiers, Verdict};
use crate::zone::{self, DepFns, KeysFn, Membership, Zone};
use crate::{Value, fingerprint};

/// Where a memoizer keeps its values.
///
/// ```
/// use fresco_memoize::{Cache, Store};
///
/// let cache = Cache::in_memory()?;
/// let lru = cache.memoizer::<u32, u32>("lru").store(Store::Lru(1_000)).build()?;
/// assert_eq!(lru.get_or_compute(&2, |n| n * 10), 20);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Store {
    /// In this process only, unbounded (the original's default dict). Default for
    /// [`Cache::in_memory`](crate::Cache::in_memory).
    Memory,
    /// In this process only, at most this many entries, least recently used evicted first
    /// (the original's `LRUCacheDict`).
    Lru(usize),
    /// A table in the cache's redb file (the original's `FileCacher`). Default for
    /// [`Cache::open`](crate::Cache::open).
    Persistent,
    /// A bounded in-memory LRU of this many entries in front of the persistent table.
    /// Invalidation, zones and expiry apply to both tiers.
    Tiered(usize),
}

/// Encodes a key into the given bytes (in place: see [`KeyBytes::set`]).
pub(crate) type KeyEncoder<K> =
    dyn Fn(&K, &mut KeyBytes) -> Result<(), postcard::Error> + Send + Sync;

/// A memoized function's cache: look values up by argument, compute on a miss.
///
/// Cheap to clone; clones share everything. Built with [`Cache::memoizer`].
///
/// ```
/// use fresco_memoize::Cache;
///
/// let cache = Cache::in_memory()?;
/// let lengths = cache.memoizer::<str, usize>("lengths").build()?;
/// assert_eq!(lengths.get_or_compute("hello", |s| s.len()), 5);
/// assert_eq!(lengths.get_or_compute("hello", |_| unreachable!()), 5);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// [`Cache::memoizer`]: crate::Cache::memoizer
pub struct Memoizer<K: ?Sized, V> {
    pub(crate) core: Arc<Tiers>,
    /// Keeps the cache (its writer, sweeper and zones) alive as long as the memoizer.
    cache: Arc<CacheInner>,
    encode: Arc<KeyEncoder<K>>,
    pub(crate) deps: Arc<DepFns<K>>,
    _value: PhantomData<fn() -> V>,
}

impl<K: ?Sized, V> Clone for Memoizer<K, V> {
    fn clone(&self) -> Self {
        Memoizer {
            core: self.core.clone(),
            cache: self.cache.clone(),
            encode: self.encode.clone(),
            deps: self.deps.clone(),
            _value: PhantomData,
        }
    }
}

impl<K: ?Sized, V> std::fmt::Debug for Memoizer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memoizer")
            .field("name", &self.core.name())
            .finish_non_exhaustive()
    }
}

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    pub(crate) fn from_parts(
        core: Arc<Tiers>,
        cache: Arc<CacheInner>,
        encode: Arc<KeyEncoder<K>>,
        deps: Arc<DepFns<K>>,
    ) -> Self {
        Memoizer {
            core,
            cache,
            encode,
            deps,
            _value: PhantomData,
        }
    }

    /// This memoizer's name (its table name in the cache file).
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// How many values `max_hits` is counting hits of (tests: it stays bounded by the
    /// live entries).
    #[doc(hidden)]
    pub fn __hit_counts(&self) -> usize {
        self.core.hit_counts()
    }

    /// The key `key` is looked up and stored under: encoded, hashed and filed.
    pub(crate) fn encode(&self, key: &K) -> Result<EncodedKey> {
        let mut ek = EncodedKey::empty();
        self.encode_in(key, &mut ek)?;
        Ok(ek)
    }

    /// [`encode`](Self::encode) into the caller's `slot` (an empty key), which it hands
    /// back: the hit paths' way, as a returned key was copied (232 bytes) on every call.
    pub(crate) fn encode_in<'s>(
        &self,
        key: &K,
        slot: &'s mut EncodedKey,
    ) -> Result<&'s mut EncodedKey> {
        (self.encode)(key, &mut slot.bytes).map_err(Error::KeyEncoding)?;
        // Only the primary row is needed to find the entry; on an error the lookup
        // misses, and the miss reports it (the entry cannot be stored).
        self.file_key(slot, |_| (self.deps.primary)(key).ok().flatten());
        Ok(slot)
    }

    /// Gives `ek`, whose bytes are encoded, its row hash, and files it under its primary
    /// dependency row if this memoizer files entries so: `primary` derives that row
    /// (asked only then; it may leave every row in `ek.deps` for a miss to store).
    /// Every form of a key - owned, borrowed, `#[memoize]` arguments - is hashed here.
    pub(crate) fn file_key(
        &self,
        ek: &mut EncodedKey,
        primary: impl FnOnce(&mut EncodedKey) -> Option<DepRow>,
    ) {
        ek.hash = (self.core.policy.hasher)(ek.bytes.as_slice());
        if self.core.policy.placed {
            let primary = primary(ek);
            ek.place(primary.as_ref());
        }
    }

    /// Looks `ek` up in every tier and deserializes a live hit. An entry due for a
    /// refresh is served only if `serve_due`; otherwise it is [`Looked::Due`], and
    /// nothing is counted or decoded.
    pub(crate) fn lookup(&self, ek: &EncodedKey, serve_due: bool) -> Looked<V> {
        loop {
            match self.lookup_once(ek, serve_due) {
                Read::Found(found) => return found,
                Read::Absent | Read::Miss => return Looked::Miss,
                Read::Retry => continue,
            }
        }
    }

    /// One attempt of [`lookup`](Self::lookup): `Retry` if an invalidation overtook it.
    fn lookup_once(&self, ek: &EncodedKey, serve_due: bool) -> Read<Looked<V>> {
        let core = &*self.core;
        let align = archive_align::<V::Archived>();
        let stamp = core.stamp();
        let in_memory = core.in_memory(ek, stamp, serve_due, |entry| {
            let value = with_aligned(entry.payload(), align, |payload| {
                V::__access(payload).and_then(V::__deserialize).ok()
            });
            match value {
                Some(value) => {
                    Counters::add(&core.stats.hits, 1);
                    Looked::Hit(value)
                }
                None => Looked::Miss,
            }
        });
        match in_memory {
            Read::Absent => {}
            other => return other,
        }
        #[cfg(feature = "redis")]
        if let Some(rt) = &core.remote {
            return self.remote_lookup(rt, ek, serve_due, stamp);
        }
        let generation = core.generation();
        let Some(stored) = core.stored(ek) else {
            return Read::Miss;
        };
        let bytes = stored.bytes();
        let Some((offset, meta)) = core.admit(ek, bytes) else {
            return Read::Miss;
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Read::Found(Looked::Due);
        }
        // Validate, then spend the max_hits budget, then deserialize: a used-up value is
        // never decoded (the in-memory path above keeps the same order).
        let value = with_aligned(&bytes[offset..], align, |payload| {
            let archived = V::__access(payload).ok()?;
            Some(match core.take_hit(stamp, &ek.hash, bytes, meta.entry_id) {
                Verdict::Serve => Read::Found(V::__deserialize(archived).ok()),
                Verdict::Miss => Read::Miss,
                Verdict::Retry => Read::Retry,
            })
        });
        match value {
            None => {
                Counters::add(&core.stats.stale, 1);
                Read::Miss
            }
            Some(Read::Found(Some(value))) => {
                Counters::add(&core.stats.hits, 1);
                core.promote(ek, bytes, generation, stamp);
                Read::Found(Looked::Hit(value))
            }
            Some(Read::Found(None) | Read::Miss | Read::Absent) => Read::Miss,
            Some(Read::Retry) => Read::Retry,
        }
    }

    /// Looks `ek` up in every tier and hands out a live hit in place (see
    /// [`lookup`](Self::lookup) for `serve_due`).
    pub(crate) fn lookup_archived(
        &self,
        ek: &EncodedKey,
        serve_due: bool,
    ) -> Result<Looked<ArchivedHit<V>>> {
        loop {
            match self.archived_once(ek, serve_due)? {
                Read::Found(found) => return Ok(found),
                Read::Absent | Read::Miss => return Ok(Looked::Miss),
                Read::Retry => continue,
            }
        }
    }

    /// One attempt of [`lookup_archived`](Self::lookup_archived).
    fn archived_once(
        &self,
        ek: &EncodedKey,
        serve_due: bool,
    ) -> Result<Read<Looked<ArchivedHit<V>>>> {
        let core = &*self.core;
        let stamp = core.stamp();
        let in_memory = core.in_memory(
            ek,
            stamp,
            serve_due,
            |entry| match ArchivedHit::from_memory(entry.clone()) {
                Some(hit) => {
                    Counters::add(&core.stats.hits, 1);
                    Looked::Hit(hit)
                }
                None => Looked::Miss,
            },
        );
        match in_memory {
            Read::Absent => {}
            other => return Ok(other),
        }
        #[cfg(feature = "redis")]
        if let Some(rt) = &core.remote {
            return Ok(self.remote_archived(rt, ek, serve_due, stamp));
        }
        let Some(p) = &core.persistent else {
            return Ok(Read::Miss);
        };
        let Some(stored) = core.shared.storage.get(&p.slot, &ek.hash)? else {
            return Ok(Read::Miss);
        };
        let Some((offset, meta)) = core.admit(ek, stored.bytes()) else {
            return Ok(Read::Miss);
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Ok(Read::Found(Looked::Due));
        }
        let verdict = core.take_hit(stamp, &ek.hash, stored.bytes(), meta.entry_id);
        let Some(hit) = ArchivedHit::from_stored(stored, offset) else {
            Counters::add(&core.stats.stale, 1);
            return Ok(Read::Miss);
        };
        Ok(match verdict {
            Verdict::Serve => {
                Counters::add(&core.stats.hits, 1);
                Read::Found(Looked::Hit(hit))
            }
            Verdict::Miss => Read::Miss,
            Verdict::Retry => Read::Retry,
        })
    }

    /// Returns the cached value for `key`, or computes it with `compute`, stores it and
    /// returns it.
    ///
    /// Concurrent calls for the same missing key compute once (single-flight); the others
    /// wait and then read the stored value. Calls for different keys never wait for each
    /// other. If the computation panics, the panic reaches its own caller and nothing is
    /// stored; the calls waiting on it are released and **retry**: one of them computes,
    /// the others wait for that one. If the cache itself fails (a full disk, a damaged
    /// file), the value is still computed and returned, and the failure is reported
    /// through [`Cache::health`](crate::Cache::health) and [`Stats::errors`].
    ///
    /// A stored value is visible to the next call at once, before its batch is committed
    /// (it is served from the writer's queue), and is made durable within the cache's
    /// [durable interval](crate::CacheBuilder::durable_interval).
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// let cache = Cache::in_memory()?;
    /// let double = cache.memoizer::<u64, u64>("double").build()?;
    /// assert_eq!(double.get_or_compute(&21, |n| n * 2), 42);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn get_or_compute(&self, key: &K, compute: impl FnOnce(&K) -> V) -> V {
        match self.try_get_or_compute(key, |k| Ok::<V, std::convert::Infallible>(compute(k))) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Like [`get_or_compute`](Self::get_or_compute) for a computation that can fail.
    /// An `Err` is returned to the caller untouched and nothing is cached; waiting
    /// callers then retry, and one of them computes again.
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// let cache = Cache::in_memory()?;
    /// let parse = cache.memoizer::<str, i64>("parse").build()?;
    /// assert!(parse.try_get_or_compute("x", |s| s.parse::<i64>()).is_err());
    /// assert_eq!(parse.try_get_or_compute("7", |s| s.parse::<i64>()), Ok(7));
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn try_get_or_compute<E>(
        &self,
        key: &K,
        compute: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<V, E> {
        let mut slot = EncodedKey::empty();
        let ek = self.encode_in(key, &mut slot);
        self.run(key, ek, |k| (self.deps.all)(k), compute)
    }

    /// The memoized call itself, for any form of the arguments: `ek` is their encoded
    /// key, `deps` their dependency rows (asked for only on a miss, and only if `ek` does
    /// not carry them already; an error means the value must not be stored), and `args`
    /// reach `compute` by value. `#[memoize]` calls it with the function's own arguments.
    /// [`run_async`](Self::run_async) is the same loop around the same steps.
    pub(crate) fn run<A, E>(
        &self,
        args: A,
        ek: Result<&mut EncodedKey>,
        deps: impl FnOnce(&A) -> Result<Vec<DepRow>>,
        compute: impl FnOnce(A) -> Result<V, E>,
    ) -> Result<V, E> {
        let look = |ek: &EncodedKey, due| self.lookup(ek, due);
        self.drive(args, ek, deps, compute, look, |value, _| Ok(value))
    }

    /// [`run`](Self::run) for any form of the answer: `look` finds a hit, `finish` turns
    /// a computed value (and its archive, if it was archived) into the answer.
    fn drive<A, E, R>(
        &self,
        args: A,
        ek: Result<&mut EncodedKey>,
        deps: impl FnOnce(&A) -> Result<Vec<DepRow>>,
        compute: impl FnOnce(A) -> Result<V, E>,
        look: impl Fn(&EncodedKey, bool) -> Looked<R>,
        finish: impl FnOnce(V, Option<AlignedVec>) -> Result<R, E>,
    ) -> Result<R, E> {
        // The key stays in its caller's slot: its inline buffer is not copied on the
        // hit path (see `KeyBytes::set`).
        let ek = match ek {
            Ok(ek) => ek,
            Err(e) => {
                self.core.unencoded(e);
                return finish(compute(args)?, None);
            }
        };
        loop {
            match self.core.step(ek, Caller::Thread, |due| look(ek, due)) {
                Step::Served(v) => return Ok(v),
                Step::Wait(flight) => flight.wait(),
                Step::Alone => return finish(compute(args)?, None),
                Step::Lead(mut lead) => {
                    let deps = ek.deps.take().unwrap_or_else(|| deps(&args));
                    self.core.begin(&mut lead, ek, &deps);
                    let value = compute(args)?;
                    let archive = self.core.land(lead, ek, deps, &value);
                    return finish(value, archive);
                }
            }
        }
    }

    /// The value for `key` read in place, computed and stored first on a miss: a large
    /// value is then never deserialized, on a hit or on the call that computed it.
    /// Single-flight, `max_hits`, `refresh_after` and errors behave as in
    /// [`get_or_compute`](Self::get_or_compute).
    ///
    /// `Err` only if the value cannot be archived at all ([`Error::ValueEncoding`]; it
    /// could not be cached either - [`get_or_compute`](Self::get_or_compute) returns
    /// such a value owned).
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// let cache = Cache::in_memory()?;
    /// let pages = cache.memoizer::<u32, Vec<u8>>("pages").build()?;
    /// let page = pages.get_archived_or_compute(&1, |_| vec![7; 50 << 10])?;
    /// assert_eq!(page.len(), 50 << 10);
    /// let again = pages.get_archived_or_compute(&1, |_| unreachable!())?;
    /// assert_eq!(again[0], 7);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn get_archived_or_compute(
        &self,
        key: &K,
        compute: impl FnOnce(&K) -> V,
    ) -> Result<ArchivedHit<V>> {
        self.try_get_archived_or_compute(key, |k| Ok(compute(k)))
    }

    /// [`get_archived_or_compute`](Self::get_archived_or_compute) for a computation that
    /// can fail: its `Err` is returned untouched and nothing is cached. The cache's own
    /// error (a value that cannot be archived) is converted into `E`.
    pub fn try_get_archived_or_compute<E: From<Error>>(
        &self,
        key: &K,
        compute: impl FnOnce(&K) -> Result<V, E>,
    ) -> Result<ArchivedHit<V>, E> {
        let core = &*self.core;
        let look = |ek: &EncodedKey, due| {
            self.lookup_archived(ek, due).unwrap_or_else(|e| {
                core.report(e);
                Looked::Miss
            })
        };
        let finish = |value: V, archive: Option<AlignedVec>| {
            let archive = match archive {
                Some(archive) => Ok(archive),
                None => value.__archive(),
            };
            archive
                .map_err(|e| e.to_string())
                .and_then(|a| {
                    ArchivedHit::from_archive(a).ok_or_else(|| "it does not validate".into())
                })
                .map_err(|e| E::from(Error::ValueEncoding(e)))
        };
        let mut slot = EncodedKey::empty();
        let ek = self.encode_in(key, &mut slot);
        self.drive(key, ek, |k| (self.deps.all)(k), compute, look, finish)
    }

    /// The cached value for `key` read in place, without computing anything.
    ///
    /// `Ok(None)` on a miss (absent, expired, used up by `max_hits`, or written for
    /// another type). A hit counts towards `max_hits` like any other.
    pub fn get_archived(&self, key: &K) -> Result<Option<ArchivedHit<V>>> {
        let mut slot = EncodedKey::empty();
        match self.lookup_archived(self.encode_in(key, &mut slot)?, true)? {
            Looked::Hit(hit) => Ok(Some(hit)),
            Looked::Due | Looked::Miss => Ok(None),
        }
    }

    /// Removes the entry for `key` (after the key function). Returns whether one existed.
    /// When it returns, no later call sees the old value.
    pub fn invalidate_key(&self, key: &K) -> Result<bool> {
        let ek = self.encode(key)?;
        Ok(self.core.invalidate(Remove::Key(ek.hash))? > 0)
    }

    /// Removes every entry of this memoizer - and nothing of any other memoizer - at a
    /// cost independent of how many there are: the memoizer's table is set aside whole
    /// (renamed; its index rows stay exact) and its space is reclaimed afterwards, in
    /// bounded batches, by the cache's sweeper thread. Returns how many entries were
    /// removed. When it returns, no later call sees a value stored before it.
    pub fn invalidate_all(&self) -> Result<u64> {
        self.core.invalidate(Remove::All)
    }

    /// Counters since this memoizer was built, and the current entry count: O(1), read
    /// from the table's length (after letting writes still queued commit, so the count
    /// includes the values just stored).
    pub fn stats(&self) -> Stats {
        let core = &*self.core;
        let (entries, bytes) = match &core.persistent {
            Some(p) => {
                let id = p.id;
                let counted = core.shared.writer.query(move |txn| {
                    Ok((ops::count_entries(txn, id)?, ops::memoizer_bytes(txn, id)?))
                });
                counted.ok().unzip()
            }
            // A connected memoizer's count lives on the server, uncounted.
            None if core.remote.is_some() => (None, None),
            None => (core.memory_len(), None),
        };
        let mut stats = core.stats.snapshot(entries);
        stats.bytes = bytes;
        if let Some(p) = &core.persistent {
            stats.errors += p.slot.lost_writes();
            stats.budget_evictions = p.slot.evicted();
        }
        stats
    }
}

/// Configures a [`Memoizer`]. Start it with [`Cache::memoizer`](crate::Cache::memoizer).
#[must_use = "a builder does nothing until .build() is called"]
pub struct MemoizerBuilder<K: ?Sized, V> {
    cache: Arc<CacheInner>,
    name: String,
    store: Option<Store>,
    expires: Option<Duration>,
    refresh_after: Option<Duration>,
    max_hits: Option<u32>,
    max_memory_bytes: Option<usize>,
    weigher: Option<Weigher>,
    max_bytes: Option<u64>,
    version: String,
    verify: bool,
    hasher: KeyHasher,
    encode: Arc<KeyEncoder<K>>,
    /// Whether the key is the whole argument (no keyfunc): only then are dependency keys,
    /// derived from the arguments, a function of the key, so that the key can be looked
    /// up where its dependencies file it.
    whole_key: bool,
    zones: Vec<Membership<K>>,
    _value: PhantomData<fn() -> V>,
}

impl<K: Serialize + ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    pub(crate) fn new(cache: Arc<CacheInner>, name: &str) -> Self {
        MemoizerBuilder {
            whole_key: true,
            ..Self::with_encoder(
                cache,
                name,
                Arc::new(|k: &K, out: &mut KeyBytes| out.set(k)),
            )
        }
    }
}

impl<K: ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    /// A builder whose key encoding is given (`#[memoize]` uses it for arguments that
    /// are not `Serialize` themselves but have a keyfunc).
    pub(crate) fn with_encoder(
        cache: Arc<CacheInner>,
        name: &str,
        encode: Arc<KeyEncoder<K>>,
    ) -> Self {
        MemoizerBuilder {
            cache,
            name: name.to_string(),
            store: None,
            expires: None,
            refresh_after: None,
            max_hits: None,
            max_memory_bytes: None,
            weigher: None,
            max_bytes: None,
            version: String::new(),
            verify: true,
            hasher: xxh3_key_hash,
            encode,
            whole_key: false,
            zones: Vec::new(),
            _value: PhantomData,
        }
    }
}

impl<K: ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    /// Where values live. Default: [`Store::Persistent`] for a file-backed cache,
    /// [`Store::Memory`] for [`Cache::in_memory`](crate::Cache::in_memory).
    pub fn store(mut self, store: Store) -> Self {
        self.store = Some(store);
        self
    }

    /// Time to live, counted from when a value is stored (hits do not extend it). The
    /// deadline is stored with the entry, so it holds across restarts. Default: never.
    pub fn expires(mut self, ttl: Duration) -> Self {
        self.expires = Some(ttl);
        self
    }

    /// Serve while refreshing: once a stored value is `age` old, the next call
    /// recomputes it, and calls that come while it does are served the stored value
    /// instead of waiting (sync and async callers alike). [`expires`](Self::expires)
    /// stays the hard limit: an expired value is never served, and waiters wait.
    ///
    /// - One caller refreshes at a time (single-flight); if its computation fails,
    ///   panics or is cancelled, nothing changes and the next call tries again.
    /// - A value served while stale counts as a hit for [`max_hits`](Self::max_hits);
    ///   once used up it is not served, and callers wait for the refresh.
    /// - An invalidation (of the key, the memoizer or a zone) removes the entry: it is
    ///   gone, never stale, and the next call computes as on any miss.
    /// - The age counts from the store, like `expires`, and holds across restarts.
    ///
    /// ```
    /// use fresco_memoize::{Cache, ManualClock};
    /// use std::time::Duration;
    ///
    /// let clock = ManualClock::new(1_000_000);
    /// let cache = Cache::builder().clock(clock.clone()).in_memory()?;
    /// let rates = cache
    ///     .memoizer::<str, u32>("rates")
    ///     .refresh_after(Duration::from_secs(60))
    ///     .expires(Duration::from_secs(3600))
    ///     .build()?;
    /// assert_eq!(rates.get_or_compute("EUR", |_| 1), 1);
    /// clock.advance(Duration::from_secs(61));
    /// // Due: this call refreshes (callers arriving meanwhile would get 1).
    /// assert_eq!(rates.get_or_compute("EUR", |_| 2), 2);
    /// assert_eq!(rates.get_or_compute("EUR", |_| unreachable!()), 2);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn refresh_after(mut self, age: Duration) -> Self {
        self.refresh_after = Some(age);
        self
    }

    /// Serve a stored value at most `n` times; the call after the `n`th hit recomputes.
    /// Exact under concurrency. Counts live in memory: after a restart each stored value
    /// may be served up to `n` more times. In a [shared](crate::CacheBuilder::shared)
    /// cache a persistent (or tiered) memoizer's counts live in the shared-memory board
    /// instead: every process spends one budget, and a restart keeps it; a value whose
    /// count is lost (the board is bounded) is recomputed, never served anew. Counts stop
    /// at 2^24 - 1 there. Default: unlimited.
    pub fn max_hits(mut self, n: u32) -> Self {
        self.max_hits = Some(n);
        self
    }

    /// Bounds the bytes the in-memory store holds - of [`Store::Lru`], of the memory
    /// tier of [`Store::Tiered`], or of [`Store::Memory`], which then evicts like an
    /// LRU - besides its entry count. Each entry weighs its encoded size in memory: its
    /// header (31 bytes for an entry without deadline or zone rows), key bytes,
    /// dependency rows and archived value (one buffer), or
    /// what a [`weigher`](Self::weigher) says. The
    /// least recently used entries go first; an entry heavier than the bound (split
    /// evenly over the store's shards, one per 4 MiB) is not kept in memory (a tiered
    /// store still has it in the file). Default: no byte bound.
    ///
    /// ```
    /// # use fresco_memoize::{Cache, Store};
    /// let cache = Cache::in_memory()?;
    /// let thumbs = cache
    ///     .memoizer::<u32, Vec<u8>>("thumbs")
    ///     .store(Store::Lru(10_000))
    ///     .max_memory_bytes(1 << 20)
    ///     .build()?;
    /// for i in 0..100 {
    ///     thumbs.get_or_compute(&i, |_| vec![0; 50 << 10]);
    /// }
    /// assert!(thumbs.stats().entries.unwrap() <= 20);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn max_memory_bytes(mut self, bytes: usize) -> Self {
        self.max_memory_bytes = Some(bytes);
        self
    }

    /// How much an entry weighs against [`max_memory_bytes`](Self::max_memory_bytes),
    /// instead of its encoded size (like moka's `weigher`). The function is given the
    /// archived value - what the memory tier holds, read in place, never deserialized -
    /// each time an entry enters the in-memory store: a computed value, or (in
    /// [`Store::Tiered`]) a value read from the file. The weight is kept with the entry
    /// until it leaves. Whole entries are evicted, least recently used first, until the
    /// weights of those held fit the bound; an entry heavier than the bound (or than
    /// `u32::MAX`) is not kept in memory. Without a byte bound, or in a store without a
    /// memory tier ([`Store::Persistent`]), the weigher has no effect.
    ///
    /// It runs under the lock of the store's shard, on misses and promotions only (hits
    /// do not run it): keep it cheap, like reading a length. Should it panic, the
    /// encoded size counts instead.
    ///
    /// ```
    /// # use fresco_memoize::{Cache, Store};
    /// let cache = Cache::in_memory()?;
    /// let thumbs = cache
    ///     .memoizer::<u32, Vec<u8>>("thumbs")
    ///     .store(Store::Lru(10_000))
    ///     .max_memory_bytes(1_000)
    ///     // An entry weighs its pixels' count, nothing else.
    ///     .weigher(|pixels: &rkyv::vec::ArchivedVec<u8>| pixels.len() as u64)
    ///     .build()?;
    /// for i in 0..10 {
    ///     thumbs.get_or_compute(&i, |_| vec![0; 300]);
    /// }
    /// // Three of 300 fit in 1 000.
    /// assert_eq!(thumbs.stats().entries, Some(3));
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn weigher(
        mut self,
        weigher: impl Fn(&V::Archived) -> u64 + Send + Sync + 'static,
    ) -> Self {
        let align = archive_align::<V::Archived>();
        self.weigher = Some(Arc::new(move |archive: &[u8]| {
            let weigh = || {
                with_aligned(archive, align, |bytes| {
                    V::__access(bytes).ok().map(&weigher)
                })
            };
            crate::panics::catch_quietly(weigh).ok().flatten()
        }));
        self
    }

    /// A byte budget for this memoizer's entries in the cache file - of
    /// [`Store::Persistent`], or the file tier of [`Store::Tiered`] - or `None` for none
    /// (default). Its entries are charged what redb spends on them
    /// ([`Stats::bytes`]); once the charge passes `max_bytes`, this memoizer's own
    /// entries (and nothing of any other memoizer) are evicted with their index rows,
    /// inside the background writer's batches, through this memoizer's run of the
    /// file's eviction index - never a scan - until the charge is back under
    /// `max_bytes` when the batch commits. The policy is the file budget's
    /// ([`CacheBuilder::max_bytes`](crate::CacheBuilder::max_bytes)): TinyLFU admission
    /// over a second-chance order, with lookups counted in memory (in the file budget's
    /// sketch if the file has one). The charges and the eviction order are in the file:
    /// a budget applies to the entries earlier runs stored too, and a smaller budget
    /// given at a later build evicts down to it before `build` returns (one durable
    /// commit, only when over it). Evictions show in [`Stats::budget_evictions`] and
    /// [`Cache::inspect`](crate::Cache::inspect).
    ///
    /// Both budgets may be set: each holds. Building a memoizer without a file tier
    /// ([`Store::Memory`], [`Store::Lru`], or any store of a cache connected to a
    /// server) with a budget fails with [`Error::Unsupported`]; bound those with
    /// [`max_memory_bytes`](Self::max_memory_bytes). A budget holds for as long as the
    /// cache is open, also over the stores a memoizer queued before it was dropped;
    /// building the memoizer again in the same run keeps the first budget.
    ///
    /// ```
    /// # use fresco_memoize::{Cache, Store};
    /// let dir = tempfile::tempdir().unwrap();
    /// let cache = Cache::open(dir.path().join("app.memo"))?;
    /// let thumbs = cache
    ///     .memoizer::<u32, Vec<u8>>("thumbs")
    ///     .store(Store::Persistent)
    ///     .max_bytes(Some(1 << 20))
    ///     .build()?;
    /// for i in 0..100 {
    ///     thumbs.get_or_compute(&i, |_| vec![7; 50 << 10]);
    /// }
    /// cache.flush()?;
    /// let stats = thumbs.stats();
    /// assert!(stats.bytes.unwrap() <= 1 << 20);
    /// assert!(stats.budget_evictions > 0);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    ///
    /// [`Stats::bytes`]: crate::Stats::bytes
    /// [`Stats::budget_evictions`]: crate::Stats::budget_evictions
    pub fn max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Maps the arguments to the key actually stored (the original's `keyfunc`). Arguments
    /// with equal keys share one entry.
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// let cache = Cache::in_memory()?;
    /// let m = cache.memoizer::<str, usize>("ci").keyfunc(|s: &str| s.to_lowercase()).build()?;
    /// m.get_or_compute("Foo", |s| s.len());
    /// assert_eq!(m.get_or_compute("foo", |_| 99), 3);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn keyfunc<T: Serialize>(mut self, f: impl Fn(&K) -> T + Send + Sync + 'static) -> Self {
        self.encode = Arc::new(move |k: &K, out: &mut KeyBytes| out.set(&f(k)));
        self.whole_key = false;
        self
    }

    /// A version folded into every entry's fingerprint: change it to invalidate every
    /// value stored under the old one (on the next build). Default: empty.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// Whether persistent hits verify the entry checksum (xxh3, ~30 GB/s). Without it a
    /// flipped bit on disk inside a value's bytes could go unnoticed when rkyv still
    /// validates. Default: on.
    pub fn verify_checksums(mut self, verify: bool) -> Self {
        self.verify = verify;
        self
    }

    #[doc(hidden)]
    /// Replaces the row hash. Tests use it to force collisions.
    pub fn __key_hasher(mut self, hasher: fn(&[u8]) -> [u8; 16]) -> Self {
        self.hasher = hasher;
        self
    }

    /// Builds the memoizer. For a persistent store this registers it in the file; if its
    /// value type or version changed since the last run, its old entries are dropped.
    /// Builds the memoizer. For a persistent store this registers it in the file; if its
    /// value type or version changed since the last run, its old entries are dropped.
    pub fn build(self) -> Result<Memoizer<K, V>> {
        check_name(&self.name)?;
        let cache = self.cache.clone();
        let shared = cache.shared.clone();
        let store = self.store.unwrap_or(if shared.file_backed {
            Store::Persistent
        } else {
            Store::Memory
        });
        let zones = zone::resolve(&cache, &self.name, self.zones)?;
        // The name is part of what a hit checks: should a table ever be filed under
        // another memoizer's id, its entries read as misses, never as that one's values.
        let fingerprint = zone::keyed_fingerprint(
            fingerprint::mix(
                fingerprint::value_fingerprint::<V>(&self.version),
                &[fingerprint::name_hash(&self.name)],
            ),
            &zones,
        );
        let keyed = zones.iter().any(|z| z.key.is_some());
        let on_disk = matches!(store, Store::Persistent | Store::Tiered(_));
        if self.max_bytes.is_some() && !on_disk {
            return Err(Error::Unsupported {
                reason: "MemoizerBuilder::max_bytes on a store without a file tier (Memory or \
                         Lru); bound it with max_memory_bytes",
            });
        }
        // In a connected cache the server takes the file's place.
        #[cfg(feature = "redis")]
        let remote = match &shared.remote {
            Some(service) if on_disk => Some(crate::remote::RemoteTier {
                service: service.clone(),
                memo: crate::remote::name_id(&self.name),
                zones: zones.iter().map(|z| z.zone.id).collect(),
                max_hits: self.max_hits.unwrap_or(0),
            }),
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let remote: crate::tiers::RemoteSlot = None;
        if self.max_bytes.is_some() && remote.is_some() {
            return Err(Error::Unsupported {
                reason: "MemoizerBuilder::max_bytes in a cache connected to a server",
            });
        }
        let policy = Policy {
            name: self.name.clone(),
            fingerprint,
            expires: self.expires,
            refresh_after: self.refresh_after,
            max_hits: self.max_hits,
            verify: self.verify,
            hasher: self.hasher,
            placed: keyed && self.whole_key && on_disk,
            plain_keys: self.whole_key && !keyed,
        };
        let entries = match store {
            Store::Memory => Some(None),
            // A max_hits count lives on the server: never served from a local copy.
            Store::Tiered(_) if remote.is_some() && self.max_hits.is_some() => None,
            Store::Lru(n) | Store::Tiered(n) => Some(Some(n)),
            Store::Persistent => None,
        };
        let memory = entries.map(|entries| Bound {
            entries,
            bytes: self.max_memory_bytes,
            weigher: self.weigher.clone(),
        });
        let indexed = self.expires.is_some() || keyed;
        let zone_ids: Vec<u64> = zones.iter().map(|z| z.zone.id).collect();
        let core = cache.register_live(&self.name, || {
            let persistent = if on_disk && remote.is_none() {
                let (placed, name) = (policy.placed, &policy.name);
                Some(register(
                    &cache,
                    name,
                    fingerprint,
                    indexed,
                    placed,
                    zone_ids,
                )?)
            } else {
                None
            };
            Ok(Arc::new(Tiers::new(
                policy, memory, persistent, remote, shared,
            )))
        })?;
        if let (Some(max_bytes), Some(p)) = (self.max_bytes, &core.persistent)
            && let Err(e) = own_budget(&cache, p, max_bytes)
        {
            // The budget is set: the next batch's round evicts, should this one fail.
            core.report(e);
        }
        for z in &zones {
            z.zone.attach(&core);
        }
        #[cfg(feature = "redis")]
        crate::remote::listen_for(&cache, &core)?;
        let deps = zone::dep_fns(&self.name, zones);
        Ok(Memoizer::from_parts(core, cache, self.encode, deps))
    }
}

/// Gives a persistent memoizer its own byte budget. Entries stored by earlier runs
/// count: if they are charged more than the budget, an empty writer job makes a batch
/// whose eviction round brings them under it before this returns.
fn own_budget(cache: &CacheInner, p: &Persistent, max_bytes: u64) -> Result<()> {
    let shared = &cache.shared;
    shared.storage.set_memo_budget(&p.slot, max_bytes);
    let id = p.id;
    let charged = shared
        .storage
        .read(|txn| Ok(ops::read_sizes(txn)?.get(&id).copied().unwrap_or(0)))?;
    if charged > max_bytes {
        shared.writer.run(|_txn| Ok(()))?;
    }
    Ok(())
}

/// Registers a persistent memoizer in the file (with its zone memberships) and gives it
/// a snapshot slot.
fn register(
    cache: &CacheInner,
    name: &str,
    fingerprint: u64,
    indexed: bool,
    placed: bool,
    zone_ids: Vec<u64>,
) -> Result<Persistent> {
    let shared = &cache.shared;
    // Rebuilt as registered before (every start of a program after the first): a read
    // suffices, with no commit to wait for.
    let known = shared
        .storage
        .read(|txn| ops::registered(txn, name, fingerprint, indexed, placed, &zone_ids))
        .ok()
        .flatten();
    let record = match known {
        Some(record) => record,
        None => {
            let name = name.to_string();
            let record = shared.writer.run(move |txn| {
                let record = ops::register_memoizer(txn, &name, fingerprint, indexed, placed)?;
                for zone_id in zone_ids {
                    ops::add_zone_member(txn, zone_id, record.id)?;
                }
                Ok(record)
            })?;
            shared.storage.registered();
            record
        }
    };
    Ok(Persistent {
        id: record.id,
        slot: shared.storage.slot(record.id),
    })
}

impl<K: ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    /// Joins `zone`, keyed by the zone's default key function (if it has one). If the
    /// zone's key function takes another argument type, [`build`](Self::build) fails
    /// with [`Error::MissingZoneKey`]: use [`zone_key`](Self::zone_key) instead.
    /// A memoizer that joins no zone belongs to the zone `"default"`.
    pub fn zone(mut self, zone: &Zone) -> Self {
        self.zones.push(Membership::new(zone, None, true));
        self
    }

    /// Joins `zone` without a key function; building fails with
    /// [`Error::MissingZoneKey`] if the zone has a default one. `#[memoize]` uses it for
    /// functions of several arguments, whose calls derive dependency keys from the
    /// borrowed arguments and so cannot apply a default key function over the owned
    /// key tuple.
    #[doc(hidden)]
    pub fn __zone_without_default(mut self, zone: &Zone) -> Self {
        self.zones.push(Membership::new(zone, None, false));
        self
    }

    /// Joins `zone` with this memoizer's own key function (the original's `zonekey=`),
    /// which overrides the zone's default.
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// let cache = Cache::in_memory()?;
    /// let authors = cache.zone("Authors")?.key(|author_id: &u64| *author_id);
    /// // Keyed by (book id, author id); depends on the author.
    /// let cover = cache
    ///     .memoizer::<(u64, u64), String>("cover")
    ///     .zone_key(&authors, |&(_book, author): &(u64, u64)| author)
    ///     .build()?;
    /// cover.get_or_compute(&(1, 42), |_| "blue".into());
    /// assert_eq!(authors.invalidate(&42u64)?, 1);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn zone_key<T: Serialize>(
        self,
        zone: &Zone,
        f: impl Fn(&K) -> T + Send + Sync + 'static,
    ) -> Self {
        self.zone_keys(zone, move |k: &K| [f(k)])
    }

    /// Joins `zone` with a key function yielding several dependency keys per entry.
    ///
    /// The first key yielded for the first zone that keys a memoizer is the entry's
    /// *primary* dependency: unless the memoizer has a [`keyfunc`](Self::keyfunc), its
    /// persistent entries are stored next to the others sharing that key, which makes
    /// invalidating it cheapest at any cache size. Put first the key you invalidate most.
    /// Invalidating any other key costs a B-tree removal per entry wherever it lies.
    /// Finding an entry then needs its primary key, so for such a memoizer the first key
    /// function runs on every lookup, hits included (up to its first key): keep key
    /// functions cheap, like reading a field.
    ///
    /// ```
    /// # use fresco_memoize::Cache;
    /// # #[derive(serde::Serialize)]
    /// # struct Book { author_id: u64, publisher_id: u64 }
    /// let cache = Cache::in_memory()?;
    /// let deps = cache.zone("Deps")?;
    /// let reviews = cache
    ///     .memoizer::<Book, String>("reviews")
    ///     .zone_keys(&deps, |b: &Book| [("author", b.author_id), ("publisher", b.publisher_id)])
    ///     .build()?;
    /// reviews.get_or_compute(&Book { author_id: 1, publisher_id: 9 }, |_| "good".into());
    /// assert_eq!(deps.invalidate(&("publisher", 9u64))?, 1);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn zone_keys<T: Serialize, I: IntoIterator<Item = T>>(
        mut self,
        zone: &Zone,
        f: impl Fn(&K) -> I + Send + Sync + 'static,
    ) -> Self {
        let keys: Arc<KeysFn<K>> = Arc::new(move |k: &K, visit| zone::visit_all(f(k), visit));
        self.zones.push(Membership::new(zone, Some(keys), false));
        self
    }
}
