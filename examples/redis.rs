//! Two "machines" sharing one cache through a Redis (or Valkey) server: each is a
//! `Cache` with its own connections, as two processes on two hosts would be. The second
//! is served what the first computed; a zone invalidation on the second reaches the
//! first's local tier within milliseconds (an invalidation push), and only the entries
//! of that author are computed again.
//!
//! ```sh
//! redis-server --port 6390 --save '' --appendonly no --daemonize yes
//! FRESCO_REDIS_URL=redis://127.0.0.1:6390/0 cargo run --features redis --example redis
//! redis-cli -p 6390 shutdown nosave
//! ```
//!
//! Without `FRESCO_REDIS_URL` it connects to `redis://127.0.0.1:6379/0`.

use std::cell::Cell;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Memoizer, Store, Zone};

struct Machine {
    authors: Zone,
    blurb: Memoizer<u64, String>,
}

/// One machine's view of the shared cache: its books' blurbs depend on their author
/// (book `b` is by author `b % 3`), kept in a local tier in front of the server.
fn machine(url: &str, namespace: &str) -> Result<Machine, fresco_memoize::Error> {
    let cache = Cache::builder().namespace(namespace).connect(url)?;
    let authors = cache.zone("authors")?;
    let blurb = cache
        .memoizer("blurb")
        .store(Store::Tiered(1_000))
        .zone_key(&authors, |book: &u64| book % 3)
        .build()?;
    Ok(Machine { authors, blurb })
}

fn main() -> Result<(), fresco_memoize::Error> {
    let url = std::env::var("FRESCO_REDIS_URL").unwrap_or("redis://127.0.0.1:6379/0".into());
    // A namespace of this run's own: its keys start with `{fm:<namespace>}`.
    let namespace = format!("example-{}", std::process::id());
    let (first, second) = (machine(&url, &namespace)?, machine(&url, &namespace)?);
    let computed = Cell::new(0);
    let write = |book: &u64| {
        computed.set(computed.get() + 1);
        std::thread::sleep(Duration::from_millis(20)); // a slow computation
        format!("book {book}, by author {}", book % 3)
    };

    for book in 0..9 {
        first.blurb.get_or_compute(&book, write);
    }
    println!("first machine: 9 blurbs, {} computed", computed.get());
    computed.set(0);
    for book in 0..9 {
        second.blurb.get_or_compute(&book, write);
    }
    println!(
        "second machine: 9 blurbs, {} computed (served the first's)",
        computed.get()
    );
    if first.blurb.stats().errors > 0 {
        eprintln!("the server at {url} was not reachable: see Cache::health()");
        return Ok(());
    }

    // Author 1 edits their books: the second machine invalidates what depends on them.
    let started = Instant::now();
    second.authors.invalidate(&1u64)?;
    while first.blurb.get_archived(&1)?.is_some() {
        std::thread::sleep(Duration::from_millis(1));
    }
    println!(
        "first machine dropped author 1's local copies {:.1} ms after the invalidation",
        started.elapsed().as_secs_f64() * 1e3
    );
    computed.set(0);
    for book in 0..9 {
        first.blurb.get_or_compute(&book, write);
    }
    println!(
        "first machine: 9 blurbs, {} computed (books 1, 4 and 7 of author 1)",
        computed.get()
    );
    Ok(())
}
