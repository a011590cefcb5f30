//! A desktop-style app: a pool of worker threads renders book pages, sharing one cache
//! file through `#[memoize]`d functions.
//!
//! - Single-flight: eight workers ask for the same author's biography at once; it is
//!   computed once and the other seven wait for that result.
//! - Zones: editing an author clears everything derived from that author - the biography
//!   and the blurb of each of their books - in one call, and nothing about other authors.
//!
//! ```sh
//! cargo run --example desktop
//! ```

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Fingerprint, Zone, memoize};

static CACHE: LazyLock<Cache> = LazyLock::new(|| {
    let path = std::env::temp_dir().join("fresco-memoize-desktop.memo");
    // Start from an empty file so every run shows the same thing.
    let _ = std::fs::remove_file(&path);
    // `Display` says what to do about a failure; `expect` would print `Debug`.
    Cache::open(&path).unwrap_or_else(|e| panic!("cannot open the cache file: {e}"))
});

/// Everything derived from an author depends on the author's id.
static AUTHORS: LazyLock<Zone> = LazyLock::new(|| {
    CACHE
        .zone("Authors")
        .unwrap_or_else(|e| panic!("{e}"))
        .key(|author: &Author| author.id)
});

static BIOGRAPHIES: AtomicU32 = AtomicU32::new(0);
static BLURBS: AtomicU32 = AtomicU32::new(0);

#[derive(serde::Serialize, Clone, Debug)]
struct Author {
    id: u64,
    name: String,
}

#[derive(serde::Serialize, Clone, Debug)]
struct Book {
    id: u64,
    author_id: u64,
    title: String,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug)]
struct Biography {
    text: String,
    books_written: u32,
}

/// Slow: asks a (pretend) remote service. Keyed by the whole author, so an edited name is
/// another key; the zone's key function files it under the author's id.
#[memoize(cache = CACHE, zone = AUTHORS)]
fn biography(author: &Author) -> Biography {
    BIOGRAPHIES.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    Biography {
        text: format!("{} wrote books.", author.name),
        books_written: 3,
    }
}

impl Book {
    /// Slow too; depends on the book's author.
    #[memoize(cache = CACHE, zone = AUTHORS, zonekey = |b: &Book| b.author_id)]
    fn blurb(&self) -> String {
        BLURBS.fetch_add(1, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        format!("\"{}\" - a classic", self.title)
    }
}

/// One page: a book's blurb and its author's biography.
fn render(book: &Book, author: &Author) -> String {
    let bio = biography(author);
    format!("{} | {}", book.blurb(), bio.text)
}

/// Renders `jobs` on a pool of `workers` threads; returns how long it took.
fn run_pool(workers: usize, jobs: &[(Book, Author)]) -> Duration {
    let (tx, rx) = crossbeam_channel::unbounded::<(Book, Author)>();
    for job in jobs {
        tx.send(job.clone()).expect("queue");
    }
    drop(tx);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            let rx = rx.clone();
            s.spawn(move || {
                for (book, author) in rx {
                    render(&book, &author);
                }
            });
        }
    });
    start.elapsed()
}

fn counts() -> (u32, u32) {
    (
        BIOGRAPHIES.load(Ordering::SeqCst),
        BLURBS.load(Ordering::SeqCst),
    )
}

fn main() {
    let tolstoy = Author {
        id: 1,
        name: "Leo Tolstoy".into(),
    };
    let chekhov = Author {
        id: 2,
        name: "Anton Chekhov".into(),
    };
    let book = |id: u64, author: &Author, title: &str| {
        (
            Book {
                id,
                author_id: author.id,
                title: title.into(),
            },
            author.clone(),
        )
    };
    let shelf = vec![
        book(10, &tolstoy, "War and Peace"),
        book(11, &tolstoy, "Anna Karenina"),
        book(12, &tolstoy, "Resurrection"),
        book(20, &chekhov, "The Seagull"),
        book(21, &chekhov, "Three Sisters"),
    ];

    // 1. Eight workers open Tolstoy's pages at the same moment.
    let rush: Vec<_> = (0..8).map(|i| shelf[i % 3].clone()).collect();
    let took = run_pool(8, &rush);
    let (bios, blurbs) = counts();
    println!(
        "8 workers, 8 pages of Tolstoy in {took:.0?}: biography computed {bios}x, \
         blurbs {blurbs}x (single-flight: the others waited for the first)"
    );
    assert_eq!((bios, blurbs), (1, 3));

    // 2. The whole shelf: only Chekhov's pages compute anything.
    let took = run_pool(4, &shelf);
    let (bios, blurbs) = counts();
    println!(
        "4 workers, the whole shelf in {took:.0?}: biographies {bios}x, blurbs {blurbs}x so far"
    );
    assert_eq!((bios, blurbs), (2, 5));

    // 3. The user edits Tolstoy's record: clear everything derived from author 1.
    let removed = AUTHORS
        .invalidate(&tolstoy.id)
        .unwrap_or_else(|e| panic!("{e}"));
    println!("edited author 1: the Authors zone removed {removed} entries (1 biography, 3 blurbs)");
    assert_eq!(removed, 4);

    // 4. The shelf again: Tolstoy's pages recompute, Chekhov's are served from the file.
    let took = run_pool(4, &shelf);
    let (bios, blurbs) = counts();
    println!(
        "4 workers, the shelf again in {took:.0?}: biographies {bios}x, blurbs {blurbs}x \
         (only Tolstoy's were recomputed)"
    );
    assert_eq!((bios, blurbs), (3, 8));

    // A `static` cache is never dropped, so make the last results durable before exit
    // (otherwise up to `durable_interval`, 1 s by default, of them would be lost).
    CACHE.flush().unwrap_or_else(|e| panic!("{e}"));
    let stats = biography::memoizer().stats();
    println!(
        "biography: {} hits, {} misses; blurb: {} entries in {}",
        stats.hits,
        stats.misses,
        Book::blurb_memoizer().stats().entries.unwrap_or(0),
        CACHE
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    );
}
