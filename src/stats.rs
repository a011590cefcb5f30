//! Per-memoizer counters: relaxed atomics, one add per event, striped across threads.
//!
//! Every thread counts into its own stripe (a cache line of all eight counters), so
//! concurrent hits on one memoizer never bounce a shared line between cores; a
//! [`Stats`] snapshot sums the stripes. `Counters` dereferences to the calling thread's
//! stripe, so `Counters::add(&core.stats.hits, 1)` counts where it is cheapest.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// How many stripes per-thread structures use: a power of two, twice the cores, so
/// threads rarely share one.
pub(crate) fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        (cores * 2).next_power_of_two().clamp(2, 64)
    })
}

static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, handed out round-robin so neighbouring threads differ.
    static THREAD: usize = NEXT_THREAD.fetch_add(1, Ordering::Relaxed);
}

/// The calling thread's stripe among `stripes` (a power of two).
pub(crate) fn thread_stripe(stripes: usize) -> usize {
    THREAD.with(|t| *t) & (stripes - 1)
}

/// One stripe: every counter, in one cache line.
#[derive(Default)]
pub(crate) struct Cells {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub inserts: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations: AtomicU64,
    pub stale: AtomicU64,
    pub errors: AtomicU64,
}

pub(crate) struct Counters {
    stripes: Box<[CachePadded<Cells>]>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            stripes: (0..stripe_count())
                .map(|_| CachePadded::default())
                .collect(),
        }
    }
}

impl std::ops::Deref for Counters {
    type Target = Cells;

    /// The calling thread's stripe.
    fn deref(&self) -> &Cells {
        &self.stripes[thread_stripe(self.stripes.len())]
    }
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, entries: Option<u64>) -> Stats {
        let sum = |get: fn(&Cells) -> &AtomicU64| {
            self.stripes
                .iter()
                .map(|s| get(s).load(Ordering::Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        Stats {
            hits: sum(|c| &c.hits),
            misses: sum(|c| &c.misses),
            inserts: sum(|c| &c.inserts),
            evictions: sum(|c| &c.evictions),
            expirations: sum(|c| &c.expirations),
            invalidations: sum(|c| &c.invalidations),
            stale: sum(|c| &c.stale),
            errors: sum(|c| &c.errors),
            budget_evictions: 0,
            entries,
            bytes: None,
        }
    }
}

/// A memoizer's counters since it was built. See [`Memoizer::stats`](crate::Memoizer::stats).
///
/// Each counter is exact once the calls it counts have returned (a snapshot taken while
/// calls are running may include some of them and not others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls served from the cache.
    pub hits: u64,
    /// Calls that ran the computation.
    pub misses: u64,
    /// Values stored.
    pub inserts: u64,
    /// Entries dropped by the LRU bound (of [`Store::Lru`](crate::Store::Lru) or the
    /// memory tier of [`Store::Tiered`](crate::Store::Tiered)).
    pub evictions: u64,
    /// Entries of this memoizer evicted from the file, since it was built, for the
    /// file's byte budget ([`CacheBuilder::max_bytes`](crate::CacheBuilder::max_bytes))
    /// or its own ([`MemoizerBuilder::max_bytes`](crate::MemoizerBuilder::max_bytes)).
    /// Entries removed
    /// for other reasons are counted in [`expirations`](Self::expirations) and
    /// [`invalidations`](Self::invalidations).
    pub budget_evictions: u64,
    /// Entries found past their deadline, or used up by `max_hits`.
    pub expirations: u64,
    /// Entries removed by `invalidate_key`, `invalidate_all` or a zone.
    pub invalidations: u64,
    /// Entries skipped because they were written for another value type or version, were
    /// damaged, or belonged to a colliding key.
    pub stale: u64,
    /// Cache failures swallowed (the value was still returned; see
    /// [`Cache::health`](crate::Cache::health)), including values of this memoizer that a
    /// failed commit dropped.
    pub errors: u64,
    /// Entries currently stored: for a persistent memoizer read in O(1) from its table,
    /// after the stores queued before the call have committed; otherwise the map size.
    pub entries: Option<u64>,
    /// Bytes this memoizer's entries in the file are charged against the byte budgets
    /// (what redb spends on them, estimated; including cleared entries not reclaimed
    /// yet), read like [`entries`](Self::entries); `None` for a memoizer without a
    /// file table.
    pub bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_many_threads_add_up() {
        let counters = Counters::default();
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        Counters::add(&counters.hits, 1);
                        Counters::add(&counters.misses, 2);
                    }
                });
            }
        });
        let stats = counters.snapshot(Some(3));
        assert_eq!(
            (stats.hits, stats.misses, stats.entries),
            (8_000, 16_000, Some(3))
        );
    }

    #[test]
    fn stripes_are_a_power_of_two_and_threads_spread_over_them() {
        let n = stripe_count();
        assert!(n.is_power_of_two() && n >= 2);
        let mine = thread_stripe(n);
        let other = std::thread::spawn(move || thread_stripe(n)).join().unwrap();
        assert!(mine < n && other < n);
    }
}
