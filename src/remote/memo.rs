//! A memoizer's reads, stores and invalidations through its remote tier: the same steps
//! as the file's (check the bytes, count the hit, store unless invalidated meanwhile,
//! purge the local tier after the server has answered), with the server in the file's
//! place.
//!
//! The local tier of a connected memoizer (`Store::Tiered`) is served and filled only
//! while the invalidation listener is live ([`Service::local_tiers_live`]); a value is
//! promoted into it only if no invalidation - local, or pushed by another machine -
//! bumped the memoizer's epoch since the server was asked.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::lease::{Held, Turn};
use super::service::{RemoteTier, Service};
use super::store::{Found, Stamps};
use crate::Value;
use crate::entry::{DepRow, Meta};
use crate::error::{Error, Result};
use crate::hit::ArchivedHit;
use crate::key::{EncodedKey, KeyHash};
use crate::memoizer::{Looked, MemoCore, Memoizer, with_aligned};
use crate::memory::MemEntry;
use crate::stats::Counters;
use crate::storage::StoredBytes;

/// Entry bytes from the server that passed the checks, their payload offset and header.
pub(crate) type Checked = (Arc<[u8]>, usize, Meta);

impl MemoCore {
    /// Reports a failed call to the server and distrusts the local tiers until the
    /// listener has reconnected.
    pub(crate) fn remote_failed(&self, service: &Service, error: Error) {
        service.failed();
        self.report(error);
    }

    /// The checked entry bytes the server holds for `ek` (a hit counted there), with the
    /// payload offset. `Err(())`: the server failed (reported).
    pub(crate) fn remote_read(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
    ) -> Result<Option<Checked>, ()> {
        let bytes = match rt.read(&ek.hash) {
            Ok(Found::Served(bytes)) => bytes,
            Ok(Found::Absent | Found::Stale) => return Ok(None),
            Ok(Found::UsedUp) => {
                Counters::add(&self.stats.expirations, 1);
                return Ok(None);
            }
            Err(e) => {
                self.remote_failed(&rt.service, e);
                return Err(());
            }
        };
        Ok(self
            .admit(ek, &bytes)
            .map(|(offset, meta)| (Arc::from(bytes), offset, meta)))
    }

    /// Copies bytes read from the server into the local tier, unless an invalidation
    /// bumped the epoch since `epoch` was read (before asking the server) or the
    /// listener is not live.
    pub(crate) fn remote_promote(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        bytes: Arc<[u8]>,
        epoch: u64,
    ) {
        let Some(mem) = &self.memory else { return };
        let Some(entry) = MemEntry::new(bytes) else {
            return;
        };
        let mut mem = mem.lock().unwrap_or_else(|e| e.into_inner());
        if self.epoch.load(Ordering::SeqCst) == epoch && rt.service.local_tiers_live() {
            let evicted = mem.insert(ek.hash, entry);
            Counters::add(&self.stats.evictions, evicted.len() as u64);
        }
    }

    /// The stamps a computation starts under; `None` if the server failed (reported: the
    /// value is then returned but not stored).
    pub(crate) fn remote_begin(
        &self,
        rt: &RemoteTier,
        row: &KeyHash,
        deps: &[DepRow],
    ) -> Option<Stamps> {
        match rt.begin(row, deps) {
            Ok(stamps) => Some(stamps),
            Err(e) => {
                self.remote_failed(&rt.service, e);
                None
            }
        }
    }

    /// Stores encoded entry bytes on the server unless a stamp moved since `stamps`
    /// were read (every invalidation moves one, so nothing invalidated since is stored),
    /// then in the local tier unless an invalidation was applied to it since the put
    /// began (which the put may have overtaken). Pushes that came before the put -
    /// including those of the stamps this computation created - need not stop it.
    pub(crate) fn remote_store(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        bytes: Arc<[u8]>,
        deadline_ms: u64,
        stamps: &Stamps,
    ) {
        let epoch = self.epoch.load(Ordering::SeqCst);
        match rt.put(&ek.hash, &bytes, stamps, deadline_ms) {
            Ok(true) => Counters::add(&self.stats.inserts, 1),
            Ok(false) => return,
            Err(e) => return self.remote_failed(&rt.service, e),
        }
        self.remote_promote(rt, ek, bytes, epoch);
    }

