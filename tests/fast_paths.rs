//! Fast paths, concurrency half (issue 4, points 1-3): single-flight computes a missing
//! key once however many threads ask, releases its waiters when the computation fails or
//! panics (they retry; one of them computes), and never makes different keys wait on
//! each other; a value is visible to the next call at once, and once an invalidation
//! returns no call sees the old value - for every store, from many threads.
//!
//! No assertion here depends on timing: overlap is forced with barriers and channels,
//! and a broken implementation shows up as a wrong count or a deadlock (caught by a
//! generous `recv_timeout`, which only turns a hang into a failure).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use fresco_memoize::{Cache, Memoizer, Store};

/// Long enough that only a deadlock reaches it.
const HANG: Duration = Duration::from_secs(30);

const STORES: [Store; 4] = [
    Store::Memory,
    Store::Lru(64),
    Store::Persistent,
    Store::Tiered(64),
];

fn memo(cache: &Cache, name: &str, store: Store) -> Memoizer<u64, (u64, u64)> {
    cache
        .memoizer::<u64, (u64, u64)>(name)
        .store(store)
        .build()
        .unwrap()
}

/// Runs `f` on a thread and returns its result, failing (instead of hanging) if it
/// does not finish.
fn finishes<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(HANG)
        .unwrap_or_else(|_| panic!("{what}: did not finish (deadlock?)"))
}

#[test]
fn sixteen_threads_one_key_compute_once() {
    const THREADS: usize = 16;
    for store in STORES {
        let cache = Cache::in_memory().unwrap();
        let m = memo(&cache, "sf", store);
        let computes = Arc::new(AtomicU64::new(0));
        let start = Arc::new(Barrier::new(THREADS + 1));
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(std::sync::Mutex::new(release_rx));
        let mut handles = Vec::new();
        for _ in 0..THREADS {
            let (m, computes, start, release_rx) = (
                m.clone(),
                computes.clone(),
                start.clone(),
                release_rx.clone(),
            );
            handles.push(thread::spawn(move || {
                start.wait();
                m.get_or_compute(&7, |k| {
                    computes.fetch_add(1, Ordering::SeqCst);
                    // Held until every thread is inside its call.
                    release_rx.lock().unwrap().recv().unwrap();
                    (*k, 49)
                })
            }));
        }
        start.wait();
        // Every thread is now at or inside its call; the leader is parked in the compute,
        // so the others can only wait for it (or, if single-flight were broken, compute
        // themselves and park as well). Give them a moment to pile up, then release
        // every compute that started.
        thread::sleep(Duration::from_millis(50));
        for _ in 0..THREADS {
            let _ = release_tx.send(());
        }
        for h in handles {
            assert_eq!(h.join().unwrap(), (7, 49), "{store:?}");
        }
        assert_eq!(computes.load(Ordering::SeqCst), 1, "{store:?}");
        let stats = m.stats();
        assert_eq!(
            (stats.misses, stats.hits),
            (1, THREADS as u64 - 1),
            "{store:?}"
        );
        assert_eq!(stats.inserts, 1, "{store:?}");
    }
}

#[test]
fn different_keys_never_wait_on_each_other() {
    const THREADS: usize = 8;
    for store in STORES {
        let cache = Cache::in_memory().unwrap();
        let m = memo(&cache, "keys", store);
        // Every compute waits at one barrier: it only opens once all eight computes are
        // running at the same time, which is impossible if any call waits for another.
        let all_computing = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS as u64)
            .map(|k| {
                let (m, all_computing) = (m.clone(), all_computing.clone());
                thread::spawn(move || {
                    m.get_or_compute(&k, |k| {
                        all_computing.wait();
                        (*k, k * 10)
                    })
                })
            })
            .collect();
        let results = finishes("eight keys computing at once", move || {
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        });
        for (k, v) in results.into_iter().enumerate() {
            assert_eq!(v, (k as u64, k as u64 * 10), "{store:?}");
        }
    }
}

#[test]
fn a_slow_compute_on_one_key_does_not_block_another() {
    for store in STORES {
        let cache = Cache::in_memory().unwrap();
        let m = memo(&cache, "slow", store);
        m.get_or_compute(&2, |k| (*k, 0)); // key 2 is a hit, key 3 a miss
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let slow = {
            let m = m.clone();
            thread::spawn(move || {
                m.get_or_compute(&1, |k| {
                    entered_tx.send(()).unwrap();
                    release_rx.recv().unwrap();
                    (*k, 1)
                })
            })
        };
        entered_rx.recv().unwrap();
        // Key 1's compute is parked until we release it: these calls must not wait.
        let m2 = m.clone();
        let others = finishes("calls beside a parked compute", move || {
            (
                m2.get_or_compute(&2, |_| unreachable!("stored above")),
                m2.get_or_compute(&3, |k| (*k, 3)),
            )
        });
        assert_eq!(others, ((2, 0), (3, 3)), "{store:?}");
        release_tx.send(()).unwrap();
        assert_eq!(slow.join().unwrap(), (1, 1), "{store:?}");
    }
}

