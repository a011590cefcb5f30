//! `Cache`: one redb file (or an in-memory database) shared by many memoizers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::memoizer::{MemoCore, MemoizerBuilder};
use crate::report::{ErrorHook, Health, Reporter};
use crate::storage::Storage;
use crate::storage::faults::FaultyBackend;
use crate::storage::open::{Origin, move_aside};
use crate::storage::ops;
use crate::storage::writer::Writer;
use crate::zone::{Zone, ZoneInner};
use crate::{Value, integrity};

/// What to do when the cache file turns out to be damaged at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnCorruption {
    /// Move the damaged file aside (`<file>.corrupt-<unix ms>`), report it through
    /// [`Cache::health`] and the error hook, and start with an empty cache. A cache is
    /// disposable; this is the default.
    #[default]
    Recreate,
    /// Fail with [`Error::Corrupted`] and leave the file alone.
    Fail,
}

pub(crate) struct CacheInner {
    pub storage: Arc<Storage>,
    pub writer: Writer,
    pub clock: Arc<dyn Clock>,
    pub file_backed: bool,
    pub live: Mutex<HashMap<String, Weak<MemoCore>>>,
    zones: Mutex<HashMap<String, Arc<ZoneInner>>>,
    pub next_entry_id: AtomicU64,
    /// The expiry sweeper, if enabled (set once, right after the cache is built).
    pub sweeper: OnceLock<crate::sweeper::Sweeper>,
    /// The server of a connected cache (feature `redis`): its memoizers' persistent
    /// tier.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub remote: RemoteService,
}

/// The server of a connected cache; never present without the `redis` feature.
#[cfg(feature = "redis")]
pub(crate) type RemoteService = Option<Arc<crate::remote::Service>>;
/// The server of a connected cache; never present without the `redis` feature.
#[cfg(not(feature = "redis"))]
pub(crate) type RemoteService = Option<std::convert::Infallible>;

impl Drop for CacheInner {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.get() {
            sweeper.stop();
        }
        // Commits whatever is pending durably; redb persists the rest on close.
        self.writer.shutdown();
    }
}

impl CacheInner {
    pub(crate) fn zone_inner(self: &Arc<Self>, name: &str) -> Result<Arc<ZoneInner>> {
        check_name(name)?;
        let mut zones = self.zones.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(z) = zones.get(name) {
            return Ok(z.clone());
        }
        // A connected cache's zone ids name keys on the server: the same on every machine.
        #[cfg(feature = "redis")]
        if self.remote.is_some() {
            let zone = Arc::new(ZoneInner::new(name, crate::remote::name_id(name), self));
            zones.insert(name.to_string(), zone.clone());
            return Ok(zone);
        }
        // Known from an earlier run (every start after the first): a read suffices.
        let known = self
            .storage
            .read(|txn| ops::zone_id(txn, name))
            .ok()
            .flatten();
        let id = match known {
            Some(id) => id,
            None => {
                let owned = name.to_string();
                self.writer
                    .run(move |txn| ops::register_zone(txn, &owned))?
            }
        };
        let zone = Arc::new(ZoneInner::new(name, id, self));
        zones.insert(name.to_string(), zone.clone());
        Ok(zone)
    }
}

/// Names are stored in the file; keep them printable and bounded.
pub(crate) fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "names must not be empty"
    } else if name.len() > 200 {
        "names must be at most 200 bytes"
    } else if name.chars().any(char::is_control) {
        "names must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// A memoization cache: one redb file holding the tables of many memoizers.
///
/// Cheap to clone (clones share one database). Dropping the last clone (and the last
/// memoizer built from it) commits everything durably and closes the file.
///
/// ```
/// use fresco_memoize::Cache;
///
/// let dir = tempfile::tempdir().unwrap();
/// let cache = Cache::open(dir.path().join("app.memo"))?;
/// let slow_square = cache.memoizer::<u64, u64>("square").build()?;
/// assert_eq!(slow_square.get_or_compute(&12, |n| n * n), 144);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<CacheInner>,
}

