//! Per-memoizer counters: relaxed atomics, one add per event.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(crate) struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations: AtomicU64,
    pub stale: AtomicU64,
    pub errors: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, entries: Option<u64>) -> Stats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            hits: get(&self.hits),
            misses: get(&self.misses),
            inserts: get(&self.inserts),
            evictions: get(&self.evictions),
            expirations: get(&self.expirations),
            invalidations: get(&self.invalidations),
            stale: get(&self.stale),
            errors: get(&self.errors),
            entries,
        }
    }
}

/// A memoizer's counters since it was built. See [`Memoizer::stats`](crate::Memoizer::stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls served from the cache.
    pub hits: u64,
    /// Calls that ran the computation.
    pub misses: u64,
    /// Values stored.
    pub inserts: u64,
    /// Entries dropped by the LRU bound.
    pub evictions: u64,
    /// Entries found past their deadline, or used up by `max_hits`.
    pub expirations: u64,
    /// Entries removed by `invalidate_key`, `invalidate_all` or a zone.
    pub invalidations: u64,
    /// Entries skipped because they were written for another value type or version, were
    /// damaged, or belonged to a colliding key.
    pub stale: u64,
    /// Cache failures swallowed (the value was still returned; see [`Cache::health`](crate::Cache::health)).
    pub errors: u64,
    /// Entries currently stored: for a persistent memoizer read in O(1) from its table,
    /// after the stores queued before the call have committed; otherwise the map size.
    pub entries: Option<u64>,
}
