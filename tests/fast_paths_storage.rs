//! Fast paths, storage half (issue 4, points 1, 2, 4, 5): an `ArchivedHit` is `Send` and
//! keeps its bytes through later commits; cached read snapshots never pin
//! old pages for long (the file stays bounded while memoizers idle or readers run, but
//! a held `ArchivedHit` does pin, as documented); non-durable commits survive a clean
//! close, `Cache::flush` and the durable interval make them crash-safe; the tiered store
//! stays coherent with invalidate_key, invalidate_all, zones and expiry; the counters
//! are exact for a scripted sequence, and entry counts need no scan.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, ManualClock, Memoizer, Stats, Store};

const T0: u64 = 1_700_000_000_000;

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

/// Overwrites 64 keys with 4 KiB values `rounds` times, settling each round durably.
/// Without pinned pages, redb reuses the freed ones and the file stops growing.
fn overwrite_rounds(cache: &Cache, busy: &Memoizer<u64, Vec<u8>>, rounds: u64) {
    for round in 0..rounds {
        busy.invalidate_all().unwrap();
        for k in 0..64u64 {
            busy.get_or_compute(&k, |k| vec![(k + round) as u8; 4096]);
        }
        cache.flush().unwrap();
    }
}

/// The idle memoizer's value: an archive of 512+ bytes, which entries place so that a
/// hit reads it in place (in rkyv's aligned format a smaller one may be copied, and a
/// guard over a copy pins nothing).
const IDLE_LEN: usize = 600;

fn idle_and_busy(cache: &Cache) -> (Memoizer<u64, Vec<u8>>, Memoizer<u64, Vec<u8>>) {
    let idle = cache.memoizer::<u64, Vec<u8>>("idle").build().unwrap();
    let busy = cache.memoizer::<u64, Vec<u8>>("busy").build().unwrap();
    idle.get_or_compute(&1, |_| vec![1; IDLE_LEN]);
    cache.flush().unwrap();
    // Read once: this memoizer now has a cached snapshot... and then idles.
    assert_eq!(idle.get_or_compute(&1, |_| unreachable!()).len(), IDLE_LEN);
    (idle, busy)
}

/// 80 rounds x 256 KiB = 20 MiB written; a pinned snapshot keeps all of it.
const ROUNDS: u64 = 80;
const BOUND: u64 = 8 << 20;

#[test]
fn idle_memoizers_and_busy_readers_do_not_pin_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bounded.memo");
    let cache = Cache::open(&path).unwrap();
    let (idle, busy) = idle_and_busy(&cache);
    // A long-lived reader: hammers a third memoizer through every round.
    let reader_memo = cache.memoizer::<u64, u64>("reader").build().unwrap();
    reader_memo.get_or_compute(&0, |_| 0);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(reader_memo.get_or_compute(&0, |_| unreachable!()), 0);
                reads += 1;
            }
            reads
        })
    };
    overwrite_rounds(&cache, &busy, ROUNDS);
    stop.store(true, Ordering::SeqCst);
    assert!(reader.join().unwrap() > 0);
    let len = file_len(&path);
    assert!(len < BOUND, "file grew to {len} bytes");
    // The idle memoizer still serves its (unchanged) value.
    assert_eq!(idle.get_or_compute(&1, |_| unreachable!()).len(), IDLE_LEN);
}

#[test]
fn a_held_archived_hit_pins_its_snapshot_as_documented() {
    // The control for the test above: the same workload while a guard is held grows
    // the file past the bound, so that test would notice a pinning snapshot.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pinned.memo");
    let cache = Cache::open(&path).unwrap();
    let (idle, busy) = idle_and_busy(&cache);
    let hit = idle.get_archived(&1).unwrap().expect("stored");
    overwrite_rounds(&cache, &busy, ROUNDS);
    let len = file_len(&path);
    assert!(len > BOUND, "file only {len} bytes while a guard pinned it");
    assert_eq!(hit.len(), IDLE_LEN);
    drop(hit);
}

fn fill(m: &Memoizer<u64, String>, n: u64) {
    for k in 0..n {
        m.get_or_compute(&k, |k| format!("value {k}"));
    }
}

/// A cache at `path` with this durable interval, `n` values stored (not flushed).
fn filled_cache(path: &Path, interval: Duration, n: u64) -> (Cache, Memoizer<u64, String>) {
    let cache = Cache::builder()
        .durable_interval(interval)
        .open(path)
        .unwrap();
    let m = cache.memoizer::<u64, String>("d").build().unwrap();
    fill(&m, n);
    (cache, m)
}

