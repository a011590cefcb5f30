//! `Memoizer`: one memoized function - its key encoding, policies and store.

use std::marker::PhantomData;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rkyv::util::AlignedVec;
use serde::Serialize;

use crate::cache::CacheInner;
use crate::entry::{self, DepRow, Meta};
use crate::error::{Error, Result};
use crate::flight::{Caller, Flight, Flights, Leader, Role};
use crate::hit::ArchivedHit;
use crate::key::{EncodedKey, HashMapByKey, KeyBytes, KeyHash, KeyHasher, xxh3_key_hash};
use crate::memory::{MemEntry, MemStore};
use crate::stats::{Counters, Stats};
use crate::storage::writer::{Wait, now};
use crate::storage::{SnapSlot, ops};
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

/// The persistent half of a memoizer.
pub(crate) struct Persistent {
    pub id: u64,
    pub slot: Arc<SnapSlot>,
}

/// The remote tier of a memoizer of a connected cache; never present without the `redis`
/// feature.
#[cfg(feature = "redis")]
pub(crate) type RemoteSlot = Option<crate::remote::RemoteTier>;
/// The remote tier of a memoizer of a connected cache; never present without the `redis`
/// feature.
#[cfg(not(feature = "redis"))]
pub(crate) type RemoteSlot = Option<std::convert::Infallible>;

/// The type-erased state of one memoizer, shared by its clones.
pub(crate) struct MemoCore {
    pub name: String,
    pub fingerprint: u64,
    pub expires: Option<Duration>,
    /// Age after which a live entry is recomputed by one caller while the others are
    /// served it (`MemoizerBuilder::refresh_after`).
    pub refresh_after: Option<Duration>,
    pub max_hits: Option<u32>,
    pub verify: bool,
    pub hasher: KeyHasher,
    /// Whether entries are filed under their primary dependency row ([`crate::key::place`]):
    /// persistent memoizers with zone keys and no keyfunc. Finding a row then needs the
    /// key's primary dependency row.
    pub placed: bool,
    /// Whether the stored key is the argument as serialized, with no dependency rows
    /// (no keyfunc, no zone keys): then a borrowed form of the key that serializes
    /// alike finds and stores the same entry ([`crate::KeyLike`]).
    pub plain_keys: bool,
    pub memory: Option<Mutex<MemStore>>,
    pub persistent: Option<Persistent>,
    /// In a connected cache, the server takes the persistent table's place.
    pub remote: RemoteSlot,
    /// Bumped by every invalidation; a computation that started under an older epoch
    /// does not store its result (it may be stale).
    pub epoch: AtomicU64,
    pub flights: Flights,
    /// `max_hits` accounting: hash -> (entry id, times served).
    pub served: Mutex<HashMapByKey<(u64, u32)>>,
    pub stats: Counters,
    pub cache: Arc<CacheInner>,
}

pub(crate) type KeyEncoder<K> = dyn Fn(&K) -> Result<KeyBytes, postcard::Error> + Send + Sync;

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
    pub(crate) core: Arc<MemoCore>,
    encode: Arc<KeyEncoder<K>>,
    pub(crate) deps: Arc<crate::zone::DepFns<K>>,
    _value: PhantomData<fn() -> V>,
}

impl<K: ?Sized, V> Clone for Memoizer<K, V> {
    fn clone(&self) -> Self {
        Memoizer {
            core: self.core.clone(),
            encode: self.encode.clone(),
            deps: self.deps.clone(),
            _value: PhantomData,
        }
    }
}

impl<K: ?Sized, V> std::fmt::Debug for Memoizer<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memoizer")
            .field("name", &self.core.name)
            .finish_non_exhaustive()
    }
}

/// Copies `payload` into an aligned buffer if `align` demands it, then runs `f`.
pub(crate) fn with_aligned<R>(payload: &[u8], align: usize, f: impl FnOnce(&[u8]) -> R) -> R {
    if (payload.as_ptr() as usize).is_multiple_of(align) {
        f(payload)
    } else {
        let mut copy = rkyv::util::AlignedVec::<16>::with_capacity(payload.len());
        copy.extend_from_slice(payload);
        f(&copy)
    }
}

impl MemoCore {
    fn now_ms(&self) -> u64 {
        self.cache.clock.now_ms()
    }

