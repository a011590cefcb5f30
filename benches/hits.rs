//! Hits, side by side with the peers in one run (issue 4, point 6):
//!
//! - `hit_100k`: 100k entries, u64 key -> ~100-byte struct, one lookup per iteration in a
//!   fixed shuffled key order. Persistent (owned and archived; owned in a file with a
//!   byte budget, whose hits count in its eviction policy's sketch; and owned in a
//!   memoizer with a zone key, whose lookups derive the dependency row first) vs `cached::RedbCache` get
//!   (default, durable); tiered and in-memory vs `moka` 0.12 sync, `quick_cache` 0.7 and
//!   a `Mutex<HashMap>` memo. Every owned variant returns an owned value (ours
//!   deserializes, the peers clone or decode).
//! - `hit_64k`: 64 KiB values, archived access (checksum verified, as by default) vs
//!   `RedbCache` get.
//! - `hit_threads`: throughput of 1, 2 and 8 threads hitting one memoizer of each store
//!   kind (100k entries), and quick_cache and moka likewise.
//! - `hit_sizes`: the persistent hit at 10k, 100k and 1M entries vs `RedbCache` and vs
//!   the floor, a raw redb get of the same entry bytes.
//! - `hit_string_keys`: 20-byte `String` keys, memory and LRU stores vs quick_cache.
//! - `reopen_first_hit`: open a 100k-entry file, build the memoizer, serve one hit.
//! - `archived_deref`: `*hit` (validated once, unchecked afterwards) vs checked
//!   `rkyv::access` on every use; src/hit.rs cites it.
//!
//! Run with `cargo bench --bench hits`; README "Performance" has the table.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use cached::ConcurrentCached;
use common::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fresco_memoize::{Cache, Store};

