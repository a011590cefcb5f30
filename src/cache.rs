//! `Cache`: one redb file (or an in-memory database) shared by many memoizers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::fence::Fence;
use crate::inner::CacheInner;
use crate::memoizer::MemoizerBuilder;
use crate::report::{ErrorHook, Health, Reporter};
use crate::shared::{RemoteService, Shared};
use crate::storage::Storage;
use crate::storage::faults::FaultyBackend;
use crate::storage::open::{OnCorruption, Origin, take_turn};
use crate::storage::writer::Writer;
use crate::sweeper::{self, Sweeper};
use crate::zone::Zone;
use crate::{Value, integrity};

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
        if let Some(background) = self.inner.background.get() {
            background.release(&self.inner);
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
            inner: self.inner.zone(name)?,
        })
    }

    /// Makes everything stored so far durable (an fsync), instead of waiting for the
    /// periodic durable commit.
    pub fn flush(&self) -> Result<()> {
        self.inner.shared.writer.flush()
    }

    /// The cache file, or `None` for an in-memory cache.
    pub fn path(&self) -> Option<&Path> {
        self.inner.shared.storage.path()
    }

    /// Errors the cache swallowed so far, and whether it had to start afresh.
    pub fn health(&self) -> Health {
        self.inner.shared.storage.reporter.health()
    }

    /// Removes every entry past its deadline now, in every memoizer of the file (through
    /// the expiry index: the cost grows with the expired entries, not the cache) and in
    /// the in-memory stores of this run. Returns how many entries were removed.
    ///
    /// Removal goes in batches of at most 1024 entries per write transaction, so other
    /// writes wait at most one batch and hits never wait. The background sweeper (see
    /// [`CacheBuilder::sweep_interval`]) does the same on its own. A cache without a
    /// sweeper also reclaims here the space of memoizers cleared so far (see
    /// [`Memoizer::invalidate_all`](crate::Memoizer::invalidate_all)).
    pub fn purge_expired(&self) -> Result<u64> {
        let removed = sweeper::purge(&self.inner, sweeper::BATCH, false)?;
        if self.inner.background.get().is_none() {
            // Without a sweeper nothing else reclaims cleared tables.
            sweeper::reclaim_all(&self.inner)?;
        }
        Ok(removed)
    }

    /// Scans the whole file and checks every invariant: entries parse, their dependency
    /// rows and the dependency index match exactly, zone memberships point at known
    /// memoizers; and for every in-memory store of this run, that its recency list, key
    /// map and dependency index agree. Slow (reads everything); meant for tests, fuzzing
    /// and `check`.
    pub fn check_integrity(&self) -> Result<integrity::IntegrityReport> {
        self.flush()?;
        let mut report = integrity::check(&self.inner.shared.storage)?;
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
    settings: Settings,
    hook: Option<ErrorHook>,
    page_cache_bytes: usize,
    verify_on_open: bool,
    sharing: Sharing,
    /// Server settings of [`CacheBuilder::connect`] (feature `redis`).
    #[cfg(feature = "redis")]
    pub(crate) remote: crate::remote::Options,
}

/// [`CacheBuilder::shared`] and its interval.
#[derive(Clone, Copy)]
struct Sharing {
    on: bool,
    commit_interval: Duration,
}

