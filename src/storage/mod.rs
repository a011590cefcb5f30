//! The only module that talks to redb.
//!
//! Reads go through a per-memoizer cached snapshot ([`SnapSlot`]) validated against a
//! commit generation; writes go through one background writer ([`writer`]) that gathers
//! entries into an open transaction and commits it when a job, a pause or the durable
//! interval needs a commit. Values written but not yet committed sit in the
//! `pending` overlay, which every read consults first, so a value is visible to the next
//! call at once.
//!
//! Invariants:
//! - `generation` is bumped after every commit, before the committed puts leave
//!   `pending`. A snapshot is used only if it was begun after the generation it is tagged
//!   with was read, so it never serves a value older than the caller's own last write.
//! - After every commit the writer empties every [`SnapSlot`], so an idle memoizer never
//!   pins old pages (which would grow the file without bound).
//! - A slot keeps one snapshot per thread stripe, so concurrent hits on one memoizer
//!   share no lock word; every guard handed out ([`StoredBytes`]) keeps its own snapshot
//!   alive, so emptying a slot never frees a page that is still being read.
//! - Every redb call runs under `catch_unwind`: a damaged file can make redb panic.
//! - The database sits behind an `RwLock<Option<..>>`: readers hold the read lock only
//!   while they begin a snapshot; the writer takes the write lock to swap in a reopened
//!   (or, after damage, a fresh) database. See [`Storage::recover`].

pub(crate) mod budget;
// Always compiled (in-memory caches use it, unarmed); public only with `fault-injection`.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
pub(crate) mod faults;
pub(crate) mod flights;
pub(crate) mod multi;
pub(crate) mod open;
pub(crate) mod ops;
mod registry;
pub(crate) mod scratch;
pub(crate) mod tables;
pub(crate) mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, Weak};

use crossbeam_utils::CachePadded;
use redb::{ReadOnlyTable, ReadableDatabase};

use crate::error::{Error, Result};
use crate::key::{KeyHash, PrehashedBuild};
use crate::report::Reporter;
use crate::stats::{stripe_count, thread_stripe};
use open::{AtPath, OnCorruption, Origin};
use tables::{EntriesDef, entries_name};

/// A read-only view of one memoizer's table at some commit.
type EntriesTable = ReadOnlyTable<&'static [u8; 16], &'static [u8]>;

struct Snap {
    generation: u64,
    /// Which database (see `Storage::incarnation`) the snapshot was taken of.
    incarnation: u64,
    /// `None` when the table did not exist at that commit.
    table: Option<EntriesTable>,
}

type Shard = CachePadded<RwLock<Option<Snap>>>;

/// One memoizer's cached read snapshots: one per shard, and each thread reads through
/// its own shard, so concurrent hits never write to a shared cache line here.
pub(crate) struct SnapSlot {
    memo_id: u64,
    shards: Box<[Shard]>,
    /// Stored values of this memoizer that a failed commit dropped: its share of the
    /// failures the writer reports to the cache, for its `Stats::errors`.
    lost_writes: AtomicU64,
    /// Entries of this memoizer evicted for a byte budget, the file's or its own
    /// (committed).
    evicted: AtomicU64,
    /// Its own byte budget (`MemoizerBuilder::max_bytes`), if it has one (shared with
    /// the storage's list, which keeps it after the slot is gone).
    budget: OnceLock<Arc<budget::MemoBudget>>,
}

impl SnapSlot {
    /// How many stored values of this memoizer failed to commit.
    pub(crate) fn lost_writes(&self) -> u64 {
        self.lost_writes.load(Ordering::Relaxed)
    }

    /// How many entries of this memoizer the byte budgets evicted.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    fn shard(&self) -> &RwLock<Option<Snap>> {
        &self.shards[thread_stripe(self.shards.len())]
    }

    /// Drops every cached snapshot (after a commit).
    fn clear(&self) {
        for shard in self.shards.iter() {
            let mut snap = shard.write().unwrap_or_else(|e| e.into_inner());
            *snap = None;
        }
    }
}

