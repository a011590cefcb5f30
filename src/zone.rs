//! Zones: groups of memoizers cleared together, and dependency keys that invalidate
//! exactly the entries derived from one value.
//!
//! Each entry of a zoned memoizer records its dependency rows (zone id, hash of the
//! dependency key) in its own header, and the `fresco/deps` multimap maps each row back
//! to the entries. A dependency invalidation is therefore one `remove_all` on the index
//! plus one removal per affected entry, in one write transaction; zone membership lives
//! in `fresco/zone_members`, so both work for memoizers this run has not built.
//!
//! A persistent memoizer keyed by its whole argument files each entry under its primary
//! dependency row (see `key::place`): the entries of one primary dependency are adjacent
//! in its table, so removing them copies a few B-tree pages, not one page per entry, and
//! the cost does not grow with the table.
//!
//! Ordering with in-flight work (see also `MemoCore::store`):
//! 1. Under the storage's pending lock, every live member's epoch is bumped and the job
//!    is queued: a computation that started earlier either queued its store before the
//!    job (the job removes it) or sees the new epoch and stores nothing.
//! 2. After the job has committed, the in-memory sides are purged. A tiered read that
//!    fetched a removed entry before the commit either promoted it already (purged here)
//!    or sees the commit generation move and does not promote it.

use std::any::Any;
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::Value;
use crate::cache::CacheInner;
use crate::entry::{DepRow, dep_row, order_deps};
use crate::error::{Error, Result};
use crate::key::{KeyBytes, KeyHash, xxh3_key_hash};
use crate::memoizer::{MemoCore, MemoizerBuilder};
use crate::stats::Counters;
use crate::storage::ops;
use crate::storage::writer::{Wait, now};

/// Maps a memoizer's arguments to its dependency keys, encoded.
///
/// It hands each encoded key to a visitor, which may stop it: a lookup that needs only
/// the primary key stops at the first, without collecting anything.
pub(crate) type KeysFn<K> = dyn Fn(&K, &mut dyn FnMut(KeyBytes) -> ControlFlow<()>) -> Result<(), postcard::Error>
    + Send
    + Sync;
/// Maps a memoizer's arguments to the dependency rows of its entry. An error means the
/// entry must not be stored: it could not be found again by its dependencies.
pub(crate) type DepsFn<K> = dyn Fn(&K) -> Result<Vec<DepRow>> + Send + Sync;
/// Maps a memoizer's arguments to the primary row of its entry (the first of the rows
/// [`DepsFn`] gives), if it has any: where a placed memoizer files the entry.
pub(crate) type PrimaryFn<K> = dyn Fn(&K) -> Result<Option<DepRow>> + Send + Sync;

/// A memoizer's two views of its zone key functions.
pub(crate) struct DepFns<K: ?Sized> {
    pub all: Box<DepsFn<K>>,
    pub primary: Box<PrimaryFn<K>>,
}

/// Most dependency rows one entry can carry (the entry header counts them in a `u16`).
const MAX_DEPS: usize = u16::MAX as usize;

/// An entry's dependency rows as stored (see [`order_deps`]), or the error that keeps
/// the entry from being stored: more rows than an entry can carry.
pub(crate) fn stored_rows(memoizer: &str, rows: Vec<DepRow>) -> Result<Vec<DepRow>> {
    let rows = order_deps(rows);
    if rows.len() > MAX_DEPS {
        return Err(Error::TooManyDependencies {
            memoizer: memoizer.to_string(),
            count: rows.len(),
        });
    }
    Ok(rows)
}

pub(crate) struct ZoneInner {
    pub name: String,
    pub id: u64,
    cache: Weak<CacheInner>,
    /// `Arc<KeysFn<A>>` for the argument type `A` of the zone's default key function.
    default_key: Mutex<Option<Arc<dyn Any + Send + Sync>>>,
    members: Mutex<Vec<Weak<MemoCore>>>,
}