/// What a running cache keeps of its builder.
struct Settings {
    clock: Arc<dyn Clock>,
    durable_interval: Duration,
    on_corruption: OnCorruption,
    sweep_interval: Option<Duration>,
    max_bytes: Option<u64>,
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
            settings: Settings {
                clock: Arc::new(SystemClock),
                durable_interval: Duration::from_secs(1),
                on_corruption: OnCorruption::Recreate,
                sweep_interval: Some(Duration::from_secs(60)),
                max_bytes: None,
            },
            hook: None,
            sharing: Sharing {
                on: false,
                commit_interval: Duration::from_millis(10),
            },
            page_cache_bytes: 256 << 20,
            verify_on_open: false,
            #[cfg(feature = "redis")]
            remote: crate::remote::Options::default(),
        }
    }

    /// The time source for `expires`. Default: [`SystemClock`]. Tests pass a
    /// [`ManualClock`](crate::ManualClock).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.settings.clock = Arc::new(clock);
        self
    }

    /// Stored values are committed at once (visible to every call) and made durable with
    /// an fsync as soon as writes pause for 50 ms, and at least this often while they do
    /// not; a crash loses at most this window. Default: 1 s.
    pub fn durable_interval(mut self, interval: Duration) -> Self {
        self.settings.durable_interval = interval;
        self
    }

    /// What to do with a damaged cache file. Default: [`OnCorruption::Recreate`].
    pub fn on_corruption(mut self, policy: OnCorruption) -> Self {
        self.settings.on_corruption = policy;
        self
    }

    /// Receives every error the cache swallows (a store that failed, a file moved aside).
    /// Default: none. Either way every report also goes to [`Cache::health`] and, with the
    /// `log` feature (default), to the `log` crate (target `fresco_memoize`), rate-limited.
    /// A panic in the hook is caught and reported there, not to the hook.
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

    /// Whether several processes may open the file at once, each reading and writing it
    /// (redb's `MultiWriter` mode). Default: `false` - one `Cache` owns the file, and
    /// another that tries to open it gets [`Error::AlreadyOpen`].
    ///
    /// Every program on one file must open it the same way: a shared open beside an
    /// exclusive one (or the reverse) fails with [`Error::ModeMismatch`]. Shared, a value
    /// stored by one process is served to the others once its batch committed, at most
    /// [`shared_commit_interval`](Self::shared_commit_interval) after it was computed (plus
    /// the commit's fsyncs); an invalidation in any process returns only once no process
    /// serves what it removed, and a computation that began before it, in any process,
    /// stores nothing after it; N processes missing one key at once compute it once (the
    /// others wait; a waiter takes over at once if the computing process dies); a
    /// persistent memoizer's [`max_hits`](crate::MemoizerBuilder::max_hits) budget is
    /// spent by all processes together.
    ///
    /// Costs: every commit is durable (two fsyncs, which all processes share), so puts
    /// are batched by time; a persistent hit stays as cheap as in the default mode while
    /// no other process commits. Needs a Unix system; not available for
    /// [`in_memory`](Self::in_memory) caches ([`Error::NotShareable`]). A `Cache` opened
    /// before `fork()` must not be used in the child ([`Error::Forked`]): open it after.
    /// Beside the cache file it keeps `<file>-shm` (the commit counter, the
    /// single-flight table and the `max_hits` counts every process maps) and
    /// `<file>-flights/` (a lock file per process, proving it alive). See
    /// ARCHITECTURE.md, "Shared mode".
    pub fn shared(mut self, shared: bool) -> Self {
        self.sharing.on = shared;
        self
    }

    /// In a shared cache, how long the writer gathers stored values into one commit
    /// after the first: the bound on how long other processes wait to see a value, and
    /// what keeps durable commits few. Default: 10 ms. Implies nothing unless
    /// [`shared`](Self::shared) is on.
    pub fn shared_commit_interval(mut self, interval: Duration) -> Self {
        self.sharing.commit_interval = interval;
        self
    }

    /// How often a background thread removes expired entries (and their index rows),
    /// or `None` for no thread: expired entries then stay in the file, unserved, until
    /// [`Cache::purge_expired`] or an overwrite removes them. Default: every 60 s.
    ///
    /// The same thread reclaims, in batches of at most 1024 entries, the space of
    /// memoizers cleared by an `invalidate_all` (which itself costs the same at any
    /// size); without it, [`Cache::purge_expired`] does.
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
        self.settings.sweep_interval = every;
        self
    }

    /// A byte budget for the cache file, or `None` for none. Default: none (the file
    /// grows with what is stored).
    ///
    /// Every entry is charged what redb spends on it (its row, its share of a leaf page
    /// or a page of its own, its index rows), and once the entries' charge passes 9/16
    /// of `max_bytes`, whole entries are evicted with their index rows, inside the
    /// background writer's batches, in the order of an eviction index kept in the file
    /// (never a scan). The rest is room for redb's own pages and for the pages recent
    /// commits freed: redb grows a file by doubling it, and so the file stays within
    /// 5/4 of `max_bytes`. Which entries go: TinyLFU - every persistent lookup is
    /// counted in memory, without a write, and an entry just stored is admitted only by
    /// evicting one that has been looked up less often lately (popular entries near the
    /// eviction point are moved back instead); see ARCHITECTURE.md, "Byte budget". A
    /// file past 5/4 of the budget is compacted in place after a durable commit, unless
    /// a snapshot is held (an [`ArchivedHit`](crate::ArchivedHit)); the next one tries
    /// again. A budgeted file commits durably after every 1/16 of the budget of stored
    /// bytes, so that redb can reuse the pages its commits freed.
    ///
    /// The eviction index and the charges live in the file, so they survive a restart
    /// and a budget can be set (or changed) at any open. An in-memory cache
    /// ([`in_memory`](Self::in_memory)) counts against the budget too. Evictions show in
    /// [`Stats::budget_evictions`](crate::Stats::budget_evictions), the charge in
    /// [`Stats::bytes`](crate::Stats::bytes).
    ///
    /// ```
    /// use fresco_memoize::Cache;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let cache = Cache::builder()
    ///     .max_bytes(Some(64 << 20))
    ///     .open(dir.path().join("thumbnails.memo"))?;
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn max_bytes(mut self, max_bytes: Option<u64>) -> Self {
        self.settings.max_bytes = max_bytes;
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
        let origin = Origin::file(&path, self.page_cache_bytes, self.verify_on_open, true)
            .shared(self.sharing.on);
        // Shared, other processes may be opening (creating) the file right now.
        let _opening = match self.sharing.on {
            true => crate::storage::multi::open_turn(&path)?,
            false => None,
        };
        let turn = take_turn();
        let (db, moved) = match origin.open() {
            Err(Error::Corrupted { detail, .. })
                if self.settings.on_corruption == OnCorruption::Recreate =>
            {
                // `None`: another Cache replaced the damaged file first; open what is
                // there now (that Cache holds it: AlreadyOpen).
                let moved = origin.move_aside(&turn)?;
                (origin.open(), moved.map(|aside| (aside, detail)))
            }
            other => (other, None),
        };
        drop(turn);
        // Reported outside the turn: the hook may open a cache.
        if let Some((aside, detail)) = moved {
            reporter.set_moved_aside(aside.clone());
            reporter.report(&Error::MovedAside {
                path: path.clone(),
                moved_to: aside,
                detail,
            });
        }
        let db = db?;
        start(
            db,
            origin,
            true,
            reporter,
            self.settings,
            self.sharing,
            None,
        )
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
        let origin = Origin::file(
            path.as_ref(),
            self.page_cache_bytes,
            self.verify_on_open,
            false,
        )
        .shared(self.sharing.on);
        let db = {
            let _turn = take_turn();
            origin.open()?
        };
        let settings = Settings {
            on_corruption: OnCorruption::Fail,
            ..self.settings
        };
        start(db, origin, true, reporter, settings, self.sharing, None)
    }

    /// A cache that keeps nothing on disk. Fails with [`Error::NotShareable`] if
    /// [`shared`](Self::shared) is on: nothing in memory is shared between processes.
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
        if self.sharing.on {
            return Err(Error::NotShareable {
                reason: "an in-memory (or connected) cache lives in one process; open a file \
                         with CacheBuilder::shared(true)",
            });
        }
        let reporter = Arc::new(Reporter::new(self.hook));
        let origin = Origin::Backend(backend);
        let db = origin.open()?;
        start(
            db,
            origin,
            file_backed,
            reporter,
            self.settings,
            self.sharing,
            remote,
        )
    }
}

