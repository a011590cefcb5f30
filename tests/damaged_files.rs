//! Damaged and foreign cache files: truncated, zeroed pages, flipped bytes in values and
//! in index pages, not a redb file, a redb file with someone else's tables, a file of a
//! newer format version - and damage that only shows after the cache opened.
//!
//! Guards: no panic reaches the caller, no wrong value is ever served, damage is reported
//! (`Cache::health`, the error hook), the default policy (`OnCorruption::Recreate`) moves
//! a damaged file aside and carries on with a fresh one, `OnCorruption::Fail` makes open
//! fail instead, and files that are not ours are never touched.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Error, Memoizer, OnCorruption, Zone};

const N: u64 = 600;
const PAGE: usize = 4096;
const MEMOS: [&str; 2] = ["values", "zoned"];

/// The value memoizer `m` derives from `k`: unique text, so it can be found in the file.
fn value(m: &str, k: u64) -> String {
    format!("{m}/{k:06}|{}|", "x".repeat((k % 7 * 20) as usize))
}

struct Opened {
    cache: Cache,
    zone: Zone,
    memos: Vec<Memoizer<u64, String>>,
    errors: Arc<Mutex<Vec<String>>>,
}

fn open(path: &Path, policy: OnCorruption) -> Result<Opened, Error> {
    open_with(path, Cache::builder().on_corruption(policy))
}

fn open_with(path: &Path, builder: fresco_memoize::CacheBuilder) -> Result<Opened, Error> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let cache = builder
        .on_error(move |e| seen.lock().unwrap().push(e.to_string()))
        .open(path)?;
    let zone = cache.zone("z")?.key(|k: &u64| k % 7);
    let memos = vec![
        cache.memoizer::<u64, String>(MEMOS[0]).build()?,
        cache
            .memoizer::<u64, String>(MEMOS[1])
            .zone(&zone)
            .build()?,
    ];
    Ok(Opened {
        cache,
        zone,
        memos,
        errors,
    })
}

/// A cleanly closed cache file holding `N` entries in each memoizer.
fn populated(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let o = open(&path, OnCorruption::Fail).unwrap();
    for (m, memo) in MEMOS.iter().zip(&o.memos) {
        for k in 0..N {
            memo.get_or_compute(&k, |k| value(m, *k));
        }
    }
    o.cache.flush().unwrap();
    path
}

/// Reads every key of every memoizer (archived and owned): any hit must be the right
/// value. Then checks the cache keeps working. Returns the number of hits.
fn read_everything(o: &Opened) -> usize {
    let mut hits = 0;
    for (m, memo) in MEMOS.iter().zip(&o.memos) {
        for k in 0..N {
            if let Ok(Some(hit)) = memo.get_archived(&k) {
                assert_eq!(
                    hit.as_str(),
                    value(m, k),
                    "{m} served a wrong value for {k}"
                );
                hits += 1;
            }
            assert_eq!(memo.get_or_compute(&k, |k| value(m, *k)), value(m, k));
        }
    }
    // A zone invalidation walks the dependency index; damage there must not panic.
    let _ = o.zone.invalidate(&3u64);
    // And the cache keeps working.
    let k = N + 1;
    assert_eq!(
        o.memos[0].get_or_compute(&k, |k| value(MEMOS[0], *k)),
        value(MEMOS[0], k)
    );
    let _ = o.cache.flush();
    let _ = o.cache.check_integrity();
    hits
}

fn damage(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = std::fs::read(path).unwrap();
    f(&mut bytes);
    std::fs::write(path, &bytes).unwrap();
}

/// Every place `needle` occurs in `bytes`: redb writes pages copy-on-write, so freed
/// pages may still hold older copies next to the live one.
fn find_all(bytes: &[u8], needle: &str) -> Vec<usize> {
    let found: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(!found.is_empty(), "{needle} is not in the file");
    found
}

/// Zeroes every page holding `needle`.
fn zero_pages_holding(bytes: &mut [u8], needle: &str) {
    for at in find_all(bytes, needle) {
        let page = at / PAGE * PAGE;
        bytes[page..page + PAGE].fill(0);
    }
}

fn corrupt_files_next_to(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.corrupt-"))
        })
        .collect()
}

