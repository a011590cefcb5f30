//! Every invalidation is all or nothing for every reader, in every store kind: a reader
//! that has seen one removed entry missing is never served another one afterwards.
//!
//! Two member memoizers hold 200 entries each that depend on one author; in each the
//! first 100 are committed to the file, the other 100 are stored just before the
//! invalidation (still in the writer's queue, for the persistent kinds), and a tiered
//! memoizer holds only 100 of them in memory. Reader threads loop over the entries with
//! `get_archived` while the main thread removes them - by the zone's dependency key and
//! by clearing the zone (all 400), by clearing one memoizer and by its name, as the CLI
//! does (its 200). Memory stores used to purge one member after the other. Before the invalidation fence, persistent
//! readers saw the committed half gone while the pending half was still served, and
//! tiered readers saw the disk half gone while the memory tier still served the rest.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use fresco_memoize::{Cache, Memoizer, Store, Zone};

const N: u64 = 200;
const AUTHOR: u64 = 7;
const READERS: usize = 2;
const ROUNDS: usize = 12;

const HOWS: [How; 4] = [How::Dependency, How::ZoneAll, How::MemoizerAll, How::ByName];

#[derive(Clone, Copy, Debug)]
enum How {
    Dependency,
    ZoneAll,
    MemoizerAll,
    ByName,
}

struct Setup {
    cache: Cache,
    zone: Zone,
    books: Memoizer<u64, u64>,
    reviews: Memoizer<u64, u64>,
    persistent: bool,
    _dir: tempfile::TempDir,
}

fn setup(store: Store) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let persistent = matches!(store, Store::Persistent | Store::Tiered(_));
    let builder = Cache::builder()
        .sweep_interval(None)
        .durable_interval(Duration::from_secs(10));
    let cache = if persistent {
        builder.open(dir.path().join("atomic.memo")).unwrap()
    } else {
        builder.in_memory().unwrap()
    };
    let zone = cache.zone("Authors").unwrap();
    let books = cache
        .memoizer::<u64, u64>("books")
        .store(store)
        .zone_key(&zone, |_book: &u64| AUTHOR)
        .build()
        .unwrap();
    let reviews = cache
        .memoizer::<u64, u64>("reviews")
        .store(store)
        .zone_key(&zone, |_book: &u64| AUTHOR)
        .build()
        .unwrap();
    Setup {
        cache,
        zone,
        books,
        reviews,
        persistent,
        _dir: dir,
    }
}

/// Stores all N entries: the first half committed, the second half just queued.
fn fill(s: &Setup) {
    for m in [&s.books, &s.reviews] {
        for book in 0..N / 2 {
            m.get_or_compute(&book, |b| b * 10);
        }
    }
    if s.persistent {
        s.cache.flush().unwrap();
    }
    for m in [&s.books, &s.reviews] {
        for book in N / 2..N {
            m.get_or_compute(&book, |b| b * 10);
        }
    }
}

impl How {
    /// How many memoizers it empties (the first one, or both).
    fn reach(self) -> usize {
        match self {
            How::Dependency | How::ZoneAll => 2,
            How::MemoizerAll | How::ByName => 1,
        }
    }
}

fn invalidate(s: &Setup, how: How) -> u64 {
    match how {
        How::Dependency => s.zone.invalidate(&AUTHOR).unwrap(),
        How::ZoneAll => s.zone.invalidate_all().unwrap(),
        How::MemoizerAll => s.books.invalidate_all().unwrap(),
        How::ByName => s.cache.invalidate_memoizer("books").unwrap().unwrap(),
    }
}

