//! Shared fixtures of the peer benchmarks (benches/hits.rs, benches/misses.rs): the value
//! types, key orders and the ways each peer is filled.
#![allow(dead_code)] // each bench uses a different part of this module

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use cached::{ConcurrentCached, RedbCache};
use fresco_memoize::{Cache, Fingerprint, Memoizer, Store};

/// Entries of the hit benchmarks.
pub const ENTRIES: u64 = 100_000;
/// Capacity of every bounded in-memory store: above `ENTRIES`, so every lookup hits.
pub const CAPACITY: usize = 131_072;

/// The ~100-byte value of the hit benchmarks (a 102-byte rkyv archive).
#[derive(
    Clone,
    Debug,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Fingerprint,
)]
pub struct Record {
    pub id: u64,
    pub score: f64,
    pub name: String,
    pub tags: Vec<u32>,
}

/// The value computed for key `i`.
pub fn record(i: u64) -> Record {
    Record {
        id: i,
        score: i as f64 * 0.5,
        name: format!("record {i:010} of the benchmark set"),
        tags: (0..8)
            .map(|t| (i as u32).wrapping_mul(31).wrapping_add(t))
            .collect(),
    }
}

/// A 64 KiB value.
#[derive(
    Clone,
    Debug,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    Fingerprint,
)]
pub struct Blob {
    pub id: u64,
    pub bytes: Vec<u8>,
}

pub const BLOB_LEN: usize = 64 * 1024;

pub fn blob(i: u64) -> Blob {
    Blob {
        id: i,
        bytes: (0..BLOB_LEN).map(|b| (b as u64 ^ i) as u8).collect(),
    }
}

/// `0..n` in a fixed pseudo-random order (xorshift Fisher-Yates), so lookups do not walk
/// the B-tree in key order.
pub fn shuffled(n: u64) -> Vec<u64> {
    let mut keys: Vec<u64> = (0..n).collect();
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..keys.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        keys.swap(i, (s % (i as u64 + 1)) as usize);
    }
    keys
}

/// Cycles through a key order.
pub struct Keys {
    keys: Vec<u64>,
    at: usize,
}

impl Keys {
    pub fn new(n: u64) -> Keys {
        Keys {
            keys: shuffled(n),
            at: 0,
        }
    }

    #[inline]
    pub fn next_key(&mut self) -> u64 {
        let k = self.keys[self.at];
        self.at += 1;
        if self.at == self.keys.len() {
            self.at = 0;
        }
        k
    }
}

/// A memoizer of `store` filled with `n` values of `make`, committed.
pub fn filled<V: fresco_memoize::Value>(
    cache: &Cache,
    name: &str,
    store: Store,
    n: u64,
    make: fn(u64) -> V,
) -> Memoizer<u64, V> {
    let m = cache
        .memoizer::<u64, V>(name)
        .store(store)
        .build()
        .expect("build memoizer");
    fill(cache, m, n, make)
}

/// Like [`filled`] for a persistent memoizer in zone "Authors", entry `k` depending on
/// author `k / 200` (so its entries are filed under their author).
pub fn filled_zoned<V: fresco_memoize::Value>(
    cache: &Cache,
    name: &str,
    n: u64,
    make: fn(u64) -> V,
) -> Memoizer<u64, V> {
    let authors = cache.zone("Authors").expect("zone");
    let m = cache
        .memoizer::<u64, V>(name)
        .store(Store::Persistent)
        .zone_key(&authors, |k: &u64| *k / 200)
        .build()
        .expect("build memoizer");
    fill(cache, m, n, make)
}

fn fill<V: fresco_memoize::Value>(
    cache: &Cache,
    m: Memoizer<u64, V>,
    n: u64,
    make: fn(u64) -> V,
) -> Memoizer<u64, V> {
    for i in 0..n {
        m.get_or_compute(&i, |k| make(*k));
    }
    cache.flush().expect("flush");
    m
}

/// A `cached::RedbCache` in `dir` holding `n` values of `make`, reopened with its default
/// settings (`durable(true)`) for the measurement. It is filled with `durable(false)` plus
/// one flush, only to keep the set-up short; reads do not depend on the setting.
pub fn redb_cache_filled<V>(dir: &Path, name: &str, n: u64, make: fn(u64) -> V) -> RedbCache<u64, V>
where
    V: serde::Serialize + serde::de::DeserializeOwned,
{
    {
        let fill: RedbCache<u64, V> = RedbCache::builder(name)
            .disk_dir(dir)
            .durable(false)
            .build()
            .expect("build RedbCache");
        for i in 0..n {
            fill.cache_set(i, make(i)).expect("RedbCache set");
        }
        fill.flush().expect("RedbCache flush");
    }
    RedbCache::builder(name)
        .disk_dir(dir)
        .build()
        .expect("reopen RedbCache")
}

/// The hand-rolled memo most programs start with.
pub type MutexMemo<V> = Mutex<HashMap<u64, V>>;

pub fn mutex_memo_get<V: Clone>(memo: &MutexMemo<V>, key: u64, make: fn(u64) -> V) -> V {
    let mut map = memo.lock().unwrap();
    map.entry(key).or_insert_with(|| make(key)).clone()
}