fn all_present(path: &Path, n: u64) -> bool {
    let cache = Cache::open(path).unwrap();
    let m = cache.memoizer::<u64, String>("d").build().unwrap();
    (0..n).all(|k| {
        m.get_archived(&k)
            .unwrap()
            .is_some_and(|v| *v == *format!("value {k}"))
    })
}

#[test]
fn non_durable_commits_survive_a_clean_close() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clean.memo");
    drop(filled_cache(&path, Duration::from_secs(3600), 500)); // without a flush
    assert!(all_present(&path, 500));
}

/// A copy of the file taken while the cache is open is what a crash would leave.
fn crash_image(path: &Path, dir: &Path, name: &str) -> std::path::PathBuf {
    let image = dir.join(name);
    std::fs::copy(path, &image).unwrap();
    image
}

#[test]
fn flush_makes_everything_crash_safe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flushed.memo");
    let (cache, m) = filled_cache(&path, Duration::from_secs(3600), 500);
    cache.flush().unwrap();
    let image = crash_image(&path, dir.path(), "image.memo");
    assert!(all_present(&image, 500));
    drop((m, cache));
}

#[test]
fn the_durable_interval_makes_commits_crash_safe_without_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interval.memo");
    let (cache, m) = filled_cache(&path, Duration::from_millis(20), 200);
    // No flush: wait (bounded) until a crash image holds everything.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempt = 0;
    loop {
        attempt += 1;
        let image = crash_image(&path, dir.path(), &format!("image{attempt}.memo"));
        if all_present(&image, 200) {
            break;
        }
        assert!(Instant::now() < deadline, "never became durable");
        thread::sleep(Duration::from_millis(20));
    }
    drop((m, cache));
}

fn counting<'a>(counter: &'a AtomicU64) -> impl Fn(&u64) -> String + 'a {
    move |k| {
        counter.fetch_add(1, Ordering::SeqCst);
        format!("value {k}")
    }
}

#[test]
fn tiered_is_coherent_with_invalidate_key_and_invalidate_all() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("tiered.memo")).unwrap();
    let m = cache
        .memoizer::<u64, String>("t")
        .store(Store::Tiered(8))
        .build()
        .unwrap();
    let computes = AtomicU64::new(0);
    for k in 0..5 {
        m.get_or_compute(&k, counting(&computes));
    }
    assert!(m.invalidate_key(&3).unwrap());
    for k in 0..5 {
        m.get_or_compute(&k, counting(&computes));
    }
    assert_eq!(computes.load(Ordering::SeqCst), 6, "only key 3 recomputed");
    assert_eq!(m.invalidate_all().unwrap(), 5);
    for k in 0..5 {
        m.get_or_compute(&k, counting(&computes));
    }
    assert_eq!(computes.load(Ordering::SeqCst), 11, "everything recomputed");
}

#[test]
fn tiered_memory_tier_is_refilled_from_disk_after_eviction_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refill.memo");
    let computes = AtomicU64::new(0);
    let open_and_read_all = || {
        let cache = Cache::open(&path).unwrap();
        let m = cache
            .memoizer::<u64, String>("t")
            .store(Store::Tiered(2))
            .build()
            .unwrap();
        for k in 0..6 {
            m.get_or_compute(&k, counting(&computes));
        }
        (cache, m)
    };
    {
        let (_cache, m) = open_and_read_all();
        assert_eq!(m.stats().evictions, 4);
        for k in 0..6 {
            m.get_or_compute(&k, counting(&computes));
        }
    }
    let (_cache, m) = open_and_read_all();
    assert_eq!(
        computes.load(Ordering::SeqCst),
        6,
        "evicted and reopened: still hits"
    );
    // Promoted from disk into memory, then invalidated: both tiers forget it.
    assert!(m.invalidate_key(&5).unwrap());
    m.get_or_compute(&5, counting(&computes));
    assert_eq!(computes.load(Ordering::SeqCst), 7);
}

