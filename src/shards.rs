//! A value split by key hash into shards, each behind its own lock on its own cache line:
//! the memory tier (`memory::Sharded`) and the `max_hits` counts (`hit_counts`) are
//! kept this way, so threads working on different keys take different locks.
//!
//! Invariant: everything about one key hash lives in the shard [`Shards::index_of`]
//! picks for it, so work on one key is done under one lock.

use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use crate::key::KeyHash;

pub(crate) struct Shards<T> {
    shards: Box<[CachePadded<Mutex<T>>]>,
}

/// How many shards a structure gets unless it has a reason for fewer: four per stripe of
/// `stats::stripe_count` (16 on 2 cores), so two threads meet on one lock a few percent
/// of the time.
pub(crate) fn most() -> usize {
    crate::stats::stripe_count() * 4
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Shards<T> {
    /// `count` shards (a power of two), the `i`th made by `make(i)`.
    pub(crate) fn new(count: usize, mut make: impl FnMut(usize) -> T) -> Self {
        debug_assert!(count.is_power_of_two());
        Shards {
            shards: (0..count)
                .map(|i| CachePadded::new(Mutex::new(make(i))))
                .collect(),
        }
    }

    /// How many shards there are.
    #[cfg(test)]
    pub(crate) fn count(&self) -> usize {
        self.shards.len()
    }

    /// The shard of `hash`: bits 32..40 of the hash's second half, which is the key's own
    /// hash also for entries filed under a dependency (whose first half is the
    /// dependency's), and which hash maps do not use for their buckets.
    #[inline]
    pub(crate) fn index_of(&self, hash: &KeyHash) -> usize {
        hash[12] as usize & (self.shards.len() - 1)
    }

    /// The shard of `hash`, locked.
    #[inline]
    pub(crate) fn get(&self, hash: &KeyHash) -> MutexGuard<'_, T> {
        lock(&self.shards[self.index_of(hash)])
    }

    /// The `i`th shard, locked.
    #[cfg(test)]
    pub(crate) fn at(&self, i: usize) -> MutexGuard<'_, T> {
        lock(&self.shards[i])
    }

    /// Every shard in turn, each locked while it is looked at.
    pub(crate) fn each(&self) -> impl Iterator<Item = MutexGuard<'_, T>> {
        self.shards.iter().map(|s| lock(s))
    }
}