impl ZoneInner {
    pub(crate) fn new(name: &str, id: u64, cache: &Arc<CacheInner>) -> Self {
        ZoneInner {
            name: name.to_string(),
            id,
            cache: Arc::downgrade(cache),
            default_key: Mutex::new(None),
            members: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn attach(&self, core: &Arc<MemoCore>) {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|w| w.strong_count() > 0);
        if !members
            .iter()
            .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(core)))
        {
            members.push(Arc::downgrade(core));
        }
    }

    pub(crate) fn live_members(&self) -> Vec<Arc<MemoCore>> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A named group of memoizers (the original's `Zone`).
///
/// A memoizer joins zones when it is built ([`MemoizerBuilder::zone`],
/// [`MemoizerBuilder::zone_key`], [`MemoizerBuilder::zone_keys`]). A zone's *key function*
/// maps a member's arguments to dependency keys; [`Zone::invalidate`] then removes exactly
/// the entries depending on one key, and [`Zone::invalidate_all`] clears every member.
/// Memberships and the dependency index live in the cache file, so both also reach
/// entries written by earlier runs, of memoizers this run has not built.
///
/// ```
/// use fresco_memoize::Cache;
///
/// let cache = Cache::in_memory()?;
/// let authors = cache.zone("Authors")?.key(|author_id: &u64| *author_id);
/// let rating = cache.memoizer::<u64, u32>("rating").zone(&authors).build()?;
/// let bio = cache.memoizer::<u64, String>("bio").zone(&authors).build()?;
/// rating.get_or_compute(&42, |_| 5);
/// bio.get_or_compute(&42, |_| "wrote books".into());
/// bio.get_or_compute(&7, |_| "wrote more".into());
///
/// assert_eq!(authors.invalidate(&42u64)?, 2); // both entries about author 42
/// assert_eq!(bio.get_or_compute(&7, |_| unreachable!()), "wrote more");
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// Changing *which* zones key a memoizer drops its stored entries on the next build (they
/// would lack the new dependency rows). Changing the body of a key function cannot be
/// detected: bump the memoizer's [`version`](MemoizerBuilder::version) when you do.
#[derive(Clone)]
pub struct Zone {
    pub(crate) inner: Arc<ZoneInner>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Encodes `keys` one by one for `visit`, until it breaks.
fn visit_all<T: Serialize>(
    keys: impl IntoIterator<Item = T>,
    visit: &mut dyn FnMut(KeyBytes) -> ControlFlow<()>,
) -> Result<(), postcard::Error> {
    for key in keys {
        if visit(KeyBytes::encode(&key)?).is_break() {
            break;
        }
    }
    Ok(())
}

/// Which (memoizer id, hash) pairs a disk job removed.
type Removed = Vec<(u64, KeyHash)>;

impl Zone {
    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sets the zone's default key function: the dependency key of a member's entry,
    /// derived from the member's arguments of type `A` (the original's
    /// `Zone('Authors', lambda self: self.id)`). Members with other argument types must
    /// give their own (see [`MemoizerBuilder::zone_key`]). Applies to members built
    /// afterwards.
    pub fn key<A: ?Sized + 'static, T: Serialize>(
        self,
        f: impl Fn(&A) -> T + Send + Sync + 'static,
    ) -> Self {
        self.keys(move |a: &A| [f(a)])
    }

    /// Like [`key`](Self::key) for several dependency keys per entry (a book depends on
    /// its author and its publisher).
    pub fn keys<A: ?Sized + 'static, T: Serialize, I: IntoIterator<Item = T>>(
        self,
        f: impl Fn(&A) -> I + Send + Sync + 'static,
    ) -> Self {
        let keys: Arc<KeysFn<A>> = Arc::new(move |a: &A, visit| visit_all(f(a), visit));
        *self
            .inner
            .default_key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        self
    }

    /// Removes every entry, in every member memoizer (persistent and in-memory, built in
    /// this run or not), whose dependency keys include `dep`, and nothing else. The cache
    /// file's entries go in one write transaction (a reader of the file sees all of the
    /// removal or none of it); the in-memory stores of this run are purged as soon as it
    /// has committed, before this returns. The commit is durable: no crash brings the
    /// removed entries back. The cost grows with the removed entries, not with the cache. Returns how many entries were removed (a tiered entry counts once).
    ///
    /// `dep` must encode like the key functions' results (postcard): `42u64` matches a
    /// key function returning `u64`, `"x"` one returning `String`.
    ///
    /// A computation of a member that started before this call stores nothing when it
    /// finishes (its result may be stale); its caller still gets the value.
    pub fn invalidate<D: Serialize + ?Sized>(&self, dep: &D) -> Result<u64> {
        now(self.invalidate_as(dep, Wait::Block))
    }

    /// [`invalidate`](Self::invalidate), waiting for the commit as `how` says. The
    /// future holds no borrow of `dep`: it is encoded first.
    pub(crate) fn invalidate_as<D: Serialize + ?Sized>(
        &self,
        dep: &D,
        how: Wait,
    ) -> impl Future<Output = Result<u64>> + Send + '_ {
        let row = self.row(dep);
        async move {
            let row = row?;
            // A connected cache's server answers within its response timeout: the
            // async form blocks for that round trip.
            #[cfg(feature = "redis")]
            {
                let cache = self.cache()?;
                if let Some(service) = &cache.remote {
                    return crate::remote::invalidate_zone(&cache, service, &self.inner, Some(row));
                }
            }
            let job = move |txn: &redb::WriteTransaction| ops::invalidate_dep(txn, &row);
            self.remove_dependents(row, job, how).await
        }
    }

    /// The same as [`invalidate`](Self::invalidate), done the way an index-less cache
    /// must: by reading every entry of every member. For benchmarks and tests only.
    #[doc(hidden)]
    pub fn __invalidate_by_scan<D: Serialize + ?Sized>(&self, dep: &D) -> Result<u64> {
        let row = self.row(dep)?;
        let zone_id = self.inner.id;
        let job =
            move |txn: &redb::WriteTransaction| ops::invalidate_dep_by_scan(txn, zone_id, &row);
        now(self.remove_dependents(row, job, Wait::Block))
    }

    fn row<D: Serialize + ?Sized>(&self, dep: &D) -> Result<DepRow> {
        let bytes = KeyBytes::encode(dep).map_err(Error::KeyEncoding)?;
        Ok(dep_row(self.inner.id, xxh3_key_hash(bytes.as_slice())))
    }

    /// Runs a dependency removal on disk, then purges the in-memory sides.
    async fn remove_dependents(
        &self,
        row: DepRow,
        job: impl FnOnce(&redb::WriteTransaction) -> Result<Removed, redb::Error> + Send + 'static,
        how: Wait,
    ) -> Result<u64> {
        let cache = self.cache()?;
        let members = self.inner.live_members();
        let ticket = cache.storage.with_pending_lock(|| {
            for m in &members {
                m.epoch.fetch_add(1, Ordering::SeqCst);
            }
            cache.writer.submit(job)
        });
        let on_disk = ticket.wait_as(how).await;
        let disk: &[(u64, KeyHash)] = on_disk.as_deref().unwrap_or(&[]);
        let mut by_memoizer: HashMap<u64, Vec<KeyHash>> = HashMap::new();
        for (id, hash) in disk {
            by_memoizer.entry(*id).or_default().push(*hash);
        }
        let mut removed = disk.len() as u64;
        for core in with_affected(&cache, members, by_memoizer.keys()) {
            let id = core.persistent.as_ref().map(|p| p.id);
            let hashes = id.and_then(|id| by_memoizer.get(&id));
            let hashes = hashes.map_or(&[][..], Vec::as_slice);
            let in_memory = core.forget_in_memory(&row, hashes);
            let n = if id.is_some() {
                hashes.len() as u64
            } else {
                in_memory
            };
            if id.is_none() {
                removed += n;
            }
            Counters::add(&core.stats.invalidations, n);
        }
        on_disk?;
        Ok(removed)
    }

    /// Clears every member memoizer, including members recorded in the file that this
    /// run has not built (membership is remembered in the file, also after a memoizer
    /// stops joining the zone). Returns how many entries were removed.
    pub fn invalidate_all(&self) -> Result<u64> {
        now(self.invalidate_all_as(Wait::Block))
    }

    /// [`invalidate_all`](Self::invalidate_all), waiting for the commit as `how` says.
    pub(crate) async fn invalidate_all_as(&self, how: Wait) -> Result<u64> {
        let cache = self.cache()?;
        #[cfg(feature = "redis")]
        if let Some(service) = &cache.remote {
            return crate::remote::invalidate_zone(&cache, service, &self.inner, None);
        }
        let zone_id = self.inner.id;
        let members = self.inner.live_members();
        let ticket = cache.storage.with_pending_lock(|| {
            for m in &members {
                m.epoch.fetch_add(1, Ordering::SeqCst);
            }
            cache
                .writer
                .submit(move |txn| ops::clear_zone(txn, zone_id))
        });
        let on_disk = ticket.wait_as(how).await;
        let cleared: HashMap<u64, u64> = on_disk
            .as_ref()
            .map(|v| v.iter().copied().collect())
            .unwrap_or_default();
        let mut removed: u64 = cleared.values().sum();
        for core in with_affected(&cache, members, cleared.keys()) {
            let in_memory = core.clear_in_memory();
            let n = match &core.persistent {
                Some(p) => cleared.get(&p.id).copied().unwrap_or(0),
                None => {
                    removed += in_memory;
                    in_memory
                }
            };
            Counters::add(&core.stats.invalidations, n);
        }
        on_disk?;
        Ok(removed)
    }

    fn cache(&self) -> Result<Arc<CacheInner>> {
        self.inner.cache.upgrade().ok_or(Error::WriterStopped)
    }
}

