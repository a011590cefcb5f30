//! Hit ratios of a bounded cache (issue 13): the persistent store under a byte budget
//! (`CacheBuilder::max_bytes`, TinyLFU admission over a second-chance order; and the
//! same policy as a memoizer's own budget, `MemoizerBuilder::max_bytes`) against
//! moka (TinyLFU admission, LRU main space) and a plain LRU, each holding the same number
//! of entries, on Zipf(0.9) traces of 2M requests over 200k keys, with budgets of 1 %
//! and 10 % of the keys, and the same traces with a one-pass scan of 100k cold keys
//! mixed in (one every 20 requests).
//!
//! Counts, not time (the persistent store's vary a little with how the writer batches). Run with
//! `cargo bench -p fresco-memoize-benches --bench hit_ratio`; it prints the README's
//! table. `FRESCO_HIT_RATIO_REQUESTS` shortens the traces for a quick look.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use fresco_memoize::{Cache, Memoizer, Store};

const KEYS: u64 = 200_000;
const SCAN: u64 = 100_000;
const ZIPF_S: f64 = 0.9;

/// A value of about a hundred bytes, like a small record.
fn value(k: u64) -> Vec<u8> {
    vec![(k % 251) as u8; 100]
}

/// splitmix64: a deterministic stream of uniform words.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `requests` keys drawn from Zipf(`ZIPF_S`) over `KEYS` ranks (rank r has weight
/// 1/r^s), ranks scattered over the key space; with `scan`, a one-pass scan of `SCAN`
/// keys never asked otherwise is mixed in, one every 20 requests.
fn trace(requests: usize, scan: bool) -> Vec<u64> {
    let mut cumulative = Vec::with_capacity(KEYS as usize);
    let mut total = 0.0;
    for rank in 1..=KEYS {
        total += 1.0 / (rank as f64).powf(ZIPF_S);
        cumulative.push(total);
    }
    let mut rng = Rng(0x5eed);
    let mut out = Vec::with_capacity(requests + requests / 20);
    let mut scanned = 0;
    for i in 0..requests {
        let u = rng.unit() * total;
        let rank = cumulative.partition_point(|&c| c < u) as u64;
        // Popularity unrelated to the key's value.
        out.push(rank.wrapping_mul(0x2545_f491_4f6c_dd1d) % (KEYS * 64));
        if scan && i % 20 == 19 && scanned < SCAN {
            out.push(KEYS * 64 + scanned);
            scanned += 1;
        }
    }
    out
}

/// A plain LRU of `capacity` keys: a map into a slab of doubly linked nodes.
struct Lru {
    capacity: usize,
    map: HashMap<u64, usize>,
    /// (key, prev, next); `usize::MAX` is none.
    nodes: Vec<(u64, usize, usize)>,
    head: usize,
    tail: usize,
}

impl Lru {
    fn new(capacity: usize) -> Self {
        Lru {
            capacity,
            map: HashMap::with_capacity(capacity),
            nodes: Vec::with_capacity(capacity),
            head: usize::MAX,
            tail: usize::MAX,
        }
    }

    fn unlink(&mut self, i: usize) {
        let (_, prev, next) = self.nodes[i];
        match prev {
            usize::MAX => self.head = next,
            p => self.nodes[p].2 = next,
        }
        match next {
            usize::MAX => self.tail = prev,
            n => self.nodes[n].1 = prev,
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].1 = usize::MAX;
        self.nodes[i].2 = self.head;
        if self.head != usize::MAX {
            self.nodes[self.head].1 = i;
        }
        self.head = i;
        if self.tail == usize::MAX {
            self.tail = i;
        }
    }

    /// Whether `key` was held; it is held (most recent) afterwards.
    fn access(&mut self, key: u64) -> bool {
        if let Some(&i) = self.map.get(&key) {
            self.unlink(i);
            self.push_front(i);
            return true;
        }
        let i = if self.nodes.len() < self.capacity {
            self.nodes.push((key, usize::MAX, usize::MAX));
            self.nodes.len() - 1
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.map.remove(&self.nodes[victim].0);
            self.nodes[victim].0 = key;
            victim
        };
        self.map.insert(key, i);
        self.push_front(i);
        false
    }
}

fn lru_ratio(trace: &[u64], capacity: usize) -> f64 {
    let mut lru = Lru::new(capacity);
    let hits = trace.iter().filter(|&&k| lru.access(k)).count();
    hits as f64 / trace.len() as f64
}

