//! A memoizer's tiers - the in-memory store, the persistent table, the epoch and the
//! `max_hits` accounting - and the one place that changes them: reads, stores, and every
//! invalidation, whoever asks for it ([`invalidate`]).
//!
//! The read seam: [`Tiers::stamp`], then [`Tiers::in_memory`] and [`Tiers::stored`];
//! a found entry is served only after [`Tiers::take_hit`] said so (the invalidation fence
//! and the `max_hits` budget both decide there). The miss seam: [`Tiers::epoch`] before
//! computing, [`Tiers::store`] after.
//!
//! Invalidation protocol ([`invalidate`]), for any [`Remove`]:
//! 1. It takes the fence's turn (invalidations take turns), then, under the storage's
//!    pending lock: bumps every target's epoch, opens the fence's window over what goes
//!    (`crate::fence`) and queues the disk job. From the opening every reader of every
//!    tier misses what the window covers: it is the removal's linearization point. A
//!    computation that started earlier either queued its store before the job (the job
//!    removes it, the window hides it) or sees the new epoch and stores nothing; one that
//!    stores after the bump is fresh, gets an entry id above the window's floor, and is
//!    served at once.
//! 2. The job commits durably; its pending copies leave the overlay and readers move to
//!    the new snapshot before the caller is answered.
//!    A connected cache (feature `redis`) has no disk job: its server step
//!    (`Remove::on_server`) stands here, one write on the server.
//! 3. The in-memory sides are purged. A tiered read that fetched a removed entry before
//!    the window opened promotes it only if no window opened since (checked under the
//!    lock of its memory shard), so it cannot put the entry back after this purge.
//! 4. The window closes: every tier agrees again.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rkyv::util::AlignedVec;

use crate::entry::{self, Meta};
use crate::error::{Error, Result};
use crate::fence::{Check, Covers, Window};
use crate::flight::{Caller, Flight, Flights, Leader, Role};
use crate::hit_counts::{HitCounts, Take};
use crate::key::{DepRow, EncodedKey, KeyHash, KeyHasher};
use crate::memory::{Bound, MemEntry, Sharded};
use crate::shared::Shared;
use crate::stats::Counters;
use crate::storage::flights::{Computing, FlightWord};
use crate::storage::ops::{Removal, Removed};
use crate::storage::writer::{Ticket, Wait, now};
use crate::storage::{SnapSlot, StoredBytes};
use crate::value::Value;

#[cfg(feature = "redis")]
mod server;

/// The persistent half of a memoizer.
pub(crate) struct Persistent {
    pub id: u64,
    pub slot: Arc<SnapSlot>,
}

/// How a memoizer treats its entries (fixed at build).
pub(crate) struct Policy {
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
}

/// The server tier of a memoizer of a connected cache; never present without the `redis`
/// feature.
#[cfg(feature = "redis")]
pub(crate) type RemoteSlot = Option<crate::remote::RemoteTier>;
/// The server tier of a memoizer of a connected cache; never present without the `redis`
/// feature.
#[cfg(not(feature = "redis"))]
pub(crate) type RemoteSlot = Option<std::convert::Infallible>;

/// The type-erased state of one memoizer, shared by its clones.
pub(crate) struct Tiers {
    pub policy: Policy,
    /// Identifies this memoizer to the fence (unique in the process; memory-only
    /// memoizers have no table id).
    pub uid: u64,
    memory: Option<Sharded>,
    pub persistent: Option<Persistent>,
    /// In a connected cache, the server takes the persistent table's place.
    pub remote: RemoteSlot,
    /// Bumped by every invalidation; a computation that started under an older epoch
    /// does not store its result (it may be stale).
    epoch: AtomicU64,
    pub flights: Flights,
    /// `max_hits` accounting.
    served: HitCounts,
    pub stats: Counters,
    pub shared: Arc<Shared>,
}

/// What a tier read found.
pub(crate) enum Read<R> {
    /// A live entry, served (its hit counted).
    Found(R),
    /// Nothing here: look in the next tier.
    Absent,
    /// Definitely a miss (expired, used up, or being invalidated): look no further.
    Miss,
    /// An invalidation began or ended meanwhile: start the lookup again.
    Retry,
}

/// Whether a found entry may be served ([`Tiers::take_hit`]).
pub(crate) enum Verdict {
    Serve,
    Miss,
    Retry,
}

static NEXT_UID: AtomicU64 = AtomicU64::new(1);

