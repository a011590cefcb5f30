//! The file's byte budget (issue 13, `CacheBuilder::max_bytes`): a churn writing ten
//! times the budget keeps the file within 1.25x of it (evictions inside the writer's
//! batches, pages reused, compaction while open - postponed while an `ArchivedHit` is
//! held); the charges and the eviction index survive a restart; evictions keep the
//! indexes exact (`check_integrity` after each step), never serve a removed value and
//! leave zones, expiry, `max_hits` and the memory tier of a tiered store working; the
//! admission policy keeps a popular entry through a scan of cold keys; `Stats` and
//! `Cache::inspect` count bytes and evictions by reason. Also a memoizer's own budget
//! (`MemoizerBuilder::max_bytes`) and the memory tiers' weigher; a file filled without a
//! budget gets its eviction index when first given one; budgets in a shared cache.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fresco_memoize::{Cache, ManualClock, Memoizer, Store};

const VALUE: usize = 50 << 10;
const BUDGET: u64 = 4 << 20;

fn blob(k: u64) -> Vec<u8> {
    let mut v = vec![(k % 251) as u8; VALUE];
    v[..8].copy_from_slice(&k.to_le_bytes());
    v
}

fn len(cache: &Cache) -> u64 {
    std::fs::metadata(cache.path().unwrap()).unwrap().len()
}

fn bounded(path: &std::path::Path) -> Cache {
    Cache::builder().max_bytes(Some(BUDGET)).open(path).unwrap()
}

fn blobs(cache: &Cache) -> Memoizer<u64, Vec<u8>> {
    cache
        .memoizer::<u64, Vec<u8>>("blobs")
        .store(Store::Persistent)
        .build()
        .unwrap()
}

fn assert_sound(cache: &Cache) {
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
}

/// A flush, then a second one: the writer's next job after a flush waits for the
/// compaction the flush started.
fn settle(cache: &Cache) {
    cache.flush().unwrap();
    cache.flush().unwrap();
}

#[test]
fn a_churn_of_ten_budgets_keeps_the_file_within_a_quarter_over() {
    let dir = tempfile::tempdir().unwrap();
    let cache = bounded(&dir.path().join("c.memo"));
    let m = blobs(&cache);
    // 800 values of 50 KiB: ten times the budget, in rounds of 80.
    let (mut largest, mut between) = (0, 0);
    for round in 0..10u64 {
        for k in round * 80..(round + 1) * 80 {
            assert_eq!(m.get_or_compute(&k, |k| blob(*k)), blob(k));
            if k % 8 == 0 {
                between = between.max(len(&cache));
            }
        }
        settle(&cache);
        largest = largest.max(len(&cache));
        assert_sound(&cache);
        let stats = m.stats();
        assert!(
            stats.bytes.unwrap() <= BUDGET,
            "round {round}: {:?} charged",
            stats.bytes
        );
    }
    assert!(
        largest as f64 <= BUDGET as f64 * 1.25,
        "the file reached {largest} bytes for a budget of {BUDGET}"
    );
    println!(
        "largest file {largest} bytes after a flush, {between} between, for a budget of {BUDGET}"
    );
    let stats = m.stats();
    assert!(
        stats.budget_evictions >= 700,
        "{} evictions",
        stats.budget_evictions
    );
    assert_eq!(stats.invalidations, 0);
    assert!(stats.entries.unwrap() < 80, "{:?} entries", stats.entries);
    // What is left is right; what went is computed again.
    let computed = AtomicU64::new(0);
    for k in 0..800 {
        let v = m.get_or_compute(&k, |k| {
            computed.fetch_add(1, Ordering::Relaxed);
            blob(*k)
        });
        assert_eq!(v, blob(k));
    }
    assert!(computed.load(Ordering::Relaxed) >= 700);
    settle(&cache);
    assert!(len(&cache) as f64 <= BUDGET as f64 * 1.25);
    assert_sound(&cache);
}

