//! Bytes per entry on disk, ours against `cached`'s `RedbCache`, for the same data: the
//! ~100-byte `Record` of `benches/common` under `u64` keys, at 10k, 100k and 1M entries.
//! Ours is measured after one `Cache::flush` and closing the cache (no manual compaction:
//! the writer compacts a grown file by itself right after the flush); `RedbCache` after
//! its own flush and close. Not a timing benchmark: it
//! prints a table.
//!
//! Run with `cargo bench --bench file_size`.

mod common;

use common::*;
use fresco_memoize::{Cache, Store};

fn main() {
    // `cargo bench` passes `--bench`; a filter argument names the sizes to run.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    println!("| entries | ours (bytes/entry) | RedbCache (bytes/entry) | RedbCache / ours |");
    println!("|---|---|---|---|");
    for (n, label) in [(10_000u64, "10k"), (100_000, "100k"), (1_000_000, "1M")] {
        if !filter.is_empty() && !filter.iter().any(|f| f == label) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("size.memo");
        let cache = Cache::open(&path).unwrap();
        drop(filled(&cache, "persistent", Store::Persistent, n, record));
        drop(cache);
        let ours = std::fs::metadata(&path).unwrap().len();
        drop(redb_cache_filled(dir.path(), "peer", n, record));
        let peer: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().starts_with("peer"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        println!(
            "| {label} | {} | {} | {:.2}x |",
            ours / n,
            peer / n,
            peer as f64 / ours as f64
        );
    }
}