/// `members`, plus every other live memoizer whose persistent id is in `ids` (a memoizer
/// recorded as a member by an earlier run that this run built without the zone).
fn with_affected<'a>(
    cache: &CacheInner,
    mut members: Vec<Arc<MemoCore>>,
    ids: impl Iterator<Item = &'a u64>,
) -> Vec<Arc<MemoCore>> {
    let known = |members: &[Arc<MemoCore>], id: u64| {
        members
            .iter()
            .any(|m| m.persistent.as_ref().is_some_and(|p| p.id == id))
    };
    let strangers: Vec<u64> = ids.copied().filter(|&id| !known(&members, id)).collect();
    if !strangers.is_empty() {
        let live = cache.live.lock().unwrap_or_else(|e| e.into_inner());
        for core in live.values().filter_map(Weak::upgrade) {
            if core
                .persistent
                .as_ref()
                .is_some_and(|p| strangers.contains(&p.id))
            {
                members.push(core);
            }
        }
    }
    members
}

/// A memoizer's request to join a zone, with an optional own key function.
pub(crate) struct Membership<K: ?Sized> {
    zone: Arc<ZoneInner>,
    key: Option<Arc<KeysFn<K>>>,
    /// Whether the zone's default key function may stand in for a missing own one.
    use_default: bool,
}

