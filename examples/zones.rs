//! Books and Authors, as in the Python original's README: cache zones, a zone key
//! function, a member overriding it, and invalidation by author, through an index kept
//! in the cache file.
//!
//! Run it twice (or more):
//!
//! ```sh
//! cargo run --example zones            # 1st run: computes and caches everything
//! cargo run --example zones            # 2nd run: invalidates author 1 from the file,
//!                                      # then only author 1's entries are recomputed
//! cargo run --example zones -- --reset # start over
//! ```

use std::cell::Cell;
use std::process::ExitCode;

use fresco_memoize::{Cache, Zone};
use serde::Serialize;

#[derive(Serialize, Debug)]
struct Author {
    id: u64,
    name: &'static str,
}

#[derive(Serialize, Debug)]
struct Book {
    id: u64,
    title: &'static str,
    author_id: u64,
}

const AUTHORS: [Author; 2] = [
    Author {
        id: 1,
        name: "Ursula K. Le Guin",
    },
    Author {
        id: 2,
        name: "Italo Calvino",
    },
];

const BOOKS: [Book; 4] = [
    Book {
        id: 10,
        title: "The Dispossessed",
        author_id: 1,
    },
    Book {
        id: 11,
        title: "The Lathe of Heaven",
        author_id: 1,
    },
    Book {
        id: 20,
        title: "Invisible Cities",
        author_id: 2,
    },
    Book {
        id: 21,
        title: "If on a winter's night a traveler",
        author_id: 2,
    },
];

fn author(id: u64) -> &'static Author {
    AUTHORS.iter().find(|a| a.id == id).expect("known author")
}

/// Pretend database calls; each says when it runs, so cached calls are silent.
fn calculate_author_popularity(a: &Author, computed: &Cell<u32>) -> u32 {
    computed.set(computed.get() + 1);
    println!("    computing the rating of {}", a.name);
    (a.name.len() as u32 * 7) % 10
}

fn fetch_synopsis_from_db(b: &Book, computed: &Cell<u32>) -> String {
    computed.set(computed.get() + 1);
    println!("    fetching the synopsis of {:?}", b.title);
    format!("{} ({} words)", b.title, b.title.len() * 1000)
}

fn fetch_biography(b: &Book, computed: &Cell<u32>) -> String {
    computed.set(computed.get() + 1);
    let a = author(b.author_id);
    println!("    fetching the biography of {} for {:?}", a.name, b.title);
    format!("{} wrote {:?}", a.name, b.title)
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
    let path = std::env::temp_dir().join("fresco-memoize-zones-example.memo");
    if std::env::args().any(|a| a == "--reset") {
        let _ = std::fs::remove_file(&path);
        println!("removed {}", path.display());
        return Ok(());
    }
    let first_run = !path.exists();
    let cache = Cache::open(&path)?;
    println!("cache file: {}", path.display());

    // Zone('Books') and Zone('Authors', lambda self: self.id).
    let books: Zone = cache.zone("Books")?;
    let authors: Zone = cache.zone("Authors")?.key(|a: &Author| a.id);

    if first_run {
        println!("\nfirst run: nothing is cached yet");
    } else {
        // Before any memoizer is built: the dependency index is in the file.
        let removed = authors.invalidate(&1u64)?;
        println!(
            "\nlater run: authors.invalidate(&1) removed {removed} cached entries about {} \
             (written by the previous run; no memoizer built yet)",
            author(1).name
        );
    }

    let rating = cache
        .memoizer::<Author, u32>("author.rating")
        .zone(&authors)
        .build()?;
    let synopsis = cache
        .memoizer::<Book, String>("book.synopsis")
        .zone(&books)
        .build()?;
    // A member of both zones; over books, so it overrides the Authors key function
    // (the original's `zonekey=lambda self: self.author.id`).
    let biography = cache
        .memoizer::<Book, String>("book.author_biography")
        .zone(&books)
        .zone_key(&authors, |b: &Book| b.author_id)
        .build()?;

    let computed = Cell::new(0);
    println!("\nasking for every rating, synopsis and biography:");
    for a in &AUTHORS {
        let r = rating.get_or_compute(a, |a| calculate_author_popularity(a, &computed));
        println!("  rating of {:<20} {r}/10", a.name);
    }
    for b in &BOOKS {
        let s = synopsis.get_or_compute(b, |b| fetch_synopsis_from_db(b, &computed));
        let bio = biography.get_or_compute(b, |b| fetch_biography(b, &computed));
        println!("  {s}; {bio}");
    }
    let total = AUTHORS.len() + 2 * BOOKS.len();
    println!(
        "\n{} of {total} values computed, {} served from the file",
        computed.get(),
        total as u32 - computed.get()
    );
    if first_run {
        println!("run again: the next run invalidates author 1 before building anything");
    } else {
        println!(
            "(author 1's rating and the biographies of its books were recomputed; \
             the synopses are in the \"Books\" zone only, so they stayed)"
        );
        // One call clears every memoizer of a zone (not run here, so the next run
        // shows the same): books.invalidate_all()
    }
    Ok(())
}