fn hit_100k(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("hits.memo")).unwrap();
    let persistent = filled(&cache, "persistent", Store::Persistent, ENTRIES, record);
    let tiered = filled(&cache, "tiered", Store::Tiered(CAPACITY), ENTRIES, record);
    let zoned = filled_zoned(&cache, "zoned", ENTRIES, record);
    // The same entries in a file with a byte budget that holds them all: its hits also
    // count their key in the eviction policy's sketch.
    let bounded_cache = Cache::builder()
        .max_bytes(Some(1 << 30))
        .open(dir.path().join("bounded.memo"))
        .unwrap();
    let bounded = filled(
        &bounded_cache,
        "bounded",
        Store::Persistent,
        ENTRIES,
        record,
    );
    let mem_cache = Cache::in_memory().unwrap();
    let memory = filled(&mem_cache, "memory", Store::Memory, ENTRIES, record);
    let lru = filled(&mem_cache, "lru", Store::Lru(CAPACITY), ENTRIES, record);
    let redb_cache = redb_cache_filled(dir.path(), "peer", ENTRIES, record);
    let moka: moka::sync::Cache<u64, Record> = moka::sync::Cache::new(CAPACITY as u64);
    let quick: quick_cache::sync::Cache<u64, Record> = quick_cache::sync::Cache::new(CAPACITY);
    let mutex: MutexMemo<Record> = MutexMemo::default();
    for i in 0..ENTRIES {
        moka.insert(i, record(i));
        quick.insert(i, record(i));
        mutex_memo_get(&mutex, i, record);
    }
    moka.run_pending_tasks();

    let mut g = c.benchmark_group("hit_100k");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let unreachable = |_: &u64| -> Record { panic!("benchmark lookups must hit") };
    let mut keys = Keys::new(ENTRIES);
    g.bench_function("persistent_owned", |b| {
        b.iter(|| persistent.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("persistent_archived", |b| {
        b.iter(|| {
            let hit = persistent.get_archived(&keys.next_key()).unwrap().unwrap();
            black_box(hit.id.to_native())
        })
    });
    g.bench_function("persistent_budgeted_owned", |b| {
        b.iter(|| bounded.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("persistent_zoned_owned", |b| {
        b.iter(|| zoned.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("redb_cache_get", |b| {
        b.iter(|| redb_cache.cache_get(&keys.next_key()).unwrap().unwrap())
    });
    g.bench_function("tiered_owned", |b| {
        b.iter(|| tiered.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("memory_owned", |b| {
        b.iter(|| memory.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("lru_owned", |b| {
        b.iter(|| lru.get_or_compute(&keys.next_key(), unreachable))
    });
    g.bench_function("moka_get", |b| {
        b.iter(|| moka.get(&keys.next_key()).unwrap())
    });
    g.bench_function("quick_cache_get", |b| {
        b.iter(|| quick.get(&keys.next_key()).unwrap())
    });
    g.bench_function("mutex_hashmap_get", |b| {
        b.iter(|| mutex_memo_get(&mutex, keys.next_key(), record))
    });
    g.finish();
    for (stats, before) in [
        (persistent.stats(), ENTRIES),
        (bounded.stats(), ENTRIES),
        (tiered.stats(), ENTRIES),
        (zoned.stats(), ENTRIES),
        (memory.stats(), ENTRIES),
        (lru.stats(), ENTRIES),
    ] {
        assert_eq!(stats.misses, before, "a benchmark lookup missed");
    }
}

fn hit_64k(c: &mut Criterion) {
    const N: u64 = 512;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("blobs.memo")).unwrap();
    let persistent = filled(&cache, "blobs", Store::Persistent, N, blob);
    let redb_cache = redb_cache_filled(dir.path(), "peer_blobs", N, blob);

    let mut g = c.benchmark_group("hit_64k");
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

fn hit_threads(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("threads.memo")).unwrap();
    let persistent = filled(&cache, "persistent", Store::Persistent, ENTRIES, record);
    let tiered = filled(&cache, "tiered", Store::Tiered(CAPACITY), ENTRIES, record);
    let mem_cache = Cache::in_memory().unwrap();
    let memory = filled(&mem_cache, "memory", Store::Memory, ENTRIES, record);
    let lru = filled(&mem_cache, "lru", Store::Lru(CAPACITY), ENTRIES, record);
    let moka: moka::sync::Cache<u64, Record> = moka::sync::Cache::new(CAPACITY as u64);
    let quick: quick_cache::sync::Cache<u64, Record> = quick_cache::sync::Cache::new(CAPACITY);
    for i in 0..ENTRIES {
        moka.insert(i, record(i));
        quick.insert(i, record(i));
    }
    moka.run_pending_tasks();

    let mut g = c.benchmark_group("hit_threads");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let order = shuffled(ENTRIES);
    let must_hit = |_: &u64| -> Record { panic!("must hit") };
    let rows: [(&str, &(dyn Fn(u64) -> Record + Sync)); 6] = [
        ("memory", &|k| memory.get_or_compute(&k, must_hit)),
        ("lru", &|k| lru.get_or_compute(&k, must_hit)),
        ("tiered", &|k| tiered.get_or_compute(&k, must_hit)),
        ("persistent", &|k| persistent.get_or_compute(&k, must_hit)),
        ("quick_cache", &|k| quick.get(&k).unwrap()),
        ("moka", &|k| moka.get(&k).unwrap()),
    ];
    for (name, get) in rows {
        for threads in [1usize, 2, 8] {
            // One element = one lookup; each thread performs `iters` of them, so the
            // throughput of two threads is twice one's if they do not slow each other.
            g.throughput(Throughput::Elements(threads as u64));
            g.bench_function(format!("{name}_{threads}_thread"), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    std::thread::scope(|s| {
                        for t in 0..threads {
                            let order = &order;
                            s.spawn(move || {
                                // The threads walk the same order from different places.
                                let mut at = t * order.len() / threads;
                                for _ in 0..iters {
                                    black_box(get(order[at]));
                                    at = if at + 1 == order.len() { 0 } else { at + 1 };
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

/// The persistent hit at 10k, 100k and 1M entries against `RedbCache` and against the
/// floor: a raw redb `get` of the same entry bytes (a copy of our file, read through one
/// open read transaction, the value's bytes touched but not decoded).
fn hit_sizes(c: &mut Criterion) {
    let mut g = c.benchmark_group("hit_sizes");
    g.sample_size(20).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for (n, label) in [(10_000u64, "10k"), (100_000, "100k"), (1_000_000, "1M")] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sizes.memo");
        drop(filled(
            &Cache::open(&path).unwrap(),
            "persistent",
            Store::Persistent,
            n,
            record,
        ));
        let floor_path = dir.path().join("floor.redb");
        std::fs::copy(&path, &floor_path).unwrap();
        let cache = Cache::open(&path).unwrap();
        let persistent = cache
            .memoizer::<u64, Record>("persistent")
            .store(Store::Persistent)
            .build()
            .unwrap();
        let redb_cache = redb_cache_filled(dir.path(), "peer", n, record);
        let floor = RawRedb::open(&floor_path, n);

        let mut keys = Keys::new(n);
        let unreachable = |_: &u64| -> Record { panic!("benchmark lookups must hit") };
        g.bench_function(format!("persistent_owned_{label}"), |b| {
            b.iter(|| persistent.get_or_compute(&keys.next_key(), unreachable))
        });
        g.bench_function(format!("persistent_archived_{label}"), |b| {
            b.iter(|| {
                let hit = persistent.get_archived(&keys.next_key()).unwrap().unwrap();
                black_box(hit.id.to_native())
            })
        });
        g.bench_function(format!("redb_cache_get_{label}"), |b| {
            b.iter(|| redb_cache.cache_get(&keys.next_key()).unwrap().unwrap())
        });
        let mut at = 0;
        g.bench_function(format!("redb_floor_get_{label}"), |b| {
            b.iter(|| {
                at = (at + 1) % floor.keys.len();
                floor.get(at)
            })
        });
        assert_eq!(persistent.stats().misses, 0, "a benchmark lookup missed");
    }
    g.finish();
}

/// 20-byte `String` keys: the in-memory stores against quick_cache.
fn hit_string_keys(c: &mut Criterion) {
    let key = |i: u64| format!("k{i:019}");
    let mem_cache = Cache::in_memory().unwrap();
    let memory = mem_cache
        .memoizer::<String, Record>("memory")
        .store(Store::Memory)
        .build()
        .unwrap();
    let lru = mem_cache
        .memoizer::<String, Record>("lru")
        .store(Store::Lru(CAPACITY))
        .build()
        .unwrap();
    let quick: quick_cache::sync::Cache<String, Record> = quick_cache::sync::Cache::new(CAPACITY);
    let keys: Vec<String> = shuffled(ENTRIES).into_iter().map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        let v = record(i as u64);
        memory.get_or_compute(k, |_| v.clone());
        lru.get_or_compute(k, |_| v.clone());
        quick.insert(k.clone(), v);
    }
    let mut g = c.benchmark_group("hit_string_keys");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    let unreachable = |_: &String| -> Record { panic!("benchmark lookups must hit") };
    let mut at = 0;
    let mut next = || {
        at = (at + 1) % keys.len();
        &keys[at]
    };
    g.bench_function("memory_owned", |b| {
        b.iter(|| memory.get_or_compute(next(), unreachable))
    });
    g.bench_function("lru_owned", |b| {
        b.iter(|| lru.get_or_compute(next(), unreachable))
    });
    g.bench_function("quick_cache_get", |b| b.iter(|| quick.get(next()).unwrap()));
    g.finish();
}

/// A plain redb table opened on a copy of our file: the entries table's rows, read by
/// their row keys (collected once, in a shuffled order).
struct RawRedb {
    table: redb::ReadOnlyTable<&'static [u8; 16], &'static [u8]>,
    keys: Vec<[u8; 16]>,
    /// Kept open: the table reads through it (dropped after the table).
    _db: redb::Database,
}

impl RawRedb {
    fn open(path: &std::path::Path, n: u64) -> RawRedb {
        use redb::{ReadableDatabase, ReadableTable, TableHandle};
        let db = redb::Database::open(path).unwrap();
        let txn = db.begin_read().unwrap();
        let name = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .find(|name| name.starts_with("fresco/entries/"))
            .expect("an entries table");
        let def = redb::TableDefinition::<&[u8; 16], &[u8]>::new(&name);
        let table = txn.open_table(def).unwrap();
        let mut keys: Vec<[u8; 16]> = table
            .iter()
            .unwrap()
            .map(|row| *row.unwrap().0.value())
            .collect();
        assert_eq!(keys.len() as u64, n);
        let order = shuffled(n);
        keys = order.iter().map(|&i| keys[i as usize]).collect();
        RawRedb {
            table,
            keys,
            _db: db,
        }
    }

    /// Reads every byte of the value (XORed together: no decoding, no allocation). Until
    /// 2026-12-03 this returned `value().len()`, which reads only the slice's bounds in
    /// the leaf, so the floor never touched the value's cache lines that any real read
    /// (ours, `RedbCache`'s) must load.
    #[inline]
    fn get(&self, at: usize) -> u8 {
        let row = self.table.get(&self.keys[at]).unwrap().unwrap();
        black_box(row.value()).iter().fold(0, |acc, b| acc ^ b)
    }
}

fn reopen_first_hit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.memo");
    {
        let cache = Cache::open(&path).unwrap();
        filled(&cache, "persistent", Store::Persistent, ENTRIES, record);
    }
    drop(redb_cache_filled(dir.path(), "peer", ENTRIES, record));

    let mut g = c.benchmark_group("reopen_first_hit");
    g.sample_size(20).measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("persistent", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let start = Instant::now();
                let cache = Cache::open(&path).unwrap();
                let m = cache.memoizer::<u64, Record>("persistent").build().unwrap();
                let key = (i * 7919) % ENTRIES;
                black_box(m.get_or_compute(&key, |_| panic!("must hit")));
                total += start.elapsed();
                // Closing (a durable commit of the registration) is not timed.
                drop((m, cache));
            }
            total
        })
    });
    g.bench_function("redb_cache", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let start = Instant::now();
                let peer: cached::RedbCache<u64, Record> = cached::RedbCache::builder("peer")
                    .disk_dir(dir.path())
                    .build()
                    .unwrap();
                let key = (i * 7919) % ENTRIES;
                black_box(peer.cache_get(&key).unwrap().unwrap());
                total += start.elapsed();
                drop(peer);
            }
            total
        })
    });
    g.finish();
}

fn archived_deref(c: &mut Criterion) {
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u64, Record>("deref")
        .store(Store::Persistent)
        .build()
        .unwrap();
    m.get_or_compute(&7, |k| record(*k));
    cache.flush().unwrap();
    let hit = m.get_archived(&7).unwrap().unwrap();
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&record(7)).unwrap();

    let mut g = c.benchmark_group("archived_deref");
    g.sample_size(30).measurement_time(Duration::from_secs(2));
    g.warm_up_time(Duration::from_millis(500));
    g.bench_function("guard_deref", |b| {
        // Auto-deref goes through `ArchivedHit::deref` on every iteration.
        b.iter(|| black_box(&hit).tags[3].to_native())
    });
    g.bench_function("checked_access", |b| {
        b.iter(|| {
            let archived =
                rkyv::access::<ArchivedRecord, rkyv::rancor::Error>(black_box(&bytes[..])).unwrap();
            archived.tags[3].to_native()
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    archived_deref,
    hit_100k,
    hit_64k,
    hit_threads,
    hit_sizes,
    hit_string_keys,
    reopen_first_hit
);
criterion_main!(benches);