/// A membership checked at build time.
pub(crate) struct Resolved<K: ?Sized> {
    pub zone: Arc<ZoneInner>,
    pub key: Option<Arc<KeysFn<K>>>,
}

impl<K: ?Sized + 'static, V: Value> MemoizerBuilder<K, V> {
    /// Joins `zone`, keyed by the zone's default key function (if it has one). If the
    /// zone's key function takes another argument type, [`build`](Self::build) fails
    /// with [`Error::MissingZoneKey`]: use [`zone_key`](Self::zone_key) instead.
    /// A memoizer that joins no zone belongs to the zone `"default"`.
    pub fn zone(mut self, zone: &Zone) -> Self {
        self.zones.push(Membership {
            zone: zone.inner.clone(),
            key: None,
            use_default: true,
        });
        self
    }

    /// Joins `zone` without a key function; building fails with
    /// [`Error::MissingZoneKey`] if the zone has a default one. `#[memoize]` uses it for
    /// functions of several arguments, whose calls derive dependency keys from the
    /// borrowed arguments and so cannot apply a default key function over the owned
    /// key tuple.
    #[doc(hidden)]
    pub fn __zone_without_default(mut self, zone: &Zone) -> Self {
        self.zones.push(Membership {
            zone: zone.inner.clone(),
            key: None,
            use_default: false,
        });
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
        let keys: Arc<KeysFn<K>> = Arc::new(move |k: &K, visit| visit_all(f(k), visit));
        self.zones.push(Membership {
            zone: zone.inner.clone(),
            key: Some(keys),
            use_default: false,
        });
        self
    }
}

