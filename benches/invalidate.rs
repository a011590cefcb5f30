//! `Memoizer::invalidate_all` at 1k, 100k and 1M entries, for a plain memoizer, one with
//! `expires` (its entries carry expiry index rows) and one with a zone key (dependency
//! index rows): the call should cost the same at any size, since it sets the table aside
//! whole and leaves the index rows to the background reclamation.
//!
//! Every measured call clears a freshly prepared file: the setup (not timed) copies a
//! file filled once per series, opens it and builds the memoizer; the timed part is the
//! one `invalidate_all`, which ends in a durable commit (an fsync). No sweeper runs, so
//! no reclamation lands in a measurement.
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

fn invalidate_all(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("invalidate_all");
    // Each measured call needs a fresh file: few, flat samples.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(10));
    for kind in [Kind::Plain, Kind::Expires, Kind::Zoned] {
        for (entries, label) in SIZES {
            let template = template(dir.path(), entries, kind);
            let work = dir.path().join("work.memo");
            group.bench_function(BenchmarkId::new(kind.name(), label), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        std::fs::copy(&template, &work).unwrap();
                        let cache = open(&work);
                        let books = memoizer(&cache, kind);
                        let started = Instant::now();
                        let removed = books.invalidate_all().unwrap();
                        total += started.elapsed();
                        assert_eq!(removed, entries);
                        drop(books);
                        drop(cache);
                    }
                    total
                })
            });
            std::fs::remove_file(&template).unwrap();
        }
    }
    group.finish();
}

criterion_group!(benches, invalidate_all);
criterion_main!(benches);