    /// `invalidate_key` on the server, then in the local tier.
    pub(crate) fn remote_invalidate_key(&self, rt: &RemoteTier, hash: KeyHash) -> Result<bool> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let removed = rt.service.remote.remove(rt.memo, &hash);
        let local = self.memory.as_ref().is_some_and(|m| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&hash)
                .is_some()
        });
        let removed = self.remote_outcome(rt, removed)? || local;
        Counters::add(&self.stats.invalidations, removed as u64);
        Ok(removed)
    }

    /// `invalidate_all` on the server (a new generation, O(1)), then in the local tier.
    /// Returns how many local entries went: the server's are not counted.
    pub(crate) fn remote_invalidate_all(&self, rt: &RemoteTier) -> Result<u64> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        let done = rt.service.remote.bump_memoizer(rt.memo);
        let local = self.clear_in_memory();
        self.remote_outcome(rt, done)?;
        Counters::add(&self.stats.invalidations, local);
        Ok(local)
    }

    /// An invalidation's answer from the server; a failure is reported and returned
    /// (the caller must not take the invalidation as done).
    pub(crate) fn remote_outcome<T>(&self, rt: &RemoteTier, outcome: Result<T>) -> Result<T> {
        outcome.inspect_err(|e| {
            rt.service.failed();
            Counters::add(&self.stats.errors, 1);
            self.cache.storage.reporter.report(e);
        })
    }
}

impl MemoCore {
    /// The server side of leading a miss: wait for the key's lease (another machine may
    /// compute it), serving the value if it lands meanwhile (`Err`), or take it.
    pub(crate) fn remote_turn<R>(
        &self,
        ek: &EncodedKey,
        look: impl Fn() -> Option<R>,
    ) -> Result<Leading, R> {
        let Some(rt) = &self.remote else {
            return Ok(Leading::default());
        };
        let service = &rt.service;
        let turn = service
            .leases
            .take_turn(&service.remote, rt.memo, &ek.hash, || Ok(look()));
        let lease = match turn {
            Turn::Found(value) => return Err(value),
            Turn::Lead(held) => Some(held),
            Turn::Alone(error) => {
                if let Some(e) = error {
                    self.remote_failed(service, e);
                }
                None
            }
        };
        Ok(Leading {
            _lease: lease,
            stamps: None,
        })
    }
}

/// What a connected memoizer's leader holds while it computes.
#[derive(Default)]
pub(crate) struct Leading {
    /// The key's lease (none if the server could not be asked); released when dropped.
    _lease: Option<Held>,
    /// The stamps read before computing; `None`: the value is not stored.
    pub stamps: Option<Stamps>,
}

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    /// A hit from the server, deserialized (and promoted into the local tier). An entry
    /// due for a refresh is [`Looked::Due`] unless `serve_due` (its hit was counted).
    pub(crate) fn remote_lookup(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        serve_due: bool,
    ) -> Looked<V> {
        let core = &*self.core;
        let epoch = core.epoch.load(Ordering::SeqCst);
        let Ok(Some((bytes, offset, meta))) = core.remote_read(rt, ek) else {
            return Looked::Miss;
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Looked::Due;
        }
        let align = std::mem::align_of::<V::Archived>();
        let value = with_aligned(&bytes[offset..], align, |payload| {
            V::__access(payload).and_then(V::__deserialize).ok()
        });
        let Some(value) = value else {
            Counters::add(&core.stats.stale, 1);
            return Looked::Miss;
        };
        Counters::add(&core.stats.hits, 1);
        core.remote_promote(rt, ek, bytes, epoch);
        Looked::Hit(value)
    }

    /// A hit from the server read in place (see [`remote_lookup`](Self::remote_lookup)).
    pub(crate) fn remote_archived(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        serve_due: bool,
    ) -> Looked<ArchivedHit<V>> {
        let core = &*self.core;
        let epoch = core.epoch.load(Ordering::SeqCst);
        let Ok(Some((bytes, offset, meta))) = core.remote_read(rt, ek) else {
            return Looked::Miss;
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Looked::Due;
        }
        let Some(hit) = ArchivedHit::from_stored(StoredBytes::Shared(bytes.clone()), offset) else {
            Counters::add(&core.stats.stale, 1);
            return Looked::Miss;
        };
        Counters::add(&core.stats.hits, 1);
        core.remote_promote(rt, ek, bytes, epoch);
        Looked::Hit(hit)
    }
}
