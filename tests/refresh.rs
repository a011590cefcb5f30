//! `refresh_after` (serve stale while refreshing), with a `ManualClock`: after the
//! refresh age the first caller recomputes while concurrent callers (threads and tasks)
//! are served the stored value; `expires` stays the hard limit; a stale serve counts
//! towards `max_hits`; an invalidated entry is never served stale; a failed refresh
//! keeps the stored value. Over the memory, persistent and tiered stores.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use fresco_memoize::{Cache, ManualClock, Memoizer, MemoizerBuilder, Store};

const STORES: [Store; 3] = [Store::Memory, Store::Persistent, Store::Tiered(8)];

fn setup(
    store: Store,
    configure: impl FnOnce(MemoizerBuilder<u64, u64>) -> MemoizerBuilder<u64, u64>,
) -> (Cache, ManualClock, Memoizer<u64, u64>) {
    let clock = ManualClock::new(1_000_000);
    let cache = Cache::builder().clock(clock.clone()).in_memory().unwrap();
    let builder = cache.memoizer::<u64, u64>("r").store(store);
    let m = configure(builder.refresh_after(Duration::from_secs(10)))
        .build()
        .unwrap();
    (cache, clock, m)
}

/// Starts a thread whose call of `key` recomputes with a computation that blocks until
/// the returned sender fires; returns once that computation has started.
fn refreshing(
    m: &Memoizer<u64, u64>,
    key: u64,
    value: u64,
) -> (mpsc::Sender<()>, thread::JoinHandle<u64>) {
    let (go, gate) = mpsc::channel::<()>();
    let (started_tx, started) = mpsc::channel::<()>();
    let m = m.clone();
    let t = thread::spawn(move || {
        m.get_or_compute(&key, |_| {
            started_tx.send(()).unwrap();
            gate.recv().unwrap();
            value
        })
    });
    started.recv().unwrap();
    (go, t)
}

#[test]
fn a_due_value_is_served_while_one_caller_refreshes_it() {
    for store in STORES {
        let (_cache, clock, m) = setup(store, |b| b);
        assert_eq!(m.get_or_compute(&1, |_| 10), 10);
        clock.advance(Duration::from_secs(9));
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10, "not due yet");
        clock.advance(Duration::from_secs(1));
        let (go, refresher) = refreshing(&m, 1, 20);
        // The refresh is under way: others get the stored value at once.
        for _ in 0..3 {
            assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10, "{store:?}");
        }
        go.send(()).unwrap();
        assert_eq!(refresher.join().unwrap(), 20);
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 20, "{store:?}");
        let stats = m.stats();
        assert_eq!((stats.misses, stats.hits), (2, 5), "{store:?}");
        // The refreshed value is fresh for another 10 s.
        clock.advance(Duration::from_secs(9));
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 20);
    }
}

#[test]
fn tasks_are_served_the_due_value_while_a_task_refreshes_it() {
    let (_cache, clock, m) = setup(Store::Persistent, |b| b);
    smol::block_on(async {
        m.get_or_compute_async(&1, async { 10 }).await;
        clock.advance(Duration::from_secs(11));
        let (go, gate) = smol::channel::bounded::<()>(1);
        let refresher = {
            let m = m.clone();
            smol::spawn(async move {
                let compute = async move {
                    gate.recv().await.unwrap();
                    20
                };
                m.get_or_compute_async(&1, compute).await
            })
        };
        // Let the refresher start and lead.
        while m.stats().misses < 2 {
            smol::Timer::after(Duration::from_millis(1)).await;
        }
        assert_eq!(
            m.get_or_compute_async(&1, async { unreachable!() }).await,
            10
        );
        go.send(()).await.unwrap();
        assert_eq!(refresher.await, 20);
        assert_eq!(
            m.get_or_compute_async(&1, async { unreachable!() }).await,
            20
        );
    });
}

