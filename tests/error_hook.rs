//! A panicking `on_error` hook (issue #11, D3).
//!
//! Guards: the hook runs on the cache's background writer, and a panic in it used to kill
//! that thread for good - every later value went unstored and every flush or
//! invalidation returned `WriterStopped` until the cache was reopened. The panic must be
//! caught and reported (`Health`), and the writer must live on.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fresco_memoize::__faults::{FaultKind, FaultyBackend};
use fresco_memoize::Cache;

#[test]
fn a_panicking_error_hook_is_caught_and_the_writer_lives_on() {
    let disk = FaultyBackend::in_memory();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    let cache = Cache::builder()
        .on_error(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
            panic!("a bug in the application's error hook");
        })
        .__open_backend(disk.clone())
        .unwrap();
    let m = cache.memoizer::<u64, u64>("m").build().unwrap();

    // A failed commit is reported on the writer thread: the hook panics there.
    disk.fail_writes_after(0, FaultKind::DiskFull);
    assert_eq!(m.get_or_compute(&1, |k| k + 1), 2);
    assert!(cache.flush().is_err(), "the disk is full");
    assert!(calls.load(Ordering::SeqCst) > 0, "the hook ran");
    disk.clear();

    // The writer is still there: values are stored, flushes and invalidations work.
    assert_eq!(m.get_or_compute(&2, |k| k + 1), 3);
    cache.flush().expect("the writer survived the hook's panic");
    assert_eq!(m.get_or_compute(&2, |_| unreachable!("stored")), 3);
    assert!(m.invalidate_key(&2).expect("invalidations still run"));
    assert_eq!(m.stats().entries, Some(0));

    let health = cache.health();
    let last = health.last_error.unwrap_or_default();
    assert!(last.contains("on_error hook panicked"), "{last}");
    assert!(
        last.contains("a bug in the application's error hook"),
        "{last}"
    );
}
