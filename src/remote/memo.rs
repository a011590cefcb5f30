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

use super::lease::Turn;
use super::service::{RemoteTier, Service};
use super::store::{Found, Stamps};
use crate::Value;
use crate::entry::DepRow;
use crate::error::{Error, Result};
use crate::hit::ArchivedHit;
use crate::key::{EncodedKey, KeyHash};
use crate::memoizer::{MemoCore, Memoizer, with_aligned};
use crate::memory::MemEntry;
use crate::stats::Counters;
use crate::storage::StoredBytes;

/// Entry bytes from the server that passed the checks, and their payload offset.
pub(crate) type Checked = (Arc<[u8]>, usize);

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
            .map(|(offset, _)| (Arc::from(bytes), offset)))
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

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    /// A hit from the server, deserialized (and promoted into the local tier).
    /// `Err(())`: the server failed (reported).
    pub(crate) fn remote_lookup(&self, rt: &RemoteTier, ek: &EncodedKey) -> Result<Option<V>, ()> {
        let core = &*self.core;
        let epoch = core.epoch.load(Ordering::SeqCst);
        let Some((bytes, offset)) = core.remote_read(rt, ek)? else {
            return Ok(None);
        };
        let align = std::mem::align_of::<V::Archived>();
        let value = with_aligned(&bytes[offset..], align, |payload| {
            V::__access(payload).and_then(V::__deserialize).ok()
        });
        let Some(value) = value else {
            Counters::add(&core.stats.stale, 1);
            return Ok(None);
        };
        Counters::add(&core.stats.hits, 1);
        core.remote_promote(rt, ek, bytes, epoch);
        Ok(Some(value))
    }

    /// A hit from the server read in place.
    pub(crate) fn remote_archived(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
    ) -> Option<ArchivedHit<V>> {
        let core = &*self.core;
        let epoch = core.epoch.load(Ordering::SeqCst);
        let (bytes, offset) = core.remote_read(rt, ek).ok().flatten()?;
        let Some(hit) = ArchivedHit::from_stored(StoredBytes::Shared(bytes.clone()), offset) else {
            Counters::add(&core.stats.stale, 1);
            return None;
        };
        Counters::add(&core.stats.hits, 1);
        core.remote_promote(rt, ek, bytes, epoch);
        Some(hit)
    }

    /// A miss of a connected memoizer, once this process's flight for the key is ours:
    /// wait for (or take) the key's lease on the server, read the stamps, compute, and
    /// store unless a stamp moved meanwhile.
    pub(crate) fn remote_miss<A, E>(
        &self,
        rt: &RemoteTier,
        mut ek: EncodedKey,
        args: A,
        deps: impl FnOnce(&A) -> Result<Vec<DepRow>>,
        compute: impl FnOnce(A) -> Result<V, E>,
    ) -> Result<V, E> {
        let core = &*self.core;
        let service = &rt.service;
        let look = || self.remote_lookup(rt, &ek);
        let _lease = match service
            .leases
            .take_turn(&service.remote, rt.memo, &ek.hash, look)
        {
            Turn::Found(value) => return Ok(value),
            Turn::Lead(held) => Some(held),
            Turn::Alone(error) => {
                if let Some(e) = error {
                    core.remote_failed(service, e);
                }
                None
            }
        };
        Counters::add(&core.stats.misses, 1);
        let deps = ek.deps.take().unwrap_or_else(|| deps(&args));
        let stamps = deps
            .as_ref()
            .ok()
            .and_then(|d| core.remote_begin(rt, &ek.hash, d));
        let value = compute(args)?;
        match (value.__archive(), deps) {
            (Ok(archive), Ok(deps)) => {
                if let Some(stamps) = &stamps {
                    let (meta, bytes) = core.encode_entry(&ek, &archive, &deps);
                    core.remote_store(rt, &ek, bytes, meta.expires_at_ms, stamps);
                }
            }
            (Err(e), _) => core.report(Error::ValueEncoding(e.to_string())),
            (_, Err(e)) => core.report(e),
        }
        Ok(value)
    }
}