    /// Records a hit on the value `entry_id` under `max_hits`; false if it is used up,
    /// or if it is not the value this process stored last under `hash` (a read that raced
    /// with a newer store: the caller looks again instead of serving an old value, whose
    /// hits were already counted).
    #[inline]
    fn take_hit(&self, hash: &KeyHash, entry_id: u64) -> bool {
        match self.max_hits {
            None => true,
            Some(limit) => self.take_counted_hit(hash, entry_id, limit),
        }
    }

    fn take_counted_hit(&self, hash: &KeyHash, entry_id: u64, limit: u32) -> bool {
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        let slot = served.entry(*hash).or_insert((entry_id, 0));
        if slot.0 != entry_id {
            return false;
        }
        if slot.1 >= limit {
            Counters::add(&self.stats.expirations, 1);
            return false;
        }
        slot.1 += 1;
        true
    }

    /// Starts the hit count of a value about to be stored; done before the value becomes
    /// visible so no reader can count a hit against the previous value's budget.
    fn reset_hits(&self, hash: &KeyHash, entry_id: u64) {
        if self.max_hits.is_some() {
            let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
            served.insert(*hash, (entry_id, 0));
        }
    }

    pub(crate) fn report(&self, error: Error) {
        Counters::add(&self.stats.errors, 1);
        self.cache.storage.reporter.report(&error);
    }

    /// Whether an entry with this header is still live. Reads the clock only for entries
    /// that have a deadline, so hits without `expires` never pay for it.
    fn live(&self, expires_at_ms: u64) -> bool {
        expires_at_ms == 0 || self.now_ms() < expires_at_ms
    }

    /// Whether a live entry stored at `stored_at_ms` is due for a refresh. Reads the
    /// clock (and the header) only for memoizers with `refresh_after`.
    pub(crate) fn due(&self, stored_at_ms: impl FnOnce() -> u64) -> bool {
        self.refresh_after.is_some_and(|after| {
            let at = stored_at_ms().saturating_add(after.as_millis() as u64);
            self.now_ms() >= at
        })
    }

    /// Looks in the in-memory tier and runs `read` on a live entry for this key, under
    /// the tier's lock (the entry is read in place). `Err(())` means "definitely a miss,
    /// do not look further": the entry expired, and the persistent tier holds the same
    /// entry.
    fn in_memory<R>(
        &self,
        ek: &EncodedKey,
        read: impl FnOnce(&MemEntry) -> R,
    ) -> Result<Option<R>, ()> {
        let Some(mem) = self.memory.as_ref().filter(|_| self.local_trusted()) else {
            return Ok(None);
        };
        let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
        let found = mem.get_with(&ek.hash, |entry| {
            if entry.key() != ek.bytes.as_slice() {
                Counters::add(&self.stats.stale, 1);
                Ok(None)
            } else if !self.live(entry.expires_at_ms()) {
                Err(())
            } else {
                Ok(Some(read(entry)))
            }
        });
        match found {
            None => Ok(None),
            Some(Err(())) => {
                mem.remove(&ek.hash);
                Counters::add(&self.stats.expirations, 1);
                Err(())
            }
            Some(Ok(read)) => Ok(read),
        }
    }