/// Recreate: the damaged file was moved aside (reported), a fresh one serves.
fn assert_moved_aside(o: &Opened, path: &Path) {
    let health = o.cache.health();
    let aside = health.moved_aside.clone().expect("moved aside");
    assert!(aside.exists(), "{} kept", aside.display());
    assert_eq!(corrupt_files_next_to(path), vec![aside]);
    assert!(health.errors >= 1);
    assert!(
        o.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("damaged")),
        "the hook heard of it"
    );
}

#[test]
fn a_truncated_file_is_moved_aside_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (name, cut) in [("half", 2usize), ("header", 0)] {
        let path = populated(dir.path(), name);
        let len = std::fs::metadata(&path).unwrap().len() as usize;
        let keep = len.checked_div(cut).unwrap_or(100);
        damage(&path, |b| b.truncate(keep));
        let before = std::fs::read(&path).unwrap();

        match open(&path, OnCorruption::Fail) {
            Err(Error::Corrupted { path: named, .. }) => assert_eq!(named, path),
            Err(e) => panic!("{name}: expected Corrupted, got {e}"),
            Ok(_) => panic!("{name}: a truncated file opened under Fail"),
        }
        assert!(
            std::fs::read(&path).unwrap() == before,
            "Fail leaves the file alone"
        );

        let o = open(&path, OnCorruption::Recreate).unwrap();
        assert_moved_aside(&o, &path);
        assert_eq!(
            read_everything(&o),
            0,
            "{name}: a fresh file has no entries"
        );
        let report = o.cache.check_integrity().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
}

#[test]
fn zeroed_pages_never_serve_wrong_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut detected = 0;
    for (i, percent) in [5usize, 15, 25, 35, 45, 55, 65, 75, 85, 95]
        .into_iter()
        .enumerate()
    {
        let path = populated(dir.path(), &format!("zero{i}"));
        damage(&path, |b| {
            let at = b.len() * percent / 100 / PAGE * PAGE;
            b[at..at + PAGE].fill(0);
        });
        match open(&path, OnCorruption::Fail) {
            Err(Error::Corrupted { .. }) => detected += 1,
            Err(e) => panic!("{percent}%: unexpected {e}"),
            Ok(o) => {
                read_everything(&o);
                assert!(corrupt_files_next_to(&path).is_empty(), "Fail never moves");
                detected += usize::from(o.cache.health().errors > 0);
            }
        }
        let o = open(&path, OnCorruption::Recreate).unwrap();
        read_everything(&o);
        if o.cache.health().moved_aside.is_some() {
            let report = o.cache.check_integrity().unwrap();
            assert!(report.is_ok(), "{report:?}");
        }
    }
    assert!(
        detected > 0,
        "no zeroed page was noticed: the test damaged nothing"
    );
}

#[test]
fn a_zeroed_header_is_not_taken_for_a_cache_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), "header");
    damage(&path, |b| b[..PAGE].fill(0));
    // Without its header nothing identifies the file as ours: it might be anyone's.
    assert_refused_untouched(&path, |e| {
        assert!(matches!(e, Error::NotACache { .. }), "{e}")
    });
}

#[test]
fn a_flipped_byte_inside_a_value_reads_as_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), "flip");
    let victim = value(MEMOS[0], 300);
    // 'x' -> 'y' in every copy: still valid UTF-8, still a well-formed archive - only the
    // entry checksum can tell.
    damage(&path, |b| {
        for at in find_all(b, &victim) {
            b[at + victim.len() - 3] ^= 0x01;
        }
    });

    let o = open(&path, OnCorruption::Recreate).unwrap();
    assert_eq!(o.cache.health().moved_aside, None);
    let values = &o.memos[0];
    assert!(values.get_archived(&300).unwrap().is_none());
    let mut computed = 0;
    let v = values.get_or_compute(&300, |k| {
        computed += 1;
        value(MEMOS[0], *k)
    });
    assert_eq!((v, computed), (victim, 1));
    assert!(values.stats().stale >= 1);
    assert!(values.stats().errors >= 1, "{:?}", values.stats());
    assert!(
        o.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("damaged")),
        "{:?}",
        o.errors
    );
    // Every other entry is still served from the file.
    for k in (0..N).filter(|k| *k != 300) {
        assert_eq!(
            values.get_or_compute(&k, |_| panic!("{k} should hit")),
            value(MEMOS[0], k)
        );
    }
    // The recomputed value replaced the damaged entry.
    o.cache.flush().unwrap();
    let report = o.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn flipped_bytes_anywhere_never_serve_wrong_values() {
    // One flipped byte per copy of the file, in every page (index pages included).
    let dir = tempfile::tempdir().unwrap();
    let pristine = populated(dir.path(), "pristine");
    drop(open(&pristine, OnCorruption::Fail).unwrap()); // closed cleanly
    let image = std::fs::read(&pristine).unwrap();
    let pages = image.len() / PAGE;
    let mut noticed = 0;
    for page in 1..pages {
        let at = page * PAGE + (page * 1237) % PAGE;
        let path = dir.path().join(format!("flip{page}"));
        let mut bytes = image.clone();
        bytes[at] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        match open(&path, OnCorruption::Recreate) {
            Ok(o) => {
                let hits = read_everything(&o);
                if hits < 2 * N as usize || o.cache.health().errors > 0 {
                    noticed += 1;
                }
            }
            Err(Error::NotACache { .. }) | Err(Error::NewerFormat { .. }) => noticed += 1,
            Err(e) => panic!("page {page}: open failed: {e}"),
        }
        std::fs::remove_file(&path).unwrap();
        for aside in corrupt_files_next_to(&path) {
            std::fs::remove_file(aside).unwrap();
        }
    }
    assert!(
        noticed > 0,
        "no flip had any effect: the sweep tested nothing"
    );
}

