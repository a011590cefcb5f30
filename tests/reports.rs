//! What the library says when it handles a failure on its own (issue #11, D9 and the
//! `log` routing).
//!
//! Guards: a report's message fits what happened - a file that was already moved aside
//! and replaced does not tell the user to delete it or to open it with
//! `OnCorruption::Recreate` (the `Corrupted` advice, right only for a file refused under
//! `OnCorruption::Fail`), nor does a damaged entry that was read as a miss - and every
//! report reaches the `log` crate (target `fresco_memoize`), while `Cache::health` and the
//! error hook keep receiving it.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use fresco_memoize::{Cache, Error, OnCorruption};

/// Every record logged in this process.
struct Collect(Mutex<Vec<(log::Level, String, String)>>);

impl log::Log for Collect {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        self.0.lock().unwrap().push((
            record.level(),
            record.target().to_string(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

fn logged() -> &'static Collect {
    static LOGGER: OnceLock<&'static Collect> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger: &'static Collect = Box::leak(Box::new(Collect(Mutex::new(Vec::new()))));
        log::set_logger(logger).unwrap();
        log::set_max_level(log::LevelFilter::Trace);
        logger
    })
}

/// The log lines of this library that mention `path`.
fn logged_about(path: &Path) -> Vec<(log::Level, String)> {
    let needle = path.display().to_string();
    logged()
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, target, text)| target == "fresco_memoize" && text.contains(&needle))
        .map(|(level, _, text)| (*level, text.clone()))
        .collect()
}

fn hooked(
    builder: fresco_memoize::CacheBuilder,
) -> (fresco_memoize::CacheBuilder, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    (
        builder.on_error(move |e| sink.lock().unwrap().push(e.to_string())),
        seen,
    )
}

fn populated(path: &Path) {
    let cache = Cache::open(path).unwrap();
    let m = cache.memoizer::<u64, String>("m").build().unwrap();
    for k in 0..200 {
        m.get_or_compute(&k, |k| format!("value {k} {}", "z".repeat(40)));
    }
    cache.flush().unwrap();
}

#[test]
fn a_file_moved_aside_is_reported_as_done_not_as_something_to_do() {
    logged();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("moved.memo");
    populated(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len / 2)
        .unwrap();

    // Refused under Fail: the advice to delete or recreate fits.
    let refused = Cache::builder()
        .on_corruption(OnCorruption::Fail)
        .open(&path)
        .expect_err("damaged");
    assert!(matches!(refused, Error::Corrupted { .. }), "{refused}");
    assert!(
        refused.to_string().contains("OnCorruption::Recreate"),
        "{refused}"
    );

    // Moved aside under Recreate: done, nothing to do.
    let (builder, seen) = hooked(Cache::builder());
    let cache = builder.open(&path).unwrap();
    let aside = cache.health().moved_aside.expect("moved aside");
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let report = &seen[0];
    assert!(report.contains(&aside.display().to_string()), "{report}");
    for misleading in ["OnCorruption::Recreate", "delete it"] {
        assert!(!report.contains(misleading), "{report}");
    }
    assert_eq!(cache.health().last_error.as_ref(), Some(report));
    // The same text reached the log, as a warning: the cache handled it.
    let lines = logged_about(&path);
    assert!(
        lines
            .iter()
            .any(|(level, text)| *level == log::Level::Warn && text == report),
        "{lines:?}"
    );
}

#[test]
fn a_damaged_entry_is_reported_as_a_miss_and_logged() {
    logged();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("entry.memo");
    populated(&path);
    let victim = format!("value 150 {}", "z".repeat(40));
    let mut bytes = std::fs::read(&path).unwrap();
    // Every copy: a freed page may still hold an old one, and the live one must be hit.
    let copies: Vec<usize> = bytes
        .windows(victim.len())
        .enumerate()
        .filter(|(_, w)| *w == victim.as_bytes())
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "the value is in the file");
    for at in copies {
        bytes[at + 12] ^= 0x01;
    }
    std::fs::write(&path, &bytes).unwrap();

    let (builder, seen) = hooked(Cache::builder());
    let cache = builder.open(&path).unwrap();
    let m = cache.memoizer::<u64, String>("m").build().unwrap();
    assert_eq!(
        m.get_or_compute(&150, |_| "recomputed".into()),
        "recomputed"
    );
    let seen = seen.lock().unwrap().clone();
    let report = seen
        .iter()
        .find(|e| e.contains("\"m\""))
        .unwrap_or_else(|| panic!("no report of the damaged entry: {seen:?}"));
    assert!(report.contains("read as a miss"), "{report}");
    for misleading in ["OnCorruption::Recreate", "delete it"] {
        assert!(!report.contains(misleading), "{report}");
    }
    let lines = logged_about(&path);
    assert!(lines.iter().any(|(_, text)| text == report), "{lines:?}");
}

#[test]
fn a_failed_commit_is_logged_as_an_error() {
    use fresco_memoize::__faults::{FaultKind, FaultyBackend};
    logged();
    let disk = FaultyBackend::in_memory();
    let cache = Cache::builder().__open_backend(disk.clone()).unwrap();
    let m = cache.memoizer::<u64, u64>("full").build().unwrap();
    disk.fail_writes_after(0, FaultKind::DiskFull);
    assert_eq!(m.get_or_compute(&1, |k| k + 1), 2);
    assert!(cache.flush().is_err());
    disk.clear();
    let last = cache.health().last_error.expect("reported");
    let lines = logged().0.lock().unwrap().clone();
    assert!(
        lines
            .iter()
            .any(|(level, target, text)| *level == log::Level::Error
                && target == "fresco_memoize"
                && *text == last),
        "{last} not in {lines:?}"
    );
}