/// The leader's computation fails (`Err` or panic) while others wait on it. Waiters are
/// released and retry: exactly one of them computes, the rest receive its value.
fn failing_leader(store: Store, panics: bool) {
    const WAITERS: usize = 6;
    let cache = Cache::in_memory().unwrap();
    let m = memo(&cache, "fail", store);
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let leader = {
        let m = m.clone();
        thread::spawn(move || {
            m.try_get_or_compute(&5, |_| {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                if panics {
                    panic!("leader compute panics");
                }
                Err("leader compute fails")
            })
        })
    };
    entered_rx.recv().unwrap();
    let retried = Arc::new(AtomicU64::new(0));
    let started = Arc::new(Barrier::new(WAITERS + 1));
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| {
            let (m, retried, started) = (m.clone(), retried.clone(), started.clone());
            thread::spawn(move || {
                started.wait();
                m.try_get_or_compute(&5, |k| {
                    retried.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, &str>((*k, 55))
                })
            })
        })
        .collect();
    started.wait();
    thread::sleep(Duration::from_millis(30)); // let the waiters reach the flight
    release_tx.send(()).unwrap();
    let leader_result = leader.join();
    if panics {
        assert!(
            leader_result.is_err(),
            "the panic reaches the leader's caller"
        );
    } else {
        assert_eq!(leader_result.unwrap(), Err("leader compute fails"));
    }
    let results = finishes("waiters after a failed leader", move || {
        waiters
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for r in results {
        assert_eq!(r, Ok((5, 55)), "{store:?}");
    }
    assert_eq!(
        retried.load(Ordering::SeqCst),
        1,
        "{store:?}: one waiter recomputes"
    );
    // Nothing poisoned: the memoizer keeps working, and the value is stored.
    assert_eq!(m.get_or_compute(&5, |_| unreachable!()), (5, 55));
    assert_eq!(m.get_or_compute(&6, |k| (*k, 66)), (6, 66));
}

#[test]
fn failing_leader_releases_waiters_and_one_retries() {
    for store in STORES {
        failing_leader(store, false);
    }
}

#[test]
fn panicking_leader_releases_waiters_and_one_retries() {
    for store in STORES {
        failing_leader(store, true);
    }
}

#[test]
fn a_computed_value_is_visible_to_the_next_call_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A long durable interval: nothing here waits for an fsync.
    let cache = Cache::builder()
        .durable_interval(Duration::from_secs(3600))
        .open(dir.path().join("ryw.memo"))
        .unwrap();
    for store in [Store::Persistent, Store::Tiered(16)] {
        let m = memo(&cache, &format!("ryw-{store:?}"), store);
        for k in 0..2_000u64 {
            assert_eq!(m.get_or_compute(&k, |k| (*k, k + 1)), (k, k + 1));
            // Straight after the store, before its batch has (necessarily) committed.
            assert_eq!(
                m.get_or_compute(&k, |_| panic!("{store:?}: key {k} computed twice")),
                (k, k + 1)
            );
            let hit = m.get_archived(&k).unwrap().expect("stored just now");
            assert_eq!(hit.1.to_native(), k + 1);
        }
        assert_eq!(m.stats().misses, 2_000);
    }
}

/// The kinds of invalidation a reader must never see through.
#[derive(Clone, Copy, Debug)]
enum Invalidation {
    Key,
    All,
    ZoneDep,
    ZoneAll,
}

/// Reader threads hammer a few keys while the main thread repeatedly moves a version
/// forward and invalidates. A call that starts after an invalidation returned must get
/// a value computed at or after that version.
fn no_stale_read_after(store: Store, how: Invalidation) {
    const READERS: usize = 2;
    const ROUNDS: u64 = 60;
    const KEYS: u64 = 3;
    let cache = Cache::in_memory().unwrap();
    let zone = cache.zone("z").unwrap().key(|k: &u64| *k);
    let m = cache
        .memoizer::<u64, (u64, u64)>("stale")
        .store(store)
        .zone(&zone)
        .build()
        .unwrap();
    // `version`: what a compute records now. `settled`: every invalidation up to this
    // version has returned.
    let version = Arc::new(AtomicU64::new(0));
    let settled = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (m, version, settled, stop, total) = (
                m.clone(),
                version.clone(),
                settled.clone(),
                stop.clone(),
                calls.clone(),
            );
            thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let key = (calls + r as u64) % KEYS;
                    let floor = settled.load(Ordering::SeqCst);
                    let (k, v) = m.get_or_compute(&key, |k| (*k, version.load(Ordering::SeqCst)));
                    assert_eq!(k, key);
                    assert!(
                        v >= floor,
                        "{store:?}/{how:?}: saw version {v} after {floor} settled"
                    );
                    calls += 1;
                    total.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        // Interleave for sure: the readers make progress within every round.
        let seen = calls.load(Ordering::SeqCst);
        while calls.load(Ordering::SeqCst) < seen + READERS as u64 {
            thread::yield_now();
        }
        version.store(round, Ordering::SeqCst);
        match how {
            Invalidation::Key => {
                for k in 0..KEYS {
                    m.invalidate_key(&k).unwrap();
                }
            }
            Invalidation::All => {
                m.invalidate_all().unwrap();
            }
            Invalidation::ZoneDep => {
                for k in 0..KEYS {
                    zone.invalidate(&k).unwrap();
                }
            }
            Invalidation::ZoneAll => {
                zone.invalidate_all().unwrap();
            }
        }
        settled.store(round, Ordering::SeqCst);
        for k in 0..KEYS {
            let (_, v) = m.get_or_compute(&k, |k| (*k, version.load(Ordering::SeqCst)));
            assert!(
                v >= round,
                "{store:?}/{how:?}: main saw {v} in round {round}"
            );
        }
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().unwrap();
    }
}

#[test]
fn no_call_sees_a_value_after_invalidate_key_returned() {
    for store in STORES {
        no_stale_read_after(store, Invalidation::Key);
    }
}

#[test]
fn no_call_sees_a_value_after_invalidate_all_returned() {
    for store in STORES {
        no_stale_read_after(store, Invalidation::All);
    }
}

#[test]
fn no_call_sees_a_value_after_a_zone_invalidation_returned() {
    for store in STORES {
        no_stale_read_after(store, Invalidation::ZoneDep);
        no_stale_read_after(store, Invalidation::ZoneAll);
    }
}
