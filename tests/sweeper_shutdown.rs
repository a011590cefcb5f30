//! The sweeper thread ends with its cache: dropping the last handle (and memoizer) stops
//! and joins it, so no thread is leaked and the file is closed at once (it can be
//! reopened right away). One test, alone in its binary, because it counts the process's
//! sweeper threads.

use std::time::Duration;

use fresco_memoize::{Cache, ManualClock};

/// Threads of this process named like the sweeper (Linux: /proc/self/task/*/comm).
fn sweeper_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "fresco-sweeper")
        .count()
}

#[test]
fn dropping_the_cache_stops_its_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drop.memo");
    let clock = ManualClock::new(0);
    assert_eq!(sweeper_threads(), 0);
    for round in 0..3 {
        let cache = Cache::builder()
            .clock(clock.clone())
            .sweep_interval(Some(Duration::from_millis(1)))
            .open(&path)
            .unwrap();
        let m = cache
            .memoizer::<u64, u64>("m")
            .expires(Duration::from_secs(1))
            .build()
            .unwrap();
        for i in 0..100 {
            m.get_or_compute(&i, |i| i + round);
        }
        // A completed sweep shows the thread is up (it names itself as it starts).
        cache.__sweep_now(Duration::from_secs(60)).unwrap();
        assert_eq!(sweeper_threads(), 1);
        clock.advance(Duration::from_secs(2));
        // Sweeps run every millisecond: round 0 drops whenever, later rounds right after
        // a sweep completed.
        let (done, _) = cache.__sweeps().unwrap();
        if round > 0 {
            cache.__wait_sweeps(done + 1, Duration::from_secs(60));
        }
        drop(m);
        drop(cache);
        assert_eq!(
            sweeper_threads(),
            0,
            "round {round}: sweeper outlived its cache"
        );
    }
    // Without a sweeper no thread starts at all.
    let quiet = Cache::builder().sweep_interval(None).open(&path).unwrap();
    assert_eq!(sweeper_threads(), 0);
    drop(quiet);

    // Sweeping continuously (every millisecond), the last handle's drop still closes
    // the file at once: reopening right after never finds it held.
    for _ in 0..50 {
        let cache = Cache::builder()
            .sweep_interval(Some(Duration::from_millis(1)))
            .open(&path)
            .unwrap();
        cache.__sweep_now(Duration::from_secs(60));
        drop(cache);
        assert_eq!(sweeper_threads(), 0);
    }
}
