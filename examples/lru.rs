//! A bounded in-memory store: the Python original's `storefactory=LRUCacheDict`.
//!
//! `Store::Lru(n)` keeps at most `n` entries and evicts the least recently used one;
//! `Store::Tiered(n)` puts such an LRU in front of the cache file. Shown with the builder
//! and with `#[memoize(store = Lru(n))]`.
//!
//! ```sh
//! cargo run --example lru
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};

use fresco_memoize::{Cache, Store, memoize};

static RENDERS: AtomicU32 = AtomicU32::new(0);

/// Renders a thumbnail (pretend it is expensive). At most 2 are kept.
#[memoize(store = Lru(2))]
fn thumbnail(name: &str) -> String {
    RENDERS.fetch_add(1, Ordering::SeqCst);
    format!("[{name} 64x64]")
}

/// Errors are printed with `Display`, which says what to do (`fn main() -> Result`
/// would print their `Debug` form).
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), fresco_memoize::Error> {
    let cache = Cache::in_memory()?;
    let square = cache
        .memoizer::<u64, u64>("square")
        .store(Store::Lru(3))
        .build()?;

    let mut computed = Vec::new();
    for n in [1, 2, 3, 1, 4, 2, 1] {
        square.get_or_compute(&n, |n| {
            computed.push(*n);
            n * n
        });
    }
    // 1 2 3 fill the store; 1 is a hit (now most recent); 4 evicts 2 (least recent);
    // 2 is computed again and evicts 3; 1 is still there.
    println!("calls:    1 2 3 1 4 2 1");
    println!(
        "computed: {}",
        computed
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let stats = square.stats();
    println!(
        "square: {} hits, {} misses, {} evictions, {} entries (capacity 3)",
        stats.hits,
        stats.misses,
        stats.evictions,
        stats.entries.unwrap_or(0)
    );
    assert_eq!(computed, [1, 2, 3, 4, 2]);

    for name in ["cat", "dog", "cat", "owl", "dog"] {
        println!("thumbnail({name}) = {}", thumbnail(name));
    }
    println!(
        "thumbnail: {} renders for 5 calls; dog was evicted by owl and rendered again",
        RENDERS.load(Ordering::SeqCst)
    );
    assert_eq!(RENDERS.load(Ordering::SeqCst), 4);
    Ok(())
}
