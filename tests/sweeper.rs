//! The expiry sweeper: with a `ManualClock` moved past the deadlines, a background sweep
//! removes exactly the expired entries - persistent and in memory, several batches' worth -
//! together with their dependency and expiry index rows, and leaves the rest. Tests wait
//! for the sweeper's completion notifications, never for a fixed time.

use std::time::Duration;

use fresco_memoize::{Cache, ManualClock, Store};

/// Generous bound on waiting for a notification that normally comes within milliseconds.
const PATIENCE: Duration = Duration::from_secs(60);

fn file_cache(dir: &tempfile::TempDir, clock: &ManualClock, every: Duration) -> Cache {
    Cache::builder()
        .clock(clock.clone())
        .sweep_interval(Some(every))
        .open(dir.path().join("sweep.memo"))
        .unwrap()
}

#[test]
fn background_sweeps_remove_expired_entries_and_their_index_rows() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cache = file_cache(&dir, &clock, Duration::from_millis(5));
    let authors = cache.zone("Authors").unwrap();
    let short = cache
        .memoizer::<u64, String>("short")
        .expires(Duration::from_secs(10))
        .zone_key(&authors, |id: &u64| id % 7)
        .build()
        .unwrap();
    let long = cache
        .memoizer::<u64, u64>("long")
        .expires(Duration::from_secs(100))
        .build()
        .unwrap();
    let memory = cache
        .memoizer::<u64, u64>("memory")
        .store(Store::Memory)
        .expires(Duration::from_secs(10))
        .build()
        .unwrap();
    // More than one batch (1024) of expiring entries.
    for i in 0..1500 {
        short.get_or_compute(&i, |i| format!("v{i}"));
    }
    for i in 0..50 {
        long.get_or_compute(&i, |i| i * 2);
        memory.get_or_compute(&i, |i| i * 3);
    }
    cache.flush().unwrap();
    let (before, _) = cache.__sweeps().unwrap();
    // Nothing has expired yet: sweeps come and go and remove nothing.
    cache.__wait_sweeps(before + 2, PATIENCE);
    assert_eq!(short.stats().entries, Some(1500));

    clock.advance(Duration::from_secs(11));
    let (now, removed_before) = cache.__sweeps().unwrap();
    // The sweep under way may have read the clock before it moved; the one after has not.
    let reached = cache.__wait_sweeps(now + 2, PATIENCE).unwrap();
    assert!(reached >= now + 2, "no sweep within {PATIENCE:?}");
    let (_, removed_after) = cache.__sweeps().unwrap();
    assert_eq!(removed_after - removed_before, 1550);
    assert_eq!(short.stats().entries, Some(0));
    assert_eq!(long.stats().entries, Some(50));
    assert_eq!(memory.stats().entries, Some(0));
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(
        report.dep_rows, 0,
        "the zone index rows went with the entries"
    );
    assert_eq!(report.expiry_rows, 50);
    // Nothing left for an explicit purge, and survivors are still served.
    assert_eq!(cache.purge_expired().unwrap(), 0);
    assert_eq!(long.get_or_compute(&3, |_| unreachable!()), 6);
    assert_eq!(short.get_or_compute(&3, |i| format!("new{i}")), "new3");
}

#[test]
fn sweep_on_request_with_the_default_interval() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(5_000);
    let cache = Cache::builder()
        .clock(clock.clone())
        .open(dir.path().join("default.memo"))
        .unwrap();
    let m = cache
        .memoizer::<u32, u32>("m")
        .store(Store::Tiered(10))
        .expires(Duration::from_secs(1))
        .build()
        .unwrap();
    for i in 0..20 {
        m.get_or_compute(&i, |i| *i);
    }
    cache.flush().unwrap();
    clock.advance(Duration::from_millis(999));
    let (_, removed) = cache.__sweeps().unwrap();
    cache.__sweep_now(PATIENCE).unwrap();
    assert_eq!(cache.__sweeps().unwrap().1, removed, "not yet expired");
    assert_eq!(m.stats().entries, Some(20));
    clock.advance(Duration::from_millis(1));
    cache.__sweep_now(PATIENCE).unwrap();
    assert_eq!(cache.__sweeps().unwrap().1, removed + 20);
    assert_eq!(m.stats().entries, Some(0));
    assert!(cache.check_integrity().unwrap().is_ok());
}

#[test]
fn purge_expired_on_demand_goes_in_batches_and_counts_every_store() {
    let clock = ManualClock::new(0);
    let cache = Cache::builder()
        .clock(clock.clone())
        .sweep_interval(None)
        .in_memory()
        .unwrap();
    assert!(cache.__sweeps().is_none(), "no sweeper thread");
    let disk = cache
        .memoizer::<u64, u64>("disk")
        .store(Store::Persistent)
        .expires(Duration::from_secs(1))
        .build()
        .unwrap();
    let mem = cache
        .memoizer::<u64, u64>("mem")
        .expires(Duration::from_secs(1))
        .build()
        .unwrap();
    for i in 0..1300 {
        disk.get_or_compute(&i, |i| *i);
    }
    for i in 0..10 {
        mem.get_or_compute(&i, |i| *i);
    }
    assert_eq!(cache.purge_expired().unwrap(), 0);
    clock.advance(Duration::from_secs(1));
    assert_eq!(cache.purge_expired().unwrap(), 1310);
    assert_eq!(disk.stats().entries, Some(0));
    assert_eq!(mem.stats().entries, Some(0));
    assert!(cache.check_integrity().unwrap().is_ok());
}
