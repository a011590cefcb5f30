//! Clearing a memoizer costs the same at any size: its table is set aside as a grave
//! (renamed, its index rows left in place) and reclaimed afterwards in bounded batches.
//!
//! Guards that the indexes stay exact at every step of a reclamation (the invariant
//! checker counts a grave's entries as `reclaiming`), that a cleared entry never comes
//! back - also when the same keys are stored again with the very same deadlines before
//! the grave is gone, and when a dependency invalidation or an expiry purge meets a
//! grave's rows - and that the sweeper reclaims graves on its own.

use std::time::{Duration, Instant};

use fresco_memoize::{Cache, ManualClock, Memoizer, Zone};

const N: u64 = 600;

struct Setup {
    cache: Cache,
    zone: Zone,
    books: Memoizer<u64, String>,
    plain: Memoizer<u64, u64>,
    _dir: tempfile::TempDir,
}

fn setup(sweeper: bool, clock: &ManualClock) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .clock(clock.clone())
        .sweep_interval(sweeper.then_some(Duration::from_secs(3600)))
        .open(dir.path().join("reclaim.memo"))
        .unwrap();
    let zone = cache.zone("Authors").unwrap();
    let books = cache
        .memoizer::<u64, String>("books")
        .expires(Duration::from_secs(60))
        .zone_key(&zone, |b: &u64| b % 7)
        .build()
        .unwrap();
    let plain = cache.memoizer::<u64, u64>("plain").build().unwrap();
    Setup {
        cache,
        zone,
        books,
        plain,
        _dir: dir,
    }
}

fn fill(s: &Setup) {
    for b in 0..N {
        s.books.get_or_compute(&b, |b| format!("book {b}"));
        s.plain.get_or_compute(&b, |b| b + 1);
    }
    s.cache.flush().unwrap();
}

#[test]
fn indexes_stay_exact_through_a_reclamation_and_nothing_comes_back() {
    let clock = ManualClock::new(1_700_000_000_000);
    let s = setup(false, &clock);
    fill(&s);
    assert_eq!(s.books.invalidate_all().unwrap(), N);
    assert_eq!(s.plain.invalidate_all().unwrap(), N);
    let report = s.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.entries, 0);
    assert_eq!(report.reclaiming, 2 * N, "both tables are graves now");
    // The same keys again, with the same deadlines (the clock did not move): the new
    // entries' index rows must not collide with the grave's.
    fill(&s);
    let report = s.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.entries, report.reclaiming), (2 * N, 2 * N));
    // Clear again: two graves of `books` now.
    assert_eq!(s.books.invalidate_all().unwrap(), N);
    // A dependency invalidation meets grave rows: it removes them too, and counts only
    // live entries (none of `books` are live).
    assert_eq!(s.zone.invalidate(&3u64).unwrap(), 0);
    let mut steps = 0;
    while s.cache.__reclaim_step(97).unwrap() {
        steps += 1;
        if steps % 5 == 0 {
            let report = s.cache.check_integrity().unwrap();
            assert!(report.is_ok(), "after {steps} steps: {report:?}");
        }
        assert!(steps < 1_000, "reclamation does not end");
    }
    let report = s.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.reclaiming, 0);
    assert_eq!(
        report.entries, N,
        "the plain memoizer's second fill is live"
    );
    assert_eq!(report.expiry_rows, 0, "no live entry of `books` is left");
    assert!(steps >= 10, "batches are bounded: {steps} steps");
    for b in 0..N {
        assert!(
            s.books.get_archived(&b).unwrap().is_none(),
            "book {b} came back"
        );
        assert_eq!(*s.plain.get_archived(&b).unwrap().unwrap(), b + 1);
    }
}

#[test]
fn an_expiry_purge_meets_a_grave_and_keeps_the_indexes_exact() {
    let clock = ManualClock::new(1_700_000_000_000);
    let s = setup(false, &clock);
    fill(&s);
    s.books.invalidate_all().unwrap();
    for b in 0..N / 2 {
        s.books.get_or_compute(&b, |b| format!("book {b}"));
    }
    clock.advance(Duration::from_secs(61));
    // Expired: the live half, and the grave's rows (not counted: they were gone already).
    // With no sweeper, the purge reclaims what is left of the grave as well.
    assert_eq!(s.cache.purge_expired().unwrap(), N / 2);
    let report = s.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!((report.entries, report.reclaiming), (N, 0));
}

#[test]
fn the_sweeper_reclaims_a_cleared_table_on_its_own() {
    let clock = ManualClock::new(1_700_000_000_000);
    let s = setup(true, &clock);
    fill(&s);
    assert_eq!(s.zone.invalidate_all().unwrap(), N);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let report = s.cache.check_integrity().unwrap();
        assert!(report.is_ok(), "{report:?}");
        if report.reclaiming == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not reclaimed: {report:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    for b in 0..N {
        assert!(s.books.get_archived(&b).unwrap().is_none());
    }
}

#[test]
fn a_grave_left_by_an_earlier_run_is_reclaimed_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("again.memo");
    {
        let cache = Cache::builder().sweep_interval(None).open(&path).unwrap();
        let m = cache.memoizer::<u64, u64>("m").build().unwrap();
        for k in 0..N {
            m.get_or_compute(&k, |k| *k);
        }
        assert_eq!(m.invalidate_all().unwrap(), N);
        assert_eq!(cache.check_integrity().unwrap().reclaiming, N);
    }
    let cache = Cache::builder()
        .sweep_interval(Some(Duration::from_secs(3600)))
        .open(&path)
        .unwrap();
    let m = cache.memoizer::<u64, u64>("m").build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while cache.check_integrity().unwrap().reclaiming > 0 {
        assert!(Instant::now() < deadline, "the grave was never reclaimed");
        std::thread::sleep(Duration::from_millis(20));
    }
    for k in 0..N {
        assert!(m.get_archived(&k).unwrap().is_none());
    }
}