#[test]
fn a_held_archived_hit_postpones_compaction_until_it_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let cache = bounded(&dir.path().join("c.memo"));
    let m = blobs(&cache);
    let hot = u64::MAX;
    // Each churn's keys are asked for more often than the last one's before they are
    // stored: more popular than what is there, so admitted.
    let churn = |keys: std::ops::Range<u64>, asks: usize| {
        for k in keys {
            for _ in 0..asks {
                assert!(m.get_archived(&k).unwrap().is_none());
            }
            m.get_or_compute(&k, |k| blob(*k));
            // Popular, so it stays through the churn.
            m.get_or_compute(&hot, |k| blob(*k));
        }
        settle(&cache);
    };
    churn(0..40, 0);
    // Each guard's snapshot holds every page of the entries stored before it: two of
    // them, a churn apart, pin two budgets' worth of entries.
    let first = m.get_archived(&hot).unwrap().expect("a hit");
    churn(100..140, 2);
    let second = m.get_archived(&hot).unwrap().expect("a hit");
    churn(200..240, 4);
    let pinned = len(&cache);
    assert!(
        pinned as f64 > BUDGET as f64 * 1.25,
        "{pinned} bytes: the guards pinned nothing"
    );
    // The guards still read their value.
    assert_eq!(first.as_slice(), blob(hot).as_slice());
    assert_eq!(second.as_slice(), blob(hot).as_slice());
    drop((first, second));
    churn(300..310, 6);
    let after = len(&cache);
    assert!(
        after as f64 <= BUDGET as f64 * 1.25,
        "{after} bytes once the guards were dropped ({pinned} while they were held)"
    );
    assert_sound(&cache);
}

#[test]
fn charges_and_the_eviction_order_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    let charged = {
        let cache = bounded(&path);
        let m = blobs(&cache);
        for k in 0..200 {
            m.get_or_compute(&k, |k| blob(*k));
        }
        settle(&cache);
        assert_sound(&cache);
        m.stats().bytes.unwrap()
    };
    assert!(charged > BUDGET / 2 && charged <= BUDGET, "{charged}");
    // Reopened without a budget: the charges are kept all the same.
    {
        let cache = Cache::open(&path).unwrap();
        let m = blobs(&cache);
        assert_eq!(m.stats().bytes, Some(charged));
        assert_eq!(cache.check_integrity().unwrap().bytes, charged);
        assert_sound(&cache);
    }
    // Reopened with it: the churn goes on from where it was, under budget.
    let cache = bounded(&path);
    let m = blobs(&cache);
    assert_eq!(m.stats().bytes, Some(charged));
    for k in 200..600 {
        m.get_or_compute(&k, |k| blob(*k));
    }
    settle(&cache);
    assert!(m.stats().bytes.unwrap() <= BUDGET);
    assert!(len(&cache) as f64 <= BUDGET as f64 * 1.25);
    assert_sound(&cache);
    // A smaller budget at the next open takes effect with the next write.
    drop(m);
    drop(cache);
    let cache = Cache::builder()
        .max_bytes(Some(BUDGET / 4))
        .open(&path)
        .unwrap();
    let m = blobs(&cache);
    m.get_or_compute(&10_000, |k| blob(*k));
    cache.flush().unwrap();
    assert!(m.stats().bytes.unwrap() <= BUDGET / 4);
    assert_sound(&cache);
}

/// A file filled without a budget keeps no eviction rows (a put writes two rows fewer);
/// given a budget at a later open, every entry - live ones and those in a grave of an
/// `invalidate_all` not yet reclaimed - gets its rows with the first batch, and the
/// budget holds from then on.
#[test]
fn a_file_filled_without_a_budget_is_indexed_once_one_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    {
        // No sweeper: the grave stays until the next open.
        let cache = Cache::builder().sweep_interval(None).open(&path).unwrap();
        let m = blobs(&cache);
        let gone = cache
            .memoizer::<u64, Vec<u8>>("gone")
            .store(Store::Persistent)
            .build()
            .unwrap();
        for k in 0..120 {
            m.get_or_compute(&k, |k| blob(*k));
            gone.get_or_compute(&k, |k| blob(*k));
        }
        gone.invalidate_all().unwrap();
        settle(&cache);
        assert_sound(&cache);
        let charged = cache.check_integrity().unwrap().bytes;
        assert!(
            charged > 2 * BUDGET,
            "filled past the later budget: {charged}"
        );
    }
    let cache = bounded(&path);
    let m = blobs(&cache);
    // The first batch indexes the file; its round evicts under the budget.
    m.get_or_compute(&1000, |k| blob(*k));
    settle(&cache);
    assert_sound(&cache);
    let stats = m.stats();
    assert!(stats.bytes.unwrap() <= BUDGET, "{:?} charged", stats.bytes);
    assert!(stats.budget_evictions > 0);
    for k in 2000..2200 {
        m.get_or_compute(&k, |k| blob(*k));
    }
    settle(&cache);
    assert_sound(&cache);
    assert!(m.stats().bytes.unwrap() <= BUDGET);
    // What the budget holds is the newest entries (about 36 of 64 KiB charges).
    let kept = (2000..2200)
        .filter(|k| m.get_archived(k).unwrap().is_some_and(|v| *v == blob(*k)))
        .count();
    assert!(kept >= 25, "only {kept} of the newest entries kept");
}

