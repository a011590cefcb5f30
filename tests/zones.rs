//! Zones (issue 3): zone handles, default and per-member key functions, several
//! dependency keys per entry, build-time errors, exact and atomic dependency
//! invalidation in every store, zone-wide clearing, both across a restart, and
//! computations racing with invalidations. The randomized index model lives in
//! tests/zones_model.rs.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;

use fresco_memoize::{Cache, Error, Memoizer, Store, Zone};
use serde::Serialize;

#[derive(Serialize, Clone, Debug)]
struct Author {
    id: u64,
    name: String,
}

#[derive(Serialize, Clone, Debug)]
struct Book {
    id: u64,
    author_id: u64,
    publisher_id: u64,
}

fn author(id: u64) -> Author {
    Author {
        id,
        name: format!("author {id}"),
    }
}

fn book(id: u64, author_id: u64, publisher_id: u64) -> Book {
    Book {
        id,
        author_id,
        publisher_id,
    }
}

const ALL_STORES: [Store; 4] = [
    Store::Persistent,
    Store::Tiered(64),
    Store::Memory,
    Store::Lru(64),
];

/// Counts computations.
#[derive(Default, Clone)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    fn count<T>(&self, value: T) -> T {
        self.0.fetch_add(1, Ordering::SeqCst);
        value
    }
    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn assert_sound(cache: &Cache) -> u64 {
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
    report.entries
}

/// Whether `key` is cached, without computing or counting anything but a hit.
fn cached<K: Serialize + ?Sized>(m: &Memoizer<K, String>, key: &K) -> bool {
    m.get_archived(key).unwrap().is_some()
}

#[test]
fn zone_handles_share_state_by_name() {
    let cache = Cache::in_memory().unwrap();
    let books = cache.zone("Books").unwrap();
    assert_eq!(books.name(), "Books");
    // A key function set through one handle is the zone's: members built with another
    // handle of the same name use it.
    let _keyed = cache.zone("Authors").unwrap().key(|a: &Author| a.id);
    let again = cache.zone("Authors").unwrap();
    let rating = cache
        .memoizer::<Author, String>("rating")
        .zone(&again)
        .build()
        .unwrap();
    rating.get_or_compute(&author(1), |a| a.name.clone());
    assert_eq!(again.invalidate(&1u64).unwrap(), 1);

    assert!(matches!(cache.zone(""), Err(Error::InvalidName { .. })));
}

#[test]
fn a_memoizer_without_zone_is_in_the_default_zone() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("z.memo")).unwrap();
    let plain = cache.memoizer::<u64, String>("plain").build().unwrap();
    let books = cache.zone("Books").unwrap();
    let zoned = cache
        .memoizer::<u64, String>("zoned")
        .zone(&books)
        .build()
        .unwrap();
    for k in 0..5 {
        plain.get_or_compute(&k, |k| k.to_string());
        zoned.get_or_compute(&k, |k| k.to_string());
    }
    assert_eq!(cache.zone("default").unwrap().invalidate_all().unwrap(), 5);
    assert!(!cached(&plain, &0));
    assert!(cached(&zoned, &0), "another zone's member was cleared");
    assert_sound(&cache);
}

/// The original README's example: "Authors" keyed by the author's id, a memoizer over
/// books overriding it with the book's author.
fn authors_and_books(
    cache: &Cache,
    store: Store,
) -> (Zone, Memoizer<Author, String>, Memoizer<Book, String>) {
    let authors = cache.zone("Authors").unwrap().key(|a: &Author| a.id);
    let rating = cache
        .memoizer::<Author, String>("author.rating")
        .store(store)
        .zone(&authors)
        .build()
        .unwrap();
    let biography = cache
        .memoizer::<Book, String>("book.author_biography")
        .store(store)
        .zone_key(&authors, |b: &Book| b.author_id)
        .build()
        .unwrap();
    (authors, rating, biography)
}

