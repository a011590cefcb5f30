//! The file gives back what batched commits leave behind, while the cache is open.
//!
//! redb reuses freed pages but never shrinks the file, and the writer's batched commits
//! of randomly placed rows free many pages (copy-on-write): 100k entries of a ~100-byte
//! value made a 71 MB file of 27 MB live pages (713 bytes per entry against
//! `RedbCache`'s 344). Now a flush (or the writes pausing) compacts the file once it has
//! grown 1.5x past its size at the last compaction: right after the flush is answered,
//! so the writer's next job - here a second flush - finds it done. A snapshot still held - an
//! `ArchivedHit` - makes the compaction wait; values stay right throughout.

use std::sync::atomic::{AtomicBool, Ordering};

use fresco_memoize::{Cache, Memoizer, Store};

const N: u64 = 50_000;

fn value(k: u64) -> Vec<u64> {
    (0..12).map(|i| k.wrapping_mul(31) + i).collect()
}

fn len(cache: &Cache) -> u64 {
    std::fs::metadata(cache.path().unwrap()).unwrap().len()
}

fn fill(m: &Memoizer<u64, Vec<u64>>, keys: std::ops::Range<u64>) {
    for k in keys {
        m.get_or_compute(&k, |k| value(*k));
    }
}

/// A persistent memoizer `name` of `cache`.
fn persistent(cache: &Cache, name: &str) -> Memoizer<u64, Vec<u64>> {
    let builder = cache.memoizer::<u64, Vec<u64>>(name);
    builder.store(Store::Persistent).build().unwrap()
}

/// The file's size with its pages packed: a closed copy compacted offline.
fn packed_len(cache: &Cache, dir: &std::path::Path) -> u64 {
    let copy = dir.join("packed.memo");
    std::fs::copy(cache.path().unwrap(), &copy).unwrap();
    Cache::compact_file(&copy).unwrap();
    std::fs::metadata(&copy).unwrap().len()
}

#[test]
fn a_flush_leaves_a_compact_file() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let m = persistent(&cache, "m");
    fill(&m, 0..N);
    cache.flush().unwrap();
    cache.flush().unwrap();
    let after = len(&cache);
    let packed = packed_len(&cache, dir.path());
    assert!(
        after as f64 <= packed as f64 * 1.25,
        "{after} bytes after the flush, {packed} packed"
    );
    // Every value is still there and right.
    for k in 0..N {
        assert_eq!(m.get_or_compute(&k, |_| panic!("lost {k}")), value(k));
    }
}

#[test]
fn a_held_archived_hit_postpones_compaction_and_values_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let m = persistent(&cache, "m");
    // A value large enough to be read in place (archives of 512+ bytes are aligned in
    // the file), so the hit holds its snapshot.
    let big = persistent(&cache, "big");
    big.get_or_compute(&0, |_| (0..128).collect());
    cache.flush().unwrap();
    let held = big.get_archived(&0).unwrap().expect("a hit");
    // Filled in steps, each made durable: every step's commit rewrites most leaf pages,
    // and the held snapshot keeps redb from reusing the pages the commits free.
    for step in 0..8 {
        fill(&m, step * N / 8..(step + 1) * N / 8);
        cache.flush().unwrap();
    }
    let bloated = len(&cache);
    // Copied while the writer is idle: its compaction attempt was refused, it writes
    // nothing. (A copy taken during a compaction would not be a database.)
    let packed = packed_len(&cache, dir.path());
    assert!(
        bloated as f64 > packed as f64 * 1.5,
        "the held snapshot pins the old pages: nothing to show"
    );
    assert_eq!(held.len(), 128);
    assert_eq!(held[100], 100);
    drop(held);
    // Readers on other threads while the next flush compacts.
    let stop = AtomicBool::new(false);
    /// Stops the readers however the scope ends (a failed assertion included).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        for t in 0..2u64 {
            let (m, stop) = (&m, &stop);
            s.spawn(move || {
                let mut k = t;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(m.get_or_compute(&k, |_| panic!("lost {k}")), value(k));
                    k = (k + 7919) % N;
                }
            });
        }
        fill(&m, N..N + 10);
        // A reader descheduled while it holds its snapshot can make one attempt give up
        // (it retries for a few ms): each flush tries again.
        let mut flushes = 0;
        while len(&cache) as f64 > packed as f64 * 1.25 && flushes < 20 {
            cache.flush().unwrap();
            cache.flush().unwrap();
            flushes += 1;
        }
        let after = len(&cache);
        assert!(
            after as f64 <= packed as f64 * 1.25,
            "{after} bytes after the hit was dropped and {flushes} flushes (was {bloated})"
        );
    });
}