impl Tiers {
    /// `memory`: `None` for no in-memory tier, else its bound.
    pub(crate) fn new(
        policy: Policy,
        memory: Option<Bound>,
        persistent: Option<Persistent>,
        remote: RemoteSlot,
        shared: Arc<Shared>,
    ) -> Self {
        // A shared cache's persistent values are served by every process: one budget.
        let served = match (shared.storage.multi(), &persistent) {
            (Some(multi), Some(p)) => HitCounts::Board {
                peers: multi.peers.clone(),
                memo: p.id,
            },
            _ => HitCounts::default(),
        };
        Tiers {
            served,
            policy,
            uid: NEXT_UID.fetch_add(1, Ordering::Relaxed),
            memory: memory.map(Sharded::bounded),
            persistent,
            remote,
            epoch: AtomicU64::new(0),
            flights: Flights::default(),
            stats: Counters::default(),
            shared,
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.policy.name
    }

    fn now_ms(&self) -> u64 {
        self.shared.clock.now_ms()
    }

    pub(crate) fn report(&self, error: Error) {
        Counters::add(&self.stats.errors, 1);
        self.shared.storage.reporter.report(&error);
    }

    /// Whether an entry with this deadline is still live. Reads the clock only for
    /// entries that have a deadline, so hits without `expires` never pay for it.
    fn live(&self, expires_at_ms: u64) -> bool {
        expires_at_ms == 0 || self.now_ms() < expires_at_ms
    }

    /// Whether a live entry stored at `stored_at_ms` is due for a refresh. Reads the
    /// clock (and the header) only for memoizers with `refresh_after`: inlined, so a hit
    /// without it pays one branch.
    #[inline]
    pub(crate) fn due(&self, stored_at_ms: impl FnOnce() -> u64) -> bool {
        match self.policy.refresh_after {
            None => false,
            Some(after) => self.now_ms() >= stored_at_ms().saturating_add(after.as_millis() as u64),
        }
    }

    // ---- reads ----

    /// Taken before a lookup reads any tier; [`take_hit`](Self::take_hit) checks it.
    #[inline]
    pub(crate) fn stamp(&self) -> u64 {
        self.shared.fence.stamp()
    }

    /// Decides whether the entry `bytes` (id `entry_id`) found under `hash` by a lookup
    /// stamped `stamp` is served, and if so counts the hit against `max_hits`. The
    /// fence decides first: an entry an invalidation in progress removes is a miss, and
    /// a read that an invalidation overtook looks again. Then `max_hits`: a used-up
    /// value is a miss, and so is a read that raced with a newer store of this process
    /// (not the value stored last under `hash`: its hits were counted already).
    #[inline]
    pub(crate) fn take_hit(
        &self,
        stamp: u64,
        hash: &KeyHash,
        bytes: &[u8],
        entry_id: u64,
    ) -> Verdict {
        match self.fenced(stamp, hash, bytes) {
            Verdict::Serve => {}
            other => return other,
        }
        match self.policy.max_hits {
            None => Verdict::Serve,
            Some(limit) if self.take_counted_hit(hash, entry_id, limit) => Verdict::Serve,
            Some(_) => Verdict::Miss,
        }
    }

    /// The fence's half of [`take_hit`](Self::take_hit), alone: for entries whose
    /// `max_hits` budget is kept elsewhere (on the server of a connected cache).
    #[inline]
    pub(crate) fn fenced(&self, stamp: u64, hash: &KeyHash, bytes: &[u8]) -> Verdict {
        match self.shared.fence.check(stamp, self.uid, hash, bytes) {
            Check::Valid => Verdict::Serve,
            Check::Covered => Verdict::Miss,
            Check::Moved => Verdict::Retry,
        }
    }

    fn take_counted_hit(&self, hash: &KeyHash, entry_id: u64, limit: u32) -> bool {
        match self.served.take(hash, entry_id, limit) {
            Take::Served => true,
            Take::UsedUp => {
                Counters::add(&self.stats.expirations, 1);
                false
            }
            Take::Other => false,
        }
    }

    /// Starts the hit count of a value about to be stored; done before the value becomes
    /// visible so no reader can count a hit against the previous value's budget.
    fn reset_hits(&self, hash: &KeyHash, entry_id: u64) {
        if self.policy.max_hits.is_some() {
            self.served.reset(hash, entry_id);
        }
    }

    /// How many values `max_hits` is counting hits of.
    pub(crate) fn hit_counts(&self) -> usize {
        self.served.len()
    }

    /// Forgets the hit counts of values that left the store for good (evicted from a
    /// store with no file behind it, expired), so `served` stays bounded by the live
    /// entries. A value evicted from a tiered store's memory is still live in the file:
    /// its count must stay, or it would be served again from a fresh budget.
    fn forget_counts<'a>(&self, hashes: impl IntoIterator<Item = &'a KeyHash>) {
        if self.policy.max_hits.is_none() {
            return;
        }
        for hash in hashes {
            self.served.remove(hash);
        }
    }

