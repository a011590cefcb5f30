//! The Redis store against `cached`'s `RedisCache`, both on one redis-server in the same
//! run: a local-tier hit (with this crate's in-memory hit beside it), a remote hit, a
//! miss + store, invalidating the 200 entries that depend on one author, and
//! `invalidate_all` at 1k and 100k entries.
//!
//! `cached` has no dependency groups: its side of "200 dependents" removes the 200 keys
//! one by one (a caller that knows them), and its `cache_clear` is `SCAN` + `DEL`. Ours
//! write one key each (a stamp, a generation): the invalidated entries stay on the server,
//! unreachable, until their TTL ceiling or eviction, so every iteration of ours runs
//! against a server holding at least the entries it invalidated.
//!
//! Starts its own redis-server (no persistence) on a free port, or uses
//! `FRESCO_REDIS_URL`. Run with
//! `cargo bench -p fresco-memoize-benches --features redis --bench redis`.

#[path = "common/mod.rs"]
mod common;

use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cached::{ConcurrentCached, RedisCache};
use common::{Record, record};
use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use fresco_memoize::{Cache, Memoizer, Store, Zone};

/// Keys of the hit benchmarks.
const HIT_KEYS: u64 = 1_000;
const PER_AUTHOR: u64 = 200;

/// A redis-server of the benchmark's own, stopped when dropped.
struct Server {
    url: String,
    child: Option<Child>,
}

impl Server {
    fn start() -> Server {
        if let Ok(url) = std::env::var("FRESCO_REDIS_URL") {
            return Server { url, child: None };
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (or set FRESCO_REDIS_URL)");
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            url: format!("redis://127.0.0.1:{port}/0"),
            child: Some(child),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn ours(url: &str, ns: &str) -> Cache {
    Cache::builder().namespace(ns).connect(url).unwrap()
}

fn peer(url: &str, prefix: &str) -> RedisCache<u64, Record> {
    RedisCache::builder(prefix)
        .namespace("bench")
        .connection_string(url)
        .build()
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let server = Server::start();
    let url = server.url.as_str();

    let mut g = c.benchmark_group("redis_hit");
    let cache = ours(url, "hits");
    let tiered = cache
        .memoizer::<u64, Record>("tiered")
        .store(Store::Tiered(2 * HIT_KEYS as usize))
        .build()
        .unwrap();
    let remote = cache.memoizer::<u64, Record>("remote").build().unwrap();
    let memory = Cache::in_memory().unwrap();
    let in_memory = memory.memoizer::<u64, Record>("memory").build().unwrap();
    let theirs = peer(url, "hits");
    for k in 0..HIT_KEYS {
        tiered.get_or_compute(&k, |k| record(*k));
        remote.get_or_compute(&k, |k| record(*k));
        in_memory.get_or_compute(&k, |k| record(*k));
        theirs.cache_set(k, record(k)).unwrap();
    }
    // Second passes put every tiered value in the local tier.
    for k in 0..HIT_KEYS {
        tiered.get_or_compute(&k, |k| record(*k));
    }
    let mut k = 0u64;
    let mut next = || {
        k = (k + 1) % HIT_KEYS;
        k
    };
    g.bench_function("ours_local_tier", |b| {
        b.iter(|| black_box(tiered.get_or_compute(&next(), |_| unreachable!())))
    });
    g.bench_function("ours_memory_no_server", |b| {
        b.iter(|| black_box(in_memory.get_or_compute(&next(), |_| unreachable!())))
    });
    g.bench_function("ours_remote", |b| {
        b.iter(|| black_box(remote.get_or_compute(&next(), |_| unreachable!())))
    });
    g.bench_function("cached_redis_get", |b| {
        b.iter(|| black_box(theirs.cache_get(&next()).unwrap().unwrap()))
    });
    g.finish();

    let mut g = c.benchmark_group("redis_miss_store");
    let misses = cache.memoizer::<u64, Record>("misses").build().unwrap();
    let theirs = peer(url, "misses");
    let mut fresh = 1u64 << 40;
    g.bench_function("ours", |b| {
        b.iter(|| {
            fresh += 1;
            black_box(misses.get_or_compute(&fresh, |k| record(*k)))
        })
    });
    g.bench_function("cached_redis_get_set", |b| {
        b.iter(|| {
            fresh += 1;
            if theirs.cache_get(&fresh).unwrap().is_none() {
                theirs.cache_set(fresh, record(fresh)).unwrap();
            }
        })
    });
    g.finish();

    let mut g = c.benchmark_group("redis_invalidate_200_dependents");
    let authors: Zone = cache.zone("authors").unwrap();
    let books: Memoizer<u64, Record> = cache
        .memoizer("books")
        .zone_key(&authors, |b: &u64| *b / PER_AUTHOR)
        .build()
        .unwrap();
    let theirs = peer(url, "books");
    let mut author = 0u64;
    g.bench_function("ours_zone_invalidate", |b| {
        b.iter_batched(
            || {
                author += 1;
                for book in author * PER_AUTHOR..(author + 1) * PER_AUTHOR {
                    books.get_or_compute(&book, |k| record(*k));
                }
                author
            },
            |author| black_box(authors.invalidate(&author).unwrap()),
            BatchSize::PerIteration,
        )
    });
    g.bench_function("cached_redis_remove_200", |b| {
        b.iter_batched(
            || {
                author += 1;
                for book in author * PER_AUTHOR..(author + 1) * PER_AUTHOR {
                    theirs.cache_set(book, record(book)).unwrap();
                }
                author
            },
            |author| {
                for book in author * PER_AUTHOR..(author + 1) * PER_AUTHOR {
                    theirs.cache_remove(&book).unwrap();
                }
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();

    let mut g = c.benchmark_group("redis_invalidate_all");
    g.sample_size(10);
    for (entries, label) in [(1_000u64, "1k"), (100_000, "100k")] {
        let all = cache
            .memoizer::<u64, Record>(&format!("all_{label}"))
            .build()
            .unwrap();
        fill_ours(&all, entries);
        g.bench_with_input(BenchmarkId::new("ours", label), &entries, |b, _| {
            b.iter(|| black_box(all.invalidate_all().unwrap()))
        });
        let theirs = peer(url, &format!("all_{label}"));
        g.bench_with_input(
            BenchmarkId::new("cached_redis_clear", label),
            &entries,
            |b, &entries| {
                b.iter_batched(
                    || fill_peer(&theirs, entries),
                    |()| theirs.cache_clear().unwrap(),
                    BatchSize::PerIteration,
                )
            },
        );
    }
    g.finish();
    drop(server);
}

/// Stores `entries` values through the memoizer, from four threads.
fn fill_ours(m: &Memoizer<u64, Record>, entries: u64) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for k in (t..entries).step_by(4) {
                    m.get_or_compute(&k, |k| record(*k));
                }
            });
        }
    });
}

/// Refills the peer between `cache_clear`s: its own `cache_set`, from four threads.
fn fill_peer(theirs: &RedisCache<u64, Record>, entries: u64) {
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for k in (t..entries).step_by(4) {
                    theirs.cache_set(k, record(k)).unwrap();
                }
            });
        }
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
