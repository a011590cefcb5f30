//! Persistence across a real process restart: the test binary runs itself as a child
//! twice on one file; the second child must serve everything from the file.

use std::process::Command;

use fresco_memoize::Cache;

const CHILD_ENV: &str = "FRESCO_RESTART_CHILD_FILE";

/// In a child: memoize 200 keys and print how many computations ran.
#[test]
fn child_process_role() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<u32, String>("restart").build().unwrap();
    let mut computed = 0;
    for k in 0..200u32 {
        let v = m.get_or_compute(&k, |k| {
            computed += 1;
            format!("value-{k}")
        });
        assert_eq!(v, format!("value-{k}"));
    }
    println!("COMPUTED={computed}");
}

fn run_child(path: &std::path::Path) -> usize {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_process_role",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "child failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.split("COMPUTED=").nth(1))
        .unwrap_or_else(|| panic!("no report in {stdout}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn entries_survive_a_process_restart() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.memo");
    assert_eq!(run_child(&path), 200, "first process computes everything");
    assert_eq!(
        run_child(&path),
        0,
        "second process is served from the file"
    );
}
