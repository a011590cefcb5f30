//! Caught redb panics stay off stderr (issue #11, D7).
//!
//! A damaged file can make redb panic; every redb call runs under `catch_unwind` and the
//! panic becomes a reported error. But the process panic hook runs first, and the default
//! one printed `thread '...' panicked at ... btree_cursor.rs ...`, which reads as a crash
//! (for example `fresco-memoize stats` on a file with a zeroed page). Guards: no panic that
//! the library catches reaches the panic hook the program installed, the event is reported
//! through the library's own reporting, and panics elsewhere still reach that hook.
//!
//! One test in its own binary: it installs a process-wide panic hook.

use std::path::Path;
use std::sync::{Arc, Mutex};

use fresco_memoize::{Cache, Memoizer, OnCorruption};

const N: u64 = 400;
const PAGE: usize = 4096;

fn value(k: u64) -> String {
    format!("value-{k:05}-{}", "y".repeat((k % 5 * 30) as usize))
}

fn populate(path: &Path) {
    let cache = Cache::open(path).unwrap();
    let zone = cache.zone("z").unwrap().key(|k: &u64| k % 11);
    let m: Memoizer<u64, String> = cache.memoizer("m").zone(&zone).build().unwrap();
    for k in 0..N {
        m.get_or_compute(&k, |k| value(*k));
    }
    cache.flush().unwrap();
}

/// Opens the damaged copy and uses it every way that reads pages; returns the reports.
fn exercise(path: &Path) -> Vec<String> {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let seen = reports.clone();
    let opened = Cache::builder()
        .on_corruption(OnCorruption::Fail)
        .sweep_interval(None)
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .open(path);
    let mut out = Vec::new();
    match opened {
        Err(e) => out.push(e.to_string()),
        Ok(cache) => {
            if let Err(e) = cache.inspect() {
                out.push(e.to_string());
            }
            let zone = cache.zone("z").map(|z| z.key(|k: &u64| k % 11));
            if let Ok(zone) = zone {
                if let Ok(m) = cache.memoizer::<u64, String>("m").zone(&zone).build() {
                    for k in 0..N {
                        if let Ok(Some(hit)) = m.get_archived(&k) {
                            assert_eq!(hit.as_str(), value(k), "a wrong value was served");
                        }
                    }
                }
                if let Err(e) = zone.invalidate(&3u64) {
                    out.push(e.to_string());
                }
            }
            if let Err(e) = cache.check_integrity() {
                out.push(e.to_string());
            }
        }
    }
    out.extend(reports.lock().unwrap().iter().cloned());
    out
}

#[test]
fn caught_redb_panics_never_reach_the_panic_hook() {
    let printed: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let sink = printed.clone();
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sink.lock().unwrap().push(info.to_string());
        default(info);
    }));

    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.memo");
    populate(&original);
    let bytes = std::fs::read(&original).unwrap();
    let mut caught = 0;
    for page in 1..bytes.len() / PAGE {
        let path = dir.path().join(format!("zeroed-{page}.memo"));
        let mut damaged = bytes.clone();
        damaged[page * PAGE..(page + 1) * PAGE].fill(0);
        std::fs::write(&path, &damaged).unwrap();
        let reports = exercise(&path);
        caught += reports
            .iter()
            .filter(|r| r.contains("redb panicked"))
            .count();
        let _ = std::fs::remove_file(&path);
    }
    let reached = printed.lock().unwrap().clone();
    assert!(
        caught > 0,
        "no trial made redb panic: the test lost its teeth"
    );
    assert!(
        reached.is_empty(),
        "{} caught panics reached the panic hook (stderr), e.g. {:?}",
        reached.len(),
        reached.first()
    );

    // A panic the library does not catch still reaches the program's hook.
    let _ = std::panic::catch_unwind(|| panic!("the application's own panic"));
    let reached = printed.lock().unwrap().clone();
    assert_eq!(reached.len(), 1, "{reached:?}");
    assert!(
        reached[0].contains("the application's own panic"),
        "{reached:?}"
    );
}