/// Asks a hot key ten times, then scans `cold` cold keys once, flushing and asking the
/// hot key again every `every` of them: how many times the hot key was computed.
fn hot_computations(cache: &Cache, m: &Memoizer<u64, Vec<u8>>, cold: u64, every: u64) -> u64 {
    let hot = 1_000_000u64;
    let computed = AtomicU64::new(0);
    let get = |k: u64| {
        m.get_or_compute(&k, |k| {
            if *k == hot {
                computed.fetch_add(1, Ordering::Relaxed);
            }
            blob(*k)
        })
    };
    for _ in 0..10 {
        get(hot);
    }
    for k in 0..cold {
        get(k);
        if k % every == 0 {
            cache.flush().unwrap();
            get(hot);
        }
    }
    cache.flush().unwrap();
    computed.load(Ordering::Relaxed)
}

#[test]
fn a_popular_entry_outlives_a_scan_of_cold_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cache = bounded(&dir.path().join("c.memo"));
    let m = blobs(&cache);
    // A one-pass scan of three budgets' worth of cold keys, the hot key asked now and
    // then.
    assert_eq!(
        hot_computations(&cache, &m, 240, 20),
        1,
        "the hot entry was evicted"
    );
    assert!(m.stats().budget_evictions > 100);
    assert_sound(&cache);
}

#[test]
fn evictions_keep_zones_expiry_and_max_hits_exact() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::builder()
        .max_bytes(Some(BUDGET))
        .clock(clock.clone())
        .sweep_interval(None)
        .open(dir.path().join("c.memo"))
        .unwrap();
    let folders = cache.zone("folders").unwrap();
    // Keyed by (folder, file); depends on the folder.
    let thumbs = cache
        .memoizer::<(u64, u64), Vec<u8>>("thumbs")
        .store(Store::Persistent)
        .expires(Duration::from_secs(60))
        .zone_key(&folders, |&(folder, _): &(u64, u64)| folder)
        .build()
        .unwrap();
    let once = cache
        .memoizer::<u64, Vec<u8>>("once")
        .store(Store::Persistent)
        .max_hits(2)
        .build()
        .unwrap();
    let version = AtomicU64::new(0);
    let value = |folder: u64, file: u64| {
        let mut v = blob(folder * 1000 + file);
        v[8] = version.load(Ordering::Relaxed) as u8;
        v
    };
    for folder in 0..10 {
        for file in 0..20 {
            let got = thumbs.get_or_compute(&(folder, file), |&(f, n)| value(f, n));
            assert_eq!(got, value(folder, file));
        }
        cache.flush().unwrap();
        assert_sound(&cache);
    }
    assert!(thumbs.stats().budget_evictions > 100);
    // A folder invalidated after evictions: only what was left of it goes, and its new
    // values are computed under the new version.
    version.store(1, Ordering::Relaxed);
    let dropped = folders.invalidate(&9u64).unwrap();
    assert!(dropped <= 20);
    assert_sound(&cache);
    for file in 0..20 {
        assert_eq!(
            thumbs.get_or_compute(&(9, file), |&(f, n)| value(f, n))[8],
            1,
            "an invalidated value served"
        );
    }
    // Expiry: past the deadline, what eviction left expires; purging finds rows for it.
    clock.advance(Duration::from_secs(61));
    let purged = cache.purge_expired().unwrap();
    assert!(purged > 0 && purged <= 60, "{purged} purged");
    assert_eq!(thumbs.stats().entries, Some(0));
    assert_sound(&cache);
    // max_hits: a budgeted entry is served exactly twice, whatever the churn between.
    let computed = AtomicU64::new(0);
    let get_once = || {
        once.get_or_compute(&7, |k| {
            computed.fetch_add(1, Ordering::Relaxed);
            blob(*k)
        })
    };
    get_once();
    get_once();
    get_once();
    assert_eq!(computed.load(Ordering::Relaxed), 1);
    get_once();
    assert_eq!(computed.load(Ordering::Relaxed), 2);
    let stats = thumbs.stats();
    assert_eq!(stats.invalidations, dropped);
    assert_sound(&cache);
}

