//! Core behaviour (issue 2): stores, keys, values and fingerprints, expiry, max_hits,
//! invalidation, errors. Restart across processes lives in tests/restart.rs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use fresco_memoize::{Cache, Error, Fingerprint, ManualClock, Store};

fn file_cache(dir: &tempfile::TempDir) -> Cache {
    Cache::open(dir.path().join("core.memo")).unwrap()
}

/// Counts how often a computation ran.
#[derive(Default, Clone)]
struct Counter(Arc<AtomicUsize>);

impl Counter {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

const ALL_STORES: [Store; 4] = [
    Store::Memory,
    Store::Lru(64),
    Store::Persistent,
    Store::Tiered(64),
];

#[test]
fn every_store_computes_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let calls = Counter::default();
        let m = cache
            .memoizer::<u64, u64>(&format!("store{i}"))
            .store(store)
            .build()
            .unwrap();
        for round in 0..3 {
            for k in 0..50u64 {
                let c = calls.clone();
                assert_eq!(
                    m.get_or_compute(&k, |k| {
                        c.bump();
                        k * 3
                    }),
                    k * 3,
                    "{store:?} round {round}"
                );
            }
        }
        assert_eq!(calls.get(), 50, "{store:?} recomputed");
        let stats = m.stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.inserts),
            (50, 100, 50),
            "{store:?}"
        );
    }
}

#[test]
fn lru_store_is_bounded_and_evicts_least_recent() {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u32, u32>("lru")
        .store(Store::Lru(3))
        .build()
        .unwrap();
    for k in 0..3 {
        m.get_or_compute(&k, |k| *k);
    }
    m.get_or_compute(&0, |_| unreachable!("0 is cached")); // 0 becomes most recent
    m.get_or_compute(&3, |k| *k); // evicts 1, the least recently used
    assert_eq!(m.stats().entries, Some(3));
    assert_eq!(m.stats().evictions, 1);
    let calls = Counter::default();
    for k in [0, 2, 3] {
        let c = calls.clone();
        m.get_or_compute(&k, |k| {
            c.bump();
            *k
        });
    }
    assert_eq!(calls.get(), 0, "0, 2 and 3 must still be cached");
    let c = calls.clone();
    m.get_or_compute(&1, |k| {
        c.bump();
        *k
    });
    assert_eq!(calls.get(), 1, "1 was evicted");
}

#[test]
fn memoizers_in_one_file_never_see_each_others_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    let a = cache.memoizer::<u64, String>("a").build().unwrap();
    let b = cache.memoizer::<u64, String>("b").build().unwrap();
    assert_eq!(a.get_or_compute(&1, |_| "from a".into()), "from a");
    assert_eq!(b.get_or_compute(&1, |_| "from b".into()), "from b");
    assert_eq!(a.get_or_compute(&1, |_| unreachable!()), "from a");
    assert_eq!(a.invalidate_all().unwrap(), 1);
    assert_eq!(b.get_or_compute(&1, |_| unreachable!()), "from b");
    assert_eq!(b.stats().entries, Some(1));
}

#[test]
fn building_a_live_name_twice_is_an_error() {
    let cache = Cache::in_memory().unwrap();
    let first = cache.memoizer::<u64, u64>("dup").build().unwrap();
    let err = cache.memoizer::<u64, u64>("dup").build().unwrap_err();
    assert!(matches!(err, Error::MemoizerInUse { .. }), "{err}");
    drop(first);
    cache
        .memoizer::<u64, u64>("dup")
        .build()
        .expect("free again once dropped");
    let err = cache.memoizer::<u64, u64>("").build().unwrap_err();
    assert!(matches!(err, Error::InvalidName { .. }));
}

#[test]
fn tuple_keys_are_several_arguments() {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<(u32, String, bool), String>("t")
        .build()
        .unwrap();
    let k1 = (1, "x".to_string(), true);
    let k2 = (1, "x".to_string(), false);
    assert_eq!(
        m.get_or_compute(&k1, |k| format!("{k:?}")),
        format!("{k1:?}")
    );
    assert_eq!(
        m.get_or_compute(&k2, |k| format!("{k:?}")),
        format!("{k2:?}")
    );
    assert_eq!(m.get_or_compute(&k1, |_| unreachable!()), format!("{k1:?}"));
}