/// A populated file, opened with a page cache too small to hold the pages read so far,
/// whose pages holding `needle` are then zeroed under the open cache: damage that only
/// shows at the first read.
fn damaged_under_open_cache(dir: &Path, name: &str, policy: OnCorruption) -> (PathBuf, Opened) {
    let path = populated(dir, name);
    let builder = Cache::builder()
        .page_cache_bytes(PAGE)
        .on_corruption(policy);
    let o = open_with(&path, builder).unwrap();
    assert_eq!(o.cache.health().moved_aside, None);
    zero_page_under(&path, &value(MEMOS[0], 250));
    (path, o)
}

/// Waits (at most 20 s) until the cache has moved its damaged file aside, calling `poke`
/// between looks: a read that meets the damage is what wakes the writer.
fn wait_until_moved_aside(o: &Opened, mut poke: impl FnMut()) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while o.cache.health().moved_aside.is_none() {
        assert!(
            Instant::now() < deadline,
            "damage never acted on: {:?}",
            o.cache.health()
        );
        poke();
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn zero_page_under(path: &Path, needle: &str) {
    let mut bytes = std::fs::read(path).unwrap();
    zero_pages_holding(&mut bytes, needle);
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&file, &bytes, 0).unwrap();
}

#[test]
fn damage_found_after_open_resets_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let (path, o) = damaged_under_open_cache(dir.path(), "later", OnCorruption::Recreate);

    // Reads never fail and never serve a wrong value; the damaged read wakes the writer,
    // which moves the file aside and starts a fresh one under the same registry.
    read_everything(&o);
    wait_until_moved_aside(&o, || {
        let _ = o.memos[0].get_archived(&250);
    });
    assert_moved_aside(&o, &path);
    assert!(
        o.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("damage found while running")),
        "{:?}",
        o.errors
    );
    // The fresh file works at once for the memoizers built before the reset.
    read_everything(&o);
    for (m, memo) in MEMOS.iter().zip(&o.memos) {
        for k in 0..N {
            assert_eq!(memo.get_or_compute(&k, |k| value(m, *k)), value(m, k));
        }
    }
    assert_eq!(
        o.memos[0].get_or_compute(&250, |_| unreachable!()),
        value(MEMOS[0], 250)
    );
    o.cache.flush().unwrap();
    let report = o.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert!(report.entries > 0);

    // And it persists: a reopen serves what was stored after the reset.
    drop(o);
    let o = open(&path, OnCorruption::Fail).unwrap();
    assert_eq!(o.cache.health().moved_aside, None);
    for (m, memo) in MEMOS.iter().zip(&o.memos) {
        for k in 0..N {
            assert_eq!(memo.get_or_compute(&k, |_| unreachable!()), value(m, k));
        }
    }
}

#[test]
fn damage_found_after_open_under_fail_degrades_to_misses() {
    let dir = tempfile::tempdir().unwrap();
    let (path, o) = damaged_under_open_cache(dir.path(), "later-fail", OnCorruption::Fail);
    let hits = read_everything(&o);
    assert!(hits < 2 * N as usize, "the zeroed page went unnoticed");
    assert!(o.cache.health().errors > 0);
    assert_eq!(o.cache.health().moved_aside, None);
    assert!(
        corrupt_files_next_to(&path).is_empty(),
        "Fail never moves the file"
    );
}