fn start(
    db: redb::Database,
    origin: Origin,
    file_backed: bool,
    reporter: Arc<Reporter>,
    settings: Settings,
    sharing: Sharing,
    remote: RemoteService,
) -> Result<Cache> {
    let shared_file = origin
        .path()
        .filter(|_| origin.is_shared())
        .map(Path::to_path_buf);
    let mut storage = Storage::new(db, origin, settings.on_corruption, reporter);
    let mut fence = Fence::default();
    if let Some(path) = shared_file {
        let (multi, peers) = crate::shared_mode::open(&storage, &path, sharing.commit_interval)?;
        storage = storage.with_multi(multi);
        fence = Fence::with_peers(peers);
    }
    if let Some(max_bytes) = settings.max_bytes {
        storage.set_budget(max_bytes);
    }
    let storage = Arc::new(storage);
    let writer = Writer::spawn(storage.clone(), settings.durable_interval)?;
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    let shared = Arc::new(Shared {
        storage,
        writer,
        clock: settings.clock,
        file_backed,
        next_entry_id: AtomicU64::new(seed),
        fence,
        remote,
    });
    let inner = Arc::new(CacheInner::new(shared));
    crate::shared_mode::install(&inner);
    if let Some(every) = settings.sweep_interval {
        let sweeper = Sweeper::spawn(Arc::downgrade(&inner), every)?;
        let _ = inner.background.set(Box::new(sweeper));
    }
    Ok(Cache { inner })
}

/// Sweeper observation for tests. Not a stable API.
impl Cache {
    /// Reclaims one batch of at most `limit` entries of cleared tables; returns whether
    /// more remain.
    #[doc(hidden)]
    pub fn __reclaim_step(&self, limit: usize) -> Result<bool> {
        sweeper::reclaim(&self.inner, limit.max(1))
    }

    /// Sweeps completed so far and entries they removed; `None` without a sweeper.
    #[doc(hidden)]
    pub fn __sweeps(&self) -> Option<(u64, u64)> {
        Some(self.inner.background.get()?.sweeps())
    }

    /// Waits (up to `timeout`) until at least `sweeps` sweeps have completed; returns
    /// the count reached.
    #[doc(hidden)]
    pub fn __wait_sweeps(&self, sweeps: u64, timeout: Duration) -> Option<u64> {
        Some(self.inner.background.get()?.wait_sweeps(sweeps, timeout))
    }

    /// Asks the sweeper for a sweep now and waits (up to `timeout`) until one that
    /// started after the request has completed. Returns the sweeps completed.
    #[doc(hidden)]
    pub fn __sweep_now(&self, timeout: Duration) -> Option<u64> {
        Some(self.inner.background.get()?.sweep_now(timeout))
    }
}
