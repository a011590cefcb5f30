//! Zone invalidation cost: removing the 200 entries that depend on one author, in caches
//! of 10k and 1M entries, through the dependency index (`Zone::invalidate`) and by
//! reading every entry (what a cache without index, like the Python original, must do).
//!
//! Every measured iteration removes 200 freshly stored entries: the setup (not timed)
//! recomputes them and waits for their commit. An invalidation commits durably (an
//! fsync: once it returned, no crash brings the old entries back), so both `index` and
//! `scan` include one durable commit; the periodic fsync of stored values is pushed out of
//! the way. A third series, `redb_random_rows`, deletes 200
//! random keys from a plain redb table of the same size in one non-durable commit: what
//! removing 200 rows costs when they lie scattered over the table, as entries did before
//! format 2 filed them under their primary dependency (and as the entries of a secondary
//! dependency key still do).
//!
//! Run with `cargo bench --bench zones`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use fresco_memoize::{Cache, Memoizer, Store, Zone};

/// Entries depending on each author: the invalidation removes this many.
const PER_AUTHOR: u64 = 200;
const SIZES: [(u64, &str); 2] = [(10_000, "10k"), (1_000_000, "1M")];

struct Fixture {
    _dir: tempfile::TempDir,
    cache: Cache,
    authors: Zone,
    books: Memoizer<u64, u64>,
    /// The author whose books every iteration invalidates.
    target: u64,
}

/// Waits until everything stored so far has committed (a dependency nobody has is
/// invalidated: one synchronous, non-durable transaction queued behind the stores).
fn settle(authors: &Zone) {
    assert_eq!(authors.invalidate(&u64::MAX).unwrap(), 0);
}

/// A cache of `entries` books, book `b` depending on author `b / 200`.
fn fixture(entries: u64) -> Fixture {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    // No periodic fsync of stored values lands in an iteration.
    let cache = Cache::builder()
        .durable_interval(Duration::from_secs(3600))
        .open(dir.path().join("zones-bench.memo"))
        .unwrap();
    let authors = cache.zone("Authors").unwrap();
    let books = cache
        .memoizer::<u64, u64>("books")
        .store(Store::Persistent)
        .zone_key(&authors, |book: &u64| *book / PER_AUTHOR)
        .build()
        .unwrap();
    for book in 0..entries {
        books.get_or_compute(&book, |b| b * 3);
        // Let the writer catch up now and then, so the overlay of not yet committed
        // entries stays small.
        if book % 50_000 == 49_999 {
            settle(&authors);
        }
    }
    cache.flush().unwrap();
    assert_eq!(books.stats().entries, Some(entries));
    eprintln!(
        "built a cache of {entries} entries in {:.1?}",
        started.elapsed()
    );
    let target = entries / PER_AUTHOR / 2;
    Fixture {
        _dir: dir,
        cache,
        authors,
        books,
        target,
    }
}

/// Plain redb: `entries` rows keyed like entries (16-byte hashes), ~100-byte values.
struct RandomRows {
    _dir: tempfile::TempDir,
    db: redb::Database,
    target: u64,
}

const RANDOM_TABLE: redb::TableDefinition<&[u8; 16], &[u8]> = redb::TableDefinition::new("random");

fn random_key(i: u64) -> [u8; 16] {
    xxhash_rust::xxh3::xxh3_128(&i.to_le_bytes()).to_le_bytes()
}

fn random_rows(entries: u64) -> RandomRows {
    let dir = tempfile::tempdir().unwrap();
    let db = redb::Database::create(dir.path().join("random.redb")).unwrap();
    let mut next = 0;
    while next < entries {
        let end = (next + 4096).min(entries);
        random_txn(&db, |t| {
            for i in next..end {
                t.insert(&random_key(i), &[7u8; 100][..]).unwrap();
            }
        });
        next = end;
    }
    RandomRows {
        _dir: dir,
        db,
        target: entries / 2,
    }
}

/// Runs `f` on the plain table in one non-durable write transaction.
fn random_txn(db: &redb::Database, f: impl FnOnce(&mut redb::Table<&[u8; 16], &[u8]>)) {
    let mut txn = db.begin_write().unwrap();
    txn.set_durability(redb::Durability::None).unwrap();
    f(&mut txn.open_table(RANDOM_TABLE).unwrap());
    txn.commit().unwrap();
}

impl Fixture {
    /// Stores the target author's 200 books again (they are gone after an iteration).
    fn restore(&self) {
        for book in self.target * PER_AUTHOR..(self.target + 1) * PER_AUTHOR {
            self.books.get_or_compute(&book, |b| b * 3);
        }
        settle(&self.authors);
    }
}

fn invalidate(c: &mut Criterion) {
    let mut group = c.benchmark_group("zone_invalidate_200");
    group.sample_size(30);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(3));
    for (entries, label) in SIZES {
        let f = fixture(entries);
        group.bench_function(BenchmarkId::new("index", label), |b| {
            b.iter_batched(
                || f.restore(),
                |()| {
                    let removed = f.authors.invalidate(black_box(&f.target)).unwrap();
                    assert_eq!(removed, PER_AUTHOR);
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function(BenchmarkId::new("scan", label), |b| {
            b.iter_batched(
                || f.restore(),
                |()| {
                    let removed = f
                        .authors
                        .__invalidate_by_scan(black_box(&f.target))
                        .unwrap();
                    assert_eq!(removed, PER_AUTHOR);
                },
                BatchSize::PerIteration,
            )
        });
        let raw = random_rows(entries);
        group.bench_function(BenchmarkId::new("redb_random_rows", label), |b| {
            let keys = raw.target..raw.target + PER_AUTHOR;
            b.iter_batched(
                || {
                    random_txn(&raw.db, |t| {
                        for i in keys.clone() {
                            t.insert(&random_key(i), &[7u8; 100][..]).unwrap();
                        }
                    })
                },
                |()| {
                    random_txn(&raw.db, |t| {
                        for i in keys.clone() {
                            assert!(t.remove(&random_key(i)).unwrap().is_some());
                        }
                    })
                },
                BatchSize::PerIteration,
            )
        });
        drop(raw);
        let report = f.cache.check_integrity().unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.entries, entries - PER_AUTHOR);
    }
    group.finish();
}

criterion_group!(benches, invalidate);
criterion_main!(benches);