#[test]
fn the_memory_tier_of_a_tiered_store_serves_what_the_file_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let cache = bounded(&dir.path().join("c.memo"));
    let m = cache
        .memoizer::<u64, Vec<u8>>("tiered")
        .store(Store::Tiered(1000))
        .build()
        .unwrap();
    for k in 0..300 {
        m.get_or_compute(&k, |k| blob(*k));
    }
    cache.flush().unwrap();
    let stats = m.stats();
    assert!(stats.budget_evictions > 150, "{stats:?}");
    assert!(stats.bytes.unwrap() <= BUDGET);
    // Every value is still served, from memory, without a recompute.
    for k in 0..300 {
        assert_eq!(m.get_or_compute(&k, |_| panic!("recomputed {k}")), blob(k));
    }
    // An invalidation still reaches both tiers.
    m.invalidate_key(&5).unwrap();
    assert_eq!(m.get_or_compute(&5, |_| vec![1]), vec![1]);
    assert_sound(&cache);
}

#[test]
fn inspect_shows_charges_and_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    {
        let cache = bounded(&path);
        let m = blobs(&cache);
        for k in 0..200 {
            m.get_or_compute(&k, |k| blob(*k));
        }
        cache.flush().unwrap();
    }
    let info = Cache::inspect_file(&path).unwrap();
    let blobs = &info.memoizers[0];
    assert!(blobs.charged_bytes > 0 && blobs.charged_bytes <= BUDGET);
    assert!(blobs.budget_evictions >= 100, "{}", blobs.budget_evictions);
    assert_eq!(info.max_bytes, Some(BUDGET));
}

#[test]
fn a_byte_bound_holds_the_memory_tiers_to_their_weight() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let bound = 1 << 20;
    // An LRU by count and by bytes: the bytes bind first for 50 KiB values.
    let lru = cache
        .memoizer::<u64, Vec<u8>>("lru")
        .store(Store::Lru(1000))
        .max_memory_bytes(bound)
        .build()
        .unwrap();
    let tiered = cache
        .memoizer::<u64, Vec<u8>>("tiered")
        .store(Store::Tiered(1000))
        .max_memory_bytes(bound)
        .build()
        .unwrap();
    for k in 0..100 {
        lru.get_or_compute(&k, |k| blob(*k));
        tiered.get_or_compute(&k, |k| blob(*k));
    }
    let stats = lru.stats();
    let held = stats.entries.unwrap();
    assert!(held * VALUE as u64 <= bound as u64, "{held} entries held");
    assert!(held >= 15, "{held} entries held");
    assert_eq!(stats.evictions, 100 - held);
    // The most recent are kept; the least recent went first.
    assert_eq!(lru.get_or_compute(&99, |_| panic!("99 evicted")), blob(99));
    let computed = AtomicU64::new(0);
    lru.get_or_compute(&0, |k| {
        computed.fetch_add(1, Ordering::Relaxed);
        blob(*k)
    });
    assert_eq!(computed.load(Ordering::Relaxed), 1);
    // The tiered store's memory is held to its weight too; the file has every value.
    assert!(tiered.stats().evictions >= 100 - held);
    for k in 0..100 {
        assert_eq!(tiered.get_or_compute(&k, |_| panic!("lost {k}")), blob(k));
    }
    assert_sound(&cache);
}

// A memoizer's own budget (`MemoizerBuilder::max_bytes`).

const OWN: u64 = 1 << 20;

