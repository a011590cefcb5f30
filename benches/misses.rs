//! Misses, side by side with the peers in one run (issue 4, point 6): 20k distinct keys
//! computed and stored into an empty cache (u64 key -> ~100-byte struct).
//!
//! - `persistent`: 20k `get_or_compute` calls on a fresh `Cache::open` file, then
//!   `Cache::flush()`, so the timed work includes committing every entry and an fsync:
//!   more durable than either peer variant below.
//! - `redb_cache_default`: 20k `cache_get` misses + `cache_set` on a fresh
//!   `cached::RedbCache` with its defaults (`durable(true)`: an fsync per set).
//! - `redb_cache_nondurable`: the same with `durable(false)`.
//! - `tiered`, `mutex_hashmap`: for scale.
//!
//! Cache creation and closing are not timed. Run with `cargo bench --bench misses`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cached::{ConcurrentCached, RedbCache};
use common::*;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fresco_memoize::{Cache, Store};

const KEYS: u64 = 20_000;

fn ours(store: Store) -> impl FnMut(u64) -> Duration {
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let dir = tempfile::tempdir().unwrap();
            let cache = Cache::open(dir.path().join("misses.memo")).unwrap();
            let m = cache
                .memoizer::<u64, Record>("misses")
                .store(store)
                .build()
                .unwrap();
            let keys = shuffled(KEYS);
            let start = Instant::now();
            for &k in &keys {
                black_box(m.get_or_compute(&k, |k| record(*k)));
            }
            cache.flush().unwrap();
            total += start.elapsed();
            assert_eq!(m.stats().inserts, KEYS);
        }
        total
    }
}

fn peer(durable: bool) -> impl FnMut(u64) -> Duration {
    move |iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let dir = tempfile::tempdir().unwrap();
            let peer: RedbCache<u64, Record> = RedbCache::builder("misses")
                .disk_dir(dir.path())
                .durable(durable)
                .build()
                .unwrap();
            let keys = shuffled(KEYS);
            let start = Instant::now();
            for &k in &keys {
                let v = match peer.cache_get(&k).unwrap() {
                    Some(v) => v,
                    None => {
                        let v = record(k);
                        peer.cache_set(k, v.clone()).unwrap();
                        v
                    }
                };
                black_box(v);
            }
            total += start.elapsed();
        }
        total
    }
}

fn miss_store_20k(c: &mut Criterion) {
    let mut g = c.benchmark_group("miss_store_20k");
    g.throughput(Throughput::Elements(KEYS));
    g.sample_size(10).warm_up_time(Duration::from_millis(200));
    g.measurement_time(Duration::from_secs(3));
    g.bench_function("persistent", |b| b.iter_custom(ours(Store::Persistent)));
    g.bench_function("tiered", |b| {
        b.iter_custom(ours(Store::Tiered(KEYS as usize)))
    });
    g.bench_function("redb_cache_nondurable", |b| b.iter_custom(peer(false)));
    g.bench_function("mutex_hashmap", |b| {
        b.iter_batched(
            || (MutexMemo::<Record>::default(), shuffled(KEYS)),
            |(memo, keys)| {
                for &k in &keys {
                    black_box(mutex_memo_get(&memo, k, record));
                }
                memo
            },
            BatchSize::PerIteration,
        )
    });
    // An fsync per entry: each iteration takes seconds, so this one runs last with the
    // fewest samples criterion allows.
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("redb_cache_default", |b| b.iter_custom(peer(true)));
    g.finish();
}

criterion_group!(benches, miss_store_20k);
criterion_main!(benches);
