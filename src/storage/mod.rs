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
//! - Every redb call runs under `catch_unwind`: a damaged file can make redb panic.

pub(crate) mod ops;
pub(crate) mod tables;
pub(crate) mod writer;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use redb::{ReadOnlyTable, ReadableDatabase};

use crate::error::{Error, Result};
use crate::key::KeyHash;
use crate::report::Reporter;
use tables::{EntriesDef, entries_name};

/// A read-only view of one memoizer's table at some commit.
type EntriesTable = ReadOnlyTable<&'static [u8; 16], &'static [u8]>;

struct Snap {
    generation: u64,
    /// `None` when the table did not exist at that commit.
    table: Option<EntriesTable>,
}

/// One memoizer's cached read snapshot.
pub(crate) struct SnapSlot {
    memo_id: u64,
    snap: RwLock<Option<Snap>>,
}

/// Bytes of a stored entry, kept alive without copying.
pub(crate) enum StoredBytes {
    /// Written, not yet committed.
    Pending(Arc<[u8]>),
    /// Read from a committed snapshot, for immediate use. It pins its read transaction:
    /// a guard that held only its page could outlive the snapshot, and a later commit
    /// that frees and rewrites that page makes redb panic.
    Committed(redb::OwnedAccessGuard<&'static [u8]>),
    /// Read from a committed snapshot; pins that snapshot while alive.
    Pinned(redb::OwnedAccessGuard<&'static [u8]>),
}

impl StoredBytes {
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            StoredBytes::Pending(b) => b,
            StoredBytes::Committed(g) => g.value(),
            StoredBytes::Pinned(g) => g.value(),
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
            snap: RwLock::new(None),
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
            *slot.snap.write().unwrap_or_else(|e| e.into_inner()) = None;
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

    /// The bytes stored under `hash` for `slot`'s memoizer, if any. Never blocks on the
    /// writer. `pin` asks for a guard that keeps its snapshot alive (for long-lived hits).
    pub(crate) fn get(
        &self,
        slot: &SnapSlot,
        hash: &KeyHash,
        pin: bool,
    ) -> Result<Option<StoredBytes>> {
        if self.pending_len.load(Ordering::SeqCst) > 0 {
            let pending = self.lock_pending();
            if let Some((_, bytes)) = pending.get(&(slot.memo_id, *hash)) {
                return Ok(Some(StoredBytes::Pending(bytes.clone())));
            }
        }
        let generation = self.generation.load(Ordering::SeqCst);
        {
            let snap = slot.snap.read().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = snap.as_ref().filter(|s| s.generation == generation) {
                return self.read_snap(s, hash, pin);
            }
        }
        let fresh = self.open_snap(slot.memo_id, generation)?;
        let found = self.read_snap(&fresh, hash, pin);
        let mut snap = slot.snap.write().unwrap_or_else(|e| e.into_inner());
        // Keep the newest snapshot only; a racing refresh may have stored a newer one.
        if snap
            .as_ref()
            .is_none_or(|s| s.generation < fresh.generation)
            && self.generation.load(Ordering::SeqCst) == generation
        {
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

    fn read_snap(&self, snap: &Snap, hash: &KeyHash, pin: bool) -> Result<Option<StoredBytes>> {
        let Some(table) = &snap.table else {
            return Ok(None);
        };
        let found = guarded(|| {
            Ok(if pin {
                table.get_owned(hash)?.map(StoredBytes::Pinned)
            } else {
                table.get_owned(hash)?.map(StoredBytes::Committed)
            })
        });
        found.map_err(|e| self.error(e))
    }

    /// Whether some entry is past its deadline at `now_ms` (a read, no write).
    pub(crate) fn has_expired(&self, now_ms: u64) -> Result<bool> {
        guarded(|| ops::has_expired(&self.db, now_ms)).map_err(|e| self.error(e))
    }
}