    /// Counts entries evicted from the memory tier and, where no file holds them too,
    /// forgets their hit counts.
    fn evicted(&self, evicted: &[(KeyHash, MemEntry)]) {
        Counters::add(&self.stats.evictions, evicted.len() as u64);
        if self.persistent.is_none() {
            self.forget_counts(evicted.iter().map(|(h, _)| h));
        }
    }

    /// Looks in the in-memory tier and, for a live entry the fence and `max_hits` let
    /// through, runs `read` on it under the tier's lock (the entry is read in place). An
    /// entry due for a refresh is [`Looked::Due`] unless `serve_due` (nothing counted).
    pub(crate) fn in_memory<R>(
        &self,
        ek: &EncodedKey,
        stamp: u64,
        serve_due: bool,
        read: impl FnOnce(&MemEntry) -> Looked<R>,
    ) -> Read<Looked<R>> {
        let Some(mem) = self.memory.as_ref().filter(|_| self.local_trusted()) else {
            return Read::Absent;
        };
        let mut mem = mem.shard(&ek.hash);
        let found = mem.get_with(&ek.hash, |entry| {
            if entry.key() != ek.bytes.as_slice() {
                Counters::add(&self.stats.stale, 1);
                return Some(Read::Absent);
            }
            if !self.live(entry.expires_at_ms()) {
                return None;
            }
            if !serve_due && self.due(|| entry.meta().stored_at_ms) {
                return Some(Read::Found(Looked::Due));
            }
            // Under the shard's lock: an invalidation's purge of this shard waits for it.
            Some(
                match self.take_hit(stamp, &ek.hash, entry.bytes(), entry.entry_id()) {
                    Verdict::Serve => Read::Found(read(entry)),
                    Verdict::Miss => Read::Miss,
                    Verdict::Retry => Read::Retry,
                },
            )
        });
        match found {
            None => Read::Absent,
            // Expired: the persistent tier holds the same entry, so look no further.
            Some(None) => {
                mem.remove(&ek.hash);
                drop(mem);
                self.forget_counts([&ek.hash]);
                Counters::add(&self.stats.expirations, 1);
                Read::Miss
            }
            Some(Some(read)) => read,
        }
    }