/// Bytes of a stored entry, kept alive without copying.
pub(crate) enum StoredBytes {
    /// Held in memory: written and not yet committed, or an in-memory entry.
    Shared(Arc<[u8]>),
    /// Read from a committed snapshot, which it keeps alive: a guard that outlived its
    /// read transaction could see its page freed and reused by a later commit.
    Committed(redb::OwnedAccessGuard<&'static [u8]>),
}

impl StoredBytes {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            StoredBytes::Shared(b) => b,
            StoredBytes::Committed(g) => g.value(),
        }
    }
}

type PendingKey = (u64, KeyHash);
/// Written, not yet committed entries: key -> (write sequence, entry bytes).
/// Keyed by an already uniform hash, so the map does not hash it again.
type PendingMap = HashMap<PendingKey, (u64, Arc<[u8]>), PrehashedBuild>;

/// The redb database and everything needed to read it consistently.
pub(crate) struct Storage {
    /// `None` while the database could not be reopened after a failure.
    db: RwLock<Option<redb::Database>>,
    origin: Origin,
    on_corruption: OnCorruption,
    /// Set when a reset could not carry the registry over: the cache runs without its
    /// file (reads miss, writes are dropped) and never reopens it.
    dead: AtomicBool,
    /// Set by a reader that met a damaged page; the writer then resets the file.
    suspect: AtomicBool,
    /// Bumped whenever the writer swaps in another database, so that damage met through a
    /// snapshot of a database already replaced is not blamed on its successor.
    incarnation: AtomicU64,
    /// Set by a reader that found the database closed; the writer then tries to reopen
    /// it (at most every [`REOPEN_BACKOFF`]) even if nothing is being written.
    reopen: AtomicBool,
    /// When a reopen was last attempted (ms since `born`).
    last_reopen_ms: AtomicU64,
    born: std::time::Instant,
    /// Wakes the writer so it acts on `suspect` and `reopen` at once.
    wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Wakes whoever reclaims graves (the sweeper), after a clear made one.
    reclaim_wake: OnceLock<Box<dyn Fn() + Send + Sync>>,
    path: Option<PathBuf>,
    generation: AtomicU64,
    pending: Mutex<PendingMap>,
    /// Number of rows in `pending`; lets reads skip its lock when nothing is pending.
    pending_len: AtomicUsize,
    slots: Mutex<Vec<Weak<SnapSlot>>>,
    /// The file's registry as of the last open or registration: what a fresh file
    /// replacing a lost one starts with when the old database cannot be read any more.
    registry: Mutex<Option<registry::Registry>>,
    pub(crate) reporter: Arc<Reporter>,
    /// The file's length after the last compaction (or at open): the baseline of
    /// [`Storage::compact_if_grown`].
    compacted_len: AtomicU64,
    /// A shared cache's state (`CacheBuilder::shared`); `None` in the default mode.
    multi: Option<multi::Multi>,
    /// The file's byte budget, if it has one (set once, before the writer starts).
    budget: OnceLock<budget::Budget>,
    /// Memoizers given budgets of their own (`set_memo_budget`), by id, for as long as
    /// the cache is open; `budgeted` is their count.
    memo_budgets: Mutex<Vec<(u64, Arc<budget::MemoBudget>)>>,
    budgeted: AtomicUsize,
}

/// A file is compacted only once it is this large ...
const COMPACT_MIN_BYTES: u64 = 4 << 20;
/// ... and this many times its length after the last compaction (or at open).
const COMPACT_GROWTH: f64 = 1.5;
/// How many times (a millisecond apart) a compaction refused for a live snapshot is
/// tried again before it waits for the next burst.
const COMPACT_RETRIES: usize = 5;

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The length of the file at `path` (0 if it cannot be read).
fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Runs `f`, turning a panic inside redb into a storage error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, redb::Error> {
    // Quietly: the panic is reported as this error, not printed as a crash.
    match crate::panics::catch_quietly(f) {
        Ok(r) => r,
        Err(msg) => Err(redb::Error::Corrupted(format!("redb panicked: {msg}"))),
    }
}

/// Whether a redb error means the file (or redb's view of it) is damaged. Panics inside
/// redb arrive here as `Corrupted` too (see [`guarded`]). So do the table-type errors:
/// every table of a cache file has the types this crate gives it, so a table recorded
/// with other types, or as the other kind, is a damaged table directory
/// (`tests/damaged_table_types.rs`).
pub(crate) fn is_corruption(e: &redb::Error) -> bool {
    matches!(
        e,
        redb::Error::Corrupted(_)
            | redb::Error::LockPoisoned(_)
            | redb::Error::TableTypeMismatch { .. }
            | redb::Error::TableIsMultimap(_)
            | redb::Error::TableIsNotMultimap(_)
            | redb::Error::TypeDefinitionChanged { .. }
    )
}

