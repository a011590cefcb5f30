//! Opening a file written by format 1 (`tests/fixtures/format-v1.memo`, made by commit
//! 4ec8cba: memoizer `books` keyed by zone `Authors` with `book / 10`, books 0..30 valued
//! `3 * book`; `plain` 0..5 -> `"v{k}"`; `ttl` 0..5 -> `k + 100` with a ten-year deadline).
//!
//! Format 2 files an entry with dependency keys under its primary dependency, so format
//! 1 entries of a zoned memoizer would sit where no lookup finds them, and the invariant
//! checker would call them misfiled (and format 3 changed the index rows' layout). The
//! upgrade must leave a sound file: registry kept (ids, zones, memberships), entries and
//! both indexes dropped, the current version (6) recorded, and every memoizer working -
//! also through its zone - on the upgraded file.

use fresco_memoize::{Cache, Store};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format-v1.memo");

fn upgraded_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.memo");
    std::fs::copy(FIXTURE, &path).unwrap();
    (dir, path)
}

#[test]
fn a_format_1_file_is_upgraded_in_place_keeping_its_registry() {
    let (_dir, path) = upgraded_copy();
    let cache = Cache::open(&path).unwrap();
    let info = cache.inspect().unwrap();
    assert_eq!(info.format_version, 6);
    assert_eq!(info.entries(), 0, "format 1 entries are dropped");
    let mut names: Vec<&str> = info.memoizers.iter().map(|m| m.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["books", "plain", "ttl"]);
    let authors_info = info.zones.iter().find(|z| z.name == "Authors").unwrap();
    assert_eq!(authors_info.members, ["books"]);
    assert_eq!(authors_info.dependency_rows, 0);
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!((report.dep_rows, report.expiry_rows), (0, 0));

    // Every memoizer computes afresh, stores, and is found again through its zone.
    let authors = cache.zone("Authors").unwrap();
    let books = cache
        .memoizer::<u64, u64>("books")
        .store(Store::Persistent)
        .zone_key(&authors, |b: &u64| *b / 10)
        .build()
        .unwrap();
    let mut computed = 0;
    for book in 0..30 {
        let value = books.get_or_compute(&book, |b| {
            computed += 1;
            b * 3
        });
        assert_eq!(value, book * 3);
    }
    assert_eq!(computed, 30);
    let plain = cache
        .memoizer::<u64, String>("plain")
        .store(Store::Persistent)
        .build()
        .unwrap();
    assert_eq!(plain.get_or_compute(&1, |k| format!("new{k}")), "new1");
    assert_eq!(authors.invalidate(&1u64).unwrap(), 10);
    assert_eq!(books.get_or_compute(&15, |_| 0), 0);
    assert_eq!(books.get_or_compute(&25, |_| unreachable!()), 75);
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    assert_eq!(report.entries, 22);
}

#[test]
fn an_upgraded_file_reopens_as_format_2_with_its_entries() {
    let (_dir, path) = upgraded_copy();
    {
        let cache = Cache::open(&path).unwrap();
        let ttl = cache
            .memoizer::<u64, u64>("ttl")
            .store(Store::Persistent)
            .build()
            .unwrap();
        assert_eq!(ttl.get_or_compute(&4, |k| k + 200), 204);
    }
    let cache = Cache::open(&path).unwrap();
    assert_eq!(cache.inspect().unwrap().format_version, 6);
    let ttl = cache
        .memoizer::<u64, u64>("ttl")
        .store(Store::Persistent)
        .build()
        .unwrap();
    assert_eq!(ttl.get_or_compute(&4, |_| unreachable!()), 204);
}