#[test]
fn keyfunc_maps_arguments_to_shared_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    let m = cache
        .memoizer::<str, String>("ci")
        .keyfunc(|s: &str| s.to_lowercase())
        .build()
        .unwrap();
    assert_eq!(m.get_or_compute("Foo", |s| s.to_string()), "Foo");
    assert_eq!(
        m.get_or_compute("foo", |s| s.to_string()),
        "Foo",
        "shares Foo's entry"
    );
    assert_eq!(m.get_or_compute("FOO", |s| s.to_string()), "Foo");
    assert!(
        m.invalidate_key("fOO").unwrap(),
        "invalidate goes through keyfunc"
    );
    assert_eq!(m.get_or_compute("foo", |s| s.to_string()), "foo");
}

/// A hash that sends every key to the same row.
fn constant_hash(_: &[u8]) -> [u8; 16] {
    [7; 16]
}

#[test]
fn forced_hash_collision_never_returns_another_keys_value() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for store in ALL_STORES {
        let name = format!("collide-{store:?}");
        let m = cache
            .memoizer::<u64, u64>(&name)
            .store(store)
            .__key_hasher(constant_hash)
            .build()
            .unwrap();
        assert_eq!(m.get_or_compute(&1, |_| 100), 100);
        // Same row, different key: must be a miss, not 100.
        assert_eq!(m.get_or_compute(&2, |_| 200), 200, "{store:?}");
        assert_eq!(
            m.get_or_compute(&1, |_| 101),
            101,
            "{store:?}: 2 displaced 1's row"
        );
        assert!(m.get_archived(&2).unwrap().is_none(), "{store:?}");
        assert_eq!(*m.get_archived(&1).unwrap().unwrap(), 101, "{store:?}");
        assert!(m.stats().stale >= 1);
    }
}

#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug, PartialEq, Clone,
)]
struct Synopsis {
    title: String,
    chapters: Vec<u32>,
    rating: Option<f32>,
}

#[test]
fn owned_and_archived_hits_agree_for_structs() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u64, Synopsis>(&format!("syn{i}"))
            .store(store)
            .build()
            .unwrap();
        let want = Synopsis {
            title: "Dune".into(),
            chapters: vec![1, 2, 3],
            rating: Some(4.5),
        };
        let w = want.clone();
        assert_eq!(m.get_or_compute(&7, move |_| w), want);
        assert_eq!(m.get_or_compute(&7, |_| unreachable!()), want);
        let hit = m.get_archived(&7).unwrap().expect("hit");
        assert_eq!(hit.title.as_str(), "Dune");
        assert_eq!(hit.chapters.len(), 3);
        assert_eq!(hit.deserialize().unwrap(), want);
        assert!(m.get_archived(&8).unwrap().is_none());
    }
}

#[test]
fn unit_and_none_results_are_cached() {
    let cache = Cache::in_memory().unwrap();
    let calls = Counter::default();
    let unit = cache
        .memoizer::<u8, ()>("unit")
        .store(Store::Persistent)
        .build()
        .unwrap();
    let none = cache
        .memoizer::<u8, Option<u64>>("none")
        .store(Store::Persistent)
        .build()
        .unwrap();
    for _ in 0..3 {
        let c = calls.clone();
        unit.get_or_compute(&1, |_| c.bump());
        let c = calls.clone();
        assert_eq!(
            none.get_or_compute(&1, |_| {
                c.bump();
                None
            }),
            None
        );
    }
    assert_eq!(calls.get(), 2);
}

