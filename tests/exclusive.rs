//! One cache file, one owner: a second `Cache` on the same file - in this process or in
//! another one - gets `Error::AlreadyOpen` naming the file at once, never a hang and never
//! a second writer on the file.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Error};

/// Opens `path` on another thread and gives up (failing the test) if that hangs.
fn open_with_deadline(path: &Path) -> fresco_memoize::Result<Cache> {
    let (tx, rx) = mpsc::channel();
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Cache::open(&path));
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a second open must not hang")
}

fn assert_already_open(result: fresco_memoize::Result<Cache>, path: &Path) {
    match result {
        Err(Error::AlreadyOpen { path: named }) => {
            assert_eq!(named, path);
            let shown = Error::AlreadyOpen { path: named }.to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
        }
        Err(e) => panic!("expected AlreadyOpen, got {e}"),
        Ok(_) => panic!("a second Cache opened a file that is in use"),
    }
}

#[test]
fn a_second_cache_in_this_process_gets_already_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("one.memo");
    let first = Cache::open(&path).unwrap();
    let m = first.memoizer::<u64, u64>("m").build().unwrap();
    m.get_or_compute(&1, |n| n + 1);

    assert_already_open(open_with_deadline(&path), &path);
    // A clone is the way to share: it works, and sees the same entries.
    let shared = first.clone();
    drop(shared);
    // The failed open disturbed nothing.
    assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 2);

    // The file stays open while anything built from the cache lives...
    drop(first);
    assert_already_open(open_with_deadline(&path), &path);
    // ...and is free once the last handle is gone.
    drop(m);
    let again = open_with_deadline(&path).expect("free after the last handle dropped");
    let m = again.memoizer::<u64, u64>("m").build().unwrap();
    assert_eq!(m.get_or_compute(&1, |_| unreachable!()), 2);
}

const CHILD_ENV: &str = "FRESCO_EXCLUSIVE_CHILD_PATH";

#[test]
fn a_second_process_gets_already_open() {
    // In the child, this test only tries to open the file and reports what happened.
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        let verdict = match Cache::open(&path) {
            Err(Error::AlreadyOpen { path }) => format!("already-open {}", path.display()),
            Err(e) => format!("other-error {e}"),
            Ok(_) => "opened".to_string(),
        };
        println!("VERDICT {verdict}");
        std::process::exit(0);
    }

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<u64, u64>("m").build().unwrap();
    m.get_or_compute(&7, |n| n * 3);
    cache.flush().unwrap();

    let verdict = run_child(&path);
    assert_eq!(verdict, format!("already-open {}", path.display()));
    assert_eq!(m.get_or_compute(&7, |_| unreachable!()), 21);

    // Once this process closes the file, another process can have it.
    drop(m);
    drop(cache);
    assert_eq!(run_child(&path), "opened");
}

/// Runs this test binary as a child that opens `path`; returns its verdict.
fn run_child(path: &Path) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_second_process_gets_already_open",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD_ENV, path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the child hung opening a file held by another process");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("VERDICT "))
        .unwrap_or_else(|| panic!("no verdict from the child: {stdout}"))
        .to_string()
}
