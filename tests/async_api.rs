//! The async API under two runtimes (tokio multi-thread and smol): one computation for
//! 1000 concurrent tasks on one key, a cancelled leader handing the computation to a
//! waiter, a panicking leader failing only its own task, threads and tasks sharing one
//! flight, and the async invalidations, flush and open.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fresco_memoize::{Cache, Memoizer, Store};

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// `n` tasks on the current tokio runtime asking for key 1; each computation they make
/// is counted in `computed` and gives `value`.
fn waiters(
    m: &Memoizer<u64, u64>,
    n: usize,
    computed: &Arc<AtomicU32>,
    value: u64,
) -> Vec<tokio::task::JoinHandle<u64>> {
    (0..n)
        .map(|_| {
            let (m, computed) = (m.clone(), computed.clone());
            tokio::spawn(async move {
                let compute = async move {
                    computed.fetch_add(1, Ordering::SeqCst);
                    value
                };
                m.get_or_compute_async(&1, compute).await
            })
        })
        .collect()
}

#[test]
fn a_thousand_tokio_tasks_on_one_key_compute_once() {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u64, String>("t")
        .store(Store::Persistent)
        .build()
        .unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    let results = tokio_rt().block_on(async {
        let tasks: Vec<_> = (0..1000)
            .map(|_| {
                let (m, computed) = (m.clone(), computed.clone());
                tokio::spawn(async move {
                    let compute = async {
                        computed.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        "value".to_string()
                    };
                    m.get_or_compute_async(&1, compute).await
                })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results
    });
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r == "value"));
    assert_eq!(computed.load(Ordering::SeqCst), 1);
    let stats = m.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits, 999);
}

#[test]
fn a_thousand_smol_tasks_on_one_key_compute_once() {
    let cache = Cache::in_memory().unwrap();
    let m = cache.memoizer::<u64, u64>("s").build().unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    let ex = smol::Executor::new();
    let results = std::thread::scope(|s| {
        // Two threads run the executor, so the tasks really are concurrent.
        let (stop, until) = smol::channel::unbounded::<()>();
        for _ in 0..2 {
            let (ex, until) = (&ex, until.clone());
            s.spawn(move || smol::block_on(ex.run(until.recv())));
        }
        let results = smol::block_on(ex.run(async {
            let tasks: Vec<_> = (0..1000)
                .map(|_| {
                    let (m, computed) = (m.clone(), computed.clone());
                    ex.spawn(async move {
                        let compute = async {
                            computed.fetch_add(1, Ordering::SeqCst);
                            smol::Timer::after(Duration::from_millis(20)).await;
                            42
                        };
                        m.get_or_compute_async(&7, compute).await
                    })
                })
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await);
            }
            results
        }));
        drop(stop);
        results
    });
    assert!(results.len() == 1000 && results.iter().all(|&r| r == 42));
    assert_eq!(computed.load(Ordering::SeqCst), 1);
}

#[test]
fn a_cancelled_leader_hands_the_computation_to_a_waiter() {
    let cache = Cache::in_memory().unwrap();
    let m = cache.memoizer::<u64, u64>("c").build().unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    tokio_rt().block_on(async {
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let m = m.clone();
            tokio::spawn(async move {
                let compute = async move {
                    let _ = started_tx.send(());
                    std::future::pending::<u64>().await // never finishes
                };
                m.get_or_compute_async(&1, compute).await
            })
        };
        started.await.unwrap(); // the leader is computing
        let waiters = waiters(&m, 50, &computed, 7);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(computed.load(Ordering::SeqCst), 0, "a waiter did not wait");
        leader.abort();
        assert!(leader.await.unwrap_err().is_cancelled());
        for w in waiters {
            assert_eq!(w.await.unwrap(), 7);
        }
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1, "one waiter computes");
}

#[test]
fn a_panicking_leader_fails_only_its_own_task() {
    let cache = Cache::in_memory().unwrap();
    let m = cache.memoizer::<u64, u64>("p").build().unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    tokio_rt().block_on(async {
        let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
        let (go, gate) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let m = m.clone();
            tokio::spawn(async move {
                let compute = async move {
                    let _ = started_tx.send(());
                    let _ = gate.await;
                    panic!("the computation failed")
                };
                m.get_or_compute_async(&1, compute).await
            })
        };
        started.await.unwrap();
        let waiters = waiters(&m, 20, &computed, 9);
        tokio::time::sleep(Duration::from_millis(20)).await;
        go.send(()).unwrap();
        assert!(leader.await.unwrap_err().is_panic());
        for w in waiters {
            assert_eq!(w.await.unwrap(), 9);
        }
    });
    assert_eq!(computed.load(Ordering::SeqCst), 1);
}