#[test]
fn default_key_and_member_override_invalidate_exactly_the_dependents() {
    for store in ALL_STORES {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("z.memo")).unwrap();
        let (authors, rating, biography) = authors_and_books(&cache, store);
        let calls = Calls::default();
        for a in 0..4 {
            rating.get_or_compute(&author(a), |a| calls.count(format!("rating {}", a.id)));
        }
        // Books 0..12, book b written by author b % 4.
        for b in 0..12 {
            biography.get_or_compute(&book(b, b % 4, 0), |b| calls.count(format!("bio {}", b.id)));
        }
        assert_eq!(calls.get(), 16);
        assert_sound(&cache);

        // Author 2: its rating and books 2, 6, 10.
        assert_eq!(authors.invalidate(&2u64).unwrap(), 4, "{store:?}");
        assert_eq!(
            authors.invalidate(&2u64).unwrap(),
            0,
            "{store:?}: removed twice"
        );
        for a in 0..4 {
            assert_eq!(cached(&rating, &author(a)), a != 2, "{store:?}: author {a}");
        }
        for b in 0..12 {
            assert_eq!(
                cached(&biography, &book(b, b % 4, 0)),
                b % 4 != 2,
                "{store:?}: book {b}"
            );
        }
        // Recomputed once, the others still served.
        for b in 0..12 {
            biography.get_or_compute(&book(b, b % 4, 0), |b| calls.count(format!("bio {}", b.id)));
        }
        assert_eq!(calls.get(), 19, "{store:?}");
        // A dependency nobody has removes nothing; another type encodes differently.
        assert_eq!(authors.invalidate(&99u64).unwrap(), 0);
        assert_eq!(authors.invalidate("1").unwrap(), 0);
        let stats = biography.stats();
        assert_eq!(stats.invalidations, 3, "{store:?}");
        assert_sound(&cache);
    }
}

#[test]
fn an_entry_can_depend_on_several_keys() {
    for store in ALL_STORES {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("z.memo")).unwrap();
        // Several keys in one zone...
        let deps = cache.zone("Deps").unwrap();
        let reviews = cache
            .memoizer::<Book, String>("reviews")
            .store(store)
            .zone_keys(&deps, |b: &Book| {
                [
                    format!("author:{}", b.author_id),
                    format!("publisher:{}", b.publisher_id),
                ]
            })
            .build()
            .unwrap();
        // ...and one key in each of two zones.
        let authors = cache.zone("Authors").unwrap();
        let publishers = cache
            .zone("Publishers")
            .unwrap()
            .key(|b: &Book| b.publisher_id);
        let synopsis = cache
            .memoizer::<Book, String>("synopsis")
            .store(store)
            .zone_key(&authors, |b: &Book| b.author_id)
            .zone(&publishers)
            .build()
            .unwrap();
        // Book b: author b % 3, publisher b % 2.
        for b in 0..6 {
            let bk = book(b, b % 3, b % 2);
            reviews.get_or_compute(&bk, |b| b.id.to_string());
            synopsis.get_or_compute(&bk, |b| b.id.to_string());
        }
        // Publisher 1: books 1, 3, 5.
        assert_eq!(deps.invalidate("publisher:1").unwrap(), 3, "{store:?}");
        assert_eq!(publishers.invalidate(&1u64).unwrap(), 3, "{store:?}");
        assert_sound(&cache);
        // Author 0: books 0 and 3; 3 is gone already.
        assert_eq!(deps.invalidate("author:0").unwrap(), 1, "{store:?}");
        assert_eq!(authors.invalidate(&0u64).unwrap(), 1, "{store:?}");
        let left: Vec<u64> = (0..6)
            .filter(|&b| cached(&reviews, &book(b, b % 3, b % 2)))
            .collect();
        assert_eq!(left, [2, 4], "{store:?}");
        let left: Vec<u64> = (0..6)
            .filter(|&b| cached(&synopsis, &book(b, b % 3, b % 2)))
            .collect();
        assert_eq!(left, [2, 4], "{store:?}");
        // A zone reaches only its own rows: author 1 in "Authors" is book 4 of
        // `synopsis` (book 1 left with publisher 1), not book 4 of `reviews`.
        assert_eq!(authors.invalidate(&1u64).unwrap(), 1, "{store:?}");
        assert!(cached(&reviews, &book(4, 1, 0)) && !cached(&synopsis, &book(4, 1, 0)));
        assert_eq!(deps.invalidate("publisher:0").unwrap(), 2, "{store:?}");
        assert_eq!(
            deps.invalidate("author:2").unwrap(),
            0,
            "{store:?}: a dangling row"
        );
        assert_sound(&cache);
    }
}