#[test]
fn verify_on_open_finds_damage_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), "verify");
    damage(&path, |b| zero_pages_holding(b, &value(MEMOS[0], 400)));
    let refused = open_with(
        &path,
        Cache::builder()
            .verify_on_open(true)
            .on_corruption(OnCorruption::Fail),
    );
    assert!(matches!(refused, Err(Error::Corrupted { .. })));
    let o = open_with(&path, Cache::builder().verify_on_open(true)).unwrap();
    assert_moved_aside(&o, &path);
    assert_eq!(read_everything(&o), 0);
}

#[test]
fn a_file_that_is_not_redb_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "my precious notes, not a cache\n").unwrap();
    assert_refused_untouched(&path, |e| match e {
        Error::NotACache { path: named, .. } => assert_eq!(named, path),
        e => panic!("expected NotACache, got {e}"),
    });
}

/// Writes one row with redb itself, as another program (or a newer version) would.
fn write_with_redb(path: &Path, table: &str, key: &str, value: u64) {
    let db = redb::Database::create(path).unwrap();
    let txn = db.begin_write().unwrap();
    txn.open_table(redb::TableDefinition::<&str, u64>::new(table))
        .unwrap()
        .insert(key, value)
        .unwrap();
    txn.commit().unwrap();
}

/// Both policies refuse the file with the error `check` expects, and leave it as it was.
fn assert_refused_untouched(path: &Path, check: impl Fn(Error)) {
    let before = std::fs::read(path).unwrap();
    for policy in [OnCorruption::Recreate, OnCorruption::Fail] {
        match open(path, policy) {
            Err(e) => check(e),
            Ok(_) => panic!("{} opened as a cache", path.display()),
        }
    }
    assert!(
        std::fs::read(path).unwrap() == before,
        "the file was modified"
    );
    assert!(corrupt_files_next_to(path).is_empty());
}

#[test]
fn a_redb_file_with_foreign_tables_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.redb");
    write_with_redb(&path, "users", "ada", 1815);
    assert_refused_untouched(&path, |e| match e {
        Error::NotACache { reason, .. } => assert!(reason.contains("users"), "{reason}"),
        e => panic!("expected NotACache, got {e}"),
    });
}

#[test]
fn a_file_of_a_newer_format_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), "future");
    write_with_redb(&path, "fresco/meta", "format_version", 99);
    assert_refused_untouched(&path, |e| match e {
        Error::NewerFormat { found, .. } => assert_eq!(found, 99),
        e => panic!("expected NewerFormat, got {e}"),
    });
}

#[test]
fn damage_to_the_registry_itself_leaves_the_cache_running_without_its_file() {
    // Zero the pages naming the tables (the table tree, and with it the registry):
    // nothing can be carried into a fresh file, so the cache gives the file up until it
    // is reopened - and keeps returning values.
    let dir = tempfile::tempdir().unwrap();
    let path = populated(dir.path(), "registry");
    let builder = Cache::builder().page_cache_bytes(PAGE);
    let o = open_with(&path, builder).unwrap();
    zero_page_under(&path, "fresco/memoizers");
    read_everything(&o);
    wait_until_moved_aside(&o, || {
        read_everything(&o);
    });
    assert!(
        o.errors
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.contains("registry is unreadable")),
        "{:?}",
        o.errors
    );
    // Running without its file: values still arrive, nothing is stored, nothing hangs.
    let k = N + 7;
    for _ in 0..2 {
        assert_eq!(
            o.memos[0].get_or_compute(&k, |k| value(MEMOS[0], *k)),
            value(MEMOS[0], k)
        );
    }
    // The store was dropped by the writer (the flush behind it fails too), so nothing
    // is served from a file that is gone.
    assert!(o.cache.flush().is_err());
    assert!(o.memos[0].get_archived(&k).unwrap().is_none());
    assert!(o.memos[0].invalidate_key(&k).is_err());
    // Reopened, the cache starts afresh on the same path.
    drop(o);
    let o = open(&path, OnCorruption::Fail).unwrap();
    assert_eq!(read_everything(&o), 0);
    o.cache.flush().unwrap();
    let report = o.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
}
