//! Fault injection: a redb [`StorageBackend`] that fails writes or fsyncs on demand.
//!
//! Public (as `fresco_memoize::__faults`, hidden from the docs) only with the
//! `fault-injection` feature: it exists so the tests and fuzz targets can show what the
//! cache does when the disk fills up or returns EIO. Open a cache over it with the hidden
//! `CacheBuilder::__open_backend`.
//!
//! Usage: `let disk = FaultyBackend::in_memory();`, open a cache over `disk.clone()`, then
//! `disk.fail_writes_after(0, FaultKind::DiskFull)` and later `disk.clear()`; see
//! `tests/faults.rs`. In-memory caches use this backend unarmed, so that they can be
//! reopened after a failed commit like file-backed ones.

use std::fmt;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use redb::StorageBackend;
use redb::backends::{FileBackend, InMemoryBackend};

/// The error an armed fault returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `io::ErrorKind::StorageFull` ("No space left on device").
    DiskFull,
    /// A plain EIO (`io::Error::from_raw_os_error(5)`).
    Eio,
}

impl FaultKind {
    fn error(self, what: &str) -> io::Error {
        match self {
            FaultKind::DiskFull => io::Error::new(
                io::ErrorKind::StorageFull,
                format!("injected fault: disk full ({what})"),
            ),
            FaultKind::Eio => io::Error::from_raw_os_error(5),
        }
    }

    fn code(self) -> u8 {
        match self {
            FaultKind::DiskFull => 1,
            FaultKind::Eio => 2,
        }
    }

    fn from_code(code: u8) -> Option<FaultKind> {
        match code {
            1 => Some(FaultKind::DiskFull),
            2 => Some(FaultKind::Eio),
            _ => None,
        }
    }
}

/// One kind of operation that can be made to fail: a countdown and the error to return.
struct Trigger {
    /// Operations still allowed to succeed; `u64::MAX` = not armed.
    remaining: AtomicU64,
    kind: AtomicU8,
    /// Operations of this kind attempted so far (successful or not).
    seen: AtomicU64,
    /// Operations failed so far.
    failed: AtomicU64,
}

impl Trigger {
    fn new() -> Self {
        Trigger {
            remaining: AtomicU64::new(u64::MAX),
            kind: AtomicU8::new(0),
            seen: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn arm(&self, after: u64, kind: FaultKind) {
        self.kind.store(kind.code(), Ordering::SeqCst);
        self.remaining.store(after, Ordering::SeqCst);
    }

    fn disarm(&self) {
        self.remaining.store(u64::MAX, Ordering::SeqCst);
        self.kind.store(0, Ordering::SeqCst);
    }

    /// Counts one operation; `Err` if the fault is armed and its countdown has run out.
    fn check(&self, what: &str) -> io::Result<()> {
        self.seen.fetch_add(1, Ordering::Relaxed);
        let Some(kind) = FaultKind::from_code(self.kind.load(Ordering::SeqCst)) else {
            return Ok(());
        };
        let passed = self
            .remaining
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0 && n != u64::MAX).then(|| n - 1)
            });
        match passed {
            Ok(_) => Ok(()),
            Err(u64::MAX) => Ok(()),
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                Err(kind.error(what))
            }
        }
    }
}

struct Shared {
    inner: Box<dyn StorageBackend>,
    /// `write` and `set_len` (growing a file is what runs out of space first).
    writes: Trigger,
    /// `sync_data`.
    syncs: Trigger,
}

/// A redb storage backend that forwards to a real one (a file or memory) and fails writes
/// or fsyncs after a given number of operations, until [`clear`](Self::clear)ed.
///
/// Clones share the storage and the fault settings, so a cache can reopen "the same disk"
/// after a failed commit, and a test can arm faults on a clone it kept.
#[derive(Clone)]
pub struct FaultyBackend {
    shared: Arc<Shared>,
}

