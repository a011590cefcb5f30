//! A dropped async invalidation still finishes before its window closes.
//!
//! Bug: `tiers::invalidate` opened the fence window (from then on readers miss every
//! covered entry), queued the file's removal and awaited its commit; the window was a
//! plain guard on the future's stack. An async caller that dropped the future during
//! that await (a `select!` losing, a timeout) closed the window at once: readers were
//! served the removed entries again, from the memory tier (never cleaned) and from the
//! file until the queued removal committed. Readers had seen the entries gone, then
//! back: a removal seen undone. Now the rest of the invalidation runs in a guard whose
//! drop finishes it (blocking for at most that commit), so a dropped invalidation is
//! complete in every tier by the time the drop returns.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Waker};

use fresco_memoize::{Cache, Memoizer, Store};

const N: u64 = 100;

/// Polls `future` once and drops it; returns whether it was still pending (the
/// invalidation had opened its window and was waiting for the commit).
fn poll_once_then_drop<F: Future>(future: F) -> bool {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    future.as_mut().poll(&mut cx).is_pending()
}

/// How many of the keys 0..N `m` computes now (the rest it serves from a tier).
fn computed(m: &Memoizer<u64, u64>) -> u32 {
    let computes = AtomicU32::new(0);
    for k in 0..N {
        let v = m.get_or_compute(&k, |k| {
            computes.fetch_add(1, Ordering::SeqCst);
            k * 7
        });
        assert_eq!(v, k * 7);
    }
    computes.into_inner()
}

fn filled(cache: &Cache, store: Store) -> Memoizer<u64, u64> {
    let m = cache
        .memoizer::<u64, u64>("m")
        .store(store)
        .build()
        .unwrap();
    assert_eq!(computed(&m), N as u32);
    cache.flush().unwrap();
    // Served from the tiers now: the memory tier of a tiered store holds every key.
    assert_eq!(computed(&m), 0);
    m
}

#[test]
fn a_dropped_invalidate_all_future_leaves_nothing_served() {
    for store in [Store::Tiered(1000), Store::Persistent, Store::Memory] {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("c.memo")).unwrap();
        let m = filled(&cache, store);
        let pending = poll_once_then_drop(m.invalidate_all_async());
        if store != Store::Memory {
            // The file step is a durable commit: the first poll cannot see it done.
            assert!(
                pending,
                "{store:?}: the invalidation finished in its first poll"
            );
        }
        assert_eq!(
            computed(&m),
            N as u32,
            "{store:?}: entries of a dropped invalidate_all were served again"
        );
    }
}

#[test]
fn a_dropped_zone_invalidation_future_leaves_nothing_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let zone = cache.zone("Authors").unwrap();
    let m = cache
        .memoizer::<u64, u64>("books")
        .store(Store::Tiered(1000))
        .zone_key(&zone, |_book: &u64| 7u64)
        .build()
        .unwrap();
    assert_eq!(computed(&m), N as u32);
    cache.flush().unwrap();
    assert_eq!(computed(&m), 0);
    assert!(poll_once_then_drop(zone.invalidate_async(&7u64)));
    assert_eq!(
        computed(&m),
        N as u32,
        "dependents of a dropped zone invalidation were served again"
    );
}