impl Drop for Cache {
    fn drop(&mut self) {
        // If this is the last handle, let a sweep under way finish and stop the sweeper,
        // so the file closes here and now rather than on the sweeper's thread.
        if let Some(sweeper) = self.inner.sweeper.get() {
            sweeper.release(&self.inner);
        }
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

impl Cache {
    /// Opens (or creates) a cache file with the default settings. See [`CacheBuilder`].
    pub fn open(path: impl AsRef<Path>) -> Result<Cache> {
        CacheBuilder::new().open(path)
    }

    /// A cache that keeps nothing on disk (an in-memory redb database). Memoizers default
    /// to [`Store::Memory`](crate::Store::Memory).
    pub fn in_memory() -> Result<Cache> {
        CacheBuilder::new().in_memory()
    }

    /// Starts configuring a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::new()
    }

    /// Starts building a memoizer named `name` for arguments `K` and values `V`. Each
    /// persistent memoizer has its own table; names must be unique per cache.
    pub fn memoizer<K: Serialize + ?Sized + 'static, V: Value>(
        &self,
        name: &str,
    ) -> MemoizerBuilder<K, V> {
        MemoizerBuilder::new(self.inner.clone(), name)
    }

    /// The zone named `name`, created in the file if missing. Handles for one name share
    /// their state (including the default key function).
    pub fn zone(&self, name: &str) -> Result<Zone> {
        Ok(Zone {
            inner: self.inner.zone_inner(name)?,
        })
    }

    /// Makes everything stored so far durable (an fsync), instead of waiting for the
    /// periodic durable commit.
    pub fn flush(&self) -> Result<()> {
        self.inner.writer.flush()
    }

    /// The cache file, or `None` for an in-memory cache.
    pub fn path(&self) -> Option<&Path> {
        self.inner.storage.path()
    }

    /// Errors the cache swallowed so far, and whether it had to start afresh.
    pub fn health(&self) -> Health {
        self.inner.storage.reporter.health()
    }

    /// Removes every entry past its deadline now, in every memoizer of the file (through
    /// the expiry index: the cost grows with the expired entries, not the cache) and in
    /// the in-memory stores of this run. Returns how many entries were removed.
    ///
    /// Removal goes in batches of at most 1024 entries per write transaction, so other
    /// writes wait at most one batch and hits never wait. The background sweeper (see
    /// [`CacheBuilder::sweep_interval`]) does the same on its own.
    pub fn purge_expired(&self) -> Result<u64> {
        crate::sweeper::purge(&self.inner, crate::sweeper::BATCH, false)
    }

    /// Scans the whole file and checks every invariant: entries parse, their dependency
    /// rows and the dependency index match exactly, zone memberships point at known
    /// memoizers; and for every in-memory store of this run, that its recency list, key
    /// map and dependency index agree. Slow (reads everything); meant for tests, fuzzing
    /// and `check`.
    pub fn check_integrity(&self) -> Result<integrity::IntegrityReport> {
        self.flush()?;
        let mut report = integrity::check(&self.inner.storage)?;
        report.problems.extend(integrity::check_memory(&self.inner));
        Ok(report)
    }
}

/// Configures and opens a [`Cache`].
///
/// ```
/// use fresco_memoize::{Cache, OnCorruption};
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir().unwrap();
/// let cache = Cache::builder()
///     .durable_interval(Duration::from_millis(200))
///     .on_corruption(OnCorruption::Fail)
///     .open(dir.path().join("app.memo"))?;
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
#[must_use = "a builder does nothing until .open() or .in_memory() is called"]
pub struct CacheBuilder {
    clock: Arc<dyn Clock>,
    durable_interval: Duration,
    on_corruption: OnCorruption,
    hook: Option<ErrorHook>,
    page_cache_bytes: usize,
    verify_on_open: bool,
    sweep_interval: Option<Duration>,
    /// Server settings of [`CacheBuilder::connect`] (feature `redis`).
    #[cfg(feature = "redis")]
    pub(crate) remote: crate::remote::Options,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder::new()
    }
}

