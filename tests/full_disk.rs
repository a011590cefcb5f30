//! A real full disk and a cache file deleted under a running program (issue #11, D1, D2).
//!
//! Each test mounts a small tmpfs (`mount -t tmpfs`, so it needs root, as CI has: it fails
//! loudly rather than skipping without it) and unmounts it when done.
//!
//! Guards:
//! - D1: a cache whose file is deleted (as a temp cleaner would) while the disk is full
//!   never writes into a fresh file as if it were the old one: the file that replaces it
//!   carries the registry over, so a memoizer registered afterwards gets an id of its own
//!   and never reads another memoizer's entries (it used to get id 1 - another
//!   memoizer's table - and returned `2 * k` where it computes `3 * k`). Nor does one
//!   whose file was replaced by another cache file: that file is never opened or written
//!   (it used to be reopened as the cache's own, serving its entries as the cache's).
//! - D2: opening a cache on a full disk fails cleanly and leaves no half-made file behind,
//!   so the next open, once there is space, works (it used to find 73,728 zero bytes and
//!   refuse them as "not a cache" forever); a running cache whose file was deleted while
//!   the disk was full stores again by itself once space returns.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Memoizer};

/// A tmpfs mounted on a fresh directory; unmounted when dropped.
struct TmpFs {
    dir: tempfile::TempDir,
}

