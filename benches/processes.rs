//! Shared mode (`CacheBuilder::shared(true)`, issue 14 point 5), printed as the rows of
//! README's "Several processes" table:
//!
//! - `hit`: a persistent hit on 10k entries (u64 key -> ~100-byte struct), owned, in
//!   the default (exclusive) mode and in shared mode with no other process writing;
//!   the ratio is the "within 1.5x". The same with `max_hits` (a budget no run
//!   spends): exclusive, counted in this process's memory; shared, in the board every
//!   process maps (one compare-and-swap per hit), so all processes spend one budget.
//! - `miss + store`: 20k distinct keys computed and stored, then `flush`: by one
//!   exclusive process, by one shared process, and by 4 shared processes (this binary
//!   run again as workers) storing 5k keys each at once; throughput in keys/s, the
//!   4-process row against the exclusive one (the ">= 50 %").
//!
//! Not criterion: the multi-process rows need several processes started together.
//! Each row is the median of `ROUNDS` runs. Run with `cargo bench --bench processes`.

mod common;

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fresco_memoize::{Cache, Store};

const ROUNDS: usize = 5;
const HIT_KEYS: u64 = 10_000;
const HITS: u64 = 200_000;
const STORE_KEYS: u64 = 20_000;
const WORKERS: u64 = 4;
const ROLE: &str = "FRESCO_BENCH_PROCESSES_ROLE";

fn open(path: &Path, shared: bool) -> Cache {
    Cache::builder()
        .shared(shared)
        .sweep_interval(None)
        .open(path)
        .unwrap()
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Nanoseconds per persistent hit, 10k entries, one thread (with `max_hits` if given).
fn hit_ns(shared: bool, max_hits: Option<u32>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hits.memo");
    let cache = open(&path, shared);
    let mut builder = cache
        .memoizer::<u64, Record>("hits")
        .store(Store::Persistent);
    if let Some(n) = max_hits {
        builder = builder.max_hits(n);
    }
    let m = builder.build().unwrap();
    for k in 0..HIT_KEYS {
        m.get_or_compute(&k, |k| record(*k));
    }
    cache.flush().unwrap();
    let keys = shuffled(HIT_KEYS);
    let runs = (0..ROUNDS)
        .map(|_| {
            let start = Instant::now();
            for i in 0..HITS {
                let k = keys[(i % HIT_KEYS) as usize];
                black_box(m.get_or_compute(&k, |_| unreachable!("a hit")));
            }
            start.elapsed()
        })
        .collect();
    median(runs).as_nanos() as f64 / HITS as f64
}

/// Stores keys `from..from + n` into the file at `path` and flushes; the time taken.
fn store(path: &Path, shared: bool, from: u64, n: u64) -> Duration {
    let cache = open(path, shared);
    let m = cache
        .memoizer::<u64, Record>("stores")
        .store(Store::Persistent)
        .build()
        .unwrap();
    let start = Instant::now();
    for k in from..from + n {
        black_box(m.get_or_compute(&k, |k| record(*k)));
    }
    cache.flush().unwrap();
    start.elapsed()
}

/// Keys per second of one process storing `STORE_KEYS` keys.
fn one_process(shared: bool) -> f64 {
    let runs = (0..ROUNDS)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            store(&dir.path().join("stores.memo"), shared, 0, STORE_KEYS)
        })
        .collect();
    STORE_KEYS as f64 / median(runs).as_secs_f64()
}

/// Keys per second of `WORKERS` processes storing `STORE_KEYS / WORKERS` keys each at
/// once: all the keys over the slowest worker's time (from a common start).
fn worker_processes() -> f64 {
    let exe = std::env::current_exe().unwrap();
    let runs = (0..ROUNDS)
        .map(|_| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("stores.memo");
            drop(open(&path, true));
            let go = dir.path().join("go");
            let children: Vec<_> = (0..WORKERS)
                .map(|w| {
                    Command::new(&exe)
                        .env(ROLE, format!("{w}"))
                        .env("FRESCO_BENCH_FILE", &path)
                        .env("FRESCO_BENCH_GO", &go)
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .unwrap()
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            std::fs::write(&go, "").unwrap();
            children
                .into_iter()
                .map(|c| {
                    let out = c.wait_with_output().unwrap();
                    assert!(out.status.success());
                    let ns: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
                    Duration::from_nanos(ns)
                })
                .max()
                .unwrap()
        })
        .collect();
    STORE_KEYS as f64 / median(runs).as_secs_f64()
}

/// A worker of [`worker_processes`]: waits for the go file, stores its share, prints
/// the nanoseconds it took.
fn worker(w: u64) {
    let path = std::env::var("FRESCO_BENCH_FILE").unwrap();
    let go = std::env::var("FRESCO_BENCH_GO").unwrap();
    let share = STORE_KEYS / WORKERS;
    let cache_path = Path::new(&path);
    while !Path::new(&go).exists() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let took = store(cache_path, true, w * share, share);
    println!("{}", took.as_nanos());
}

fn main() {
    if let Ok(w) = std::env::var(ROLE) {
        worker(w.parse().unwrap());
        return;
    }
    // `cargo bench` passes `--bench`; a test run (`cargo test --benches`) does not run it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let exclusive_hit = hit_ns(false, None);
    let shared_hit = hit_ns(true, None);
    let exclusive_counted = hit_ns(false, Some(1_000_000));
    let shared_counted = hit_ns(true, Some(1_000_000));
    println!("| workload | exclusive | shared | shared / exclusive | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| persistent hit, 10k entries, no other writer | {exclusive_hit:.0} ns | {shared_hit:.0} ns | {:.2}x | within 1.5x |",
        shared_hit / exclusive_hit
    );
    println!(
        "| persistent hit with max_hits, 10k entries | {exclusive_counted:.0} ns | {shared_counted:.0} ns | {:.2}x | |",
        shared_counted / exclusive_counted
    );
    let exclusive = one_process(false);
    let shared_one = one_process(true);
    let shared_four = worker_processes();
    println!(
        "| miss + store, 20k keys, then flush: 1 process | {exclusive:.0} keys/s | {shared_one:.0} keys/s | {:.0} % | |",
        100.0 * shared_one / exclusive
    );
    println!(
        "| miss + store, 20k keys, then flush: 4 shared processes (5k each) vs 1 exclusive | {exclusive:.0} keys/s | {shared_four:.0} keys/s | {:.0} % | >= 50 % |",
        100.0 * shared_four / exclusive
    );
}