impl fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyBackend")
            .field("inner", &self.shared.inner)
            .field("writes", &self.writes())
            .field("syncs", &self.syncs())
            .finish()
    }
}

impl FaultyBackend {
    /// Wraps any redb backend.
    pub fn new(inner: impl StorageBackend) -> Self {
        FaultyBackend {
            shared: Arc::new(Shared {
                inner: Box::new(inner),
                writes: Trigger::new(),
                syncs: Trigger::new(),
            }),
        }
    }

    /// A backend over memory (nothing touches the disk).
    pub fn in_memory() -> Self {
        Self::new(InMemoryBackend::new())
    }

    /// A backend over the file at `path`, created if missing.
    pub fn file(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let backend = FileBackend::new(file).map_err(io::Error::other)?;
        Ok(Self::new(backend))
    }

    /// From now on, let `n` more writes succeed, then fail every write with `kind`.
    pub fn fail_writes_after(&self, n: u64, kind: FaultKind) {
        self.shared.writes.arm(n, kind);
    }

    /// From now on, let `n` more fsyncs succeed, then fail every fsync with `kind`.
    pub fn fail_syncs_after(&self, n: u64, kind: FaultKind) {
        self.shared.syncs.arm(n, kind);
    }

    /// Disarms every fault: the disk works again.
    pub fn clear(&self) {
        self.shared.writes.disarm();
        self.shared.syncs.disarm();
    }

    /// Writes (including `set_len`) attempted so far.
    pub fn writes(&self) -> u64 {
        self.shared.writes.seen.load(Ordering::Relaxed)
    }

    /// Fsyncs attempted so far.
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.seen.load(Ordering::Relaxed)
    }

    /// Operations that failed because of an armed fault so far.
    pub fn injected(&self) -> u64 {
        self.shared.writes.failed.load(Ordering::Relaxed)
            + self.shared.syncs.failed.load(Ordering::Relaxed)
    }
}

impl StorageBackend for FaultyBackend {
    fn len(&self) -> io::Result<u64> {
        self.shared.inner.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.shared.inner.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.shared.writes.check("set_len")?;
        self.shared.inner.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.shared.syncs.check("sync_data")?;
        self.shared.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.shared.writes.check("write")?;
        self.shared.inner.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.shared.inner.close()
    }

    fn try_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.shared.inner.lock_range(start, end)
    }

    fn lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.shared.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), redb::BackendError> {
        self.shared.inner.unlock_range(start, end)
    }

    fn query_lock_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.shared.inner.query_lock_range(start, end)
    }
}

/// Where [`stall_write_transactions`] was armed: its marker file.
#[cfg(feature = "fault-injection")]
static STALL: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes every write transaction of this process's writers stop just before its
/// commit - forever, after creating the file `marker` - so that a test can kill the
/// process while it is inside a write transaction (holding the file's write lock).
#[cfg(feature = "fault-injection")]
pub fn stall_write_transactions(marker: impl AsRef<Path>) {
    let _ = STALL.set(marker.as_ref().to_path_buf());
}

/// Called by the writer inside each write transaction, just before it commits.
#[inline]
pub(crate) fn before_commit() {
    #[cfg(feature = "fault-injection")]
    if let Some(marker) = STALL.get() {
        let _ = std::fs::write(marker, b"");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

/// Whether [`skip_board_bumps`] was called.
#[cfg(feature = "fault-injection")]
static SKIP_BUMPS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Makes this process's commits to a shared cache go unannounced on the board, as if
/// the process died after each commit and before its bump.
#[cfg(feature = "fault-injection")]
pub fn skip_board_bumps() {
    SKIP_BUMPS.store(true, Ordering::SeqCst);
}

#[inline]
pub(crate) fn board_bumps_skipped() -> bool {
    #[cfg(feature = "fault-injection")]
    return SKIP_BUMPS.load(Ordering::Relaxed);
    #[cfg(not(feature = "fault-injection"))]
    false
}