#[test]
fn tiered_is_coherent_with_zones_including_promoted_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zones.memo");
    let computes = AtomicU64::new(0);
    let build = |cache: &Cache| {
        let authors = cache.zone("authors").unwrap().key(|book: &u64| book / 10);
        let m = cache
            .memoizer::<u64, String>("books")
            .store(Store::Tiered(64))
            .zone(&authors)
            .build()
            .unwrap();
        (authors, m)
    };
    {
        let cache = Cache::open(&path).unwrap();
        let (authors, m) = build(&cache);
        for book in [10, 11, 20, 21] {
            m.get_or_compute(&book, counting(&computes));
        }
        // Author 1 (books 10, 11) from memory and disk alike.
        assert_eq!(authors.invalidate(&1u64).unwrap(), 2);
        for book in [10, 11, 20, 21] {
            m.get_or_compute(&book, counting(&computes));
        }
        assert_eq!(computes.load(Ordering::SeqCst), 6);
    }
    let cache = Cache::open(&path).unwrap();
    let (authors, m) = build(&cache);
    for book in [10, 11, 20, 21] {
        m.get_or_compute(&book, counting(&computes)); // promoted from disk
    }
    assert_eq!(computes.load(Ordering::SeqCst), 6);
    assert_eq!(authors.invalidate(&2u64).unwrap(), 2);
    for book in [10, 11, 20, 21] {
        m.get_or_compute(&book, counting(&computes));
    }
    assert_eq!(
        computes.load(Ordering::SeqCst),
        8,
        "books 20 and 21 recomputed"
    );
    assert_eq!(authors.invalidate_all().unwrap(), 4);
    for book in [10, 11, 20, 21] {
        m.get_or_compute(&book, counting(&computes));
    }
    assert_eq!(computes.load(Ordering::SeqCst), 12);
}

#[test]
fn tiered_is_coherent_with_expiry_across_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("expiry.memo");
    let clock = ManualClock::new(T0);
    let computes = AtomicU64::new(0);
    let open = || {
        let cache = Cache::builder().clock(clock.clone()).open(&path).unwrap();
        let m = cache
            .memoizer::<u64, String>("e")
            .store(Store::Tiered(16))
            .expires(Duration::from_secs(10))
            .build()
            .unwrap();
        (cache, m)
    };
    {
        let (_cache, m) = open();
        m.get_or_compute(&1, counting(&computes));
        clock.advance(Duration::from_secs(9));
        m.get_or_compute(&1, counting(&computes)); // memory tier, still live
        assert_eq!(computes.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(2));
        m.get_or_compute(&1, counting(&computes)); // expired in memory and on disk
        assert_eq!(computes.load(Ordering::SeqCst), 2);
        assert_eq!(m.stats().expirations, 1);
    }
    // Stored at T0 + 11 s: deadline T0 + 21 s. After a reopen the first hit promotes
    // the entry from disk; its deadline comes along.
    let (cache, m) = open();
    clock.advance(Duration::from_secs(5));
    m.get_or_compute(&1, counting(&computes));
    assert_eq!(computes.load(Ordering::SeqCst), 2);
    clock.advance(Duration::from_secs(6));
    m.get_or_compute(&1, counting(&computes));
    assert_eq!(
        computes.load(Ordering::SeqCst),
        3,
        "the promoted copy expired too"
    );
    // purge_expired empties both tiers of what is due.
    m.get_or_compute(&2, counting(&computes));
    clock.advance(Duration::from_secs(11));
    assert_eq!(cache.purge_expired().unwrap(), 2);
    assert_eq!(m.stats().entries, Some(0));
    m.get_or_compute(&2, counting(&computes));
    assert_eq!(computes.load(Ordering::SeqCst), 5);
}