fn own(cache: &Cache, name: &str, max_bytes: Option<u64>) -> Memoizer<u64, Vec<u8>> {
    cache
        .memoizer::<u64, Vec<u8>>(name)
        .store(Store::Persistent)
        .max_bytes(max_bytes)
        .build()
        .unwrap()
}

#[test]
fn a_memoizer_budget_evicts_its_own_entries_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    // No file budget: only the memoizer's own bounds anything.
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let bounded = own(&cache, "bounded", Some(OWN));
    let free = own(&cache, "free", None);
    for round in 0..5u64 {
        for k in round * 20..(round + 1) * 20 {
            // Never a wrong value, evicted or not.
            assert_eq!(bounded.get_or_compute(&k, |k| blob(*k)), blob(k));
            if k < 30 {
                free.get_or_compute(&k, |k| blob(*k));
            }
        }
        cache.flush().unwrap();
        assert_sound(&cache);
        let stats = bounded.stats();
        assert!(
            stats.bytes.unwrap() <= OWN,
            "round {round}: {:?} charged",
            stats.bytes
        );
    }
    let stats = bounded.stats();
    // A 50 KiB value is charged 64 KiB: 16 fit.
    assert!(stats.entries.unwrap() >= 12, "{:?}", stats.entries);
    assert!(stats.entries.unwrap() <= 16, "{:?}", stats.entries);
    assert_eq!(stats.budget_evictions, 100 - stats.entries.unwrap());
    // The other memoizer kept every entry, and more bytes than the bounded one's budget.
    let stats = free.stats();
    assert_eq!((stats.entries, stats.budget_evictions), (Some(30), 0));
    assert!(stats.bytes.unwrap() > OWN);
    for k in 0..30 {
        assert_eq!(free.get_or_compute(&k, |_| panic!("lost {k}")), blob(k));
    }
    // Whatever the bounded memoizer still serves is right; the rest is recomputed.
    for k in 0..100 {
        assert_eq!(bounded.get_or_compute(&k, |k| blob(*k)), blob(k));
    }
    cache.flush().unwrap();
    assert!(bounded.stats().bytes.unwrap() <= OWN);
    assert_sound(&cache);
}

#[test]
fn a_memoizer_budget_holds_across_restarts_and_a_smaller_one_evicts_at_build() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    let evicted = {
        let cache = Cache::open(&path).unwrap();
        let m = own(&cache, "bounded", Some(OWN));
        for k in 0..60 {
            m.get_or_compute(&k, |k| blob(*k));
        }
        cache.flush().unwrap();
        assert_sound(&cache);
        m.stats().budget_evictions
    };
    assert!(evicted >= 40, "{evicted}");
    let info = Cache::inspect_file(&path).unwrap();
    let bounded = &info.memoizers[0];
    assert_eq!(bounded.budget_evictions, evicted);
    assert_eq!(bounded.max_bytes, Some(OWN));
    assert!(bounded.charged_bytes <= OWN);
    // The next run goes on from the stored charge and order, under the same budget.
    {
        let cache = Cache::open(&path).unwrap();
        let m = own(&cache, "bounded", Some(OWN));
        assert_eq!(m.stats().bytes, Some(bounded.charged_bytes));
        for k in 60..120 {
            assert_eq!(m.get_or_compute(&k, |k| blob(*k)), blob(k));
        }
        cache.flush().unwrap();
        assert!(m.stats().bytes.unwrap() <= OWN);
        assert_sound(&cache);
    }
    let info = Cache::inspect_file(&path).unwrap();
    assert!(info.memoizers[0].budget_evictions >= evicted + 44);
    // A smaller budget at a later build holds when `build` returns, before any write.
    let cache = Cache::open(&path).unwrap();
    let m = own(&cache, "bounded", Some(OWN / 4));
    let stats = m.stats();
    assert!(stats.bytes.unwrap() <= OWN / 4, "{:?}", stats.bytes);
    assert!(stats.budget_evictions >= 8, "{}", stats.budget_evictions);
    assert_sound(&cache);
    drop(m);
    drop(cache);
    let info = Cache::inspect_file(&path).unwrap();
    assert_eq!(info.memoizers[0].max_bytes, Some(OWN / 4));
    // The file's own budget was never set.
    assert_eq!(info.max_bytes, None);
}

