//! The async API, for any executor (it depends on none).
//!
//! Nothing here has a protocol of its own: every entry point runs the steps the
//! synchronous API runs, and only its waits differ.
//!
//! - **Hits** are synchronous inside the future: a hit costs about a microsecond of
//!   CPU, less than a hop to a blocking thread pool would.
//! - **Misses** go through [`Tiers::step`](crate::tiers::Tiers::step) and [`Tiers::land`](crate::tiers::Tiers::land) like
//!   [`Memoizer::try_get_or_compute`]; a waiter awaits the key's flight instead of
//!   blocking on it (sync and async callers of one key share one flight). Stores are
//!   queued to the writer and never wait.
//! - **Invalidations and flushes** are the synchronous code itself, written once as
//!   futures that wait for the writer's reply ([`Wait`]): here they await it.
//! - **Opening** may repair or verify a file (milliseconds per MiB): [`open_async`]
//!   runs it on a thread of its own.
//!
//! [`open_async`]: CacheBuilder::open_async

use std::future::Future;
use std::path::Path;

use crate::cache::{Cache, CacheBuilder};
use crate::error::{Error, Result};
use crate::flight::Caller;
use crate::key::DepRow;
use crate::key::EncodedKey;
use crate::memoizer::Memoizer;
use crate::storage::writer::Wait;
use crate::tiers::{Remove, Step};
use crate::{Value, Zone};

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    /// Returns the cached value for `key`, or awaits `compute`, stores its value and
    /// returns it: [`get_or_compute`](Self::get_or_compute) for async code.
    ///
    /// `compute` is a future: it is polled only on a miss (on a hit it is dropped
    /// unpolled). Concurrent calls for one missing key - async or not - compute once;
    /// the others wait without blocking their thread. If the computing call is
    /// cancelled (its future dropped) or panics, nothing is stored and a waiting call
    /// computes instead. A computation must not await its own key: it would wait for
    /// itself.
    ///
    /// ```
    /// # fn block_on<F: std::future::Future>(f: F) -> F::Output { smol::block_on(f) }
    /// use fresco_memoize::Cache;
    ///
    /// async fn fetch_title(id: u64) -> String {
    ///     format!("book {id}") // an HTTP request, a database query...
    /// }
    ///
    /// # block_on(async {
    /// let cache = Cache::in_memory()?;
    /// let titles = cache.memoizer::<u64, String>("titles").build()?;
    /// let title = titles.get_or_compute_async(&7, fetch_title(7)).await;
    /// assert_eq!(title, "book 7");
    /// assert_eq!(titles.get_or_compute_async(&7, async { unreachable!() }).await, "book 7");
    /// # Ok::<(), fresco_memoize::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get_or_compute_async(&self, key: &K, compute: impl Future<Output = V>) -> V {
        let compute = async { Ok::<V, std::convert::Infallible>(compute.await) };
        match self.try_get_or_compute_async(key, compute).await {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Like [`get_or_compute_async`](Self::get_or_compute_async) for a computation that
    /// can fail: an `Err` is returned untouched and nothing is cached; waiting calls then
    /// retry, and one of them computes again.
    pub async fn try_get_or_compute_async<E>(
        &self,
        key: &K,
        compute: impl Future<Output = Result<V, E>>,
    ) -> Result<V, E> {
        let mut slot = EncodedKey::empty();
        let ek = self.encode_in(key, &mut slot);
        self.run_async((), ek, |()| (self.deps.all)(key), |()| compute)
            .await
    }

    /// [`Memoizer::run`] for a computation that is a future: the same steps, awaited.
    pub(crate) async fn run_async<A, E, F: Future<Output = Result<V, E>>>(
        &self,
        args: A,
        ek: Result<&mut EncodedKey>,
        deps: impl FnOnce(&A) -> Result<Vec<DepRow>>,
        compute: impl FnOnce(A) -> F,
    ) -> Result<V, E> {
        // In its caller's slot, as in `Memoizer::drive`.
        let ek = match ek {
            Ok(ek) => ek,
            Err(e) => {
                self.core.unencoded(e);
                return compute(args).await;
            }
        };
        loop {
            match self.core.step(ek, Caller::Task, |due| self.lookup(ek, due)) {
                Step::Served(v) => return Ok(v),
                Step::Wait(flight) => flight.wait_async().await,
                Step::Alone => return compute(args).await,
                Step::Lead(mut lead) => {
                    let deps = ek.deps.take().unwrap_or_else(|| deps(&args));
                    self.core.begin(&mut lead, ek, &deps);
                    // Dropping this future here drops `lead`: the flight lands unstored
                    // and a waiter takes over.
                    let value = compute(args).await?;
                    self.core.land(lead, ek, deps, &value);
                    return Ok(value);
                }
            }
        }
    }

    /// [`invalidate_key`](Self::invalidate_key), awaiting the commit instead of blocking
    /// the thread. The future does not borrow `key`: it is encoded first.
    pub fn invalidate_key_async(&self, key: &K) -> impl Future<Output = Result<bool>> + Send + '_ {
        let ek = self.encode(key);
        async move {
            let removed = self.core.invalidate_as(Remove::Key(ek?.hash), Wait::Await);
            Ok(removed.await? > 0)
        }
    }

    /// [`invalidate_all`](Self::invalidate_all), awaiting the commit instead of blocking
    /// the thread.
    pub async fn invalidate_all_async(&self) -> Result<u64> {
        self.core.invalidate_as(Remove::All, Wait::Await).await
    }
}