#[test]
fn a_thread_and_tasks_share_one_flight_either_way() {
    let cache = Cache::in_memory().unwrap();
    let m = cache.memoizer::<u64, u64>("shared").build().unwrap();
    let computed = Arc::new(AtomicU32::new(0));
    let rt = tokio_rt();

    // A thread leads; tasks wait for it without blocking their workers.
    let (go, gate) = std::sync::mpsc::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let thread = {
        let (m, computed) = (m.clone(), computed.clone());
        std::thread::spawn(move || {
            m.get_or_compute(&1, |_| {
                computed.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).unwrap();
                gate.recv().unwrap();
                11
            })
        })
    };
    started.recv().unwrap();
    let tasks = rt.block_on(async { waiters(&m, 20, &computed, 0) });
    // The runtime's two workers are free while its tasks wait: another task runs.
    assert_eq!(rt.block_on(rt.spawn(async { 5 })).unwrap(), 5);
    go.send(()).unwrap();
    assert_eq!(thread.join().unwrap(), 11);
    for t in tasks {
        assert_eq!(rt.block_on(t).unwrap(), 11);
    }
    assert_eq!(computed.load(Ordering::SeqCst), 1);

    // A task leads; a thread waits for it.
    let (go, gate) = tokio::sync::oneshot::channel::<()>();
    let (started_tx, started) = std::sync::mpsc::channel::<()>();
    let task = {
        let (m, computed) = (m.clone(), computed.clone());
        rt.spawn(async move {
            let compute = async move {
                computed.fetch_add(1, Ordering::SeqCst);
                started_tx.send(()).unwrap();
                gate.await.unwrap();
                22
            };
            m.get_or_compute_async(&2, compute).await
        })
    };
    started.recv().unwrap();
    let thread = {
        let (m, computed) = (m.clone(), computed.clone());
        std::thread::spawn(move || {
            m.get_or_compute(&2, |_| {
                computed.fetch_add(1, Ordering::SeqCst);
                0
            })
        })
    };
    std::thread::sleep(Duration::from_millis(20));
    go.send(()).unwrap();
    assert_eq!(rt.block_on(task).unwrap(), 22);
    assert_eq!(thread.join().unwrap(), 22);
    assert_eq!(computed.load(Ordering::SeqCst), 2);
}

#[test]
fn errors_are_not_cached_and_waiters_retry() {
    smol::block_on(async {
        let cache = Cache::in_memory().unwrap();
        let m = cache.memoizer::<str, u32>("e").build().unwrap();
        let failed = m
            .try_get_or_compute_async("k", async { Err::<u32, &str>("down") })
            .await;
        assert_eq!(failed, Err("down"));
        let ok = m
            .try_get_or_compute_async("k", async { Ok::<u32, &str>(3) })
            .await;
        assert_eq!(ok, Ok(3));
        let hit = m
            .try_get_or_compute_async("k", async { Err::<u32, &str>("unused") })
            .await;
        assert_eq!(hit, Ok(3));
    });
}

#[test]
fn async_invalidations_flush_and_open_reach_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("async.memo");
    smol::block_on(async {
        let cache = Cache::builder().open_async(&path).await.unwrap();
        let authors = cache.zone("Authors").unwrap();
        let m = cache
            .memoizer::<(u64, u64), String>("books")
            .store(Store::Tiered(10))
            .zone_key(&authors, |&(_, author): &(u64, u64)| author)
            .build()
            .unwrap();
        for book in 0..4u64 {
            m.get_or_compute_async(&(book, book % 2), async move { format!("b{book}") })
                .await;
        }
        cache.flush_async().await.unwrap();
        assert!(m.invalidate_key_async(&(0, 0)).await.unwrap());
        assert!(!m.invalidate_key_async(&(0, 0)).await.unwrap());
        assert_eq!(authors.invalidate_async(&1u64).await.unwrap(), 2);
        assert_eq!(m.stats().entries, Some(1));
        // Gone from both tiers: the next call computes.
        assert_eq!(
            m.get_or_compute_async(&(1, 1), async { "new".into() })
                .await,
            "new"
        );
        assert_eq!(m.invalidate_all_async().await.unwrap(), 2);
        m.get_or_compute_async(&(5, 0), async { "z".into() }).await;
        assert_eq!(authors.invalidate_all_async().await.unwrap(), 1);
        assert_eq!(m.stats().entries, Some(0));
        assert!(cache.check_integrity().unwrap().problems.is_empty());
    });
    // A second open of a held file fails through the async path too.
    let held = Cache::open(&path).unwrap();
    let again = smol::block_on(Cache::builder().open_async(&path));
    assert!(matches!(
        again,
        Err(fresco_memoize::Error::AlreadyOpen { .. })
    ));
    drop(held);
}