#[test]
fn a_member_whose_arguments_do_not_fit_the_zone_key_fails_to_build() {
    let cache = Cache::in_memory().unwrap();
    let authors = cache.zone("Authors").unwrap().key(|a: &Author| a.id);
    let err = cache
        .memoizer::<Book, String>("biography")
        .zone(&authors)
        .build()
        .unwrap_err();
    match &err {
        Error::MissingZoneKey { memoizer, zone } => {
            assert_eq!((memoizer.as_str(), zone.as_str()), ("biography", "Authors"));
        }
        other => panic!("expected MissingZoneKey, got {other:?}"),
    }
    assert!(err.to_string().contains("zone_key"), "{err}");
    // The failed build left nothing behind: the same name builds with an override.
    let biography = cache
        .memoizer::<Book, String>("biography")
        .zone_key(&authors, |b: &Book| b.author_id)
        .build()
        .unwrap();
    biography.get_or_compute(&book(1, 7, 0), |_| "bio".into());
    assert_eq!(authors.invalidate(&7u64).unwrap(), 1);

    // A zone without key function takes members of any type (cleared together only).
    let books = cache.zone("Books").unwrap();
    let m = cache
        .memoizer::<Book, String>("m")
        .zone(&books)
        .build()
        .unwrap();
    m.get_or_compute(&book(1, 7, 0), |_| "x".into());
    assert_eq!(books.invalidate(&7u64).unwrap(), 0);
    assert_eq!(books.invalidate_all().unwrap(), 1);

    // A zone of another cache is refused.
    let other = Cache::in_memory().unwrap();
    let foreign = other.zone("Authors").unwrap();
    let err = cache
        .memoizer::<u64, String>("f")
        .zone_key(&foreign, |k: &u64| *k)
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::ForeignZone { .. }), "{err:?}");
}

#[test]
fn invalidate_all_clears_every_member_and_nothing_else() {
    for store in ALL_STORES {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path().join("z.memo")).unwrap();
        let books = cache.zone("Books").unwrap();
        let synopsis = cache
            .memoizer::<u64, String>("synopsis")
            .store(store)
            .zone(&books)
            .build()
            .unwrap();
        let reviews = cache
            .memoizer::<u64, String>("reviews")
            .store(store)
            .zone(&books)
            .build()
            .unwrap();
        let outsider = cache
            .memoizer::<u64, String>("outsider")
            .store(store)
            .build()
            .unwrap();
        for k in 0..10 {
            synopsis.get_or_compute(&k, |k| k.to_string());
            outsider.get_or_compute(&k, |k| k.to_string());
        }
        for k in 0..4 {
            reviews.get_or_compute(&k, |k| k.to_string());
        }
        assert_eq!(books.invalidate_all().unwrap(), 14, "{store:?}");
        assert_eq!(books.invalidate_all().unwrap(), 0, "{store:?}");
        assert!((0..10).all(|k| !cached(&synopsis, &k)));
        assert!((0..4).all(|k| !cached(&reviews, &k)));
        assert!(
            (0..10).all(|k| cached(&outsider, &k)),
            "{store:?}: a non-member lost entries"
        );
        assert_eq!(synopsis.stats().invalidations, 10);
        assert_sound(&cache);
    }
}

/// The removal is one transaction: a reader taking snapshots of the file while members'
/// entries are invalidated group by group never sees a group half removed.
#[test]
fn a_reader_never_sees_a_partial_invalidation() {
    const GROUPS: u64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("z.memo")).unwrap();
    let authors = cache.zone("Authors").unwrap();
    let key = |&(_, author): &(u64, u64)| author;
    let a = cache
        .memoizer::<(u64, u64), String>("a")
        .zone_key(&authors, key)
        .build()
        .unwrap();
    let b = cache
        .memoizer::<(u64, u64), String>("b")
        .store(Store::Tiered(16))
        .zone_key(&authors, key)
        .build()
        .unwrap();
    // Group g: 3 entries in `a` and 5 in `b`, all depending on author g; 7 bystanders.
    for g in 0..GROUPS {
        for i in 0..3 {
            a.get_or_compute(&(g * 10 + i, g), |_| "a".into());
        }
        for i in 0..5 {
            b.get_or_compute(&(g * 10 + i, g), |_| "b".into());
        }
    }
    for i in 0..7 {
        a.get_or_compute(&(i, 1000), |_| "bystander".into());
    }
    let total = assert_sound(&cache);
    assert_eq!(total, GROUPS * 8 + 7);

    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let cache = cache.clone();
        let done = done.clone();
        thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !done.load(Ordering::SeqCst) {
                let report = cache.check_integrity().unwrap();
                assert!(report.is_ok(), "{:#?}", report.problems);
                seen.insert(report.entries);
            }
            seen
        })
    };
    for g in 0..GROUPS {
        assert_eq!(authors.invalidate(&g).unwrap(), 8);
    }
    done.store(true, Ordering::SeqCst);
    let seen = reader.join().unwrap();
    assert!(!seen.is_empty());
    for entries in &seen {
        assert_eq!(
            (total - entries) % 8,
            0,
            "a snapshot held {entries} entries: a group was half removed ({seen:?})"
        );
    }
    assert_eq!(assert_sound(&cache), 7);
}

