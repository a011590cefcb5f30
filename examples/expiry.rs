//! Expiry: `expires` (a lifetime stored with each entry, so it holds across restarts),
//! `max_hits` (serve a value n times, then recompute), and the background sweeper that
//! removes expired entries from the file without anyone asking.
//!
//! Runs in about a second, on the real clock.
//!
//! ```sh
//! cargo run --example expiry
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Store};

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
    let dir = std::env::temp_dir().join(format!("fresco-memoize-expiry-{}", std::process::id()));
    let path = dir.join("expiry.memo");
    let cache = Cache::builder()
        // The default is every 60 s; short here so the example shows it.
        .sweep_interval(Some(Duration::from_millis(100)))
        .open(&path)?;

    // A quote that is good for 300 ms.
    let fetches = AtomicU32::new(0);
    let quote = cache
        .memoizer::<str, u64>("quote")
        .expires(Duration::from_millis(300))
        .build()?;
    let price = |symbol: &str| {
        quote.get_or_compute(symbol, |_| {
            fetches.fetch_add(1, Ordering::SeqCst) as u64 + 100
        })
    };
    println!("quote(ACME) = {}  (fetched)", price("ACME"));
    println!("quote(ACME) = {}  (cached)", price("ACME"));
    std::thread::sleep(Duration::from_millis(350));
    println!(
        "quote(ACME) = {}  (expired after 300 ms: fetched again)",
        price("ACME")
    );
    assert_eq!(fetches.load(Ordering::SeqCst), 2);

    // A one-time token that may be served twice, then is recomputed.
    let issued = AtomicU32::new(0);
    let token = cache
        .memoizer::<u32, u32>("token")
        .store(Store::Memory)
        .max_hits(2)
        .build()?;
    let tokens: Vec<u32> = (0..6)
        .map(|_| token.get_or_compute(&7, |_| issued.fetch_add(1, Ordering::SeqCst) + 1))
        .collect();
    println!("token(7) over 6 calls with max_hits = 2: {tokens:?}");
    assert_eq!(tokens, [1, 1, 1, 2, 2, 2]);

    // The sweeper: 500 short-lived entries leave the file on their own.
    let session = cache
        .memoizer::<u64, String>("session")
        .expires(Duration::from_millis(200))
        .build()?;
    for id in 0..500 {
        session.get_or_compute(&id, |id| format!("session {id}"));
    }
    let info = cache.inspect()?;
    println!(
        "file holds {} entries ({} expired)",
        info.entries(),
        info.expired()
    );
    let start = Instant::now();
    let mut left = session.stats().entries.unwrap_or(0);
    while left > 0 && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        left = session.stats().entries.unwrap_or(0);
    }
    println!(
        "after {:.1?} the sweeper had removed them: {left} session entries left, no call made",
        start.elapsed()
    );
    // On demand instead of waiting: removes whatever is past its deadline now (the
    // sweeper may already have taken the ACME quote).
    println!(
        "purge_expired() on demand removed {} more",
        cache.purge_expired()?
    );

    drop((quote, token, session, cache));
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