    /// Whether the in-memory tier may be served and filled: always, except in front of
    /// a server while its invalidation listener is not live (pushes may be missed).
    pub(crate) fn local_trusted(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            return rt.service.local_tiers_live();
        }
        true
    }

    /// Whether this memoizer has an in-memory tier.
    #[cfg(feature = "redis")]
    pub(crate) fn has_memory(&self) -> bool {
        self.memory.is_some()
    }

    /// The bytes the persistent tier holds under the key's row, if any (pending or
    /// committed). Errors are reported and read as a miss.
    pub(crate) fn stored(&self, ek: &EncodedKey) -> Option<StoredBytes> {
        let p = self.persistent.as_ref()?;
        match self.shared.storage.get(&p.slot, &ek.hash) {
            Ok(found) => found,
            Err(e) => {
                self.report(e);
                None
            }
        }
    }

    /// The storage's commit generation, read before a persistent read (for
    /// [`promote`](Self::promote)).
    pub(crate) fn generation(&self) -> u64 {
        self.shared.storage.generation()
    }

    /// What to report about a damaged entry: where it was read from.
    fn damaged(&self, detail: String) -> Error {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            return Error::Remote {
                server: rt.service.server(),
                detail: format!(
                    "an entry of memoizer {:?} is damaged ({detail}) and was read as a miss",
                    self.policy.name
                ),
            };
        }
        Error::DamagedEntry {
            path: self.shared.storage.path().map(Path::to_path_buf),
            memoizer: self.policy.name.clone(),
            detail,
        }
    }

    /// Checks stored bytes belong to this key, type and version and are still live.
    /// Returns the payload offset and the header.
    pub(crate) fn admit(&self, ek: &EncodedKey, bytes: &[u8]) -> Option<(usize, Meta)> {
        let view = match entry::decode(bytes, self.policy.verify) {
            Ok(view) => view,
            Err(malformed) => {
                // Only damage makes an entry fail these checks: report it, read a miss
                // (the recomputed value then overwrites the entry).
                Counters::add(&self.stats.stale, 1);
                self.report(self.damaged(format!("{malformed:?}")));
                return None;
            }
        };
        if view.key != ek.bytes.as_slice() || view.meta.fingerprint != self.policy.fingerprint {
            Counters::add(&self.stats.stale, 1);
            return None;
        }
        if !self.live(view.meta.expires_at_ms) {
            self.forget_counts([&ek.hash]);
            Counters::add(&self.stats.expirations, 1);
            return None;
        }
        Some((view.payload_offset, view.meta))
    }

    /// Copies a persistent hit into the in-memory tier (tiered stores only), unless an
    /// invalidation began since the lookup's `stamp` or a commit came since `generation`
    /// was read: either may have removed these bytes and purged the memory tier before
    /// this insert.
    pub(crate) fn promote(&self, ek: &EncodedKey, bytes: &[u8], generation: u64, stamp: u64) {
        // Without a memory tier, no copy of the entry is made at all.
        if self.memory.is_none() {
            return;
        }
        self.promote_if(ek, Arc::from(bytes), || {
            self.shared.fence.unchanged(stamp) && self.generation() == generation
        });
    }

    /// Inserts `bytes` into the in-memory tier if it has one and `still` holds, asked
    /// under the tier's lock (an invalidation's purge of the tier waits for it).
    pub(crate) fn promote_if(
        &self,
        ek: &EncodedKey,
        bytes: Arc<[u8]>,
        still: impl FnOnce() -> bool,
    ) {
        let Some(mem) = &self.memory else { return };
        let Some(entry) = MemEntry::new(bytes) else {
            return;
        };
        let mut mem = mem.shard(&ek.hash);
        if still() {
            let evicted = mem.insert(ek.hash, entry);
            drop(mem);
            self.evicted(&evicted);
        }
    }

    // ---- stores ----

    /// The epoch a computation starts under; hand it to [`store`](Self::store).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// A new entry id. The fence takes entries with ids below a window's floor for
    /// older than the invalidation (see `invalidate`).
    pub(crate) fn next_entry_id(&self) -> u64 {
        self.shared.next_entry_id.fetch_add(1, Ordering::SeqCst)
    }

    /// Encodes a freshly computed value as the entry `entry_id` (with its deadline).
    pub(crate) fn encode_entry(
        &self,
        ek: &EncodedKey,
        archive: &[u8],
        deps: &[DepRow],
        entry_id: u64,
    ) -> (Meta, Arc<[u8]>) {
        let now = self.now_ms();
        let meta = Meta {
            fingerprint: self.policy.fingerprint,
            stored_at_ms: now,
            expires_at_ms: self
                .policy
                .expires
                .map_or(0, |d| now.saturating_add(d.as_millis() as u64).max(1)),
            entry_id,
        };
        let bytes = entry::encode(&meta, ek.bytes.as_slice(), deps, archive, self.pad()).into();
        (meta, bytes)
    }

    /// How this memoizer's entries are padded: every archive aligned when the entry never
    /// leaves this process's memory, so its hits read the archive in place; by the
    /// file's rule otherwise (the bytes a store encodes go to every tier it has).
    fn pad(&self) -> entry::Pad {
        #[cfg(feature = "redis")]
        if self.remote.is_some() {
            return entry::Pad::Large;
        }
        if self.persistent.is_none() {
            entry::Pad::All
        } else {
            entry::Pad::Large
        }
    }

    /// Stores a freshly computed value unless an invalidation happened since `epoch`. In a
    /// shared cache `across` is what the computation began under there: the log
    /// sequence (the writer refuses the value if another process's invalidation logged
    /// since covers it) and the key's lock across processes, kept until the value
    /// committed.
    fn store(
        &self,
        ek: &EncodedKey,
        archive: &[u8],
        deps: Vec<DepRow>,
        epoch: u64,
        across: Across,
    ) {
        // Encoded once: the memory tier and the write queue share these bytes.
        // Before the epoch checks below: see the window floor in `invalidate`.
        let (meta, bytes) = self.encode_entry(ek, archive, &deps, self.next_entry_id());
        self.reset_hits(&ek.hash, meta.entry_id);
        let mut stored = false;
        if let Some(mem) = &self.memory
            && let Some(entry) = MemEntry::new(bytes.clone())
        {
            let mut mem = mem.shard(&ek.hash);
            if self.epoch() == epoch {
                let evicted = mem.insert(ek.hash, entry);
                drop(mem);
                self.evicted(&evicted);
                stored = true;
            }
        }
        if let Some(p) = &self.persistent {
            let shared = &self.shared;
            stored = shared.storage.add_pending(
                (p.id, ek.hash),
                meta.entry_id,
                bytes.clone(),
                || self.epoch() == epoch,
                || {
                    let key = (p.id, ek.hash);
                    if let Some(multi) = shared.storage.multi() {
                        multi.hold(key, meta.entry_id, across.since, across.lock);
                    }
                    let queued = shared
                        .writer
                        .put(p.id, ek.hash, bytes.clone(), meta.entry_id);
                    if !queued && let Some(multi) = shared.storage.multi() {
                        multi.settled(&[(key, meta.entry_id)]);
                    }
                    queued
                },
            );
        }
        if stored {
            Counters::add(&self.stats.inserts, 1);
        }
    }

    // ---- counts, checks, expiry ----

    /// Entries in the memory tier, if it is the only one.
    pub(crate) fn memory_len(&self) -> Option<u64> {
        self.memory.as_ref().map(|m| m.len() as u64)
    }

    /// Checks the in-memory store's own invariants (for `check_integrity`).
    pub(crate) fn validate_memory(&self) -> Result<(), String> {
        self.memory.as_ref().map_or(Ok(()), Sharded::validate)
    }

    /// Drops expired in-memory entries, and entries `removed` from disk by a purge.
    /// Neither changes what readers see: both were past their deadline already.
    pub(crate) fn forget_expired(&self, now: u64, removed: &[(u64, KeyHash)]) -> u64 {
        let id = self.persistent.as_ref().map(|p| p.id);
        let from_disk: Vec<&KeyHash> = removed
            .iter()
            .filter(|(m, _)| Some(*m) == id)
            .map(|(_, h)| h)
            .collect();
        self.forget_counts(from_disk.iter().copied());
        let Some(mem) = &self.memory else { return 0 };
        let expired = mem.remove_expired(now);
        let mut n = expired.len() as u64;
        for h in &from_disk {
            n += mem.shard(h).remove(h).is_some() as u64;
        }
        self.forget_counts(&expired);
        Counters::add(&self.stats.expirations, n);
        n
    }

    // ---- invalidation ----

    /// Removes `what` (`Key` or `All`) from this memoizer's tiers (see [`invalidate`]).
    pub(crate) fn invalidate(self: &Arc<Self>, what: Remove) -> Result<u64> {
        now(self.invalidate_as(what, Wait::Block))
    }

    /// [`invalidate`](Self::invalidate), waiting as `how` says.
    pub(crate) fn invalidate_as(
        self: &Arc<Self>,
        what: Remove,
        how: Wait,
    ) -> impl Future<Output = Result<u64>> + Send + '_ {
        invalidate(&self.shared, std::slice::from_ref(self), what, how)
    }

    // Step 3 of the protocol.

    /// Purges what `what` removed from the memory tier and the hit counts; returns how
    /// many in-memory entries went.
    fn forget(&self, what: &Remove, disk: &Removed) -> u64 {
        let Some(mem) = &self.memory else {
            // Hit counts live as long as the values they count.
            self.forget_hits(what, &[]);
            return 0;
        };
        let removed: Vec<KeyHash> = match what {
            Remove::Key(hash) => {
                let gone = mem.shard(hash).remove(hash);
                gone.map(|_| *hash).into_iter().collect()
            }
            Remove::All | Remove::Zone(_) => {
                let n = mem.clear() as u64;
                self.forget_hits(what, &[]);
                return n;
            }
            Remove::Dep { row, .. } => {
                let mut hashes = mem.remove_dep(row);
                let id = self.persistent.as_ref().map(|p| p.id);
                for (_, h) in disk.keys.iter().filter(|(m, _)| Some(*m) == id) {
                    if mem.shard(h).remove(h).is_some() {
                        hashes.push(*h);
                    }
                }
                hashes
            }
        };
        self.forget_hits(what, &removed);
        removed.len() as u64
    }

    /// Applies an invalidation made elsewhere (by another machine, which the server's
    /// push told of; by another process of a shared cache, which its log told of) to the
    /// in-memory tier: the epoch first, so a value read before it is not promoted or
    /// stored after it, then step 3.
    pub(crate) fn forget_elsewhere(&self, what: &Remove) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.forget(what, &Removed::default());
    }

    /// Drops the hit counts of removed values (`hashes`, or all for a clear).
    fn forget_hits(&self, what: &Remove, hashes: &[KeyHash]) {
        if self.policy.max_hits.is_none() {
            return;
        }
        match what {
            Remove::Key(hash) => self.served.remove(hash),
            Remove::All | Remove::Zone(_) => self.served.clear(),
            Remove::Dep { .. } => {
                for h in hashes {
                    self.served.remove(h);
                }
            }
        }
    }
}