/// Readers ask for a reopen of a closed database at most this often.
const REOPEN_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);

/// A read lock on the open database.
pub(crate) struct DbRef<'a>(RwLockReadGuard<'a, Option<redb::Database>>);

impl std::ops::Deref for DbRef<'_> {
    type Target = redb::Database;

    fn deref(&self) -> &redb::Database {
        match self.0.as_ref() {
            Some(db) => db,
            // `Storage::db` hands out a `DbRef` only after checking the database is open.
            None => unreachable!("DbRef over a closed database"),
        }
    }
}

impl Storage {
    pub(crate) fn new(
        db: redb::Database,
        origin: Origin,
        on_corruption: OnCorruption,
        reporter: Arc<Reporter>,
    ) -> Self {
        let registry = guarded(|| registry::read(&db)).ok();
        let path = origin.path().map(Path::to_path_buf);
        let len = path.as_deref().map_or(0, file_len);
        Storage {
            compacted_len: AtomicU64::new(len),
            registry: Mutex::new(registry),
            db: RwLock::new(Some(db)),
            path,
            origin,
            on_corruption,
            dead: AtomicBool::new(false),
            suspect: AtomicBool::new(false),
            incarnation: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
            last_reopen_ms: AtomicU64::new(0),
            born: std::time::Instant::now(),
            wake: OnceLock::new(),
            reclaim_wake: OnceLock::new(),
            generation: AtomicU64::new(0),
            pending: Mutex::new(PendingMap::default()),
            pending_len: AtomicUsize::new(0),
            slots: Mutex::new(Vec::new()),
            reporter,
            multi: None,
            budget: OnceLock::new(),
            memo_budgets: Mutex::new(Vec::new()),
            budgeted: AtomicUsize::new(0),
        }
    }

    /// Makes this the storage of a shared cache (`CacheBuilder::shared`).
    pub(crate) fn with_multi(mut self, multi: multi::Multi) -> Self {
        self.multi = Some(multi);
        self
    }

    /// A shared cache's state; `None` in the default (exclusive) mode.
    pub(crate) fn multi(&self) -> Option<&multi::Multi> {
        self.multi.as_ref()
    }

    /// Gives the file a byte budget (`CacheBuilder::max_bytes`); before the writer starts.
    pub(crate) fn set_budget(&self, max_bytes: u64) {
        let _ = self.budget.set(budget::Budget::new(max_bytes));
    }

    /// The file's byte budget, if any.
    pub(crate) fn budget(&self) -> Option<&budget::Budget> {
        self.budget.get()
    }

    /// Gives `slot`'s memoizer a byte budget of its own (`MemoizerBuilder::max_bytes`),
    /// enforced by the writer's eviction rounds from its next batch on, as long as the
    /// cache is open - also after the memoizer is dropped, so that the stores it queued
    /// are held to it. The first budget given to a memoizer stays.
    pub(crate) fn set_memo_budget(&self, slot: &SnapSlot, max_bytes: u64) {
        let mut budgets = self.memo_budgets.lock().unwrap_or_else(|e| e.into_inner());
        let budget = match budgets.iter().find(|(id, _)| *id == slot.memo_id) {
            Some((_, budget)) => budget.clone(),
            None => {
                let own_sketch = self.budget.get().is_none();
                let budget = Arc::new(budget::MemoBudget::new(max_bytes, own_sketch));
                budgets.push((slot.memo_id, budget.clone()));
                self.budgeted.store(budgets.len(), Ordering::SeqCst);
                budget
            }
        };
        let _ = slot.budget.set(budget);
    }

    /// The memoizers with budgets of their own, by id (for the writer's eviction rounds;
    /// none, without a lock, while no memoizer was given one).
    pub(crate) fn memo_budgets(&self) -> Vec<(u64, Arc<budget::MemoBudget>)> {
        if self.budgeted.load(Ordering::SeqCst) == 0 {
            return Vec::new();
        }
        self.memo_budgets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The open database, read-locked. Fails while it is closed (being reopened, or given
    /// up on after a failure).
    pub(crate) fn db(&self) -> Result<DbRef<'_>, redb::Error> {
        let guard = self.db.read().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            return Err(redb::Error::DatabaseClosed);
        }
        Ok(DbRef(guard))
    }

