//! Regression test for the window found when the Redis store was moved onto the one
//! invalidation protocol: a connected leader took its entry id and fence stamp when it
//! stored, after computing, so a value computed before an invalidation's window opened,
//! and put on the server while the invalidation's server step was still on its way,
//! counted as fresh: the window served it, and the local tier could take it. Guarded
//! here, with that server step held back by a proxy: readers of the invalidating handle
//! miss the old value inside the window, no handle is served it once the invalidation
//! returned, and - under concurrent invalidations of every kind - no reader on the
//! invalidating handle's local tier, nor on another handle reading the server, is served
//! a value older than an invalidation that returned before its call began. Runs against
//! servers of its own and `FRESCO_REDIS_URL` (`.ci/redis-tests`); fails without them.

mod redis_common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Memoizer, Store, Zone};
use redis_common::{Proxy, Server, namespace, url};

fn connect(ns: &str) -> Cache {
    Cache::builder().namespace(ns).connect(&url()).unwrap()
}

/// A memoizer over `data`, whose keys all depend on the dependency key `"data"` of zone
/// `deps`.
fn memo(cache: &Cache, store: Store) -> (Memoizer<u64, u64>, Zone) {
    let deps = cache.zone("deps").unwrap();
    let m = cache
        .memoizer("versions")
        .store(store)
        .zone_key(&deps, |_: &u64| "data")
        .build()
        .unwrap();
    (m, deps)
}

#[test]
fn a_computation_that_began_before_an_invalidation_is_covered_by_its_window() {
    for store in [Store::Persistent, Store::Tiered(16)] {
        // A's invalidations reach the server slowly (its top-level UNLINK, the deleted
        // dependency stamp, is held back): its window stays open meanwhile.
        let server = Server::start(&[]);
        let proxy = Proxy::start(server.port);
        let ns = namespace("window-one");
        let connect = |url: &str| {
            let patient = Duration::from_secs(2); // waits out the held-back step
            Cache::builder()
                .namespace(&ns)
                .server_timeouts(patient, patient)
                .connect(url)
                .unwrap()
        };
        let (a, b) = (connect(&proxy.url()), connect(&server.url()));
        let ((ma, za), (mb, _)) = (memo(&a, store), memo(&b, store));
        ma.get_or_compute(&0, |_| 0); // every script loaded, stamps created
        proxy.slow_down(b"UNLINK", Duration::from_millis(500));
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        std::thread::scope(|s| {
            let ma = &ma;
            let computing = s.spawn(move || {
                ma.get_or_compute(&1, |_| {
                    started_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    1 // computed from the data as it was before the invalidation
                })
            });
            started.recv().unwrap();
            let invalidating = s.spawn(|| za.invalidate("data").unwrap());
            // The window is open and the server step on its way; the computation ends
            // and stores (the server does not know of the invalidation yet).
            std::thread::sleep(Duration::from_millis(100));
            go.send(()).unwrap();
            assert_eq!(computing.join().unwrap(), 1, "the caller gets its value");
            assert!(
                !invalidating.is_finished(),
                "the server step is still held back"
            );
            // In the window, A's readers miss what it covers - the old value, wherever
            // it was stored.
            assert_eq!(
                ma.get_or_compute(&1, |_| 2),
                2,
                "{store:?}: a, in the window"
            );
            invalidating.join().unwrap();
        });
        // Once the invalidation returned, neither handle is served the old value.
        let old = |m: &Memoizer<u64, u64>| m.get_or_compute(&1, |_| 3) == 1;
        assert!(!old(&ma), "{store:?}: a, after");
        assert!(!old(&mb), "{store:?}: b, after");
        assert_eq!(a.health().errors, 0, "{:?}", a.health().last_error);
    }
}

#[test]
fn no_reader_is_served_a_value_older_than_a_returned_invalidation() {
    let ns = namespace("window-many");
    let (a, b) = (connect(&ns), connect(&ns));
    // The invalidating handle reads through its local tier; the other reads the server.
    let (ma, za) = memo(&a, Store::Tiered(64));
    let (mb, _) = memo(&b, Store::Persistent);
    // The data: its version. A computation returns the version it read when it began.
    let data = AtomicU64::new(1);
    // The newest version whose invalidation has returned: every value computed before
    // it was written (older versions) is gone for every reader.
    let invalidated = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let served = AtomicU64::new(0);
    let compute = |_: &u64| {
        let v = data.load(Ordering::SeqCst);
        std::thread::yield_now(); // let invalidations overtake the computation
        v
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let until = Instant::now() + Duration::from_millis(1500);
            let mut round = 0u64;
            while Instant::now() < until {
                let v = data.fetch_add(1, Ordering::SeqCst) + 1;
                match round % 3 {
                    0 => za.invalidate("data").map(|_| ()).unwrap(),
                    1 => ma.invalidate_key(&(round % 4)).map(|_| ()).unwrap(),
                    _ => ma.invalidate_all().map(|_| ()).unwrap(),
                }
                // Invalidating one key of four covers only that key: record the version
                // for the others only when every key was covered.
                if round % 3 != 1 {
                    invalidated.store(v, Ordering::SeqCst);
                }
                round += 1;
                std::thread::sleep(Duration::from_micros(300));
            }
            stop.store(true, Ordering::SeqCst);
        });
        for m in [&ma, &ma, &mb, &mb] {
            let (invalidated, stop, served, compute) = (&invalidated, &stop, &served, &compute);
            s.spawn(move || {
                let mut k = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    k = (k + 1) % 4;
                    let floor = invalidated.load(Ordering::SeqCst);
                    let got = m.get_or_compute(&k, compute);
                    assert!(
                        got >= floor,
                        "served version {got} after the invalidation of version {floor} returned"
                    );
                    served.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert!(served.load(Ordering::Relaxed) > 100, "the readers ran");
    assert_eq!(a.health().errors, 0, "{:?}", a.health().last_error);
    assert_eq!(b.health().errors, 0, "{:?}", b.health().last_error);
}