// ---- the miss protocol (asked by every entry point: sync, async, archived) ----

/// What a lookup found.
pub(crate) enum Looked<R> {
    Hit(R),
    /// A live entry due for a refresh, not served (nothing counted, nothing decoded).
    Due,
    Miss,
}

/// The outcome of one pass of the miss protocol ([`Tiers::step`]).
// `Lead` is large with the `redis` feature (the server lease beside the shared-mode lock);
// a step is matched at once by its caller, and boxing the lead would cost an allocation
// per miss.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Step<'a, R> {
    /// A hit: fresh, or due for a refresh that another caller is making.
    Served(R),
    /// Wait for this flight to land, then take another step.
    Wait(Arc<Flight>),
    /// Compute, then [`land`](Tiers::land) the value.
    Lead(Lead<'a>),
    /// Compute without caching: the computation recursed into its own key.
    Alone,
}

/// The right to compute and store one key: the flight's leader guard and the epoch
/// read before the computation starts.
pub(crate) struct Lead<'a> {
    leader: Leader<'a>,
    epoch: u64,
    /// In a shared cache: the key's lead across processes.
    across: Across,
    /// A connected memoizer's lease on the server and the stamps it computes under.
    #[cfg(feature = "redis")]
    remote: crate::remote::Leading,
}