impl CacheBuilder {
    /// Default settings.
    pub fn new() -> Self {
        CacheBuilder {
            clock: Arc::new(SystemClock),
            durable_interval: Duration::from_secs(1),
            on_corruption: OnCorruption::Recreate,
            hook: None,
            page_cache_bytes: 256 << 20,
            verify_on_open: false,
            sweep_interval: Some(Duration::from_secs(60)),
            #[cfg(feature = "redis")]
            remote: crate::remote::Options::default(),
        }
    }

    /// The time source for `expires`. Default: [`SystemClock`]. Tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Stored values are committed at once (visible to every call) and made durable with
    /// an fsync as soon as writes pause for 50 ms, and at least this often while they do
    /// not; a crash loses at most this window. Default: 1 s.
    pub fn durable_interval(mut self, interval: Duration) -> Self {
        self.durable_interval = interval;
        self
    }

    /// What to do with a damaged cache file. Default: [`OnCorruption::Recreate`].
    pub fn on_corruption(mut self, policy: OnCorruption) -> Self {
        self.on_corruption = policy;
        self
    }

    /// Receives every error the cache swallows (a store that failed, a file moved aside).
    /// Default: print to stderr, rate-limited.
    ///
    /// The hook runs on the thread that met the error, which may be the cache's
    /// background writer: it may read the cache, but must not wait on it (`flush`, an
    /// invalidation, building a memoizer), which would deadlock.
    pub fn on_error(mut self, hook: impl Fn(&Error) + Send + Sync + 'static) -> Self {
        self.hook = Some(Box::new(hook));
        self
    }

    /// Upper bound of redb's page cache. Default: 256 MiB (filled lazily).
    pub fn page_cache_bytes(mut self, bytes: usize) -> Self {
        self.page_cache_bytes = bytes;
        self
    }

    /// Whether opening the file verifies every page checksum of it first (redb's
    /// `set_check_integrity_on_open`), so that damage is found at open - and handled by
    /// [`on_corruption`](Self::on_corruption) - instead of at the first read that meets
    /// it. It reads the whole file: about 0.8 ms per MiB (see ARCHITECTURE.md). Default:
    /// off; damage met later is handled too (reads miss, and the file is replaced).
    pub fn verify_on_open(mut self, verify: bool) -> Self {
        self.verify_on_open = verify;
        self
    }

    /// How often a background thread removes expired entries (and their index rows),
    /// or `None` for no thread: expired entries then stay in the file, unserved, until
    /// [`Cache::purge_expired`] or an overwrite removes them. Default: every 60 s.
    ///
    /// A sweep removes at most 1024 entries per write transaction, so it never
    /// holds up hits (which never wait for writes) nor other writes for long; a sweep
    /// with nothing expired only reads the expiry index. The thread stops when the cache
    /// is dropped.
    ///
    /// ```
    /// use fresco_memoize::Cache;
    /// use std::time::Duration;
    ///
    /// let cache = Cache::builder().sweep_interval(Some(Duration::from_secs(5))).in_memory()?;
    /// let quiet = Cache::builder().sweep_interval(None).in_memory()?;
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn sweep_interval(mut self, every: Option<Duration>) -> Self {
        self.sweep_interval = every;
        self
    }