fn populate(path: &std::path::Path) {
    let cache = Cache::open(path).unwrap();
    let (_authors, rating, biography) = authors_and_books(&cache, Store::Persistent);
    let books = cache.zone("Books").unwrap();
    let synopsis = cache
        .memoizer::<u64, String>("book.synopsis")
        .store(Store::Tiered(8))
        .zone(&books)
        .build()
        .unwrap();
    for a in 0..3 {
        rating.get_or_compute(&author(a), |a| format!("rating {}", a.id));
    }
    for b in 0..9 {
        biography.get_or_compute(&book(b, b % 3, 0), |b| format!("bio {}", b.id));
        synopsis.get_or_compute(&b, |b| format!("synopsis {b}"));
    }
    assert_eq!(assert_sound(&cache), 3 + 9 + 9);
}

#[test]
fn invalidate_reaches_entries_of_an_earlier_run_before_members_are_built() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.memo");
    populate(&path);

    let cache = Cache::open(&path).unwrap();
    // No key function and no member built in this run: the index is in the file.
    let authors = cache.zone("Authors").unwrap();
    assert_eq!(authors.invalidate(&1u64).unwrap(), 1 + 3);
    assert_eq!(assert_sound(&cache), 21 - 4);

    // Members built now see exactly the survivors.
    let (authors, rating, biography) = authors_and_books(&cache, Store::Persistent);
    let calls = Calls::default();
    for a in 0..3 {
        let got =
            rating.get_or_compute(&author(a), |a| calls.count(format!("new rating {}", a.id)));
        let want = if a == 1 {
            "new rating 1".to_string()
        } else {
            format!("rating {a}")
        };
        assert_eq!(got, want);
    }
    for b in 0..9 {
        biography.get_or_compute(&book(b, b % 3, 0), |b| {
            calls.count(format!("new bio {}", b.id))
        });
    }
    assert_eq!(
        calls.get(),
        1 + 3,
        "only author 1's entries were recomputed"
    );
    // Entries written by this run are indexed like the old ones.
    assert_eq!(authors.invalidate(&1u64).unwrap(), 4);
    assert_eq!(authors.invalidate(&0u64).unwrap(), 4);
    assert_sound(&cache);
}

#[test]
fn invalidate_all_reaches_members_of_an_earlier_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("restart.memo");
    populate(&path);

    let cache = Cache::open(&path).unwrap();
    assert_eq!(cache.zone("Books").unwrap().invalidate_all().unwrap(), 9);
    assert_eq!(
        cache.zone("Authors").unwrap().invalidate_all().unwrap(),
        3 + 9
    );
    assert_eq!(assert_sound(&cache), 0);
    let synopsis = cache
        .memoizer::<u64, String>("book.synopsis")
        .store(Store::Tiered(8))
        .zone(&cache.zone("Books").unwrap())
        .build()
        .unwrap();
    assert!(!cached(&synopsis, &3));
}

#[test]
fn a_memoizer_that_starts_using_a_zone_key_drops_entries_lacking_their_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekeyed.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let bio = cache.memoizer::<Book, String>("bio").build().unwrap();
        bio.get_or_compute(&book(1, 7, 0), |_| "written without zone".into());
    }
    let cache = Cache::open(&path).unwrap();
    let authors = cache.zone("Authors").unwrap();
    let bio = cache
        .memoizer::<Book, String>("bio")
        .zone_key(&authors, |b: &Book| b.author_id)
        .build()
        .unwrap();
    // Served, the old entry could never be invalidated by author 7.
    assert!(!cached(&bio, &book(1, 7, 0)));
    bio.get_or_compute(&book(1, 7, 0), |_| "indexed".into());
    assert_eq!(authors.invalidate(&7u64).unwrap(), 1);
    assert_sound(&cache);
}

#[derive(Clone, Copy, Debug)]
enum Invalidation {
    Dependency,
    Zone,
    Key,
    Memoizer,
}