/// A shared cache's side of a [`Lead`] (empty otherwise): the invalidation log sequence
/// applied when the computation began, and the key's lock across processes, if taken.
#[derive(Default)]
pub(crate) struct Across {
    since: u64,
    lock: Option<FlightWord>,
    /// Marks the computing thread while the lead lasts.
    _computing: Option<Computing>,
}

impl Tiers {
    /// A call whose key could not be encoded: reports why, and counts the miss that its
    /// uncached computation will be. (The drivers match the key in place: moving it
    /// through a helper copied it on every hit.)
    pub(crate) fn unencoded(&self, e: Error) {
        self.report(e);
        Counters::add(&self.stats.misses, 1);
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
        // A shared cache's persistent memoizer leads across processes too: wait for (or
        // take) the key's lock, which another process may hold.
        let across = match self.lead_across(ek, &look) {
            Ok(across) => across,
            Err(v) => return Step::Served(v),
        };
        let epoch = self.epoch();
        Counters::add(&self.stats.misses, 1);
        Step::Lead(Lead {
            leader,
            epoch,
            across,
            #[cfg(feature = "redis")]
            remote,
        })
    }

    /// In a shared cache, takes the key's lock across processes for a persistent
    /// memoizer, or waits until the process holding it landed the value (`Err`: serve
    /// it). A forked child leads alone, and reports why nothing is cached.
    fn lead_across<R>(
        &self,
        ek: &EncodedKey,
        look: &impl Fn(bool) -> Looked<R>,
    ) -> Result<Across, R> {
        let (Some(multi), Some(p)) = (self.shared.storage.multi(), &self.persistent) else {
            return Ok(Across::default());
        };
        let path = self.shared.storage.path().unwrap_or(Path::new(""));
        if let Err(e) = multi.check_pid(path) {
            self.report(e);
            return Ok(Across::default());
        }
        let lock = multi.lead(p.id, &ek.hash, || match look(false) {
            Looked::Hit(v) => Some(v),
            _ => None,
        })?;
        Ok(Across {
            since: multi.applied(),
            lock,
            _computing: Some(Computing::enter()),
        })
    }

    /// Called by the leader once it knows the entry's dependency rows, before it
    /// computes: a connected memoizer reads the stamps the value will be stored under.
    pub(crate) fn begin(&self, lead: &mut Lead<'_>, ek: &EncodedKey, deps: &Result<Vec<DepRow>>) {
        #[cfg(feature = "redis")]
        if let (Some(rt), Ok(deps)) = (&self.remote, deps) {
            // The entry's id and the fence's stamp before it computes: a window that
            // opens later covers the entry (its server step may come after the put),
            // and the local tier is not filled after such a window. (The stamps read
            // earlier, with the lease, can only refuse more puts.)
            lead.remote.entry_id = self.next_entry_id();
            lead.remote.stamp = self.stamp();
            if let Err(e) = rt.begin(&mut lead.remote, deps) {
                self.report(e);
            }
        }
        #[cfg(not(feature = "redis"))]
        let _ = (lead, deps);
        // The key's row is the server tier's already (its lease names it).
        let _ = ek;
    }

