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
//! Every invalidation is carried out by `tiers::invalidate` (its module docs give the
//! ordering with in-flight computes and reads); a zone only says what goes and which live
//! memoizers it may reach.

use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Serialize;

use crate::entry::order_deps;
use crate::error::{Error, Result};
use crate::inner::{CacheInner, ZoneState};
use crate::key::{DepRow, KeyBytes, dep_row, xxh3_key_hash};
use crate::storage::ops;
use crate::storage::writer::{Wait, now};
use crate::tiers::{self, Remove};

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

/// A named group of memoizers (the original's `Zone`).
///
/// A memoizer joins zones when it is built ([`MemoizerBuilder::zone`](crate::MemoizerBuilder::zone),
/// [`MemoizerBuilder::zone_key`](crate::MemoizerBuilder::zone_key), [`MemoizerBuilder::zone_keys`](crate::MemoizerBuilder::zone_keys)). A zone's *key function*
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
/// detected: bump the memoizer's [`version`](crate::MemoizerBuilder::version) when you do.
#[derive(Clone)]
pub struct Zone {
    pub(crate) inner: Arc<ZoneState>,
}

impl std::fmt::Debug for Zone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Encodes `keys` one by one for `visit`, until it breaks.
pub(crate) fn visit_all<T: Serialize>(
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

impl Zone {
    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sets the zone's default key function: the dependency key of a member's entry,
    /// derived from the member's arguments of type `A` (the original's
    /// `Zone('Authors', lambda self: self.id)`). Members with other argument types must
    /// give their own (see [`MemoizerBuilder::zone_key`](crate::MemoizerBuilder::zone_key)). Applies to members built
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
        async move { self.remove_dependents(row?, false, how).await }
    }

    /// The same as [`invalidate`](Self::invalidate), done the way an index-less cache
    /// must: by reading every entry of every member. For benchmarks and tests only.
    #[doc(hidden)]
    pub fn __invalidate_by_scan<D: Serialize + ?Sized>(&self, dep: &D) -> Result<u64> {
        let row = self.row(dep)?;
        now(self.remove_dependents(row, true, Wait::Block))
    }

    fn row<D: Serialize + ?Sized>(&self, dep: &D) -> Result<DepRow> {
        let bytes = KeyBytes::encode(dep).map_err(Error::KeyEncoding)?;
        Ok(dep_row(self.inner.id, xxh3_key_hash(bytes.as_slice())))
    }

    async fn remove_dependents(&self, row: DepRow, by_scan: bool, how: Wait) -> Result<u64> {
        let cache = self.cache()?;
        let what = Remove::Dep {
            row,
            zone: self.inner.id,
            by_scan,
        };
        let members = self.inner.live_members();
        tiers::invalidate(&cache.shared, &members, what, how).await
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
        let zone_id = self.inner.id;
        // Members recorded by earlier runs that this run built without the zone are
        // cleared on disk too: their memory tiers go in the same step.
        let recorded = cache
            .shared
            .storage
            .read(|txn| ops::read_zone_members(txn, zone_id))?;
        let targets = cache.with_strangers(self.inner.live_members(), &recorded);
        tiers::invalidate(&cache.shared, &targets, Remove::Zone(zone_id), how).await
    }

    fn cache(&self) -> Result<Arc<CacheInner>> {
        self.inner.cache.upgrade().ok_or(Error::WriterStopped)
    }
}

/// A memoizer's request to join a zone, with an optional own key function.
pub(crate) struct Membership<K: ?Sized> {
    zone: Arc<ZoneState>,
    key: Option<Arc<KeysFn<K>>>,
    /// Whether the zone's default key function may stand in for a missing own one.
    use_default: bool,
}

impl<K: ?Sized> Membership<K> {
    pub(crate) fn new(zone: &Zone, key: Option<Arc<KeysFn<K>>>, use_default: bool) -> Self {
        Membership {
            zone: zone.inner.clone(),
            key,
            use_default,
        }
    }
}

/// A membership checked at build time.
pub(crate) struct Resolved<K: ?Sized> {
    pub zone: Arc<ZoneState>,
    pub key: Option<Arc<KeysFn<K>>>,
}

/// Checks every membership belongs to this cache and has a key function fitting `K`;
/// adds the `"default"` zone when the memoizer joined none.
pub(crate) fn resolve<K: ?Sized + 'static>(
    cache: &Arc<CacheInner>,
    memoizer: &str,
    memberships: Vec<Membership<K>>,
) -> Result<Vec<Resolved<K>>> {
    if memberships.is_empty() {
        let zone = cache.zone("default")?;
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
