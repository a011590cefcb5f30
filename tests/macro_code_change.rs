//! Code-change invalidation: `#[memoize]` folds a hash of the function's tokens into its
//! memoizer's version, so a persisted result of an edited function reads as a miss on the
//! next run, while a reformatted (same tokens) function still hits, and `version = "..."`
//! pins the version whatever the body says.
//!
//! Each "run" is a child process (this test binary re-run on its `child` test) that opens
//! the same cache file and calls one version of the functions, all named alike.

use std::process::Command;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};

use fresco_memoize::{Cache, memoize};

const FILE: &str = "FRESCO_CODE_CHANGE_FILE";
const PHASE: &str = "FRESCO_CODE_CHANGE_PHASE";

static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::open(std::env::var(FILE).expect("cache file")).unwrap());
static CALLS: AtomicU32 = AtomicU32::new(0);

fn bump() {
    CALLS.fetch_add(1, Ordering::SeqCst);
}

mod v1 {
    use super::*;
    #[memoize(cache = CACHE, name = "price")]
    pub fn price(n: u64) -> u64 {
        bump();
        n * 2
    }
    #[memoize(cache = CACHE, name = "pinned", version = "7")]
    pub fn pinned(n: u64) -> u64 {
        bump();
        n * 2
    }
}

/// The same tokens as `v1`, laid out and commented differently.
mod v1_reformatted {
    use super::*;
    #[memoize(cache = CACHE, name = "price")]
    pub fn price(n: u64) -> u64 {
        // counts the call
        bump();
        n * 2 // doubles
    }
}

/// An edited body.
mod v2 {
    use super::*;
    #[memoize(cache = CACHE, name = "price")]
    pub fn price(n: u64) -> u64 {
        bump();
        n * 3
    }
    #[memoize(cache = CACHE, name = "pinned", version = "7")]
    pub fn pinned(n: u64) -> u64 {
        bump();
        n * 3
    }
}

/// One run: calls the phase's functions on 5 and prints what they returned and how
/// often their bodies ran. Does nothing unless started by `edits_invalidate_...`.
#[test]
fn child() {
    let Ok(phase) = std::env::var(PHASE) else {
        return;
    };
    let (price, pinned) = match phase.as_str() {
        "v1" => (v1::price(5), v1::pinned(5)),
        "v1_reformatted" => (v1_reformatted::price(5), v1::pinned(5)),
        "v2" => (v2::price(5), v2::pinned(5)),
        other => panic!("unknown phase {other}"),
    };
    CACHE.flush().unwrap();
    println!(
        "RESULT price={price} pinned={pinned} calls={}",
        CALLS.load(Ordering::SeqCst)
    );
}

fn run(file: &std::path::Path, phase: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(FILE, file)
        .env(PHASE, phase)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{phase}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("{phase} printed no result: {stdout}"))
        .to_string()
}

#[test]
fn edits_invalidate_persisted_results_and_version_pins_them() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("code.memo");
    // First run: both bodies run.
    assert_eq!(run(&file, "v1"), "price=10 pinned=10 calls=2");
    // Same tokens, another layout: everything is served from the file.
    assert_eq!(run(&file, "v1_reformatted"), "price=10 pinned=10 calls=0");
    // Edited bodies: `price` is a miss and recomputes; `pinned` keeps its version, so
    // the old result is served (which is what pinning means).
    assert_eq!(run(&file, "v2"), "price=15 pinned=10 calls=1");
    // And back: the v1 hash differs from v2's, so v1 recomputes too.
    assert_eq!(run(&file, "v1"), "price=10 pinned=10 calls=1");
}