    /// Opens (or creates) the cache file at `path`, creating missing parent directories.
    ///
    /// Fails with [`Error::AlreadyOpen`] if another `Cache` of this process or another
    /// process has the file open (it never waits), [`Error::NotACache`] for a file that is
    /// not one (left untouched), [`Error::NewerFormat`] for a file of a newer version, and
    /// - under [`OnCorruption::Fail`] - [`Error::Corrupted`] for a damaged one.
    pub fn open(self, path: impl AsRef<Path>) -> Result<Cache> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| Error::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let reporter = Arc::new(Reporter::new(self.hook));
        let origin = Origin::File {
            path: path.clone(),
            page_cache_bytes: self.page_cache_bytes,
            verify_on_open: self.verify_on_open,
            create: true,
        };
        let db = match origin.open() {
            Err(Error::Corrupted { detail, .. })
                if self.on_corruption == OnCorruption::Recreate =>
            {
                let aside = move_aside(&path)?;
                reporter.set_moved_aside(aside.clone());
                reporter.report(&Error::MovedAside {
                    path: path.clone(),
                    moved_to: aside,
                    detail,
                });
                origin.open()?
            }
            other => other?,
        };
        let settings = (
            self.clock,
            self.durable_interval,
            self.on_corruption,
            self.sweep_interval,
        );
        start(db, origin, true, reporter, settings, None)
    }

    /// Opens the cache file at `path` only if it exists: it never creates, moves aside or
    /// recreates a file, whatever [`on_corruption`](Self::on_corruption) says (a damaged
    /// file is [`Error::Corrupted`]). A missing file is [`Error::Io`] (not found). For
    /// tools that look into a cache, like the `fresco-memoize` command.
    ///
    /// ```
    /// use fresco_memoize::{Cache, Error};
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.memo");
    /// assert!(matches!(Cache::builder().open_existing(&path), Err(Error::Io { .. })));
    /// assert!(!path.exists());
    /// drop(Cache::open(&path)?);
    /// let cache = Cache::builder().open_existing(&path)?;
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn open_existing(self, path: impl AsRef<Path>) -> Result<Cache> {
        let reporter = Arc::new(Reporter::new(self.hook));
        let origin = Origin::File {
            path: path.as_ref().to_path_buf(),
            page_cache_bytes: self.page_cache_bytes,
            verify_on_open: self.verify_on_open,
            create: false,
        };
        let db = origin.open()?;
        let settings = (
            self.clock,
            self.durable_interval,
            OnCorruption::Fail,
            self.sweep_interval,
        );
        start(db, origin, true, reporter, settings, None)
    }

    /// A cache that keeps nothing on disk.
    pub fn in_memory(self) -> Result<Cache> {
        self.over_backend(FaultyBackend::in_memory(), false, None)
    }

    /// Opens a cache over a redb backend given by the caller - for tests that inject I/O
    /// faults. The cache reopens the database over a clone of `backend` after a failed
    /// commit, so clones must share one storage (as [`FaultyBackend`]'s do). Memoizers
    /// default to [`Store::Persistent`](crate::Store::Persistent).
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn __open_backend(self, backend: FaultyBackend) -> Result<Cache> {
        self.over_backend(backend, true, None)
    }

    /// A cache over `backend`; with `remote`, a connected cache whose memoizers keep their
    /// persistent tier on that server (the redb backend then holds nothing of theirs).
    pub(crate) fn over_backend(
        self,
        backend: FaultyBackend,
        file_backed: bool,
        remote: RemoteService,
    ) -> Result<Cache> {
        let reporter = Arc::new(Reporter::new(self.hook));
        let origin = Origin::Backend(backend);
        let db = origin.open()?;
        let settings = (
            self.clock,
            self.durable_interval,
            self.on_corruption,
            self.sweep_interval,
        );
        start(db, origin, file_backed, reporter, settings, remote)
    }
}

fn start(
    db: redb::Database,
    origin: Origin,
    file_backed: bool,
    reporter: Arc<Reporter>,
    (clock, durable_interval, on_corruption, sweep_interval): (
        Arc<dyn Clock>,
        Duration,
        OnCorruption,
        Option<Duration>,
    ),
    remote: RemoteService,
) -> Result<Cache> {
    let storage = Arc::new(Storage::new(db, origin, on_corruption, reporter));
    let writer = Writer::spawn(storage.clone(), durable_interval)?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let inner = Arc::new(CacheInner {
        storage,
        writer,
        clock,
        file_backed,
        live: Mutex::new(HashMap::new()),
        zones: Mutex::new(HashMap::new()),
        next_entry_id: AtomicU64::new(seed),
        sweeper: OnceLock::new(),
        remote,
    });
    if let Some(every) = sweep_interval {
        let sweeper = crate::sweeper::Sweeper::spawn(Arc::downgrade(&inner), every)?;
        let _ = inner.sweeper.set(sweeper);
    }
    Ok(Cache { inner })
}
