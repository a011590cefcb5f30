//! I/O faults under the cache: a disk that fills up or returns EIO on writes or fsyncs.
//!
//! Guards the policy that a failing disk never costs a caller its value, that the failure
//! is reported, that nothing made durable before the fault is lost, that no invalidation
//! that returned `Ok` is undone, and that the cache works again once the fault clears
//! (the writer reopens the database after a failed commit, because redb refuses writes
//! until then).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use fresco_memoize::__faults::{FaultKind, FaultyBackend};
use fresco_memoize::{Cache, Error, Memoizer};

fn f(k: u64) -> String {
    format!("value-{k}-{}", k.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

struct Rig {
    _dir: tempfile::TempDir,
    disk: FaultyBackend,
    cache: Cache,
    errors: Arc<Mutex<Vec<String>>>,
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let disk = FaultyBackend::file(dir.path().join("faulty.memo")).unwrap();
    let (cache, errors) = open(&disk);
    Rig {
        _dir: dir,
        disk,
        cache,
        errors,
    }
}

fn open(disk: &FaultyBackend) -> (Cache, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let cache = Cache::builder()
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .__open_backend(disk.clone())
        .unwrap();
    (cache, errors)
}

/// Counts how often the compute runs.
fn counting(m: &Memoizer<u64, String>, k: u64, computed: &AtomicU64) -> String {
    m.get_or_compute(&k, |k| {
        computed.fetch_add(1, Ordering::SeqCst);
        f(*k)
    })
}

fn assert_sound(cache: &Cache) {
    let report = cache.check_integrity().expect("integrity check runs");
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn disk_full_on_writes_costs_no_value_and_the_cache_recovers() {
    let rig = rig();
    let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..50 {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
    }
    rig.cache.flush().unwrap();

    rig.disk.fail_writes_after(0, FaultKind::DiskFull);
    for k in 100..150 {
        assert_eq!(
            m.get_or_compute(&k, |k| f(*k)),
            f(k),
            "the value still arrives"
        );
    }
    let err = rig.cache.flush().expect_err("the disk is full");
    assert!(matches!(err, Error::WriteFailed(_)), "{err}");
    assert!(rig.disk.injected() > 0);
    // The memoizer's own stats count the values its failed commits dropped (not those of
    // a non-durable commit that succeeded in memory and was rolled back with the failed
    // flush: that loss belongs to no single put).
    let errors = m.stats().errors;
    assert!(errors > 0 && errors <= 50, "Stats::errors = {errors}");
    let health = rig.cache.health();
    assert!(health.errors > 0);
    assert!(
        health
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("disk full")
            || rig
                .errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("disk full")),
        "{health:?}"
    );
    // Reads during the outage: never a wrong value.
    for k in (0..50).chain(100..150) {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
    }

    rig.disk.clear();
    rig.cache.flush().expect("the writer reopened the database");
    let computed = AtomicU64::new(0);
    for k in 0..50 {
        assert_eq!(counting(&m, k, &computed), f(k));
    }
    assert_eq!(
        computed.load(Ordering::SeqCst),
        0,
        "entries made durable before the fault are all still there"
    );
    for k in 200..220 {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
    }
    rig.cache.flush().unwrap();
    assert_sound(&rig.cache);

    // And the recovered cache persists again.
    drop(m);
    drop(rig.cache);
    let (cache, _) = open(&rig.disk);
    let m = cache.memoizer::<u64, String>("m").build().unwrap();
    let computed = AtomicU64::new(0);
    for k in (0..50).chain(200..220) {
        assert_eq!(counting(&m, k, &computed), f(k));
    }
    assert_eq!(computed.load(Ordering::SeqCst), 0);
    assert_sound(&cache);
}

#[test]
fn eio_on_fsync_fails_the_durable_commit_and_loses_only_undurable_puts() {
    let rig = rig();
    let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..30 {
        m.get_or_compute(&k, |k| f(*k));
    }
    rig.cache.flush().unwrap();

    rig.disk.fail_syncs_after(0, FaultKind::Eio);
    for k in 30..60 {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
    }
    assert!(rig.cache.flush().is_err(), "the fsync fails");
    // An invalidation is a durable commit: under a failing fsync it reports failure
    // rather than pretending.
    assert!(m.invalidate_key(&3).is_err());
    assert!(rig.cache.health().errors >= 2);

    rig.disk.clear();
    rig.cache.flush().expect("the writer reopened the database");
    let computed = AtomicU64::new(0);
    for k in 0..30 {
        assert_eq!(counting(&m, k, &computed), f(k));
    }
    assert!(
        computed.load(Ordering::SeqCst) <= 1,
        "only the entry of the failed invalidation may be gone"
    );
    for k in 30..60 {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
    }
    assert!(m.invalidate_key(&3).is_ok());
    assert!(m.get_archived(&3).unwrap().is_none());
    rig.cache.flush().unwrap();
    assert_sound(&rig.cache);
}

#[test]
fn an_invalidation_that_returned_ok_survives_a_later_failed_commit() {
    let rig = rig();
    let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..20 {
        m.get_or_compute(&k, |k| f(*k));
    }
    rig.cache.flush().unwrap();
    assert!(m.invalidate_key(&7).unwrap());
    // Non-durable puts, then a commit that fails: the database rolls back to the last
    // durable commit - which includes the invalidation.
    for k in 20..40 {
        m.get_or_compute(&k, |k| f(*k));
    }
    rig.disk.fail_syncs_after(0, FaultKind::Eio);
    assert!(rig.cache.flush().is_err());
    rig.disk.clear();
    rig.cache.flush().unwrap();
    assert!(
        m.get_archived(&7).unwrap().is_none(),
        "invalidated entry came back"
    );
    assert_sound(&rig.cache);
}

#[test]
fn a_fault_at_every_write_of_a_commit_leaves_a_sound_file() {
    // Find how many writes one batch (puts + an invalidation + flush) takes, then fail
    // each of those writes in turn.
    let probe = rig();
    let m = probe.cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..40 {
        m.get_or_compute(&k, |k| f(*k));
    }
    probe.cache.flush().unwrap();
    let before = probe.disk.writes();
    for k in 40..80 {
        m.get_or_compute(&k, |k| f(*k));
    }
    m.invalidate_key(&5).unwrap();
    probe.cache.flush().unwrap();
    let per_round = probe.disk.writes() - before;
    assert!(per_round > 0);
    drop(m);
    drop(probe);

    for fail_at in 0..per_round.min(24) {
        let rig = rig();
        let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
        for k in 0..40 {
            m.get_or_compute(&k, |k| f(*k));
        }
        rig.cache.flush().unwrap();
        rig.disk.fail_writes_after(fail_at, FaultKind::Eio);
        for k in 40..80 {
            assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
        }
        let invalidated = m.invalidate_key(&5);
        let _ = rig.cache.flush();
        rig.disk.clear();
        rig.cache.flush().unwrap();
        assert_sound(&rig.cache);
        if matches!(invalidated, Ok(true)) {
            assert!(m.get_archived(&5).unwrap().is_none(), "fail_at {fail_at}");
        }
        let computed = AtomicU64::new(0);
        for k in 0..40 {
            if k != 5 {
                assert_eq!(counting(&m, k, &computed), f(k));
            }
        }
        assert_eq!(
            computed.load(Ordering::SeqCst),
            0,
            "fail_at {fail_at}: durable entries lost"
        );
        for k in 40..80 {
            assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
        }
    }
}

#[test]
fn a_disk_that_never_recovers_never_hangs_a_caller() {
    let rig = rig();
    let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
    let zone = rig.cache.zone("z").unwrap().key(|k: &u64| k % 3);
    let z = rig
        .cache
        .memoizer::<u64, String>("z")
        .zone(&zone)
        .build()
        .unwrap();
    rig.disk.fail_writes_after(0, FaultKind::DiskFull);
    rig.disk.fail_syncs_after(0, FaultKind::Eio);
    for k in 0..500 {
        assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k));
        assert_eq!(z.get_or_compute(&k, |k| f(*k)), f(k));
        if k % 50 == 0 {
            assert!(m.invalidate_key(&k).is_err());
            assert!(zone.invalidate(&(k % 3)).is_err());
            assert!(rig.cache.flush().is_err());
        }
    }
    assert!(rig.cache.health().errors > 0);
    // Building a memoizer needs a write: it fails cleanly.
    assert!(rig.cache.memoizer::<u64, u64>("late").build().is_err());
    // Dropping the cache (a last durable commit that fails) returns.
    drop((m, z, zone));
    drop(rig.cache);
}

#[test]
fn reads_alone_reopen_the_database_once_the_fault_clears() {
    let rig = rig();
    let m = rig.cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..10 {
        m.get_or_compute(&k, |k| f(*k));
    }
    rig.cache.flush().unwrap();
    // A failed fsync closes the database; reopening needs an fsync too, so it stays
    // closed while the fault lasts, and reads miss.
    rig.disk.fail_syncs_after(0, FaultKind::Eio);
    assert!(rig.cache.flush().is_err());
    assert!(m.get_archived(&1).unwrap().is_none());
    rig.disk.clear();
    // No write follows: the reads themselves ask the writer to reopen.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.get_archived(&1).unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "never reopened");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(&*m.get_archived(&2).unwrap().unwrap(), f(2).as_str());
}
