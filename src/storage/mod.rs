//! The only module that talks to redb.
//!
//! Reads go through a per-memoizer cached snapshot ([`SnapSlot`]) validated against a
//! commit generation; writes go through one background writer ([`writer`]) that batches
//! entries into non-durable commits. Values written but not yet committed sit in the
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

pub(crate) mod ops;
pub(crate) mod tables;
pub(crate) mod writer;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use crossbeam::utils::CachePadded;

use redb::{ReadOnlyTable, ReadableDatabase};

use crate::error::{Error, Result};
use crate::key::KeyHash;
use crate::report::Reporter;
use crate::stats::{stripe_count, thread_stripe};
use tables::{EntriesDef, entries_name};

/// A read-only view of one memoizer's table at some commit.
type EntriesTable = ReadOnlyTable<&'static [u8; 16], &'static [u8]>;

struct Snap {
    generation: u64,
    /// `None` when the table did not exist at that commit.
    table: Option<EntriesTable>,
}

type Shard = CachePadded<RwLock<Option<Snap>>>;

/// One memoizer's cached read snapshots: one per shard, and each thread reads through
/// its own shard, so concurrent hits never write to a shared cache line here.
pub(crate) struct SnapSlot {
    memo_id: u64,
    shards: Box<[Shard]>,
}

impl SnapSlot {
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
    /// Written, not yet committed.
    Pending(Arc<[u8]>),
    /// Read from a committed snapshot, which it keeps alive: a guard that outlived its
    /// read transaction could see its page freed and reused by a later commit.
    Committed(redb::OwnedAccessGuard<&'static [u8]>),
}

impl StoredBytes {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            StoredBytes::Pending(b) => b,
            StoredBytes::Committed(g) => g.value(),
        }
    }
}

type PendingKey = (u64, KeyHash);
/// Written, not yet committed entries: key -> (write sequence, entry bytes).
type PendingMap = HashMap<PendingKey, (u64, Arc<[u8]>)>;

/// The redb database and everything needed to read it consistently.
pub(crate) struct Storage {
    db: redb::Database,
    path: Option<PathBuf>,
    generation: AtomicU64,
    pending: Mutex<PendingMap>,
    /// Number of rows in `pending`; lets reads skip its lock when nothing is pending.
    pending_len: AtomicUsize,
    slots: Mutex<Vec<Weak<SnapSlot>>>,
    pub(crate) reporter: Arc<Reporter>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Runs `f`, turning a panic inside redb into a storage error.
pub(crate) fn guarded<T>(f: impl FnOnce() -> Result<T, redb::Error>) -> Result<T, redb::Error> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(redb::Error::Corrupted(format!("redb panicked: {msg}")))
        }
    }
}

impl Storage {
    pub(crate) fn new(db: redb::Database, path: Option<PathBuf>, reporter: Arc<Reporter>) -> Self {
        Storage {
            db,
            path,
            generation: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            pending_len: AtomicUsize::new(0),
            slots: Mutex::new(Vec::new()),
            reporter,
        }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub(crate) fn db(&self) -> &redb::Database {
        &self.db
    }

    /// Whether some entry is past its deadline at `now_ms` (a read, no write).
    pub(crate) fn has_expired(&self, now_ms: u64) -> Result<bool> {
        guarded(|| ops::has_expired(&self.db, now_ms)).map_err(|e| self.error(e))
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

    /// Called by the writer after a commit: readers must take a fresh snapshot.
    fn committed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        for slot in slots.iter().filter_map(Weak::upgrade) {
            slot.clear();
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
    fn settle_pending(&self, done: &[(PendingKey, u64)]) {
        let mut pending = self.lock_pending();
        for (key, seq) in done {
            if pending.get(key).is_some_and(|(s, _)| s == seq) {
                pending.remove(key);
                self.pending_len.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// The bytes stored under `hash` for `slot`'s memoizer, if any: the overlay first,
    /// then this thread's cached snapshot of the table (refreshed when a commit has
    /// happened since it was taken). Never blocks on the writer.
    pub(crate) fn get(&self, slot: &SnapSlot, hash: &KeyHash) -> Result<Option<StoredBytes>> {
        // The overlay before the generation: a row leaves the overlay only after the
        // generation moved past its commit, so a miss here is then seen in the snapshot.
        if self.pending_len.load(Ordering::SeqCst) > 0 {
            let pending = self.lock_pending();
            if let Some((_, bytes)) = pending.get(&(slot.memo_id, *hash)) {
                return Ok(Some(StoredBytes::Pending(bytes.clone())));
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
        let fresh = self.open_snap(slot.memo_id, generation)?;
        let found = self.read_snap(&fresh, hash);
        let mut snap = shard.write().unwrap_or_else(|e| e.into_inner());
        // Keep it only if no commit came since (the writer empties slots after bumping
        // the generation, so a snapshot stored before that is emptied too).
        if self.generation.load(Ordering::SeqCst) == generation {
            *snap = Some(fresh);
        }
        found
    }

    fn open_snap(&self, memo_id: u64, generation: u64) -> Result<Snap> {
        let table = guarded(|| {
            let txn = self.db.begin_read()?;
            let name = entries_name(memo_id);
            match txn.open_table(EntriesDef::new(&name)) {
                Ok(t) => Ok(Some(t)),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .map_err(|e| self.error(e))?;
        Ok(Snap { generation, table })
    }

    fn read_snap(&self, snap: &Snap, hash: &KeyHash) -> Result<Option<StoredBytes>> {
        let Some(table) = &snap.table else {
            return Ok(None);
        };
        guarded(|| Ok(table.get_owned(hash)?.map(StoredBytes::Committed)))
            .map_err(|e| self.error(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage() -> (Storage, Arc<SnapSlot>) {
        let db = redb::Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .unwrap();
        ops::init(&db).unwrap();
        let storage = Storage::new(db, None, Arc::new(Reporter::new(None)));
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
        assert!(matches!(found, StoredBytes::Pending(_)));
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