impl Zone {
    /// [`invalidate`](Self::invalidate), awaiting the commit instead of blocking the
    /// thread. The future does not borrow `dep`: it is encoded first.
    pub fn invalidate_async<D: serde::Serialize + ?Sized>(
        &self,
        dep: &D,
    ) -> impl Future<Output = Result<u64>> + Send + '_ {
        self.invalidate_as(dep, Wait::Await)
    }

    /// [`invalidate_all`](Self::invalidate_all), awaiting the commit instead of blocking
    /// the thread.
    pub async fn invalidate_all_async(&self) -> Result<u64> {
        self.invalidate_all_as(Wait::Await).await
    }
}

impl Cache {
    /// [`flush`](Self::flush), awaiting the durable commit instead of blocking the
    /// thread.
    pub async fn flush_async(&self) -> Result<()> {
        self.inner
            .shared
            .writer
            .flush_ticket()
            .wait_as(Wait::Await)
            .await
    }
}

impl CacheBuilder {
    /// [`open`](Self::open) without blocking the executor: the file is opened on a
    /// thread of its own (opening may repair a damaged file or, with
    /// [`verify_on_open`](Self::verify_on_open), read all of it), and the future
    /// completes when it is done. With tokio, `tokio::task::spawn_blocking(move ||
    /// Cache::open(path))` does the same.
    ///
    /// Building a memoizer or a zone for the first time writes to the file and waits
    /// for that commit (once per name and file; later runs only read): do it at start-up,
    /// or on a blocking thread too.
    ///
    /// ```
    /// # smol::block_on(async {
    /// use fresco_memoize::Cache;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let cache = Cache::builder().open_async(dir.path().join("app.memo")).await?;
    /// let squares = cache.memoizer::<u64, u64>("squares").build()?;
    /// assert_eq!(squares.get_or_compute_async(&9, async { 81 }).await, 81);
    /// cache.flush_async().await?;
    /// # Ok::<(), fresco_memoize::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn open_async(self, path: impl AsRef<Path>) -> Result<Cache> {
        let path = path.as_ref().to_path_buf();
        let (tx, rx) = async_channel::bounded(1);
        std::thread::Builder::new()
            .name("fresco-memoize-open".into())
            .spawn(move || {
                let _ = tx.try_send(self.open(path));
            })
            .map_err(|source| Error::Io {
                path: "<open thread>".into(),
                source,
            })?;
        rx.recv().await.unwrap_or_else(|_| {
            Err(Error::Io {
                path: "<open thread>".into(),
                source: std::io::Error::other("the thread opening the cache panicked"),
            })
        })
    }
}