    /// Whether the in-memory tier may be served: always, except in a connected cache
    /// while its invalidation listener is not live (pushes may be missed).
    fn local_trusted(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            return rt.service.local_tiers_live();
        }
        true
    }

    /// What to report about a damaged entry.
    fn damaged(&self, detail: String) -> Error {
        #[cfg(feature = "redis")]
        if let Some(service) = &self.cache.remote {
            return Error::Remote {
                server: service.server(),
                detail: format!(
                    "an entry of memoizer {:?} is damaged ({detail}) and was read as a miss",
                    self.name
                ),
            };
        }
        Error::DamagedEntry {
            path: self.cache.storage.path().map(Path::to_path_buf),
            memoizer: self.name.clone(),
            detail,
        }
    }

    /// Checks stored bytes belong to this key, type and version and are still live.
    /// Returns the payload offset and the header.
    pub(crate) fn admit(&self, ek: &EncodedKey, bytes: &[u8]) -> Option<(usize, Meta)> {
        let view = match entry::decode(bytes, self.verify) {
            Ok(view) => view,
            Err(malformed) => {
                // Only damage makes an entry fail these checks: report it, read a miss
                // (the recomputed value then overwrites the entry).
                Counters::add(&self.stats.stale, 1);
                self.report(self.damaged(format!("{malformed:?}")));
                return None;
            }
        };
        if view.key != ek.bytes.as_slice() || view.meta.fingerprint != self.fingerprint {
            Counters::add(&self.stats.stale, 1);
            return None;
        }
        if !self.live(view.meta.expires_at_ms) {
            Counters::add(&self.stats.expirations, 1);
            return None;
        }
        Some((view.payload_offset, view.meta))
    }

    /// Copies a persistent hit into the in-memory tier (tiered stores only). `generation`
    /// is the storage's commit generation read before the bytes were: if a commit came
    /// since, an invalidation may have removed them (and purged the memory tier before
    /// this insert), so they are not promoted.
    fn promote(&self, ek: &EncodedKey, bytes: &[u8], generation: u64) {
        let Some(mem) = &self.memory else { return };
        let Some(entry) = MemEntry::new(Arc::from(bytes)) else {
            return;
        };
        let epoch = self.epoch.load(Ordering::SeqCst);
        let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::SeqCst) == epoch
            && self.cache.storage.generation() == generation
        {
            let evicted = mem.insert(ek.hash, entry);
            Counters::add(&self.stats.evictions, evicted.len() as u64);
        }
    }

    /// Encodes a freshly computed value as an entry (a new entry id, the deadline).
    pub(crate) fn encode_entry(
        &self,
        ek: &EncodedKey,
        archive: &[u8],
        deps: &[DepRow],
    ) -> (Meta, Arc<[u8]>) {
        let now = self.now_ms();
        let meta = Meta {
            fingerprint: self.fingerprint,
            stored_at_ms: now,
            expires_at_ms: self
                .expires
                .map_or(0, |d| now.saturating_add(d.as_millis() as u64).max(1)),
            entry_id: self.cache.next_entry_id.fetch_add(1, Ordering::Relaxed),
        };
        let bytes = entry::encode(&meta, ek.bytes.as_slice(), deps, archive).into();
        (meta, bytes)
    }

    /// Stores a freshly computed value unless an invalidation happened since `epoch`.
    fn store(&self, ek: &EncodedKey, archive: &[u8], deps: Vec<DepRow>, epoch: u64) {
        // Encoded once: the memory tier and the write queue share these bytes.
        let (meta, bytes) = self.encode_entry(ek, archive, &deps);
        self.reset_hits(&ek.hash, meta.entry_id);
        let mut stored = false;
        if let Some(mem) = &self.memory
            && let Some(entry) = MemEntry::new(bytes.clone())
        {
            let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
            if self.epoch.load(Ordering::SeqCst) == epoch {
                let evicted = mem.insert(ek.hash, entry);
                Counters::add(&self.stats.evictions, evicted.len() as u64);
                stored = true;
            }
        }
        if let Some(p) = &self.persistent {
            let cache = &self.cache;
            stored = cache.storage.add_pending(
                (p.id, ek.hash),
                meta.entry_id,
                bytes.clone(),
                || self.epoch.load(Ordering::SeqCst) == epoch,
                || {
                    cache
                        .writer
                        .put(p.id, ek.hash, bytes.clone(), meta.entry_id)
                },
            );
        }
        if stored {
            Counters::add(&self.stats.inserts, 1);
        }
    }

    /// Removes one key from every tier; returns whether anything was removed.
    pub(crate) fn invalidate_hash(&self, hash: KeyHash) -> Result<bool> {
        now(self.invalidate_hash_as(hash, Wait::Block))
    }

    /// [`invalidate_hash`](Self::invalidate_hash), waiting for the commit as `how` says.
    pub(crate) async fn invalidate_hash_as(&self, hash: KeyHash, how: Wait) -> Result<bool> {
        // A connected cache's server answers within its response timeout: the async
        // form blocks for that round trip.
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            return self.remote_invalidate_key(rt, hash);
        }
        let ticket = self.persistent.as_ref().map(|p| {
            let id = p.id;
            self.cache.storage.with_pending_lock(|| {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.cache
                    .writer
                    .submit(move |txn| ops::remove(txn, id, &hash))
            })
        });
        if ticket.is_none() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        // The memory tier is purged after the commit (see `promote`).
        let on_disk = match ticket {
            Some(t) => Some(t.wait_as(how).await),
            None => None,
        };
        let mut removed = self.memory.as_ref().is_some_and(|m| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hash)
                .is_some()
        });
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&hash);
        if let Some(on_disk) = on_disk {
            removed |= on_disk?;
        }
        Counters::add(&self.stats.invalidations, removed as u64);
        Ok(removed)
    }

    /// Removes every entry of this memoizer; returns how many there were.
    pub(crate) fn invalidate_all(&self) -> Result<u64> {
        now(self.invalidate_all_as(Wait::Block))
    }

    /// [`invalidate_all`](Self::invalidate_all), waiting for the commit as `how` says.
    pub(crate) async fn invalidate_all_as(&self, how: Wait) -> Result<u64> {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            return self.remote_invalidate_all(rt);
        }
        let ticket = self.persistent.as_ref().map(|_| {
            let name = self.name.clone();
            self.cache.storage.with_pending_lock(|| {
                self.epoch.fetch_add(1, Ordering::SeqCst);
                self.cache
                    .writer
                    .submit(move |txn| match ops::memoizer_record(txn, &name)? {
                        Some(record) => ops::clear(txn, &record),
                        None => Ok(0),
                    })
            })
        });
        if ticket.is_none() {
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        // The memory tier is purged after the commit (see `promote`).
        let on_disk = match ticket {
            Some(t) => Some(t.wait_as(how).await),
            None => None,
        };
        let in_memory = self.clear_in_memory();
        let removed = match on_disk {
            Some(on_disk) => on_disk?,
            None => in_memory,
        };
        Counters::add(&self.stats.invalidations, removed);
        Ok(removed)
    }

    /// Drops in-memory entries (both tiers' memory side) that a zone invalidation removed
    /// from disk, or that depend on `row`.
    pub(crate) fn forget_in_memory(&self, row: &DepRow, hashes: &[KeyHash]) -> u64 {
        let Some(mem) = &self.memory else { return 0 };
        let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
        let mut removed = mem.remove_dep(row);
        for h in hashes {
            if mem.remove(h).is_some() {
                removed.push(*h);
            }
        }
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        for h in &removed {
            served.remove(h);
        }
        removed.len() as u64
    }

    /// Drops expired in-memory entries, and entries `removed` from disk by a purge.
    pub(crate) fn purge_expired_in_memory(&self, now: u64, removed: &[(u64, KeyHash)]) -> u64 {
        let Some(mem) = &self.memory else { return 0 };
        let id = self.persistent.as_ref().map(|p| p.id);
        let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = mem.remove_expired(now);
        for (_, h) in removed.iter().filter(|(m, _)| Some(*m) == id) {
            n += mem.remove(h).is_some() as u64;
        }
        Counters::add(&self.stats.expirations, n);
        n
    }

    /// Clears only the in-memory side (used when a zone cleared the persistent side).
    pub(crate) fn clear_in_memory(&self) -> u64 {
        self.served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        self.memory.as_ref().map_or(0, |m| {
            m.lock().unwrap_or_else(|e| e.into_inner()).clear() as u64
        })
    }
}