#[test]
fn expires_stays_the_hard_limit() {
    for store in STORES {
        let (_cache, clock, m) = setup(store, |b| b.expires(Duration::from_secs(30)));
        m.get_or_compute(&1, |_| 10);
        clock.advance(Duration::from_secs(31));
        let (go, refresher) = refreshing(&m, 1, 20);
        // Expired, not stale: a concurrent caller waits for the refresh.
        let waiter = {
            let m = m.clone();
            thread::spawn(move || m.get_or_compute(&1, |_| 99))
        };
        thread::sleep(Duration::from_millis(30));
        assert!(
            !waiter.is_finished(),
            "an expired value was served ({store:?})"
        );
        go.send(()).unwrap();
        assert_eq!(refresher.join().unwrap(), 20);
        assert_eq!(waiter.join().unwrap(), 20, "{store:?}");
    }
}

#[test]
fn a_stale_serve_counts_as_a_hit_for_max_hits() {
    for store in STORES {
        let (_cache, clock, m) = setup(store, |b| b.max_hits(2));
        m.get_or_compute(&1, |_| 10);
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10); // hit 1
        clock.advance(Duration::from_secs(11));
        let (go, refresher) = refreshing(&m, 1, 20);
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10); // hit 2, stale
        // Used up: the next caller is not served it and waits for the refresh.
        let waiter = {
            let m = m.clone();
            thread::spawn(move || m.get_or_compute(&1, |_| 99))
        };
        thread::sleep(Duration::from_millis(30));
        assert!(!waiter.is_finished(), "served beyond max_hits ({store:?})");
        go.send(()).unwrap();
        assert_eq!(refresher.join().unwrap(), 20);
        assert_eq!(waiter.join().unwrap(), 20, "{store:?}");
    }
}

#[test]
fn an_invalidated_entry_is_never_served_stale() {
    for store in STORES {
        let (_cache, clock, m) = setup(store, |b| b);
        m.get_or_compute(&1, |_| 10);
        clock.advance(Duration::from_secs(11));
        let (go, refresher) = refreshing(&m, 1, 20);
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10); // stale, refreshing
        assert!(m.invalidate_key(&1).unwrap());
        // Gone, not stale: a caller now waits for the refresh, which (started before
        // the invalidation) stores nothing; the caller then computes its own.
        let computed = Arc::new(AtomicU32::new(0));
        let waiter = {
            let (m, computed) = (m.clone(), computed.clone());
            thread::spawn(move || {
                m.get_or_compute(&1, |_| {
                    computed.fetch_add(1, Ordering::SeqCst);
                    30
                })
            })
        };
        thread::sleep(Duration::from_millis(30));
        assert!(
            !waiter.is_finished(),
            "an invalidated value was served ({store:?})"
        );
        go.send(()).unwrap();
        assert_eq!(refresher.join().unwrap(), 20);
        assert_eq!(waiter.join().unwrap(), 30, "{store:?}");
        assert_eq!(computed.load(Ordering::SeqCst), 1);
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 30);
    }
}

#[test]
fn a_failed_refresh_keeps_the_stored_value_and_the_next_call_retries() {
    for store in STORES {
        let (_cache, clock, m) = setup(store, |b| b);
        m.get_or_compute(&1, |_| 10);
        clock.advance(Duration::from_secs(11));
        assert_eq!(
            m.try_get_or_compute(&1, |_| Err::<u64, _>("down")),
            Err("down")
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            m.get_or_compute(&1, |_| panic!("refresh panicked"))
        }));
        assert!(panicked.is_err());
        // Still due, still there: this call refreshes.
        assert_eq!(m.get_or_compute(&1, |_| 20), 20, "{store:?}");
        assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 20);
    }
}

#[test]
fn the_refresh_age_counts_from_the_store_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refresh.memo");
    let clock = ManualClock::new(1_000_000);
    let open = || {
        let cache = Cache::builder().clock(clock.clone()).open(&path).unwrap();
        let m = cache
            .memoizer::<u64, u64>("r")
            .refresh_after(Duration::from_secs(10))
            .build()
            .unwrap();
        (cache, m)
    };
    let (cache, m) = open();
    m.get_or_compute(&1, |_| 10);
    drop((m, cache));
    clock.advance(Duration::from_secs(5));
    let (cache, m) = open();
    assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 10);
    clock.advance(Duration::from_secs(5));
    assert_eq!(m.get_or_compute(&1, |_| 20), 20, "due 10 s after the store");
    drop((m, cache));
}
