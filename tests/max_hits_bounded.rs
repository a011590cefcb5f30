//! The `max_hits` hit counts stay bounded by the live entries (issue #11, D10).
//!
//! A memoizer with `max_hits` counts hits per stored value in memory. The counts used to
//! be dropped on invalidation only, never when a value left by LRU eviction or expiry, so
//! a long-running program's map grew without bound. Guards: counts go with the values
//! evicted from a store with no file behind it and with expired values (met on a read,
//! or purged); a tiered store keeps the counts of values evicted from its memory, since
//! they are still served from the file, so max_hits stays exact.

use std::time::Duration;

use fresco_memoize::{Cache, ManualClock, Store};

#[test]
fn lru_eviction_drops_the_hit_counts_of_evicted_values() {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u64, u64>("lru")
        .store(Store::Lru(10))
        .max_hits(3)
        .build()
        .unwrap();
    for k in 0..1_000 {
        m.get_or_compute(&k, |k| k + 1);
        m.get_or_compute(&k, |_| unreachable!("a hit"));
    }
    assert!(
        m.__hit_counts() <= 10,
        "{} counts for 10 entries",
        m.__hit_counts()
    );
}

#[test]
fn expired_values_drop_their_hit_counts() {
    let clock = ManualClock::new(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .open(dir.path().join("expiry.memo"))
        .unwrap();
    for store in [Store::Memory, Store::Persistent, Store::Tiered(50)] {
        let name = format!("{store:?}");
        let m = cache
            .memoizer::<u64, u64>(&name)
            .store(store)
            .max_hits(5)
            .expires(Duration::from_secs(10))
            .build()
            .unwrap();
        for k in 0..100 {
            m.get_or_compute(&k, |k| k * 2);
            m.get_or_compute(&k, |_| unreachable!("a hit"));
        }
        assert_eq!(m.__hit_counts(), 100, "{name}");
        clock.advance(Duration::from_secs(11));
        // Met on a read: half of them.
        for k in 0..50 {
            assert_eq!(m.get_archived(&k).unwrap().map(|v| *v), None, "{name}");
        }
        assert_eq!(
            m.__hit_counts(),
            50,
            "{name}: expired values read as misses"
        );
        // The rest by a purge.
        cache.purge_expired().unwrap();
        assert_eq!(m.__hit_counts(), 0, "{name}: purged values");
    }
}

#[test]
fn a_tiered_store_keeps_the_counts_of_values_still_in_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("tiered.memo")).unwrap();
    let m = cache
        .memoizer::<u64, u64>("tiered")
        .store(Store::Tiered(2))
        .max_hits(2)
        .build()
        .unwrap();
    let mut computes = 0;
    for _ in 0..3 {
        m.get_or_compute(&0, |k| {
            computes += 1;
            *k
        });
    }
    // Evict key 0 from memory: its value is still in the file, its two hits spent.
    for k in 1..10 {
        m.get_or_compute(&k, |k| *k);
    }
    m.get_or_compute(&0, |k| {
        computes += 1;
        *k
    });
    // 4 calls, max_hits 2: ceil(4 / 3) = 2 computes.
    assert_eq!(computes, 2);
}