    /// Runs `f` in a fresh read transaction of the committed state.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T> {
        guarded(|| {
            let txn = self.db()?.begin_read()?;
            f(&txn)
        })
        .map_err(|e| self.error(e))
    }

    /// Whether the database is open.
    fn is_open(&self) -> bool {
        self.db.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Registers how to wake the writer (see `suspect`).
    pub(crate) fn set_wake(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.wake.set(Box::new(wake));
    }

    /// Whether damage makes the cache start afresh (a file, under `OnCorruption::Recreate`).
    fn resets(&self) -> bool {
        self.on_corruption == OnCorruption::Recreate && self.path.is_some()
    }

    fn wake_writer(&self) {
        if let Some(wake) = self.wake.get() {
            wake();
        }
    }

    /// Called when a read of database `incarnation` met damage: asks the writer to reset
    /// the file, unless that database has been replaced already.
    fn suspect(&self, e: &redb::Error, incarnation: u64) {
        if is_corruption(e)
            && self.resets()
            && incarnation == self.incarnation.load(Ordering::SeqCst)
            && !self.suspect.swap(true, Ordering::SeqCst)
        {
            self.wake_writer();
        }
    }

    /// Called when a read found the database closed: asks the writer to try reopening it.
    fn request_reopen(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        let last = self.last_reopen_ms.load(Ordering::SeqCst);
        if self.dead.load(Ordering::SeqCst)
            || now.saturating_sub(last) < REOPEN_BACKOFF.as_millis() as u64
        {
            return;
        }
        if !self.reopen.swap(true, Ordering::SeqCst) {
            self.wake_writer();
        }
    }

    /// Whether a reader asked for a reopen (and clears the request).
    pub(crate) fn take_reopen_request(&self) -> bool {
        self.reopen.swap(false, Ordering::SeqCst)
    }

    /// Takes the flag a damaged read left.
    fn take_suspect(&self) -> bool {
        self.suspect.swap(false, Ordering::SeqCst)
    }

    /// Whether a reader met damage since the last [`recover`](Self::recover).
    pub(crate) fn suspected(&self) -> bool {
        self.suspect.load(Ordering::SeqCst)
    }

    /// Makes sure a database is open before the writer uses it: reopens one that a
    /// failure closed. Returns whether one is open.
    pub(crate) fn ensure_open(&self) -> bool {
        if self.is_open() {
            return true;
        }
        if self.dead.load(Ordering::SeqCst) {
            return false;
        }
        self.last_reopen_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::SeqCst);
        self.recover(false);
        self.is_open()
    }

    /// Makes the database usable again after a failed write (`damaged`: the failure was
    /// damage), when a reader met damage, or when a closed one needs reopening. Runs on
    /// the writer thread.
    ///
    /// redb refuses every write after a failed commit until the `Database` is reopened,
    /// so the old one is closed and the origin opened again: redb's recovery then rolls
    /// the file back to its last durable commit. Readers holding snapshots of the old
    /// database keep them (their pages are in memory); new snapshots come from the new
    /// one, because the generation is bumped and every cached snapshot dropped.
    ///
    /// If the cause is damage and the policy is `Recreate`, the file is moved aside and
    /// replaced by a fresh one carrying the old registry over (so the ids of live
    /// memoizers and zones keep their meaning). If the registry itself is unreadable the
    /// cache gives up on its file until it is reopened ("dead": every read misses).
    ///
    /// The path is looked at first ([`AtPath`]): a file deleted under the cache is
    /// replaced by a fresh one carrying the registry over (read from the old database, or
    /// the copy kept since the last registration, if that database is gone too - a retry
    /// after a full disk); another file put at the path is never opened, written or moved:
    /// the cache gives up its file.
    pub(crate) fn recover(&self, damaged: bool) {
        let damaged = damaged | self.take_suspect();
        let turn = open::take_turn();
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        let old = slot.take();
        let at_path = self.origin.at_path();
        // Without the old database there is no registry to carry over: just reopen.
        let reset = damaged && self.resets() && old.is_some() && at_path == AtPath::Same;
        let registry = match (&old, reset || at_path == AtPath::Gone) {
            (Some(db), true) => guarded(|| registry::read(db)).ok(),
            _ => None,
        };
        if let Some(old) = old {
            // A close after a latched failure reports that failure again; it is known.
            let _ = crate::panics::catch_quietly(|| old.close());
        }
        // Reported once the lock is released: the user's hook may read the cache.
        let mut events = Vec::new();
        let reopened = match at_path {
            AtPath::Other => Err(self.detach("another file was put at its path; it is left alone")),
            AtPath::Gone if !self.origin.creates() => {
                Err(self.detach("the file was deleted, and this Cache may not create one"))
            }
            AtPath::Gone => self.fresh(registry.or_else(|| self.kept_registry())),
            AtPath::Same if reset => self.reset(registry, &mut events, &turn),
            AtPath::Same => self.origin.reopen(),
        };
        match reopened {
            Ok(db) => {
                self.keep_registry_of(&db);
                *slot = Some(db);
            }
            Err(e) => events.push(e),
        }
        self.incarnation.fetch_add(1, Ordering::SeqCst);
        // Damage reported against the old database while this ran is dealt with.
        self.suspect.store(false, Ordering::SeqCst);
        drop(slot);
        drop(turn);
        self.committed();
        for e in &events {
            self.reporter.report(e);
        }
    }

    /// Moves the damaged file aside and opens a fresh one with `registry` written into it.
    fn reset(
        &self,
        registry: Option<registry::Registry>,
        events: &mut Vec<Error>,
        turn: &open::Turn,
    ) -> Result<redb::Database> {
        let path = self.path.clone().unwrap_or_default();
        let Some(aside) = self.origin.move_aside(turn).inspect_err(|_| self.die())? else {
            return Err(self.detach("another file was put at its path; it is left alone"));
        };
        self.reporter.set_moved_aside(aside.clone());
        events.push(Error::MovedAside {
            path,
            moved_to: aside,
            detail: "damage found while running".into(),
        });
        let fresh = self.fresh(registry);
        if fresh.is_err() {
            // Never open that path again in this Cache: a fresh file without the registry
            // would hand the ids of live memoizers to new ones.
            self.die();
        }
        fresh
    }

    /// A fresh file at the path with `registry` written into it, or none at all: a file
    /// left without the registry would hand the ids of live memoizers to new ones. With
    /// no registry to write, the cache gives its file up.
    fn fresh(&self, registry: Option<registry::Registry>) -> Result<redb::Database> {
        let Some(registry) = registry else {
            return Err(self.detach(
                "the file's memoizer registry is unreadable too, so a fresh file could not \
                 take over its ids",
            ));
        };
        let db = self.origin.create_fresh()?;
        let written = guarded(|| {
            let txn = db.begin_write()?;
            registry::write(&txn, &registry)?;
            txn.commit()?;
            Ok(())
        });
        if let Err(e) = written {
            drop(db);
            self.origin.discard();
            return Err(self.error(e));
        }
        Ok(db)
    }

    /// Gives the file up for good (until the cache is reopened); returns the report.
    fn detach(&self, reason: &str) -> Error {
        self.die();
        Error::Detached {
            path: self.path.clone().unwrap_or_default(),
            reason: reason.into(),
        }
    }

    fn die(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }

    /// Keeps a copy of `db`'s registry, for a fresh file should this one be lost.
    fn keep_registry_of(&self, db: &redb::Database) {
        if let Ok(registry) = guarded(|| registry::read(db)) {
            *self.registry.lock().unwrap_or_else(|e| e.into_inner()) = Some(registry);
        }
    }

    /// Refreshes the kept registry after a memoizer or zone was registered.
    pub(crate) fn registered(&self) {
        if let Ok(db) = self.db() {
            self.keep_registry_of(&db);
        }
    }

    fn kept_registry(&self) -> Option<registry::Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Called by the writer after each durable commit: a file deleted or replaced under
    /// the cache is dealt with now, not after values went into a file nobody can open.
    pub(crate) fn check_file(&self) {
        if self.origin.at_path() != AtPath::Same {
            self.recover(false);
        }
    }

    /// Registers how to ask for the reclamation of graves.
    pub(crate) fn set_reclaim_wake(&self, wake: impl Fn() + Send + Sync + 'static) {
        let _ = self.reclaim_wake.set(Box::new(wake));
    }

    /// Asks for the reclamation of graves soon (a clear just made one).
    pub(crate) fn reclaim_soon(&self) {
        if let Some(wake) = self.reclaim_wake.get() {
            wake();
        }
    }

    /// Whether a cleared table awaits reclamation (a read, no write).
    pub(crate) fn has_graves(&self) -> Result<bool> {
        guarded(|| ops::has_graves(&*self.db()?)).map_err(|e| self.error(e))
    }

    /// Whether some entry is past its deadline at `now_ms` (a read, no write).
    pub(crate) fn has_expired(&self, now_ms: u64) -> Result<bool> {
        guarded(|| ops::has_expired(&*self.db()?, now_ms)).map_err(|e| self.error(e))
    }

    /// Wraps a redb error with this cache's path.
    pub(crate) fn error(&self, source: redb::Error) -> Error {
        Error::Storage {
            path: self.path.clone(),
            source,
        }
    }

    /// A snapshot slot for memoizer `memo_id`, registered so commits empty it.
    pub(crate) fn slot(&self, memo_id: u64) -> Arc<SnapSlot> {
        let slot = Arc::new(SnapSlot {
            memo_id,
            shards: (0..stripe_count())
                .map(|_| CachePadded::new(RwLock::new(None)))
                .collect(),
            lost_writes: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
            budget: OnceLock::new(),
        });
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.retain(|w| w.strong_count() > 0);
        slots.push(Arc::downgrade(&slot));
        slot
    }

    /// The commit generation: moves after every commit, before the committed writes leave
    /// the overlay and before the caller of a synchronous job is answered.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Called by the writer after a commit: readers must take a fresh snapshot. In a
    /// shared cache, the other processes learn of it through the board.
    pub(crate) fn committed(&self) {
        self.refresh();
        if let Some(multi) = &self.multi
            && !faults::board_bumps_skipped()
        {
            multi.peers.board.bump_commits();
        }
    }

    /// Makes readers take a fresh snapshot (after a commit here or in another process).
    pub(crate) fn refresh(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.clear();
        }
    }

    /// Compacts the file in place (redb's `compact`) if it has grown past
    /// [`COMPACT_GROWTH`] times its length after the last compaction and past
    /// [`COMPACT_MIN_BYTES`], or - with a byte budget - past its bound (5/4 of the
    /// budget) and by a sixteenth of the budget since the last compaction. Called by the
    /// writer, between batches, after a durable commit that ends a burst of writes: after
    /// a flush has been answered (so a flush does not wait for it, the writer's next job
    /// does), or when the writes pause; with a byte budget, after every durable commit.
    ///
    /// Why: redb reuses freed pages but never gives them back, and commits of randomly
    /// placed rows free many (copy-on-write): a file filled by many commits grows to
    /// several times its live pages. Compaction moves the live pages down and truncates
    /// the file.
    ///
    /// It needs every read snapshot gone: the cached ones are dropped here (as after a
    /// commit) while the database is write-locked, so that no new one opens; one still
    /// held (an [`ArchivedHit`](crate::ArchivedHit); a hit being read, for up to
    /// [`COMPACT_RETRIES`] ms) makes redb refuse, and the compaction waits for the next
    /// burst. Meanwhile hits that need a snapshot wait for the lock: about 50 ms per
    /// 70 MiB file.
    pub(crate) fn compact_if_grown(&self) -> bool {
        // Other processes' snapshots would make redb refuse it anyway.
        let (Some(path), None) = (&self.path, &self.multi) else {
            return false;
        };
        let len = file_len(path);
        let base = self.compacted_len.load(Ordering::Relaxed);
        // Past a byte budget's bound, by a sixteenth of it since the last compaction.
        let over = self
            .budget
            .get()
            .is_some_and(|b| len > b.file_bound() && len > base + b.max_bytes() / 16);
        if !over && (len < COMPACT_MIN_BYTES || (len as f64) < base as f64 * COMPACT_GROWTH) {
            return false;
        }
        let mut guard = self.db.write().unwrap_or_else(|e| e.into_inner());
        let Some(db) = guard.as_mut() else {
            return false;
        };
        self.committed();
        // Hits already reading hold their snapshot for microseconds more: give them a
        // few milliseconds (new ones wait for the lock) before taking a refusal for a
        // long-held one.
        let mut tries = 0;
        let outcome = loop {
            let outcome = guarded(|| db.compact().map_err(redb::Error::from));
            if tries == COMPACT_RETRIES
                || !matches!(outcome, Err(redb::Error::TransactionInProgress))
            {
                break outcome;
            }
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        drop(guard);
        match outcome {
            Ok(_) => {
                self.compacted_len.store(file_len(path), Ordering::Relaxed);
                true
            }
            // A snapshot is held: try again after the next burst.
            Err(redb::Error::TransactionInProgress) => false,
            Err(e) => {
                let damaged = is_corruption(&e);
                self.reporter.report(&self.error(e));
                if damaged {
                    self.recover(true);
                }
                false
            }
        }
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, PendingMap> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a written entry to the overlay if `still_valid()` holds, atomically with
    /// respect to [`Storage::with_pending_lock`]. Returns whether it was added.
    pub(crate) fn add_pending(
        &self,
        key: PendingKey,
        seq: u64,
        bytes: Arc<[u8]>,
        still_valid: impl FnOnce() -> bool,
        enqueue: impl FnOnce() -> bool,
    ) -> bool {
        let mut pending = self.lock_pending();
        if !still_valid() {
            return false;
        }
        if !enqueue() {
            return false;
        }
        if pending.insert(key, (seq, bytes)).is_none() {
            self.pending_len.fetch_add(1, Ordering::SeqCst);
        }
        true
    }

    /// Runs `f` while holding the overlay lock: invalidations bump epochs and enqueue
    /// their job under it, so no store can slip in between.
    pub(crate) fn with_pending_lock<T>(&self, f: impl FnOnce() -> T) -> T {
        let _pending = self.lock_pending();
        f()
    }

    /// Drops overlay rows once their write has committed (or failed).
    /// Charges the puts of a failed batch to their memoizers' slots.
    fn count_lost_writes(&self, lost: &[(PendingKey, u64)]) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            let n = lost
                .iter()
                .filter(|((id, _), _)| *id == slot.memo_id)
                .count();
            slot.lost_writes.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Credits committed evictions to their memoizers' slots.
    fn count_evicted(&self, evicted: &[(u64, KeyHash)]) {
        if evicted.is_empty() {
            return;
        }
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            let n = evicted.iter().filter(|(id, _)| *id == slot.memo_id).count();
            slot.evicted.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn settle_pending(&self, done: &[(PendingKey, u64)]) {
        let mut pending = self.lock_pending();
        for (key, seq) in done {
            if pending.get(key).is_some_and(|(s, _)| s == seq) {
                pending.remove(key);
                self.pending_len.fetch_sub(1, Ordering::SeqCst);
            }
        }
        drop(pending);
        // After the commit was announced (`committed`): a waiter for a released lock
        // finds the value.
        if let Some(multi) = &self.multi {
            multi.settled(done);
        }
    }

    /// The bytes stored under `hash` for `slot`'s memoizer, if any: the overlay first,
    /// then this thread's cached snapshot of the table (refreshed when a commit has
    /// happened since it was taken). Never blocks on the writer.
    pub(crate) fn get(&self, slot: &SnapSlot, hash: &KeyHash) -> Result<Option<StoredBytes>> {
        if let Some(budget) = self.budget.get() {
            budget.record(slot.memo_id, hash);
        } else if let Some(own) = slot.budget.get() {
            own.record(slot.memo_id, hash);
        }
        // The overlay before the generation: a row leaves the overlay only after the
        // generation moved past its commit, so a miss here is then seen in the snapshot.
        if self.pending_len.load(Ordering::SeqCst) > 0 {
            let pending = self.lock_pending();
            if let Some((_, bytes)) = pending.get(&(slot.memo_id, *hash)) {
                return Ok(Some(StoredBytes::Shared(bytes.clone())));
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let shard = slot.shard();
        {
            let snap = shard.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = snap.as_ref().filter(|s| s.generation == generation) {
                return self.read_snap(s, hash);
            }
        }
        let Some(fresh) = self.open_snap(slot.memo_id, generation)? else {
            return Ok(None);
        };
        let found = self.read_snap(&fresh, hash);
        let mut snap = shard.write().unwrap_or_else(|e| e.into_inner());
        // Keep it only if no commit came since (the writer empties slots after bumping
        // the generation, so a snapshot stored before that is emptied too).
        if self.generation.load(Ordering::SeqCst) == generation {
            *snap = Some(fresh);
        }
        found
    }

    fn open_snap(&self, memo_id: u64, generation: u64) -> Result<Option<Snap>> {
        let mut incarnation = self.incarnation.load(Ordering::SeqCst);
        let table = guarded(|| {
            // A forked child never takes read locks: they would be its parent's.
            if self.multi.as_ref().is_some_and(multi::Multi::forked) {
                return Ok(None);
            }
            let db = match self.db() {
                Ok(db) => db,
                // Closed after a failure the writer has reported: a miss.
                Err(_) => {
                    self.request_reopen();
                    return Ok(None);
                }
            };
            // Read under the database lock: the incarnation of this very database.
            incarnation = self.incarnation.load(Ordering::SeqCst);
            let txn = db.begin_read()?;
            let name = entries_name(memo_id);
            match txn.open_table(EntriesDef::new(&name)) {
                Ok(t) => Ok(Some(Some(t))),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(Some(None)),
                Err(e) => Err(e.into()),
            }
        })
        .map_err(|e| {
            self.suspect(&e, incarnation);
            self.error(e)
        })?;
        Ok(table.map(|table| Snap {
            generation,
            incarnation,
            table,
        }))
    }

    fn read_snap(&self, snap: &Snap, hash: &KeyHash) -> Result<Option<StoredBytes>> {
        let Some(table) = &snap.table else {
            return Ok(None);
        };
        let found = guarded(|| {
            let found = table.get_owned(hash)?.map(StoredBytes::Committed);
            // A guard finds its value's bounds in the page on every `value()` call, and a
            // damaged page makes that panic: do it once here, under the guard. The page
            // is immutable, so later calls find the same bounds.
            if let Some(stored) = &found {
                stored.bytes();
            }
            Ok(found)
        });
        found.map_err(|e| {
            self.suspect(&e, snap.incarnation);
            self.error(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> (Storage, Arc<SnapSlot>) {
        let origin = Origin::Backend(faults::FaultyBackend::in_memory());
        let db = origin.open().unwrap();
        let reporter = Arc::new(Reporter::new(None));
        let storage = Storage::new(db, origin, OnCorruption::Recreate, reporter);
        let slot = storage.slot(7);
        (storage, slot)
    }

    #[test]
    fn reads_see_the_overlay_before_the_commit_and_the_snapshot_after() {
        let (storage, slot) = storage();
        let hash = [3u8; 16];
        assert!(storage.get(&slot, &hash).unwrap().is_none());
        let bytes: Arc<[u8]> = Arc::from(&b"entry"[..]);
        // Nothing is enqueued: only the overlay holds the write.
        assert!(storage.add_pending((7, hash), 1, bytes, || true, || true));
        assert_eq!(storage.pending_len.load(Ordering::SeqCst), 1);
        let found = storage.get(&slot, &hash).unwrap().expect("overlay row");
        assert!(matches!(found, StoredBytes::Shared(_)));
        assert_eq!(found.bytes(), b"entry");
        // Another memoizer never sees it.
        assert!(storage.get(&storage.slot(8), &hash).unwrap().is_none());
        // Settled without a commit (a failed write): gone, nothing on disk either.
        storage.settle_pending(&[((7, hash), 1)]);
        assert_eq!(storage.pending_len.load(Ordering::SeqCst), 0);
        assert!(storage.get(&slot, &hash).unwrap().is_none());
    }

    #[test]
    fn an_invalid_store_never_reaches_the_overlay() {
        let (storage, slot) = storage();
        let bytes: Arc<[u8]> = Arc::from(&b"stale"[..]);
        assert!(!storage.add_pending((7, [1; 16]), 1, bytes.clone(), || false, || true));
        assert!(!storage.add_pending((7, [1; 16]), 2, bytes, || true, || false));
        assert!(storage.get(&slot, &[1; 16]).unwrap().is_none());
    }
}
