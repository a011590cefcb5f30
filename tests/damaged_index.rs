//! A damaged row of the dependency index (issue #11, D4).
//!
//! redb does not checksum pages on read, so one flipped bit inside an entry reference in
//! `fresco/deps` made `zone.invalidate(&3)` return `Ok` while an entry depending on 3 was
//! still served. Guards: for a memoizer whose entries are filed under their primary
//! dependency, the invalidation also sweeps the run of rows filed under that dependency,
//! so a damaged reference cannot leave a dependent entry served after it returns; and an
//! index row is checked against the entry it points at, so a reference damaged into
//! another entry's does not remove that entry. (What remains - a damaged reference to an
//! entry for which the key is not its primary dependency, or of a memoizer with a
//! keyfunc - is documented in ARCHITECTURE.md; `check_integrity` finds it.)

use std::path::Path;

use fresco_memoize::{Cache, Memoizer, Zone};
use redb::{ReadableDatabase, ReadableMultimapTable, ReadableTable};

const DEPS: redb::MultimapTableDefinition<&[u8; 24], &[u8; 32]> =
    redb::MultimapTableDefinition::new("fresco/deps");
const MEMOIZERS: redb::TableDefinition<&str, &[u8]> =
    redb::TableDefinition::new("fresco/memoizers");

fn book(b: u64) -> String {
    format!("book {b}")
}

fn open(path: &Path) -> (Cache, Zone, Memoizer<u64, String>) {
    let cache = Cache::builder().sweep_interval(None).open(path).unwrap();
    let authors = cache.zone("Authors").unwrap().key(|b: &u64| b / 10);
    let books = cache
        .memoizer::<u64, String>("books")
        .zone(&authors)
        .build()
        .unwrap();
    (cache, authors, books)
}

fn populated(path: &Path) {
    let (cache, _, books) = open(path);
    for b in 0..100 {
        books.get_or_compute(&b, |b| book(*b));
    }
    cache.flush().unwrap();
}

/// Where the entry of book `b` lies in the `books` table: (memoizer id, row hash).
fn row_of(db: &redb::Database, b: u64) -> (u64, [u8; 16]) {
    let txn = db.begin_read().unwrap();
    let record = txn.open_table(MEMOIZERS).unwrap();
    let record = record.get("books").unwrap().unwrap();
    let id = u64::from_le_bytes(record.value()[..8].try_into().unwrap());
    let name = format!("fresco/entries/{id}");
    let def: redb::TableDefinition<&[u8; 16], &[u8]> = redb::TableDefinition::new(&name);
    let table = txn.open_table(def).unwrap();
    let key = postcard::to_allocvec(&b).unwrap();
    for item in table.iter().unwrap() {
        let (row, entry) = item.unwrap();
        let entry = entry.value();
        // Format 6 (src/entry.rs): flags at 5, a deadline of 8 bytes after the fixed 30
        // when flag 0x10 is set, the key length and (flag 0x20) the row count as varints
        // (one byte each for these keys and entries), then the key.
        let flags = entry[5];
        let at = 30 + if flags & 0x10 != 0 { 8 } else { 0 };
        let len = entry[at] as usize;
        let start = at + 1 + usize::from(flags & 0x20 != 0);
        if entry[start..start + len] == key[..] {
            return (id, *row.value());
        }
    }
    panic!("book {b} is not in the file");
}

/// Rewrites the index reference to book `b` with `damage` applied to it.
fn damage_reference(path: &Path, b: u64, damage: impl Fn(&mut [u8; 32], &redb::Database)) {
    let db = redb::Database::open(path).unwrap();
    let (id, row) = row_of(&db, b);
    let txn = db.begin_write().unwrap();
    {
        let mut deps = txn.open_multimap_table(DEPS).unwrap();
        let mut found = None;
        for item in deps.iter().unwrap() {
            let (dep, refs) = item.unwrap();
            for r in refs {
                let r = *r.unwrap().value();
                if r[..8] == id.to_be_bytes() && r[8..24] == row {
                    found = Some((*dep.value(), r));
                }
            }
        }
        let (dep, mut reference) = found.expect("the index points at the entry");
        deps.remove(&dep, &reference).unwrap();
        damage(&mut reference, &db);
        deps.insert(&dep, &reference).unwrap();
    }
    txn.commit().unwrap();
}

fn assert_invalidated(path: &Path, spared: Option<u64>) {
    let (cache, authors, books) = open(path);
    authors.invalidate(&3u64).unwrap();
    for b in 30..40 {
        let served = books.get_archived(&b).unwrap().map(|v| v.to_string());
        assert_eq!(
            served, None,
            "book {b} depends on author 3 and is still served"
        );
    }
    if let Some(b) = spared {
        assert_eq!(
            books.get_archived(&b).unwrap().map(|v| v.to_string()),
            Some(book(b)),
            "book {b} does not depend on author 3"
        );
    }
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[test]
fn a_flipped_bit_in_an_index_reference_leaves_no_dependent_entry_served() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flipped.memo");
    populated(&path);
    damage_reference(&path, 35, |r, _| r[20] ^= 0x10);
    assert_invalidated(&path, None);
}

#[test]
fn an_index_reference_damaged_into_another_entry_removes_only_dependents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("elsewhere.memo");
    populated(&path);
    damage_reference(&path, 35, |r, db| {
        let (_, other) = row_of(db, 47);
        r[8..24].copy_from_slice(&other);
    });
    assert_invalidated(&path, Some(47));
}
