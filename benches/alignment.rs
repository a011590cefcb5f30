//! The alignment decision (ARCHITECTURE.md, "Values and alignment", issue 17): persistent
//! hits in rkyv's default aligned format (the crate's default: archives that redb placed
//! at a misaligned address are copied into a reused per-thread buffer) and in its
//! `unaligned` format (opt-in feature: always read in place), each beside `cached`'s
//! `RedbCache` measured in the same process, so the two builds compare through their
//! ratios to the peer as well as through their times.
//!
//! Workloads as in benches/hits.rs: 100k entries of the ~100-byte `Record` (owned and
//! archived hits), 512 entries of the 64 KiB `Blob` (archived and owned hits).
//!
//! ```sh
//! cargo bench --bench alignment                                  # aligned (default)
//! cargo bench --bench alignment --features fresco-memoize/unaligned
//! ```

mod common;

use std::hint::black_box;
use std::time::Duration;

use cached::ConcurrentCached;
use common::*;
use criterion::{Criterion, criterion_group, criterion_main};
use fresco_memoize::{Cache, Store};

fn mode() -> &'static str {
    if std::mem::align_of::<rkyv::Archived<u64>>() == 1 {
        "unaligned"
    } else {
        "aligned"
    }
}

fn small(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("align.memo")).unwrap();
    let persistent = filled(&cache, "small", Store::Persistent, ENTRIES, record);
    let redb_cache = redb_cache_filled(dir.path(), "peer", ENTRIES, record);

    let mut g = c.benchmark_group(format!("alignment_{}/small", mode()));
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let mut keys = Keys::new(ENTRIES);
    g.bench_function("persistent_owned", |b| {
        b.iter(|| persistent.get_or_compute(&keys.next_key(), |_| panic!("must hit")))
    });
    g.bench_function("persistent_archived", |b| {
        b.iter(|| {
            let hit = persistent.get_archived(&keys.next_key()).unwrap().unwrap();
            black_box(hit.id.to_native())
        })
    });
    g.bench_function("redb_cache_get", |b| {
        b.iter(|| redb_cache.cache_get(&keys.next_key()).unwrap().unwrap())
    });
    g.finish();
}

fn big(c: &mut Criterion) {
    const N: u64 = 512;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("blobs.memo")).unwrap();
    let persistent = filled(&cache, "blobs", Store::Persistent, N, blob);
    let redb_cache = redb_cache_filled(dir.path(), "peer_blobs", N, blob);

    let mut g = c.benchmark_group(format!("alignment_{}/64KiB", mode()));
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let mut keys = Keys::new(N);
    g.bench_function("persistent_archived", |b| {
        b.iter(|| {
            let hit = persistent.get_archived(&keys.next_key()).unwrap().unwrap();
            black_box(hit.bytes[BLOB_LEN / 2])
        })
    });
    g.bench_function("persistent_owned", |b| {
        b.iter(|| persistent.get_or_compute(&keys.next_key(), |_| panic!("must hit")))
    });
    g.bench_function("redb_cache_get", |b| {
        b.iter(|| redb_cache.cache_get(&keys.next_key()).unwrap().unwrap())
    });
    g.finish();
}

criterion_group!(benches, small, big);
criterion_main!(benches);