/// What a lookup found.
pub(crate) enum Looked<R> {
    Hit(R),
    /// A live entry due for a refresh, not served (nothing counted, nothing decoded).
    Due,
    Miss,
}

/// The outcome of one pass of the miss protocol ([`MemoCore::step`]).
pub(crate) enum Step<'a, R> {
    /// A hit: fresh, or due for a refresh that another caller is making.
    Served(R),
    /// Wait for this flight to land, then take another step.
    Wait(Arc<Flight>),
    /// Compute, then [`land`](MemoCore::land) the value.
    Lead(Lead<'a>),
    /// Compute without caching: the computation recursed into its own key.
    Alone,
}

/// The right to compute and store one key: the flight's leader guard and the epoch
/// read before the computation starts.
pub(crate) struct Lead<'a> {
    leader: Leader<'a>,
    epoch: u64,
    /// A connected memoizer's lease on the server and the stamps it computes under.
    #[cfg(feature = "redis")]
    remote: crate::remote::Leading,
}

impl MemoCore {
    /// The call's encoded key; if it could not be encoded, reports why and counts the
    /// miss that the uncached computation will be.
    pub(crate) fn encoded(&self, ek: Result<EncodedKey>) -> Option<EncodedKey> {
        ek.map_err(|e| {
            self.report(e);
            Counters::add(&self.stats.misses, 1);
        })
        .ok()
    }