#[test]
fn a_memoizer_budget_keeps_a_popular_entry_through_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    // No file budget: the memoizer counts its lookups in a sketch of its own.
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let m = own(&cache, "bounded", Some(OWN));
    // Three budgets' worth of cold keys, the hot key asked now and then.
    assert_eq!(
        hot_computations(&cache, &m, 48, 4),
        1,
        "the hot entry was evicted"
    );
    assert!(m.stats().budget_evictions >= 30);
    assert_sound(&cache);
}

#[test]
fn the_file_budget_and_a_memoizer_budget_hold_together() {
    let dir = tempfile::tempdir().unwrap();
    let cache = bounded(&dir.path().join("c.memo"));
    let small = own(&cache, "small", Some(OWN / 2));
    let large = own(&cache, "large", None);
    let folders = cache.zone("folders").unwrap();
    let zoned = cache
        .memoizer::<(u64, u64), Vec<u8>>("zoned")
        .store(Store::Tiered(4))
        .zone_key(&folders, |&(folder, _): &(u64, u64)| folder)
        .max_bytes(Some(OWN / 2))
        .build()
        .unwrap();
    for round in 0..6u64 {
        for k in round * 20..(round + 1) * 20 {
            assert_eq!(small.get_or_compute(&k, |k| blob(*k)), blob(k));
            assert_eq!(large.get_or_compute(&k, |k| blob(*k)), blob(k));
            assert_eq!(
                zoned.get_or_compute(&(k % 3, k), |&(_, k)| blob(k)),
                blob(k)
            );
        }
        settle(&cache);
        assert_sound(&cache);
        assert!(small.stats().bytes.unwrap() <= OWN / 2);
        assert!(zoned.stats().bytes.unwrap() <= OWN / 2);
        let total = cache.check_integrity().unwrap().bytes;
        assert!(total <= BUDGET, "round {round}: {total} charged");
        // A zone invalidation after evictions removes what is left, exactly.
        folders.invalidate(&(round % 3)).unwrap();
        assert_sound(&cache);
    }
    assert!(small.stats().budget_evictions > 0);
    assert!(large.stats().budget_evictions > 0);
    assert!(zoned.stats().budget_evictions > 0);
}

#[test]
fn a_memoizer_budget_needs_a_file_tier() {
    let cache = Cache::in_memory().unwrap();
    for store in [Store::Memory, Store::Lru(10)] {
        let built = cache
            .memoizer::<u64, u64>("m")
            .store(store)
            .max_bytes(Some(OWN))
            .build();
        assert!(
            matches!(built, Err(fresco_memoize::Error::Unsupported { .. })),
            "{store:?}"
        );
    }
    // An in-memory cache's persistent store is a redb database too: a budget holds.
    let m = cache
        .memoizer::<u64, Vec<u8>>("p")
        .store(Store::Persistent)
        .max_bytes(Some(OWN))
        .build()
        .unwrap();
    for k in 0..40 {
        m.get_or_compute(&k, |k| blob(*k));
    }
    cache.flush().unwrap();
    assert!(m.stats().bytes.unwrap() <= OWN);
    assert_sound(&cache);
}

// A weigher for the memory tiers (`MemoizerBuilder::weigher`).

/// Values of 100 to 500 bytes, by key.
fn sized(k: u64) -> Vec<u8> {
    vec![k as u8; 100 * (k as usize % 5 + 1)]
}

fn by_len(v: &rkyv::vec::ArchivedVec<u8>) -> u64 {
    v.len() as u64
}

/// The keys an exact LRU of `bound` weight holds after `keys` were stored in order,
/// each weighing its value's length.
fn lru_suffix(keys: std::ops::Range<u64>, bound: u64) -> Vec<u64> {
    let (mut held, mut weight) = (Vec::new(), 0);
    for k in keys.rev() {
        weight += sized(k).len() as u64;
        if weight > bound {
            break;
        }
        held.push(k);
    }
    held
}