#[test]
fn expiry_counts_from_store_time_and_hits_do_not_extend_it() {
    let clock = ManualClock::new(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .clock(clock.clone())
        .open(dir.path().join("e.memo"))
        .unwrap();
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u8, u32>(&format!("exp{i}"))
            .store(store)
            .expires(Duration::from_secs(10))
            .build()
            .unwrap();
        let calls = Counter::default();
        let get = |v: u32| {
            let c = calls.clone();
            m.get_or_compute(&1, move |_| {
                c.bump();
                v
            })
        };
        assert_eq!(get(1), 1);
        clock.advance(Duration::from_secs(6));
        assert_eq!(get(2), 1, "{store:?}: still fresh at 6 s");
        clock.advance(Duration::from_secs(3));
        assert_eq!(get(3), 1, "{store:?}: still fresh at 9 s");
        clock.advance(Duration::from_secs(1));
        assert_eq!(get(4), 4, "{store:?}: expired at 10 s although hit at 9 s");
        assert!(m.get_archived(&1).unwrap().is_some());
        clock.advance(Duration::from_secs(10));
        assert!(
            m.get_archived(&1).unwrap().is_none(),
            "{store:?}: expired archived hit"
        );
        assert_eq!(calls.get(), 2);
        assert!(m.stats().expirations >= 1);
    }
}

#[test]
fn expiry_deadline_survives_reopen() {
    let clock = ManualClock::new(5_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ttl.memo");
    // Each call reopens the file, as a restarted program would.
    let call = |value: u8| {
        let cache = Cache::builder().clock(clock.clone()).open(&path).unwrap();
        let m = cache
            .memoizer::<u8, u8>("ttl")
            .expires(Duration::from_secs(60))
            .build()
            .unwrap();
        let got = m.get_or_compute(&1, |_| value);
        assert!(cache.check_integrity().unwrap().is_ok());
        got
    };
    assert_eq!(call(1), 1);
    clock.advance(Duration::from_secs(30));
    assert_eq!(call(2), 1, "30 s of 60: still valid after reopen");
    clock.advance(Duration::from_secs(31));
    assert_eq!(call(3), 3, "61 s: expired across reopen");
}

#[test]
fn purge_expired_removes_due_entries_and_their_index_rows() {
    let clock = ManualClock::new(1_000);
    let cache = Cache::builder().clock(clock.clone()).in_memory().unwrap();
    let short = cache
        .memoizer::<u32, u32>("short")
        .store(Store::Persistent)
        .expires(Duration::from_secs(1))
        .build()
        .unwrap();
    let long = cache
        .memoizer::<u32, u32>("long")
        .store(Store::Tiered(8))
        .expires(Duration::from_secs(100))
        .build()
        .unwrap();
    let mem = cache
        .memoizer::<u32, u32>("mem")
        .store(Store::Memory)
        .expires(Duration::from_secs(1))
        .build()
        .unwrap();
    for k in 0..20 {
        short.get_or_compute(&k, |k| *k);
        long.get_or_compute(&k, |k| *k);
        mem.get_or_compute(&k, |k| *k);
    }
    assert_eq!(cache.purge_expired().unwrap(), 0);
    clock.advance(Duration::from_secs(2));
    assert_eq!(cache.purge_expired().unwrap(), 40);
    assert_eq!(short.stats().entries, Some(0));
    assert_eq!(long.stats().entries, Some(20));
    assert_eq!(mem.stats().entries, Some(0));
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.expiry_rows, 20);
}

#[test]
fn max_hits_serves_each_value_n_times_then_recomputes() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u8, usize>(&format!("mh{i}"))
            .store(store)
            .max_hits(3)
            .build()
            .unwrap();
        let calls = Counter::default();
        let mut served = Vec::new();
        for _ in 0..10 {
            let c = calls.clone();
            served.push(m.get_or_compute(&1, move |_| {
                c.bump();
                c.get()
            }));
        }
        // ceil(10 / (3 + 1)) = 3 computes; each value served once fresh + 3 hits.
        assert_eq!(calls.get(), 3, "{store:?}");
        assert_eq!(served, vec![1, 1, 1, 1, 2, 2, 2, 2, 3, 3], "{store:?}");
    }
}