fn moka_ratio(trace: &[u64], capacity: usize) -> f64 {
    let cache: moka::sync::Cache<u64, Vec<u8>> = moka::sync::Cache::new(capacity as u64);
    let mut hits = 0usize;
    for &k in trace {
        if cache.get(&k).is_some() {
            hits += 1;
        } else {
            cache.insert(k, value(k));
        }
    }
    hits as f64 / trace.len() as f64
}

/// Which budget bounds the persistent store.
#[derive(Clone, Copy)]
enum Budget {
    /// The file's (`CacheBuilder::max_bytes`).
    File,
    /// The memoizer's own (`MemoizerBuilder::max_bytes`), in a file without one.
    Memoizer,
}

/// The persistent store with the byte budget that holds `capacity` entries of the
/// trace's kind; returns the hit ratio, the budget and the file's largest size.
fn ours_ratio(trace: &[u64], capacity: usize, budget: Budget) -> (f64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    // What one entry is charged, measured on a cache without budget.
    let charge = {
        let cache = Cache::open(dir.path().join("probe.memo")).unwrap();
        let m = memoizer(&cache, None);
        m.get_or_compute(&(KEYS * 64 - 1), |k| value(*k));
        m.stats().bytes.unwrap()
    };
    let path = dir.path().join("bounded.memo");
    let (cache, m, max_bytes) = match budget {
        Budget::File => {
            // The live entries are kept under 9/16 of the file's budget (ARCHITECTURE.md,
            // "Byte budget").
            let max_bytes = (capacity as u64 * charge * 16).div_ceil(9);
            let cache = Cache::builder()
                .max_bytes(Some(max_bytes))
                .open(&path)
                .unwrap();
            let m = memoizer(&cache, None);
            (cache, m, max_bytes)
        }
        Budget::Memoizer => {
            // A memoizer's own budget bounds its charge itself.
            let max_bytes = capacity as u64 * charge;
            let cache = Cache::open(&path).unwrap();
            let m = memoizer(&cache, Some(max_bytes));
            (cache, m, max_bytes)
        }
    };
    let misses = AtomicU64::new(0);
    let mut largest = 0;
    for (i, &k) in trace.iter().enumerate() {
        m.get_or_compute(&k, |k| {
            misses.fetch_add(1, Ordering::Relaxed);
            value(*k)
        });
        // Keep the writer caught up, as a program that is not a tight loop of misses
        // lets it be: values still queued are served from the write overlay, which would
        // hold more entries than the budget.
        if i % 100 == 99 {
            cache.flush().unwrap();
        }
        if i % 10_000 == 0 {
            largest = largest.max(std::fs::metadata(&path).map_or(0, |m| m.len()));
        }
    }
    cache.flush().unwrap();
    largest = largest.max(std::fs::metadata(&path).map_or(0, |m| m.len()));
    let hits = trace.len() as u64 - misses.load(Ordering::Relaxed);
    (hits as f64 / trace.len() as f64, max_bytes, largest)
}

fn memoizer(cache: &Cache, max_bytes: Option<u64>) -> Memoizer<u64, Vec<u8>> {
    cache
        .memoizer::<u64, Vec<u8>>("records")
        .store(Store::Persistent)
        .max_bytes(max_bytes)
        .build()
        .unwrap()
}

fn main() {
    let requests = std::env::var("FRESCO_HIT_RATIO_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    println!(
        "| trace | budget (entries) | fresco-memoize (file budget) | fresco-memoize (memoizer budget) | moka | plain LRU | ours / moka (file, memoizer) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for scan in [false, true] {
        let trace = trace(requests, scan);
        for percent in [1u64, 10] {
            let capacity = (KEYS * percent / 100) as usize;
            let (ours, max_bytes, largest) = ours_ratio(&trace, capacity, Budget::File);
            let (own, own_bytes, _) = ours_ratio(&trace, capacity, Budget::Memoizer);
            let moka = moka_ratio(&trace, capacity);
            let lru = lru_ratio(&trace, capacity);
            let name = if scan { "Zipf 0.9 + scan" } else { "Zipf 0.9" };
            println!(
                "| {name} | {percent} % ({capacity}) | {:.2} % ({max_bytes} B budget, file <= {largest} B) | {:.2} % ({own_bytes} B budget) | {:.2} % | {:.2} % | {:.3}, {:.3} |",
                ours * 100.0,
                own * 100.0,
                moka * 100.0,
                lru * 100.0,
                ours / moka,
                own / moka
            );
        }
    }
}