    /// One pass of the miss protocol, shared by every entry point (a thread or a task,
    /// an owned or an archived hit): look up with `look` (its argument: whether to serve
    /// an entry due for a refresh), then lead or join the key's flight.
    ///
    /// An entry due for a refresh (`refresh_after`) makes its caller lead, as a miss
    /// would, unless a flight of the key is under way: then the entry is served while
    /// that flight recomputes it.
    pub(crate) fn step<R>(
        &self,
        ek: &EncodedKey,
        caller: Caller,
        look: impl Fn(bool) -> Looked<R>,
    ) -> Step<'_, R> {
        let landed = self.flights.landed();
        let due = match look(false) {
            Looked::Hit(v) => return Step::Served(v),
            Looked::Due => true,
            Looked::Miss => false,
        };
        let leader = match self.flights.join(ek.hash, caller) {
            Role::Leader(leader) => leader,
            role => {
                // Another caller refreshes it (or this one, recursing): serve it
                // meanwhile. It may be gone by now (removed, used up): then wait.
                if due && let Looked::Hit(v) = look(true) {
                    return Step::Served(v);
                }
                return match role {
                    Role::Waiter(flight) => Step::Wait(flight),
                    _ => {
                        Counters::add(&self.stats.misses, 1);
                        Step::Alone
                    }
                };
            }
        };
        // Another leader may have stored the value between our lookup and our join;
        // only then is a second look worth its cost (and its counting).
        if self.flights.landed() != landed
            && let Looked::Hit(v) = look(false)
        {
            return Step::Served(v);
        }
        // A connected memoizer leads on the server too: wait for (or take) the key's
        // lease, which another machine may hold.
        #[cfg(feature = "redis")]
        let remote = match self.remote_turn(ek, || match look(false) {
            Looked::Hit(v) => Some(v),
            _ => None,
        }) {
            Ok(leading) => leading,
            Err(v) => return Step::Served(v),
        };
        let epoch = self.epoch.load(Ordering::SeqCst);
        Counters::add(&self.stats.misses, 1);
        Step::Lead(Lead {
            leader,
            epoch,
            #[cfg(feature = "redis")]
            remote,
        })
    }

    /// Called by the leader once it knows the entry's dependency rows, before it
    /// computes: a connected memoizer reads the stamps the value will be stored under.
    pub(crate) fn begin(&self, lead: &mut Lead<'_>, ek: &EncodedKey, deps: &Result<Vec<DepRow>>) {
        #[cfg(feature = "redis")]
        if let (Some(rt), Ok(deps)) = (&self.remote, deps) {
            lead.remote.stamps = self.remote_begin(rt, &ek.hash, deps);
        }
        #[cfg(not(feature = "redis"))]
        let _ = (lead, ek, deps);
    }

    /// Stores `value`, computed under `lead`, unless an invalidation came since the lead
    /// began, and lands the flight. Returns the value's archive, or `None` if it cannot
    /// be archived (reported; nothing stored).
    pub(crate) fn land<V: Value>(
        &self,
        lead: Lead<'_>,
        ek: &EncodedKey,
        deps: Result<Vec<DepRow>>,
        value: &V,
    ) -> Option<AlignedVec> {
        let archive = match value.__archive() {
            Ok(archive) => {
                match deps {
                    Ok(deps) => self.store_led(&lead, ek, &archive, deps),
                    Err(e) => self.report(e),
                }
                Some(archive)
            }
            Err(e) => {
                self.report(Error::ValueEncoding(e.to_string()));
                None
            }
        };
        drop(lead.leader);
        archive
    }

    /// Stores a value computed under `lead`: on the server (under the stamps read when
    /// it began) for a connected memoizer, else in this cache's tiers.
    fn store_led(&self, lead: &Lead<'_>, ek: &EncodedKey, archive: &[u8], deps: Vec<DepRow>) {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            if let Some(stamps) = &lead.remote.stamps {
                let (meta, bytes) = self.encode_entry(ek, archive, &deps);
                self.remote_store(rt, ek, bytes, meta.expires_at_ms, stamps);
            }
            return;
        }
        self.store(ek, archive, deps, lead.epoch);
    }
}

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    pub(crate) fn from_parts(
        core: Arc<MemoCore>,
        encode: Arc<KeyEncoder<K>>,
        deps: Arc<crate::zone::DepFns<K>>,
    ) -> Self {
        Memoizer {
            core,
            encode,
            deps,
            _value: PhantomData,
        }
    }

    /// This memoizer's name (its table name in the cache file).
    pub fn name(&self) -> &str {
        &self.core.name
    }

    pub(crate) fn encode(&self, key: &K) -> Result<EncodedKey> {
        let bytes = (self.encode)(key).map_err(Error::KeyEncoding)?;
        let hash = (self.core.hasher)(bytes.as_slice());
        if self.core.placed {
            // Only the primary row is needed to find the entry; on an error the lookup
            // misses, and the miss reports it (the entry cannot be stored).
            let primary = (self.deps.primary)(key).ok().flatten();
            return Ok(EncodedKey::placed(bytes, hash, primary.as_ref()));
        }
        Ok(EncodedKey::plain(bytes, hash))
    }

    /// Looks `ek` up in every tier and deserializes a live hit. An entry due for a
    /// refresh is served only if `serve_due`; otherwise it is [`Looked::Due`], and
    /// nothing is counted or decoded.
    pub(crate) fn lookup(&self, ek: &EncodedKey, serve_due: bool) -> Looked<V> {
        let core = &*self.core;
        let align = std::mem::align_of::<V::Archived>();
        let in_memory = core.in_memory(ek, |entry| {
            if !serve_due && core.due(|| entry.meta().stored_at_ms) {
                return Looked::Due;
            }
            if !core.take_hit(&ek.hash, entry.entry_id()) {
                return Looked::Miss;
            }
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
            Ok(Some(found)) => return found,
            Ok(None) => {}
            Err(()) => return Looked::Miss,
        }
        #[cfg(feature = "redis")]
        if let Some(rt) = &core.remote {
            return self.remote_lookup(rt, ek, serve_due);
        }
        let Some(p) = core.persistent.as_ref() else {
            return Looked::Miss;
        };
        let generation = core.cache.storage.generation();
        let stored = match core.cache.storage.get(&p.slot, &ek.hash) {
            Ok(Some(found)) => found,
            Ok(None) => return Looked::Miss,
            Err(e) => {
                core.report(e);
                return Looked::Miss;
            }
        };
        let bytes = stored.bytes();
        let Some((offset, meta)) = core.admit(ek, bytes) else {
            return Looked::Miss;
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Looked::Due;
        }
        // Validate, then spend the max_hits budget, then deserialize: a used-up value is
        // never decoded (the in-memory path above keeps the same order).
        let value = with_aligned(&bytes[offset..], align, |payload| {
            let archived = V::__access(payload).ok()?;
            if !core.take_hit(&ek.hash, meta.entry_id) {
                return Some(None);
            }
            Some(V::__deserialize(archived).ok())
        });
        let Some(value) = value else {
            Counters::add(&core.stats.stale, 1);
            return Looked::Miss;
        };
        let Some(value) = value else {
            return Looked::Miss;
        };
        Counters::add(&core.stats.hits, 1);
        core.promote(ek, bytes, generation);
        Looked::Hit(value)
    }

    /// Looks `ek` up in every tier and hands out a live hit in place (see
    /// [`lookup`](Self::lookup) for `serve_due`).
    pub(crate) fn lookup_archived(
        &self,
        ek: &EncodedKey,
        serve_due: bool,
    ) -> Result<Looked<ArchivedHit<V>>> {
        let core = &*self.core;
        let Ok(in_memory) = core.in_memory(ek, MemEntry::clone) else {
            return Ok(Looked::Miss);
        };
        if let Some(entry) = in_memory {
            if !serve_due && core.due(|| entry.meta().stored_at_ms) {
                return Ok(Looked::Due);
            }
            let id = entry.entry_id();
            let Some(hit) = ArchivedHit::from_memory(entry) else {
                return Ok(Looked::Miss);
            };
            if !core.take_hit(&ek.hash, id) {
                return Ok(Looked::Miss);
            }
            Counters::add(&core.stats.hits, 1);
            return Ok(Looked::Hit(hit));
        }
        #[cfg(feature = "redis")]
        if let Some(rt) = &core.remote {
            return Ok(self.remote_archived(rt, ek, serve_due));
        }
        let Some(p) = &core.persistent else {
            return Ok(Looked::Miss);
        };
        let Some(stored) = core.cache.storage.get(&p.slot, &ek.hash)? else {
            return Ok(Looked::Miss);
        };
        let Some((offset, meta)) = core.admit(ek, stored.bytes()) else {
            return Ok(Looked::Miss);
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Ok(Looked::Due);
        }
        let Some(hit) = ArchivedHit::from_stored(stored, offset) else {
            Counters::add(&core.stats.stale, 1);
            return Ok(Looked::Miss);
        };
        if !core.take_hit(&ek.hash, meta.entry_id) {
            return Ok(Looked::Miss);
        }
        Counters::add(&core.stats.hits, 1);
        Ok(Looked::Hit(hit))
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
        self.run(key, self.encode(key), |k| (self.deps.all)(k), compute)
    }

    /// The memoized call itself, for any form of the arguments: `ek` is their encoded
    /// key, `deps` their dependency rows (asked for only on a miss, and only if `ek` does
    /// not carry them already; an error means the value must not be stored), and `args`
    /// reach `compute` by value. `#[memoize]` calls it with the function's own arguments.
    /// [`run_async`](Self::run_async) is the same loop around the same steps.
    pub(crate) fn run<A, E>(
        &self,
        args: A,
        ek: Result<EncodedKey>,
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
        ek: Result<EncodedKey>,
        deps: impl FnOnce(&A) -> Result<Vec<DepRow>>,
        compute: impl FnOnce(A) -> Result<V, E>,
        look: impl Fn(&EncodedKey, bool) -> Looked<R>,
        finish: impl FnOnce(V, Option<AlignedVec>) -> Result<R, E>,
    ) -> Result<R, E> {
        let Some(mut ek) = self.core.encoded(ek) else {
            return finish(compute(args)?, None);
        };
        loop {
            match self.core.step(&ek, Caller::Thread, |due| look(&ek, due)) {
                Step::Served(v) => return Ok(v),
                Step::Wait(flight) => flight.wait(),
                Step::Alone => return finish(compute(args)?, None),
                Step::Lead(mut lead) => {
                    let deps = ek.deps.take().unwrap_or_else(|| deps(&args));
                    self.core.begin(&mut lead, &ek, &deps);
                    let value = compute(args)?;
                    let archive = self.core.land(lead, &ek, deps, &value);
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
        let ek = self.encode(key);
        self.drive(key, ek, |k| (self.deps.all)(k), compute, look, finish)
    }

    /// The cached value for `key` read in place, without computing anything.
    ///
    /// `Ok(None)` on a miss (absent, expired, used up by `max_hits`, or written for
    /// another type). A hit counts towards `max_hits` like any other.
    pub fn get_archived(&self, key: &K) -> Result<Option<ArchivedHit<V>>> {
        match self.lookup_archived(&self.encode(key)?, true)? {
            Looked::Hit(hit) => Ok(Some(hit)),
            Looked::Due | Looked::Miss => Ok(None),
        }
    }

    /// Removes the entry for `key` (after the key function). Returns whether one existed.
    /// When it returns, no later call sees the old value.
    pub fn invalidate_key(&self, key: &K) -> Result<bool> {
        let ek = self.encode(key)?;
        self.core.invalidate_hash(ek.hash)
    }

    /// Removes every entry of this memoizer - and nothing of any other memoizer - without
    /// scanning the file. Returns how many entries were removed. When it returns, no
    /// later call sees a value stored before it.
    pub fn invalidate_all(&self) -> Result<u64> {
        self.core.invalidate_all()
    }

    /// Counters since this memoizer was built, and the current entry count: O(1), read
    /// from the table's length (after letting writes still queued commit, so the count
    /// includes the values just stored).
    pub fn stats(&self) -> Stats {
        let core = &*self.core;
        let entries = match &core.persistent {
            Some(p) => {
                let id = p.id;
                core.cache
                    .writer
                    .query(move |txn| ops::count_entries(txn, id))
                    .ok()
            }
            // A connected memoizer's count lives on the server, uncounted.
            None if core.remote.is_some() => None,
            None => core
                .memory
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(|e| e.into_inner()).len() as u64),
        };
        let mut stats = core.stats.snapshot(entries);
        if let Some(p) = &core.persistent {
            stats.errors += p.slot.lost_writes();
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
    version: String,
    verify: bool,
    hasher: KeyHasher,
    encode: Arc<KeyEncoder<K>>,
    /// Whether the key is the whole argument (no keyfunc): only then are dependency keys,
    /// derived from the arguments, a function of the key, so that the key can be looked
    /// up where its dependencies file it.
    whole_key: bool,
    pub(crate) zones: Vec<crate::zone::Membership<K>>,
    _value: PhantomData<fn() -> V>,
}

impl<K: Serialize + ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    pub(crate) fn new(cache: Arc<CacheInner>, name: &str) -> Self {
        MemoizerBuilder {
            whole_key: true,
            ..Self::with_encoder(cache, name, Arc::new(|k: &K| KeyBytes::encode(k)))
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
    /// may be served up to `n` more times. Default: unlimited.
    pub fn max_hits(mut self, n: u32) -> Self {
        self.max_hits = Some(n);
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
        self.encode = Arc::new(move |k: &K| KeyBytes::encode(&f(k)));
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
    pub fn build(self) -> Result<Memoizer<K, V>> {
        crate::cache::check_name(&self.name)?;
        let cache = self.cache.clone();
        let store = self.store.unwrap_or(if cache.file_backed {
            Store::Persistent
        } else {
            Store::Memory
        });
        let fingerprint = fingerprint::value_fingerprint::<V>(&self.version);
        let mut live = cache.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.get(&self.name).is_some_and(|w| w.strong_count() > 0) {
            return Err(Error::MemoizerInUse { name: self.name });
        }
        let zones = crate::zone::resolve(&cache, &self.name, self.zones)?;
        let fingerprint = crate::zone::keyed_fingerprint(fingerprint, &zones);
        let keyed = zones.iter().any(|z| z.key.is_some());
        let indexed = self.expires.is_some() || keyed;
        let placed =
            keyed && self.whole_key && matches!(store, Store::Persistent | Store::Tiered(_));
        #[cfg(feature = "redis")]
        let remote = match (&cache.remote, store) {
            (Some(service), Store::Persistent | Store::Tiered(_)) => {
                Some(crate::remote::RemoteTier {
                    service: service.clone(),
                    memo: crate::remote::name_id(&self.name),
                    zones: zones.iter().map(|z| z.zone.id).collect(),
                    max_hits: self.max_hits.unwrap_or(0),
                })
            }
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let remote: RemoteSlot = None;
        let persistent = match store {
            _ if remote.is_some() => None,
            Store::Persistent | Store::Tiered(_) => {
                let name = self.name.clone();
                let zone_ids: Vec<u64> = zones.iter().map(|z| z.zone.id).collect();
                // Rebuilt as registered before (every start of a program after the first):
                // a read suffices, with no commit to wait for.
                let known = cache
                    .storage
                    .read(|txn| {
                        ops::registered(txn, &name, fingerprint, indexed, placed, &zone_ids)
                    })
                    .ok()
                    .flatten();
                let record = match known {
                    Some(record) => record,
                    None => cache.writer.run(move |txn| {
                        let record =
                            ops::register_memoizer(txn, &name, fingerprint, indexed, placed)?;
                        for zone_id in zone_ids {
                            ops::add_zone_member(txn, zone_id, record.id)?;
                        }
                        Ok(record)
                    })?,
                };
                Some(Persistent {
                    id: record.id,
                    slot: cache.storage.slot(record.id),
                })
            }
            Store::Memory | Store::Lru(_) => None,
        };
        let memory = match store {
            Store::Memory => Some(MemStore::new(None)),
            // A max_hits count lives on the server: never served from a local copy.
            Store::Tiered(_) if remote.is_some() && self.max_hits.is_some() => None,
            Store::Lru(n) | Store::Tiered(n) => Some(MemStore::new(Some(n))),
            Store::Persistent => None,
        };
        let core = Arc::new(MemoCore {
            name: self.name.clone(),
            fingerprint,
            expires: self.expires,
            refresh_after: self.refresh_after,
            max_hits: self.max_hits,
            verify: self.verify,
            hasher: self.hasher,
            placed,
            plain_keys: self.whole_key && !keyed,
            memory: memory.map(Mutex::new),
            persistent,
            remote,
            epoch: AtomicU64::new(0),
            flights: Flights::default(),
            served: Mutex::new(HashMapByKey::default()),
            stats: Counters::default(),
            cache: cache.clone(),
        });
        live.insert(self.name.clone(), Arc::downgrade(&core));
        drop(live);
        for z in &zones {
            z.zone.attach(&core);
        }
        #[cfg(feature = "redis")]
        crate::remote::listen_for(&cache, &core)?;
        let deps = crate::zone::dep_fns(&self.name, zones);
        Ok(Memoizer::from_parts(core, self.encode, deps))
    }
}
