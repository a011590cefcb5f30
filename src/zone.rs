//! Zones: groups of memoizers cleared together, and dependency keys that invalidate
//! exactly the entries derived from one value.
//!
//! Each entry of a zoned memoizer records its dependency rows (zone id, hash of the
//! dependency key) in its own header, and the `fresco/deps` multimap maps each row back
//! to the entries. A dependency invalidation is therefore one `remove_all` on the index
//! plus one removal per affected entry, in one write transaction; zone membership lives
//! in `fresco/zone_members`, so both work for memoizers this run has not built.

use std::any::Any;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};

use serde::Serialize;

use crate::Value;
use crate::cache::CacheInner;
use crate::entry::{DepRow, dep_row};
use crate::error::{Error, Result};
use crate::key::{KeyBytes, xxh3_key_hash};
use crate::memoizer::{MemoCore, MemoizerBuilder};
use crate::storage::ops;

/// Maps a memoizer's arguments to its dependency keys, encoded.
pub(crate) type KeysFn<K> = dyn Fn(&K) -> Vec<KeyBytes> + Send + Sync;
/// Maps a memoizer's arguments to the dependency rows of its entry.
pub(crate) type DepsFn<K> = dyn Fn(&K) -> Vec<DepRow> + Send + Sync;

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
        members.push(Arc::downgrade(core));
    }

    fn live_members(&self) -> Vec<Arc<MemoCore>> {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.iter().filter_map(Weak::upgrade).collect()
    }
}

/// A named group of memoizers (the original's `Zone`).
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

fn encode_all<T: Serialize>(keys: impl IntoIterator<Item = T>) -> Vec<KeyBytes> {
    // A dependency key that cannot be encoded cannot be invalidated either; skip it.
    keys.into_iter()
        .filter_map(|k| KeyBytes::encode(&k).ok())
        .collect()
}

impl Zone {
    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Sets the zone's default key function: the dependency key of a member's entry,
    /// derived from the member's arguments of type `A`. Members with other argument
    /// types must give their own (see [`MemoizerBuilder::zone_key`]).
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
        let keys: Arc<KeysFn<A>> = Arc::new(move |a: &A| encode_all(f(a)));
        *self
            .inner
            .default_key
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(keys));
        self
    }

    /// Removes every entry, in every member memoizer (persistent and in-memory, built in
    /// this run or not), whose dependency keys include `dep`, in one write transaction.
    /// Returns how many entries were removed.
    ///
    /// `dep` must have the type the key functions return (it is compared by its encoding).
    pub fn invalidate<D: Serialize + ?Sized>(&self, dep: &D) -> Result<u64> {
        let cache = self.cache()?;
        let bytes = KeyBytes::encode(dep).map_err(Error::KeyEncoding)?;
        let row = dep_row(self.inner.id, xxh3_key_hash(bytes.as_slice()));
        let members = self.inner.live_members();
        let ticket = cache.storage.with_pending_lock(|| {
            for m in &members {
                m.epoch.fetch_add(1, Ordering::SeqCst);
            }
            cache
                .writer
                .submit(move |txn| ops::invalidate_dep(txn, &row))
        });
        let mut removed = 0;
        for m in members.iter().filter(|m| m.persistent.is_none()) {
            removed += m.forget_in_memory(&row, &[]);
        }
        let on_disk = ticket.wait()?;
        removed += on_disk.len() as u64;
        for m in members.iter().filter(|m| m.persistent.is_some()) {
            let id = m.persistent.as_ref().map_or(0, |p| p.id);
            let hashes: Vec<_> = on_disk
                .iter()
                .filter(|(mid, _)| *mid == id)
                .map(|(_, h)| *h)
                .collect();
            m.forget_in_memory(&row, &hashes);
            crate::stats::Counters::add(&m.stats.invalidations, hashes.len() as u64);
        }
        Ok(removed)
    }

    /// Clears every member memoizer, including members recorded in the file that this
    /// run has not built. Returns how many entries were removed.
    pub fn invalidate_all(&self) -> Result<u64> {
        let cache = self.cache()?;
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
        let mut removed = 0;
        for m in &members {
            let n = m.clear_in_memory();
            if m.persistent.is_none() {
                removed += n;
            }
        }
        let (on_disk, _) = ticket.wait()?;
        Ok(removed + on_disk)
    }

    fn cache(&self) -> Result<Arc<CacheInner>> {
        self.inner.cache.upgrade().ok_or(Error::WriterStopped)
    }
}

/// A memoizer's request to join a zone, with an optional own key function.
pub(crate) struct Membership<K: ?Sized> {
    zone: Arc<ZoneInner>,
    key: Option<Arc<KeysFn<K>>>,
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
        });
        self
    }

    /// Joins `zone` with this memoizer's own key function (the original's `zonekey=`).
    pub fn zone_key<T: Serialize>(
        self,
        zone: &Zone,
        f: impl Fn(&K) -> T + Send + Sync + 'static,
    ) -> Self {
        self.zone_keys(zone, move |k: &K| [f(k)])
    }

    /// Joins `zone` with a key function yielding several dependency keys per entry.
    pub fn zone_keys<T: Serialize, I: IntoIterator<Item = T>>(
        mut self,
        zone: &Zone,
        f: impl Fn(&K) -> I + Send + Sync + 'static,
    ) -> Self {
        let keys: Arc<KeysFn<K>> = Arc::new(move |k: &K| encode_all(f(k)));
        self.zones.push(Membership {
            zone: zone.inner.clone(),
            key: Some(keys),
        });
        self
    }
}

/// Checks every membership's key function fits `K`; adds the `"default"` zone when the
/// memoizer joined none.
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
                            Some(f) => Some(f.clone()),
                            None => {
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

/// The function computing an entry's dependency rows.
pub(crate) fn deps_fn<K: ?Sized + 'static>(zones: Vec<Resolved<K>>) -> Arc<DepsFn<K>> {
    let keyed: Vec<(u64, Arc<KeysFn<K>>)> = zones
        .into_iter()
        .filter_map(|z| z.key.map(|k| (z.zone.id, k)))
        .collect();
    Arc::new(move |k: &K| {
        let mut rows = Vec::new();
        for (zone_id, f) in &keyed {
            for bytes in f(k) {
                let row = dep_row(*zone_id, xxh3_key_hash(bytes.as_slice()));
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
        }
        rows
    })
}