impl TmpFs {
    fn mount(options: &str) -> TmpFs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "these tests mount a tmpfs and need root (CI runs as root): mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TmpFs { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for TmpFs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(self.dir.path()).status();
        if !unmounted.is_ok_and(|s| s.success()) {
            // Still busy (a file open somewhere): detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the file system holding `path` until a write fails.
fn fill(path: &Path) {
    let mut file = std::fs::File::create(path).expect("create the filler");
    let chunk = vec![0xa5u8; 4096];
    while file.write_all(&chunk).and_then(|()| file.flush()).is_ok() {}
    let _ = file.sync_all();
}

fn cache(path: &Path) -> Cache {
    Cache::builder().sweep_interval(None).open(path).unwrap()
}

fn memo(cache: &Cache, name: &str) -> Memoizer<u64, u64> {
    cache.memoizer::<u64, u64>(name).build().unwrap()
}

/// Stores fresh keys into `m` until a flush fails (the disk is full); panics if none does.
fn store_until_a_commit_fails(cache: &Cache, m: &Memoizer<u64, u64>, f: impl Fn(u64) -> u64) {
    for round in 0..1000u64 {
        for k in 0..200 {
            let k = 1_000 + round * 200 + k;
            assert_eq!(m.get_or_compute(&k, |k| f(*k)), f(k), "a value was lost");
        }
        if cache.flush().is_err() {
            return;
        }
    }
    panic!("the disk never filled up");
}

/// Flushes until a flush succeeds (the writer reopens or replaces its file), within 10 s.
fn flush_until_it_works(cache: &Cache) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cache.flush() {
            Ok(()) => return,
            Err(e) if Instant::now() > deadline => panic!("never recovered: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

#[test]
fn a_file_deleted_under_a_full_disk_is_never_mistaken_for_a_fresh_registry() {
    let fs = TmpFs::mount("size=2m,nr_inodes=3");
    let path = fs.path("ids.memo");
    let filler = fs.path("filler");
    let cache = cache(&path);
    let double = memo(&cache, "double");
    let square = memo(&cache, "square");
    for k in 0..20 {
        double.get_or_compute(&k, |k| 2 * k);
        square.get_or_compute(&k, |k| k * k);
    }
    cache.flush().unwrap();

    fill(&filler);
    std::fs::remove_file(&path).unwrap();
    // No inode is free for a new file while the deleted one is still open.
    store_until_a_commit_fails(&cache, &double, |k| 2 * k);
    std::fs::remove_file(&filler).unwrap();
    flush_until_it_works(&cache);

    let triple = memo(&cache, "triple");
    for k in 0..20 {
        assert_eq!(triple.get_or_compute(&k, |k| 3 * k), 3 * k, "key {k}");
        assert_eq!(double.get_or_compute(&k, |k| 2 * k), 2 * k, "key {k}");
        assert_eq!(square.get_or_compute(&k, |k| k * k), k * k, "key {k}");
    }
    cache.flush().unwrap();
    let info = cache.inspect().unwrap();
    let mut ids: Vec<u64> = info.memoizers.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(
        ids.len(),
        3,
        "every memoizer has an id of its own: {info:?}"
    );
    drop((triple, double, square, cache));

    // The new file at the path holds what was stored after it took over.
    let reopened = self::cache(&path);
    let triple = memo(&reopened, "triple");
    for k in 0..20 {
        assert_eq!(
            triple.get_or_compute(&k, |_| panic!("{k} was stored")),
            3 * k
        );
    }
}

#[test]
fn opening_on_a_full_disk_leaves_nothing_behind_and_works_once_space_returns() {
    let fs = TmpFs::mount("size=2m");
    let path = fs.path("app.memo");
    let filler = fs.path("filler");
    fill(&filler);
    let refused = Cache::builder().sweep_interval(None).open(&path);
    assert!(refused.is_err(), "a cache opened on a full disk");
    assert!(!path.exists(), "a half-made file was left behind");

    std::fs::remove_file(&filler).unwrap();
    let cache = cache(&path);
    let m = memo(&cache, "m");
    assert_eq!(m.get_or_compute(&7, |k| k + 1), 8);
    drop((m, cache));
    let cache = self::cache(&path);
    assert_eq!(
        memo(&cache, "m").get_or_compute(&7, |_| panic!("stored")),
        8
    );
}

#[test]
fn a_running_cache_whose_file_was_deleted_on_a_full_disk_stores_again_once_space_returns() {
    let fs = TmpFs::mount("size=2m");
    let path = fs.path("app.memo");
    let filler = fs.path("filler");
    let cache = cache(&path);
    let m = memo(&cache, "m");
    assert_eq!(m.get_or_compute(&1, |k| k + 1), 2);
    cache.flush().unwrap();

    fill(&filler);
    std::fs::remove_file(&path).unwrap();
    store_until_a_commit_fails(&cache, &m, |k| k + 1);
    // Whatever the deleted file gave back is taken too: the writer's next tries (to
    // create a file in its place) meet a full disk.
    let more = fs.path("more-filler");
    fill(&more);
    for k in 0..3 {
        assert_eq!(m.get_or_compute(&(100 + k), |k| k + 1), 101 + k);
        let _ = cache.flush();
    }
    std::fs::remove_file(&filler).unwrap();
    std::fs::remove_file(&more).unwrap();
    flush_until_it_works(&cache);

    assert_eq!(m.get_or_compute(&5, |k| k + 1), 6);
    cache.flush().unwrap();
    assert!(path.exists(), "a file took the deleted one's place");
    drop((m, cache));
    let cache = self::cache(&path);
    assert_eq!(
        memo(&cache, "m").get_or_compute(&5, |_| panic!("stored")),
        6
    );
}

#[test]
fn a_file_put_in_place_of_the_cache_file_is_never_written_into() {
    let fs = TmpFs::mount("size=2m");
    let path = fs.path("app.memo");
    let filler = fs.path("filler");
    let cache = cache(&path);
    let mine = memo(&cache, "mine");
    for k in 0..20 {
        mine.get_or_compute(&k, |k| 2 * k);
    }
    cache.flush().unwrap();

    // Another cache file, whose memoizer has the same id, is moved over the path.
    let theirs = fs.path("theirs.memo");
    {
        let other = self::cache(&theirs);
        let m = memo(&other, "theirs");
        for k in 0..20 {
            m.get_or_compute(&k, |k| 5 * k);
        }
    }
    std::fs::rename(&theirs, &path).unwrap();
    let before = std::fs::read(&path).unwrap();

    fill(&filler);
    store_until_a_commit_fails(&cache, &mine, |k| 2 * k);
    std::fs::remove_file(&filler).unwrap();
    // Space is back: give the writer time to act on it (reads ask it to reopen).
    for _ in 0..20 {
        for k in 0..40 {
            assert_eq!(mine.get_or_compute(&k, |k| 2 * k), 2 * k, "key {k}");
        }
        let _ = cache.flush();
        std::thread::sleep(Duration::from_millis(50));
    }
    let last = cache.health().last_error.unwrap_or_default();
    assert!(last.contains("stopped using its file"), "{last}");
    drop((mine, cache));
    assert!(
        std::fs::read(&path).unwrap() == before,
        "the file put in place of the cache's was written into"
    );
}