/// Checks every membership belongs to this cache and has a key function fitting `K`;
/// adds the `"default"` zone when the memoizer joined none.
pub(crate) fn resolve<K: ?Sized + 'static>(
    cache: &Arc<CacheInner>,
    memoizer: &str,
    memberships: Vec<Membership<K>>,
) -> Result<Vec<Resolved<K>>> {
    if memberships.is_empty() {
        let zone = cache.zone_inner("default")?;
        return Ok(vec![Resolved { zone, key: None }]);
    }
    memberships
        .into_iter()
        .map(|m| {
            if !std::ptr::eq(m.zone.cache.as_ptr(), Arc::as_ptr(cache)) {
                return Err(Error::ForeignZone {
                    memoizer: memoizer.to_string(),
                    zone: m.zone.name.clone(),
                });
            }
            let key = match m.key {
                Some(own) => Some(own),
                None => {
                    let default = m
                        .zone
                        .default_key
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone();
                    match default {
                        None => None,
                        Some(any) => match any.downcast_ref::<Arc<KeysFn<K>>>() {
                            Some(f) if m.use_default => Some(f.clone()),
                            _ => {
                                return Err(Error::MissingZoneKey {
                                    memoizer: memoizer.to_string(),
                                    zone: m.zone.name.clone(),
                                });
                            }
                        },
                    }
                }
            };
            Ok(Resolved { zone: m.zone, key })
        })
        .collect()
}

/// Folds the ids of the zones that key a memoizer into its fingerprint, so entries
/// written under other zone keys (lacking the dependency rows this build would write)
/// are dropped when it registers instead of escaping invalidation.
pub(crate) fn keyed_fingerprint<K: ?Sized>(fingerprint: u64, zones: &[Resolved<K>]) -> u64 {
    let mut ids: Vec<u64> = zones
        .iter()
        .filter(|z| z.key.is_some())
        .map(|z| z.zone.id)
        .collect();
    if ids.is_empty() {
        return fingerprint;
    }
    ids.sort_unstable();
    ids.dedup();
    crate::fingerprint::mix(fingerprint, &ids)
}

/// The functions computing an entry's dependency rows, all of them or the primary one.
pub(crate) fn dep_fns<K: ?Sized + 'static>(
    memoizer: &str,
    zones: Vec<Resolved<K>>,
) -> Arc<DepFns<K>> {
    let keyed: Arc<[(u64, Arc<KeysFn<K>>)]> = zones
        .into_iter()
        .filter_map(|z| z.key.map(|k| (z.zone.id, k)))
        .collect();
    let memoizer = memoizer.to_string();
    let all_keyed = keyed.clone();
    let all = Box::new(move |k: &K| {
        let mut rows = Vec::new();
        for (zone_id, f) in all_keyed.iter() {
            f(k, &mut |bytes| {
                rows.push(dep_row(*zone_id, xxh3_key_hash(bytes.as_slice())));
                ControlFlow::Continue(())
            })
            .map_err(Error::KeyEncoding)?;
        }
        stored_rows(&memoizer, rows)
    });
    let primary = Box::new(move |k: &K| {
        for (zone_id, f) in keyed.iter() {
            let mut first = None;
            f(k, &mut |bytes| {
                first = Some(dep_row(*zone_id, xxh3_key_hash(bytes.as_slice())));
                ControlFlow::Break(())
            })
            .map_err(Error::KeyEncoding)?;
            if first.is_some() {
                return Ok(first);
            }
        }
        Ok(None)
    });
    Arc::new(DepFns { all, primary })
}