#[test]
fn max_hits_is_exact_under_eight_threads() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in [Store::Persistent, Store::Memory, Store::Tiered(16)]
        .into_iter()
        .enumerate()
    {
        let m = cache
            .memoizer::<u8, u64>(&format!("mh8-{i}"))
            .store(store)
            .max_hits(5)
            .build()
            .unwrap();
        let computes = Counter::default();
        let per_value = Arc::new(std::sync::Mutex::new(
            std::collections::HashMap::<u64, usize>::new(),
        ));
        let barrier = Arc::new(Barrier::new(8));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (m, computes, per_value, barrier) = (
                    m.clone(),
                    computes.clone(),
                    per_value.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    for _ in 0..300 {
                        let c = computes.clone();
                        let v = m.get_or_compute(&9, move |_| {
                            c.bump();
                            c.get() as u64
                        });
                        *per_value.lock().unwrap().entry(v).or_default() += 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let served = per_value.lock().unwrap();
        // 2400 calls: every value is served at most 1 + 5 times, so at least 400 computes,
        // and exactly ceil(2400 / 6) = 400 when no value is under-served.
        assert!(
            served.values().all(|&n| n <= 6),
            "{store:?} over-served: {served:?}"
        );
        assert_eq!(served.values().sum::<usize>(), 2400);
        assert_eq!(computes.get(), 400, "{store:?}");
    }
}

#[test]
fn invalidate_key_removes_exactly_that_entry() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u32, u32>(&format!("ik{i}"))
            .store(store)
            .build()
            .unwrap();
        for k in 0..10 {
            m.get_or_compute(&k, |k| *k);
        }
        assert!(m.invalidate_key(&4).unwrap(), "{store:?}");
        assert!(!m.invalidate_key(&4).unwrap(), "{store:?}: already gone");
        assert_eq!(m.stats().entries, Some(9), "{store:?}");
        assert_eq!(m.get_or_compute(&4, |_| 40), 40, "{store:?}");
        for k in (0..10).filter(|k| *k != 4) {
            assert_eq!(m.get_or_compute(&k, |_| unreachable!()), k, "{store:?}");
        }
        assert_eq!(m.invalidate_all().unwrap(), 10, "{store:?}");
        assert_eq!(m.stats().entries, Some(0), "{store:?}");
        assert_eq!(m.get_or_compute(&1, |_| 11), 11, "{store:?}");
    }
    assert!(cache.check_integrity().unwrap().is_ok());
}

#[test]
fn try_get_or_compute_caches_nothing_on_err_and_returns_it_untouched() {
    #[derive(Debug, PartialEq)]
    struct MyError(&'static str);
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u8, u8>(&format!("err{i}"))
            .store(store)
            .build()
            .unwrap();
        assert_eq!(
            m.try_get_or_compute(&1, |_| Err(MyError("db down"))),
            Err(MyError("db down"))
        );
        assert_eq!(m.stats().entries, Some(0), "{store:?}: an error was cached");
        assert_eq!(m.try_get_or_compute(&1, |_| Ok::<_, MyError>(5)), Ok(5));
        assert_eq!(m.try_get_or_compute(&1, |_| Err(MyError("unused"))), Ok(5));
    }
}

#[test]
fn a_panicking_compute_caches_nothing_and_leaves_the_memoizer_usable() {
    let dir = tempfile::tempdir().unwrap();
    let cache = file_cache(&dir);
    for (i, store) in ALL_STORES.into_iter().enumerate() {
        let m = cache
            .memoizer::<u8, u8>(&format!("panic{i}"))
            .store(store)
            .build()
            .unwrap();
        let m2 = m.clone();
        let result = std::thread::spawn(move || m2.get_or_compute(&1, |_| panic!("boom"))).join();
        assert!(result.is_err(), "the panic reaches its caller");
        let m3 = m.clone();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m3.get_or_compute(&1, |_| panic!("boom again"))
        }));
        assert!(caught.is_err());
        assert_eq!(
            m.get_or_compute(&1, |_| 9),
            9,
            "{store:?}: usable after panics"
        );
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 9);
    }
}

