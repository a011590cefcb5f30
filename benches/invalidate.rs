//! `Memoizer::invalidate_all` at 1k, 100k and 1M entries, for a plain memoizer, one with
//! `expires` (its entries carry expiry index rows) and one with a zone key (dependency
//! index rows): the call should cost the same at any size, since it sets the table aside
//! whole and leaves the index rows to the background reclamation.
//!
//! Every measured call clears a freshly prepared file: the setup (not timed) copies a
//! file filled once per series, opens it and builds the memoizer; the timed part is the
//! one `invalidate_all`, which ends in a durable commit (an fsync). The copy is synced to
//! disk before the clock starts: otherwise the timed fsync would also write out the whole
//! freshly copied file, a cost that grows with the file and is no part of the clear. No
//! sweeper runs, so no reclamation lands in a measurement.
//!
//! Rows: `invalidate_all/<kind>/<size>` is `Memoizer::invalidate_all`;
//! `zone_invalidate_all/zoned/<size>` is `Zone::invalidate_all` over the same zoned data;
//! a `_tmpfs` suffix on the kind marks the same call on a file in `/dev/shm` (no flush
//! latency: the clear's own work).
//!
//! Run with `cargo bench --bench invalidate`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use fresco_memoize::{Cache, Memoizer, Store};

const SIZES: [(u64, &str); 3] = [(1_000, "1k"), (100_000, "100k"), (1_000_000, "1M")];

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Expires,
    Zoned,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::Expires => "expires",
            Kind::Zoned => "zoned",
        }
    }
}

fn open(path: &Path) -> Cache {
    Cache::builder()
        .sweep_interval(None)
        .durable_interval(Duration::from_secs(3600))
        .open(path)
        .unwrap()
}

fn memoizer(cache: &Cache, kind: Kind) -> Memoizer<u64, u64> {
    let builder = cache.memoizer::<u64, u64>("books").store(Store::Persistent);
    match kind {
        Kind::Plain => builder.build().unwrap(),
        Kind::Expires => builder
            .expires(Duration::from_secs(10 * 365 * 86_400))
            .build()
            .unwrap(),
        Kind::Zoned => {
            let authors = cache.zone("Authors").unwrap();
            builder
                .zone_key(&authors, |book: &u64| *book / 200)
                .build()
                .unwrap()
        }
    }
}

/// A closed cache file holding `entries` entries of a memoizer of `kind`.
fn template(dir: &Path, entries: u64, kind: Kind) -> PathBuf {
    let path = dir.join(format!("{}-{entries}.memo", kind.name()));
    let cache = open(&path);
    let books = memoizer(&cache, kind);
    for book in 0..entries {
        books.get_or_compute(&book, |b| b * 3);
    }
    cache.flush().unwrap();
    path
}

/// Copies `template` to `work` and syncs the copy, so that a later fsync writes only what
/// the measured call changed.
fn fresh_copy(template: &Path, work: &Path) {
    std::fs::copy(template, work).unwrap();
    std::fs::File::open(work).unwrap().sync_all().unwrap();
}

/// Which clear a row measures.
#[derive(Clone, Copy)]
enum Clear {
    Memoizer,
    Zone,
}

fn invalidate_all(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    // Each row runs on the temp dir's disk and, where the machine has one, on tmpfs
    // (`/dev/shm`), where an fsync costs nothing: there the clear's own work is timed
    // apart from the disk's flush latency, which varies several-fold between calls.
    let shm = Path::new("/dev/shm");
    let tmpfs = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
    let mut places = vec![("", dir.path().to_path_buf())];
    if let Some(t) = &tmpfs {
        places.push(("_tmpfs", t.path().to_path_buf()));
    }
    let rows = [
        (Kind::Plain, Clear::Memoizer),
        (Kind::Expires, Clear::Memoizer),
        (Kind::Zoned, Clear::Memoizer),
        (Kind::Zoned, Clear::Zone),
    ];
    for (kind, clear) in rows {
        let mut group = c.benchmark_group(match clear {
            Clear::Memoizer => "invalidate_all",
            Clear::Zone => "zone_invalidate_all",
        });
        // Each measured call needs a fresh file: flat samples, one call each. The durable
        // commit's fsync varies several-fold from call to call on a VM disk, so 30 of them.
        group
            .sample_size(30)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(1))
            .measurement_time(Duration::from_millis(10));
        for (entries, label) in SIZES {
            let template = template(dir.path(), entries, kind);
            for (place, work_dir) in &places {
                let work = work_dir.join("work.memo");
                let id = BenchmarkId::new(format!("{}{place}", kind.name()), label);
                group.bench_function(id, |b| {
                    b.iter_custom(|iters| {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            fresh_copy(&template, &work);
                            let cache = open(&work);
                            let books = memoizer(&cache, kind);
                            let authors = cache.zone("Authors").unwrap();
                            let started = Instant::now();
                            let removed = match clear {
                                Clear::Memoizer => books.invalidate_all().unwrap(),
                                Clear::Zone => authors.invalidate_all().unwrap(),
                            };
                            total += started.elapsed();
                            assert_eq!(removed, entries);
                            drop(books);
                            drop(cache);
                        }
                        total
                    })
                });
                let _ = std::fs::remove_file(&work);
            }
            std::fs::remove_file(&template).unwrap();
        }
        group.finish();
    }
}

criterion_group!(benches, invalidate_all);
criterion_main!(benches);