    /// Stores `value`, computed under `lead`, unless an invalidation came since the lead
    /// began, and lands the flight. Returns the value's archive, or `None` if it cannot
    /// be archived (reported; nothing stored).
    pub(crate) fn land<V: Value>(
        &self,
        mut lead: Lead<'_>,
        ek: &EncodedKey,
        deps: Result<Vec<DepRow>>,
        value: &V,
    ) -> Option<AlignedVec> {
        let archive = match value.__archive() {
            Ok(archive) => {
                match deps {
                    Ok(deps) => self.store_led(&mut lead, ek, &archive, deps),
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
    /// it began) for a connected memoizer, else in this process's tiers.
    fn store_led(&self, lead: &mut Lead<'_>, ek: &EncodedKey, archive: &[u8], deps: Vec<DepRow>) {
        #[cfg(feature = "redis")]
        if let Some(rt) = &self.remote {
            if lead.remote.stamps.is_some() {
                self.remote_store(rt, ek, archive, &deps, &lead.remote);
            }
            return;
        }
        let across = std::mem::take(&mut lead.across);
        self.store(ek, archive, deps, lead.epoch, across);
    }
}

/// What an invalidation removes, as its caller says it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Remove {
    /// One key (its row hash) of the one target.
    Key(KeyHash),
    /// Every entry of the targets.
    All,
    /// Every entry whose dependency rows include `row` (of zone `zone`), in every
    /// memoizer, built by this run or not: through the index, or by reading every entry
    /// of the zone's members (`by_scan`, the benchmarks' baseline).
    Dep {
        row: DepRow,
        zone: u64,
        by_scan: bool,
    },
    /// Every entry of every member of zone `0`, built by this run or not (the targets
    /// are its live members).
    Zone(u64),
}

impl Remove {
    /// What the file loses, if any target lives there.
    fn on_disk(&self, targets: &[Arc<Tiers>]) -> Option<Removal> {
        let id = targets
            .first()
            .and_then(|t| t.persistent.as_ref())
            .map(|p| p.id);
        match *self {
            Remove::Key(hash) => id.map(|id| Removal::Key { id, hash }),
            Remove::All => id.map(Removal::Memoizer),
            Remove::Dep {
                row,
                by_scan: false,
                ..
            } => Some(Removal::Dep(row)),
            Remove::Dep {
                row,
                zone,
                by_scan: true,
            } => Some(Removal::DepByScan { zone, row }),
            Remove::Zone(zone) => Some(Removal::Zone(zone)),
        }
    }

    /// What the server of a connected cache loses, and through which service: for
    /// `Key` and `All` only if the target keeps its entries there.
    #[cfg(feature = "redis")]
    fn on_server<'a>(
        &self,
        shared: &'a Shared,
        targets: &'a [Arc<Tiers>],
    ) -> Option<(&'a crate::remote::Service, crate::remote::ServerRemoval)> {
        use crate::remote::ServerRemoval;
        let rt = targets.first().and_then(|t| t.remote.as_ref());
        match *self {
            Remove::Key(row) => rt.map(|rt| {
                let memo = rt.memo;
                (&*rt.service, ServerRemoval::Key { memo, row })
            }),
            Remove::All => rt.map(|rt| (&*rt.service, ServerRemoval::Memoizer(rt.memo))),
            Remove::Dep { row, .. } => shared
                .remote
                .as_deref()
                .map(|s| (s, ServerRemoval::Dep(row))),
            Remove::Zone(zone) => shared
                .remote
                .as_deref()
                .map(|s| (s, ServerRemoval::Zone(zone))),
        }
    }

    fn covers(&self, targets: &[Arc<Tiers>]) -> Covers {
        match *self {
            Remove::Key(hash) => Covers::Key {
                uid: targets.first().map_or(0, |t| t.uid),
                hash,
            },
            Remove::All | Remove::Zone(_) => {
                Covers::Memoizers(targets.iter().map(|t| t.uid).collect())
            }
            Remove::Dep { row, .. } => Covers::Dep(row),
        }
    }
}

/// Carries out an invalidation in every tier of `targets` (for `Key` and `All`: the one
/// memoizer; otherwise every live memoizer it may reach) and in the file, at one moment
/// for every reader (see the module docs), waiting for its turn and its commit as `how`
/// says. Returns how many entries were removed (an entry held in both tiers counts
/// once). Callers only say what to remove.
pub(crate) async fn invalidate(
    shared: &Shared,
    targets: &[Arc<Tiers>],
    what: Remove,
    how: Wait,
) -> Result<u64> {
    let turn = shared.fence.turn(how).await;
    // A connected cache's file holds nothing of its memoizers: the server takes its
    // place (below).
    let disk = match shared.remote {
        Some(_) => None,
        None => what.on_disk(targets),
    };
    let (window, ticket) = shared.storage.with_pending_lock(|| {
        for t in targets {
            t.epoch.fetch_add(1, Ordering::SeqCst);
        }
        // Entries stored from here on were computed under the new epochs: fresh.
        let floor = shared.next_entry_id.load(Ordering::SeqCst);
        let window = turn.open(what.covers(targets), floor);
        (window, disk.map(|removal| shared.writer.remove(removal)))
    });
    let mut tail = Tail {
        shared,
        targets,
        what: &what,
        window: Some(window),
        ticket,
    };
    let on_disk = match &tail.ticket {
        Some(ticket) => ticket.wait_as(how).await.map(Some),
        None => Ok(None),
    };
    tail.ticket = None;
    tail.finish(on_disk)
}

/// The rest of an invalidation once its window is open: the server step, cleaning the
/// memory tiers, counting, and only then closing the window.
///
/// It is a guard because an async caller may drop its future while the commit is still
/// pending. Closing the window then, as a plain drop would, lets readers see removed
/// entries again (from memory tiers, and from the file until the queued removal
/// commits): the removal would look undone. So a dropped invalidation finishes here, on
/// the dropping thread, blocking for at most the commit it was waiting for.
struct Tail<'a> {
    shared: &'a Shared,
    targets: &'a [Arc<Tiers>],
    what: &'a Remove,
    /// `Some` until [`finish`](Self::finish) starts.
    window: Option<Window<'a>>,
    /// The file step's reply, while not yet received.
    ticket: Option<Ticket<Removed>>,
}

impl Tail<'_> {
    fn finish(&mut self, on_disk: Result<Option<Removed>>) -> Result<u64> {
        let (shared, targets, what) = (self.shared, self.targets, self.what);
        // Dropped at the end, after every tier is clean (also if this panics).
        let window = self.window.take();
        // The server step of a connected cache, in the file step's place: one write, which
        // other machines hear of through their listeners. It answers within the server's
        // response timeout, for which the async form blocks.
        #[cfg(feature = "redis")]
        let on_server = what
            .on_server(shared, targets)
            .map(|(service, removal)| service.invalidate(removal))
            .transpose();
        #[cfg(not(feature = "redis"))]
        let on_server: Result<Option<u64>> = Ok(None);
        if let Err(e) = &on_server {
            shared.storage.reporter.report(e);
        }
        let on_server_n = on_server.as_ref().ok().copied().flatten().unwrap_or(0);
        let empty = Removed::default();
        let disk = on_disk
            .as_ref()
            .ok()
            .and_then(Option::as_ref)
            .unwrap_or(&empty);
        if !disk.cleared.is_empty() {
            // A cleared table became a grave: its space is reclaimed in the background.
            shared.storage.reclaim_soon();
        }
        let mut removed = disk.total() + on_server_n;
        for t in targets {
            let in_memory = t.forget(what, disk);
            // A tiered entry counts once: its disk (or server) copy, or its memory copy
            // alone. Only a key's removal is counted by the server: it has one target.
            let on_disk = t.persistent.as_ref().map_or(0, |p| disk.of(p.id))
                + if t.remote.is_some() { on_server_n } else { 0 };
            removed += in_memory.saturating_sub(on_disk);
            Counters::add(&t.stats.invalidations, on_disk.max(in_memory));
            if on_server.is_err() && t.remote.is_some() {
                Counters::add(&t.stats.errors, 1);
            }
        }
        drop(window);
        on_disk?;
        on_server?;
        Ok(removed)
    }
}

impl Drop for Tail<'_> {
    fn drop(&mut self) {
        if self.window.is_none() {
            return;
        }
        let on_disk = self.ticket.take().map(Ticket::wait).transpose();
        if let Err(e) = self.finish(on_disk) {
            self.shared.storage.reporter.report(&e);
        }
    }
}