#[test]
fn errors_display_what_to_do_and_wire_sources() {
    use std::error::Error as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.memo");
    let _first = Cache::open(&path).unwrap();
    let err = Cache::open(&path).unwrap_err();
    assert!(matches!(err, Error::AlreadyOpen { .. }));
    let text = err.to_string();
    assert!(
        text.contains("held.memo") && text.contains("share one Cache"),
        "{text}"
    );

    let not_cache = dir.path().join("notes.txt");
    std::fs::write(&not_cache, b"dear diary").unwrap();
    let err = Cache::open(&not_cache).unwrap_err();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert_eq!(
        std::fs::read(&not_cache).unwrap(),
        b"dear diary",
        "left untouched"
    );

    let io = Error::Io {
        path: "x".into(),
        source: std::io::Error::other("disk on fire"),
    };
    assert!(io.source().unwrap().to_string().contains("disk on fire"));
}

mod v1 {
    #[derive(
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        fresco_memoize::Fingerprint,
        Debug,
        PartialEq,
    )]
    pub struct Pair {
        pub a: u64,
        pub b: u64,
    }
}

mod v2 {
    /// Same name, same archived layout as `v1::Pair`: rkyv validation alone would accept
    /// v1 bytes as this type and misread `b`.
    #[derive(
        rkyv::Archive,
        rkyv::Serialize,
        rkyv::Deserialize,
        fresco_memoize::Fingerprint,
        Debug,
        PartialEq,
    )]
    pub struct Pair {
        pub a: u64,
        pub b: f64,
    }
}

#[test]
fn a_changed_value_type_reads_as_a_miss_after_reopen() {
    assert_eq!(
        std::mem::size_of::<rkyv::Archived<v1::Pair>>(),
        std::mem::size_of::<rkyv::Archived<v2::Pair>>()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u8, v1::Pair>("pair").build().unwrap();
        m.get_or_compute(&1, |_| v1::Pair { a: 1, b: 2 });
        let tiered = cache
            .memoizer::<u8, v1::Pair>("pair-tiered")
            .store(Store::Tiered(4))
            .build()
            .unwrap();
        tiered.get_or_compute(&1, |_| v1::Pair { a: 1, b: 2 });
    }
    let cache = Cache::open(&path).unwrap();
    for name in ["pair", "pair-tiered"] {
        let m = cache.memoizer::<u8, v2::Pair>(name).build().unwrap();
        assert!(
            m.get_archived(&1).unwrap().is_none(),
            "{name}: v1 bytes must not be read as v2"
        );
        assert_eq!(
            m.get_or_compute(&1, |_| v2::Pair { a: 1, b: 0.5 }),
            v2::Pair { a: 1, b: 0.5 }
        );
    }
    assert!(cache.check_integrity().unwrap().is_ok());
}

#[test]
fn bumping_the_version_invalidates_stored_values() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("version.memo");
    let open = |version: &str| {
        let cache = Cache::open(&path).unwrap();
        let m = cache
            .memoizer::<u8, u32>("v")
            .version(version)
            .build()
            .unwrap();
        (cache, m)
    };
    {
        let (_c, m) = open("1");
        m.get_or_compute(&1, |_| 10);
    }
    {
        let (_c, m) = open("1");
        assert_eq!(m.get_or_compute(&1, |_| 11), 10, "same version: hit");
    }
    let (_c, m) = open("2");
    assert_eq!(m.get_or_compute(&1, |_| 12), 12, "new version: miss");
}

#[test]
fn stores_become_durable_when_writes_pause_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .durable_interval(Duration::from_secs(3600))
        .open(dir.path().join("idle.memo"))
        .unwrap();
    let m = cache.memoizer::<u8, u8>("idle").build().unwrap();
    let before = cache.health().durable_commits;
    m.get_or_compute(&1, |_| 1);
    // Bounded wait for the writer's idle commit; the interval alone would take an hour.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while cache.health().durable_commits == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no durable commit after the writes paused"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