/// Applies one scripted sequence and checks every counter after each step.
fn scripted(store: Store, evictions: [u64; 2]) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let cache = Cache::builder()
        .clock(clock.clone())
        .open(dir.path().join("stats.memo"))
        .unwrap();
    let m = cache
        .memoizer::<u64, String>("s")
        .store(store)
        .expires(Duration::from_secs(10))
        .build()
        .unwrap();
    let get = |k: u64| m.get_or_compute(&k, |k| format!("value {k}"));
    let expect = |hits, misses, inserts, evictions, expirations, invalidations, entries| {
        let s: Stats = m.stats();
        let got = (
            s.hits,
            s.misses,
            s.inserts,
            s.evictions,
            s.expirations,
            s.invalidations,
            s.entries,
        );
        let want = (
            hits,
            misses,
            inserts,
            evictions,
            expirations,
            invalidations,
            Some(entries),
        );
        assert_eq!(
            got, want,
            "{store:?}: (hits, misses, inserts, evictions, expirations, invalidations, entries)"
        );
        assert_eq!((s.stale, s.errors), (0, 0));
    };
    // Entries held: an LRU of 2 keeps two; every other store (or its disk tier) all.
    let e = if store == Store::Lru(2) { 2 } else { 3 };
    expect(0, 0, 0, 0, 0, 0, 0);
    get(1);
    expect(0, 1, 1, 0, 0, 0, 1);
    get(1);
    expect(1, 1, 1, 0, 0, 0, 1);
    get(2);
    get(3); // an LRU of 2 evicts key 1 here
    expect(1, 3, 3, evictions[0], 0, 0, e);
    get(1); // a hit wherever key 1 survived (a tiered store finds it on disk)
    let (h, m1) = if store == Store::Lru(2) {
        (1, 4)
    } else {
        (2, 3)
    };
    expect(h, m1, m1, evictions[1], 0, 0, e);
    clock.advance(Duration::from_secs(11));
    get(3); // expired: counted once, recomputed
    expect(h, m1 + 1, m1 + 1, evictions[1], 1, 0, e);
    assert!(m.invalidate_key(&3).unwrap());
    assert!(!m.invalidate_key(&99).unwrap());
    expect(h, m1 + 1, m1 + 1, evictions[1], 1, 1, e - 1);
    let all = m.invalidate_all().unwrap();
    assert_eq!(all, e - 1);
    expect(h, m1 + 1, m1 + 1, evictions[1], 1, 1 + all, 0);
}

#[test]
fn stats_are_exact_for_a_scripted_sequence() {
    scripted(Store::Memory, [0, 0]);
    scripted(Store::Lru(2), [1, 2]);
    scripted(Store::Persistent, [0, 0]);
    // The memory tier of 2 evicts like the LRU, but key 1 comes back from disk.
    scripted(Store::Tiered(2), [1, 2]);
}

#[test]
fn max_hits_used_up_counts_as_an_expiration() {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u64, u64>("mh")
        .store(Store::Persistent)
        .max_hits(2)
        .build()
        .unwrap();
    for _ in 0..4 {
        m.get_or_compute(&1, |k| *k);
    }
    let s = m.stats();
    assert_eq!((s.misses, s.hits, s.expirations), (2, 2, 1));
}

#[test]
fn persistent_entry_counts_are_exact_without_flushing_and_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("count.memo");
    {
        let cache = Cache::builder()
            .durable_interval(Duration::from_secs(3600))
            .open(&path)
            .unwrap();
        let a = cache.memoizer::<u64, u64>("a").build().unwrap();
        let b = cache.memoizer::<u64, u64>("b").build().unwrap();
        for k in 0..1_000 {
            a.get_or_compute(&k, |k| *k);
        }
        for k in 0..10 {
            b.get_or_compute(&k, |k| *k);
        }
        // Asked straight after the stores, before any flush.
        assert_eq!(a.stats().entries, Some(1_000));
        assert_eq!(b.stats().entries, Some(10));
        a.invalidate_key(&5).unwrap();
        assert_eq!(a.stats().entries, Some(999));
    }
    let cache = Cache::open(&path).unwrap();
    let a = cache.memoizer::<u64, u64>("a").build().unwrap();
    assert_eq!(a.stats().entries, Some(999));
    assert_eq!(a.stats().hits, 0, "counters start at zero for each build");
}

#[test]
fn archived_hits_are_send_and_outlive_later_commits() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("send.memo")).unwrap();
    let m = cache.memoizer::<u64, String>("s").build().unwrap();
    m.get_or_compute(&1, |_| "one".to_string());
    cache.flush().unwrap();
    let hit = m.get_archived(&1).unwrap().expect("stored");
    // Commits after the hit (an overwrite of the same key included) leave the guard's
    // bytes alone: it pins its own snapshot.
    m.invalidate_key(&1).unwrap();
    m.get_or_compute(&1, |_| "uno".to_string());
    for k in 2..200 {
        m.get_or_compute(&k, |k| k.to_string());
    }
    cache.flush().unwrap();
    let seen = thread::spawn(move || hit.as_str().to_string())
        .join()
        .unwrap();
    assert_eq!(seen, "one");
    assert_eq!(&*m.get_archived(&1).unwrap().unwrap(), "uno");
}