/// Runs a computation that starts before `kind` of invalidation and finishes after it.
/// Returns whether its value was stored.
fn stores_after_racing(store: Store, kind: Option<Invalidation>) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("race.memo")).unwrap();
    let authors = cache.zone("Authors").unwrap();
    let bio = cache
        .memoizer::<Book, String>("bio")
        .store(store)
        .zone_key(&authors, |b: &Book| b.author_id)
        .build()
        .unwrap();
    let (started_tx, started) = mpsc::channel();
    let (go, go_rx) = mpsc::channel::<()>();
    let computing = {
        let bio = bio.clone();
        thread::spawn(move || {
            bio.get_or_compute(&book(1, 42, 0), move |_| {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                "read before the invalidation".to_string()
            })
        })
    };
    started.recv().unwrap();
    match kind {
        Some(Invalidation::Dependency) => {
            authors.invalidate(&42u64).unwrap();
        }
        Some(Invalidation::Zone) => {
            authors.invalidate_all().unwrap();
        }
        Some(Invalidation::Key) => {
            bio.invalidate_key(&book(1, 42, 0)).unwrap();
        }
        Some(Invalidation::Memoizer) => {
            bio.invalidate_all().unwrap();
        }
        None => {}
    }
    go.send(()).unwrap();
    // The caller still gets its value.
    assert_eq!(computing.join().unwrap(), "read before the invalidation");
    cache.flush().unwrap();
    assert_sound(&cache);
    let stored = cached(&bio, &book(1, 42, 0));
    if !stored {
        assert_eq!(
            bio.get_or_compute(&book(1, 42, 0), |_| "fresh".into()),
            "fresh"
        );
    }
    stored
}

#[test]
fn a_compute_that_started_before_an_invalidation_does_not_store_after_it() {
    for store in ALL_STORES {
        assert!(
            stores_after_racing(store, None),
            "{store:?}: the control stored nothing"
        );
        for kind in [
            Invalidation::Dependency,
            Invalidation::Zone,
            Invalidation::Key,
            Invalidation::Memoizer,
        ] {
            assert!(
                !stores_after_racing(store, Some(kind)),
                "{store:?}: {kind:?} let a stale value in"
            );
        }
    }
}

/// Dependency keys are compared by their encoding, so the invalidation and the scan
/// baseline agree on every key type the key functions return.
#[test]
fn index_and_scan_agree() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("z.memo")).unwrap();
    let tags = cache.zone("Tags").unwrap();
    let m = cache
        .memoizer::<u64, String>("tagged")
        .zone_keys(&tags, |&k: &u64| {
            (0..3).map(move |i| format!("tag{}", (k + i) % 7))
        })
        .build()
        .unwrap();
    for k in 0..70 {
        m.get_or_compute(&k, |k| k.to_string());
    }
    // tag3 is carried by keys k with k % 7 in {1, 2, 3}: 30 keys.
    assert_eq!(tags.__invalidate_by_scan("tag3").unwrap(), 30);
    assert_sound(&cache);
    // tag4: k % 7 in {2, 3, 4}; those with 2 or 3 are gone.
    assert_eq!(tags.invalidate("tag4").unwrap(), 10);
    assert_eq!(tags.__invalidate_by_scan("tag4").unwrap(), 0);
    assert_eq!(assert_sound(&cache), 30);
}