#[test]
fn a_weigher_holds_an_lru_to_its_weights_evicting_the_least_recent() {
    let cache = Cache::in_memory().unwrap();
    let bound = 1_000u64;
    let lru = cache
        .memoizer::<u64, Vec<u8>>("lru")
        .store(Store::Lru(1_000))
        .max_memory_bytes(bound as usize)
        .weigher(by_len)
        .build()
        .unwrap();
    for k in 0..40 {
        assert_eq!(lru.get_or_compute(&k, |k| sized(*k)), sized(k));
        assert_sound(&cache);
    }
    // Exactly the most recent that fit by weight are held (a bound this small is one
    // exact LRU); the encoded sizes (a header more each) would have held fewer.
    let held = lru_suffix(0..40, bound);
    assert_eq!(lru.stats().entries, Some(held.len() as u64));
    assert_eq!(lru.stats().evictions, 40 - held.len() as u64);
    for k in 0..40 {
        let hit = lru.get_archived(&k).unwrap();
        assert_eq!(hit.is_some(), held.contains(&k), "key {k}");
        if let Some(hit) = hit {
            assert_eq!(hit.as_slice(), sized(k).as_slice());
        }
    }
    // A value heavier than the bound is returned, not kept, and evicts nothing.
    let before = lru.stats().entries;
    assert_eq!(
        lru.get_or_compute(&1_000, |_| vec![1; 1_500]),
        vec![1; 1_500]
    );
    assert_eq!(lru.stats().entries, before);
    assert_sound(&cache);
}

#[test]
fn a_weigher_holds_a_tiered_memory_tier_also_for_values_read_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    let bound = 1_000u64;
    let tiered = |cache: &Cache| {
        cache
            .memoizer::<u64, Vec<u8>>("tiered")
            .store(Store::Tiered(1_000))
            .max_memory_bytes(bound as usize)
            .weigher(by_len)
            .build()
            .unwrap()
    };
    {
        let cache = Cache::open(&path).unwrap();
        let m = tiered(&cache);
        for k in 0..40 {
            m.get_or_compute(&k, |k| sized(*k));
        }
        assert!(m.stats().evictions >= 40 - lru_suffix(0..40, bound).len() as u64);
        assert_sound(&cache);
    }
    // A new run: every value comes from the file, and each promoted copy is weighed.
    let cache = Cache::open(&path).unwrap();
    let m = tiered(&cache);
    for k in 0..40 {
        assert_eq!(m.get_or_compute(&k, |_| panic!("lost {k}")), sized(k));
        assert_sound(&cache);
    }
    let stats = m.stats();
    assert_eq!(stats.hits, 40);
    assert_eq!(stats.evictions, 40 - lru_suffix(0..40, bound).len() as u64);
}

#[test]
fn a_panicking_weigher_counts_the_encoded_size_and_breaks_nothing() {
    let cache = Cache::in_memory().unwrap();
    let lru = cache
        .memoizer::<u64, Vec<u8>>("lru")
        .store(Store::Lru(1_000))
        .max_memory_bytes(2_000)
        .weigher(|v: &rkyv::vec::ArchivedVec<u8>| {
            assert!(v.len() != 300, "a weigher that fails on 300-byte values");
            v.len() as u64
        })
        .build()
        .unwrap();
    for k in 0..40 {
        assert_eq!(lru.get_or_compute(&k, |k| sized(*k)), sized(k));
        assert_sound(&cache);
    }
    assert!(lru.stats().entries.unwrap() >= 4);
    assert_eq!(lru.stats().errors, 0);
}

/// A shared cache (`CacheBuilder::shared`) evicts for the file's budget and for a
/// memoizer's own in the same writer rounds, and keeps the indexes exact.
#[test]
fn budgets_hold_in_a_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .shared(true)
        .max_bytes(Some(BUDGET))
        .open(dir.path().join("c.memo"))
        .unwrap();
    let small = own(&cache, "small", Some(OWN));
    let large = blobs(&cache);
    for k in 0..120 {
        assert_eq!(small.get_or_compute(&k, |k| blob(*k)), blob(k));
        assert_eq!(large.get_or_compute(&k, |k| blob(*k)), blob(k));
    }
    settle(&cache);
    assert_sound(&cache);
    assert!(
        small.stats().bytes.unwrap() <= OWN,
        "{:?}",
        small.stats().bytes
    );
    let charged = cache.check_integrity().unwrap().bytes;
    assert!(charged <= BUDGET, "{charged} charged");
    assert!(small.stats().budget_evictions > 0 && large.stats().budget_evictions > 0);
}