/// One reader's pass over all N entries; records a violation if an entry is served
/// after another one was seen missing.
fn pass(
    memoizers: &[&Memoizer<u64, u64>],
    first_missing: &mut Option<(String, u64)>,
    violations: &Mutex<Vec<String>>,
) {
    for book in memoizers.iter().flat_map(|m| (0..N).map(move |b| (m, b))) {
        let (m, book) = book;
        match m.get_archived(&book).unwrap() {
            None => {
                first_missing.get_or_insert((m.name().to_string(), book));
            }
            Some(hit) => {
                assert_eq!(*hit, book * 10, "a wrong value for book {book}");
                if let Some((name, gone)) = first_missing {
                    violations.lock().unwrap().push(format!(
                        "{}'s {book} served after {name}'s {gone} was seen missing",
                        m.name()
                    ));
                }
            }
        }
    }
}

fn run(store: Store) {
    let s = Arc::new(setup(store));
    let start = Arc::new(Barrier::new(READERS + 1));
    let end = Arc::new(Barrier::new(READERS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let passes = Arc::new(AtomicU64::new(0));
    let violations = Arc::new(Mutex::new(Vec::new()));
    let how = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|_| {
            let (s, start, end, how) = (s.clone(), start.clone(), end.clone(), how.clone());
            let (done, stop, passes) = (done.clone(), stop.clone(), passes.clone());
            let violations = violations.clone();
            std::thread::spawn(move || {
                loop {
                    start.wait();
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let mut first_missing = None;
                    let reach = HOWS[how.load(Ordering::SeqCst) as usize].reach();
                    let memoizers = [&s.books, &s.reviews];
                    loop {
                        let last = done.load(Ordering::SeqCst);
                        pass(&memoizers[..reach], &mut first_missing, &violations);
                        passes.fetch_add(1, Ordering::SeqCst);
                        if last {
                            break;
                        }
                    }
                    end.wait();
                }
            })
        })
        .collect();
    for round in 0..ROUNDS * HOWS.len() {
        how.store((round % HOWS.len()) as u64, Ordering::SeqCst);
        let how = HOWS[round % HOWS.len()];
        fill(&s);
        done.store(false, Ordering::SeqCst);
        let before = passes.load(Ordering::SeqCst);
        start.wait();
        // Let the readers start their first pass, then race them.
        while passes.load(Ordering::SeqCst) == before && round % 2 == 1 {
            std::hint::spin_loop();
        }
        let removed = invalidate(&s, how);
        let expected = N * how.reach() as u64;
        assert_eq!(
            removed, expected,
            "{store:?} {how:?}: every entry was removed once"
        );
        for book in 0..N {
            assert!(
                s.books.get_archived(&book).unwrap().is_none(),
                "{store:?} {how:?}: book {book} survived"
            );
        }
        done.store(true, Ordering::SeqCst);
        end.wait();
        let found = violations.lock().unwrap().clone();
        assert!(
            found.is_empty(),
            "{store:?}, {how:?}, round {round}: a reader saw a half-done invalidation: {:?}",
            &found[..found.len().min(5)]
        );
    }
    stop.store(true, Ordering::SeqCst);
    start.wait();
    for r in readers {
        r.join().unwrap();
    }
    assert!(s.cache.check_integrity().unwrap().is_ok());
}

#[test]
fn memory() {
    run(Store::Memory);
}

#[test]
fn lru() {
    run(Store::Lru(1_000));
}

#[test]
fn persistent() {
    run(Store::Persistent);
}

#[test]
fn tiered_smaller_than_the_dependents() {
    run(Store::Tiered(100));
}

/// A key removed by `invalidate_key` is never served again once the call returned, in
/// any tier - also while other readers keep the memory tier warm.
#[test]
fn invalidate_key_is_final_in_every_tier() {
    for store in [Store::Memory, Store::Persistent, Store::Tiered(4)] {
        let s = setup(store);
        for round in 0..50u64 {
            s.books.get_or_compute(&round, |b| b * 10);
            assert_eq!(*s.books.get_archived(&round).unwrap().unwrap(), round * 10);
            assert!(s.books.invalidate_key(&round).unwrap());
            assert!(s.books.get_archived(&round).unwrap().is_none(), "{store:?}");
            assert!(!s.books.invalidate_key(&round).unwrap());
        }
    }
}