/// Readers keep asking while the zone invalidates over and over; each value records the
/// invalidation round its computation started in. A call that starts after round `k`
/// returned must never get a value from before round `k` - neither stored by a compute
/// that raced the invalidation nor copied into a tiered store's memory by a read that
/// raced it.
#[test]
fn no_stale_value_survives_concurrent_invalidations() {
    use std::sync::atomic::AtomicU64;
    for store in ALL_STORES {
        // Tiered stores also promote reads into memory: give that race more chances.
        let rounds: u64 = if matches!(store, Store::Tiered(_)) {
            300
        } else {
            100
        };
        // The same code paths as a file (tables, snapshots, overlay), without an fsync per
        // invalidation.
        let cache = Cache::in_memory().unwrap();
        let zone = cache.zone("All").unwrap();
        let m = cache
            .memoizer::<u64, u64>("m")
            .store(store)
            .zone_key(&zone, |_: &u64| "everything")
            .build()
            .unwrap();
        let round = Arc::new(AtomicU64::new(0));
        let completed = Arc::new(AtomicU64::new(0));
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (m, round, completed) = (m.clone(), round.clone(), completed.clone());
                thread::spawn(move || {
                    let mut calls = 0u64;
                    while completed.load(Ordering::SeqCst) < rounds {
                        let floor = completed.load(Ordering::SeqCst);
                        let key = (calls + r) % 4;
                        let got = m.get_or_compute(&key, |_| round.load(Ordering::SeqCst));
                        assert!(
                            got >= floor,
                            "{store:?}: a value of round {got} after round {floor} completed"
                        );
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        for k in 1..=rounds {
            round.store(k, Ordering::SeqCst);
            zone.invalidate("everything").unwrap();
            completed.store(k, Ordering::SeqCst);
            thread::yield_now();
        }
        for r in readers {
            assert!(r.join().unwrap() > 0);
        }
        assert_sound(&cache);
    }
}

/// A dependency key that cannot be encoded.
struct Unencodable;

impl Serialize for Unencodable {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("not encodable"))
    }
}

/// An entry whose dependency keys cannot all be recorded would escape invalidation, so it
/// is not stored at all; the caller still gets the value and the failure is reported.
#[test]
fn an_entry_whose_dependencies_cannot_be_recorded_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::builder()
        .on_error(|_| {})
        .open(dir.path().join("z.memo"))
        .unwrap();
    let zone = cache.zone("Z").unwrap();
    let bad = cache
        .memoizer::<u64, String>("bad")
        .zone_key(&zone, |_: &u64| Unencodable)
        .build()
        .unwrap();
    let many = cache
        .memoizer::<u64, String>("many")
        .zone_keys(&zone, |&k: &u64| 0..k)
        .build()
        .unwrap();
    for store in [&bad, &many] {
        let key = 70_000;
        assert_eq!(store.get_or_compute(&key, |_| "v".into()), "v");
        assert!(!cached(store, &key), "{}", store.name());
        assert_eq!(store.stats().errors, 1, "{}", store.name());
    }
    many.get_or_compute(&3, |_| "v".into());
    assert_eq!(zone.invalidate(&2u64).unwrap(), 1);
    assert_sound(&cache);
    assert!(cache.health().errors >= 2);
}

/// Entries of a persistent memoizer keyed by its whole argument are filed under their
/// primary dependency (so one invalidation deletes from adjacent pages); every way of
/// finding one by key must still reach it: the memoizer's own `invalidate_key`, and
/// `Cache::invalidate_memoizer_key`, which has no typed zone key function, for a live
/// memoizer and for one this run has not built.
#[test]
fn entries_filed_under_their_dependency_are_found_by_every_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("z.memo")).unwrap();
    let authors = cache.zone("Authors").unwrap();
    let build = || {
        cache
            .memoizer::<(u64, u64), String>("cover")
            .store(Store::Tiered(8))
            .zone_key(&authors, |&(_book, author): &(u64, u64)| author)
            .build()
            .unwrap()
    };
    let cover = build();
    for book in 0..6 {
        cover.get_or_compute(&(book, book % 2), |k| format!("{k:?}"));
    }
    assert_eq!(assert_sound(&cache), 6);
    assert!(cover.invalidate_key(&(0, 0)).unwrap());
    assert!(!cached(&cover, &(0, 0)) && cached(&cover, &(2, 0)));
    assert_eq!(
        cache
            .invalidate_memoizer_key("cover", &(1u64, 1u64))
            .unwrap(),
        Some(true)
    );
    assert!(
        !cached(&cover, &(1, 1)),
        "the live memory tier is purged too"
    );
    assert_eq!(
        cache
            .invalidate_memoizer_key("cover", &(1u64, 1u64))
            .unwrap(),
        Some(false)
    );
    // The same book under another author is another key, never stored.
    assert_eq!(
        cache
            .invalidate_memoizer_key("cover", &(2u64, 1u64))
            .unwrap(),
        Some(false)
    );
    drop(cover);
    assert_eq!(
        cache
            .invalidate_memoizer_key("cover", &(2u64, 0u64))
            .unwrap(),
        Some(true)
    );
    assert_eq!(assert_sound(&cache), 3);
    let cover = build();
    assert!(!cached(&cover, &(2, 0)));
    for book in 3..6 {
        assert_eq!(
            cover.get_or_compute(&(book, book % 2), |_| unreachable!()),
            format!("{:?}", (book, book % 2))
        );
    }
    assert_eq!(authors.invalidate(&1u64).unwrap(), 2, "books 3 and 5");
    assert_eq!(assert_sound(&cache), 1);
}
