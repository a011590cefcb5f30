//! `#[memoize]` expansion tests: each memoized function counts the calls of its body, and
//! the tests assert when the body runs (a miss) and when it does not (a hit), through every
//! attribute, and that invalidation through the exposed memoizer reaches the calls.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fresco_memoize::{Cache, Fingerprint, ManualClock, Zone, memoize};

static CLOCK: LazyLock<ManualClock> = LazyLock::new(|| ManualClock::new(1_000_000));
static CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::builder().clock(CLOCK.clone()).in_memory().unwrap());
static FILE_DIR: LazyLock<tempfile::TempDir> = LazyLock::new(|| tempfile::tempdir().unwrap());
static FILE_CACHE: LazyLock<Cache> =
    LazyLock::new(|| Cache::open(FILE_DIR.path().join("macro.memo")).unwrap());
static AUTHORS: LazyLock<Zone> = LazyLock::new(|| {
    CACHE
        .zone("Authors")
        .unwrap()
        .key(|author: &Author| author.id)
});
static BOOKS: LazyLock<Zone> = LazyLock::new(|| CACHE.zone("Books").unwrap());

fn cache_fn() -> &'static Cache {
    &CACHE
}

macro_rules! counter {
    ($name:ident) => {
        static $name: AtomicU32 = AtomicU32::new(0);
    };
}

fn bump(c: &AtomicU32) -> u32 {
    c.fetch_add(1, Ordering::SeqCst) + 1
}

fn calls(c: &AtomicU32) -> u32 {
    c.load(Ordering::SeqCst)
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
struct Author {
    id: u64,
    name: String,
}

#[derive(serde::Serialize, Debug, Clone, PartialEq)]
struct Book {
    id: u64,
    author_id: u64,
    publisher_id: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug, PartialEq)]
struct Biography {
    author_id: u64,
    text: String,
}

counter!(SQUARE);
#[memoize(cache = CACHE)]
fn square(n: u64) -> u64 {
    bump(&SQUARE);
    n * n
}

#[test]
fn free_function_is_memoized_and_invalidated_through_its_memoizer() {
    assert_eq!(square(7), 49);
    assert_eq!(square(7), 49);
    assert_eq!(square(8), 64);
    assert_eq!(calls(&SQUARE), 2);
    assert!(square::memoizer().invalidate_key(&7).unwrap());
    assert_eq!(square(7), 49);
    assert_eq!(calls(&SQUARE), 3);
    assert_eq!(square::memoizer().invalidate_all().unwrap(), 2);
    assert_eq!(square(8), 64);
    assert_eq!(calls(&SQUARE), 4);
    let stats = square::memoizer().stats();
    assert_eq!((stats.hits, stats.misses), (1, 4));
    assert_eq!(
        square::memoizer().name(),
        concat!(module_path!(), "::square")
    );
}

counter!(BIO);
#[memoize(cache = CACHE, zone = AUTHORS, zonekey = |b: &Book| b.author_id)]
fn biography(book: &Book) -> Biography {
    bump(&BIO);
    Biography {
        author_id: book.author_id,
        text: format!("wrote book {}", book.id),
    }
}

counter!(RATING);
counter!(REVIEW);
impl Author {
    #[memoize(cache = CACHE, zone = AUTHORS)]
    fn rating(&self) -> u32 {
        bump(&RATING);
        self.name.len() as u32
    }

    /// Several arguments: `&self` and a language form a tuple key.
    #[memoize(cache = CACHE, zone = AUTHORS, zonekey = |a: &Author, _lang: &str| a.id)]
    fn review(&self, lang: &str) -> String {
        bump(&REVIEW);
        format!("{} ({lang})", self.name)
    }
}

#[test]
fn zone_keys_reach_functions_methods_and_tuple_keys() {
    let tolstoy = Author {
        id: 42,
        name: "Tolstoy".into(),
    };
    let chekhov = Author {
        id: 43,
        name: "Chekhov".into(),
    };
    let war = Book {
        id: 1,
        author_id: 42,
        publisher_id: 9,
    };
    let gull = Book {
        id: 2,
        author_id: 43,
        publisher_id: 9,
    };
    for _ in 0..2 {
        assert_eq!(biography(&war).text, "wrote book 1");
        assert_eq!(biography(&gull).author_id, 43);
        assert_eq!(tolstoy.rating(), 7);
        assert_eq!(chekhov.rating(), 7);
        assert_eq!(tolstoy.review("en"), "Tolstoy (en)");
        assert_eq!(tolstoy.review("fr"), "Tolstoy (fr)");
    }
    assert_eq!(calls(&BIO), 2);
    assert_eq!(calls(&RATING), 2);
    assert_eq!(calls(&REVIEW), 2);

    // Author 42: one biography, one rating (the zone's default key), two reviews.
    assert_eq!(AUTHORS.invalidate(&42u64).unwrap(), 4);
    assert_eq!(biography(&war).text, "wrote book 1");
    assert_eq!(biography(&gull).author_id, 43);
    assert_eq!(tolstoy.rating(), 7);
    assert_eq!(chekhov.rating(), 7);
    assert_eq!(tolstoy.review("en"), "Tolstoy (en)");
    assert_eq!(calls(&BIO), 3);
    assert_eq!(calls(&RATING), 3);
    assert_eq!(calls(&REVIEW), 3);

    // The tuple key of a method: an owned (Self, String) finds what a borrowed call stored.
    assert!(
        Author::review_memoizer()
            .invalidate_key(&(tolstoy.clone(), "en".to_string()))
            .unwrap()
    );
    assert!(
        !Author::review_memoizer()
            .invalidate_key(&(tolstoy.clone(), "fr".to_string()))
            .unwrap()
    );
    assert_eq!(tolstoy.review("en"), "Tolstoy (en)");
    assert_eq!(calls(&REVIEW), 4);
    assert!(Author::rating_memoizer().name().ends_with("Author::rating"));
}

counter!(JOIN);
#[memoize(cache = cache_fn(), zone = BOOKS)]
fn join(a: u64, b: &str, c: String) -> String {
    bump(&JOIN);
    format!("{a}{b}{c}")
}

#[test]
fn several_arguments_by_value_and_by_reference_form_one_key() {
    assert_eq!(join(1, "x", "y".to_string()), "1xy");
    assert_eq!(join(1, "x", "y".to_string()), "1xy");
    assert_eq!(join(1, "x", "z".to_string()), "1xz");
    assert_eq!(join(2, "x", "y".to_string()), "2xy");
    assert_eq!(calls(&JOIN), 3);
    let owned: &(u64, String, String) = &(1, "x".into(), "y".into());
    assert!(join::memoizer().invalidate_key(owned).unwrap());
    assert_eq!(join(1, "x", "y".to_string()), "1xy");
    assert_eq!(calls(&JOIN), 4);
    assert_eq!(BOOKS.invalidate_all().unwrap(), 3);
    assert_eq!(join(2, "x", "y".to_string()), "2xy");
    assert_eq!(calls(&JOIN), 5);
}

counter!(PARSE);
#[memoize(cache = CACHE)]
fn parse(text: &str) -> Result<i64, std::num::ParseIntError> {
    bump(&PARSE);
    text.trim().parse()
}

#[test]
fn errors_are_returned_and_not_cached() {
    assert!(parse("x").is_err());
    assert!(parse("x").is_err());
    assert_eq!(calls(&PARSE), 2);
    assert_eq!(parse(" 12"), Ok(12));
    assert_eq!(parse(" 12"), Ok(12));
    assert_eq!(calls(&PARSE), 3);
    assert_eq!(parse::memoizer().stats().entries, Some(1));
}

counter!(SHOUT);
#[memoize(cache = CACHE, keyfunc = |s: &str| s.to_lowercase())]
fn shout(s: &str) -> String {
    bump(&SHOUT);
    s.to_uppercase()
}

counter!(AREA);
#[memoize(cache = CACHE, keyfunc = |w: &u32, _h: &u32, _unit: &str| *w)]
fn area(w: u32, h: u32, unit: &str) -> String {
    bump(&AREA);
    format!("{} {unit}", w * h)
}

#[test]
fn keyfunc_maps_arguments_to_the_stored_key() {
    assert_eq!(shout("Foo"), "FOO");
    assert_eq!(shout("fOO"), "FOO");
    assert_eq!(calls(&SHOUT), 1);
    assert!(shout::memoizer().invalidate_key("FOO").unwrap());
    assert_eq!(shout("foo"), "FOO");
    assert_eq!(calls(&SHOUT), 2);

    // Only the width is the key: another height or unit is served the first answer.
    assert_eq!(area(2, 3, "m2"), "6 m2");
    assert_eq!(area(2, 5, "cm2"), "6 m2");
    assert_eq!(calls(&AREA), 1);
    assert!(
        area::memoizer()
            .invalidate_key(&(2, 99, "any".to_string()))
            .unwrap()
    );
    assert_eq!(area(2, 5, "cm2"), "10 cm2");
}

/// Not `Serialize`: only its keyfunc makes it a key.
struct Session {
    user: u64,
    #[allow(dead_code)]
    socket: std::sync::Mutex<()>,
}

counter!(GREETING);
impl Session {
    #[memoize(cache = CACHE, keyfunc = |s: &Session| s.user)]
    fn greeting(&self) -> String {
        bump(&GREETING);
        format!("hello {}", self.user)
    }
}

#[test]
fn keyfunc_replaces_self_in_the_key() {
    let a = Session {
        user: 5,
        socket: Default::default(),
    };
    let b = Session {
        user: 5,
        socket: Default::default(),
    };
    assert_eq!(a.greeting(), "hello 5");
    assert_eq!(b.greeting(), "hello 5");
    assert_eq!(calls(&GREETING), 1);
}

counter!(TICKET);
#[memoize(cache = CACHE, expires = 10)]
fn ticket(_id: u32) -> u32 {
    bump(&TICKET)
}

counter!(TOKEN);
#[memoize(cache = CACHE, expires = Duration::from_millis(1500), max_hits = 2)]
fn token(id: u32) -> u32 {
    let _ = id;
    bump(&TOKEN)
}

#[test]
fn expires_and_max_hits() {
    assert_eq!(ticket(1), 1);
    assert_eq!(ticket(1), 1);
    CLOCK.advance(Duration::from_secs(9));
    assert_eq!(ticket(1), 1);
    CLOCK.advance(Duration::from_secs(1));
    assert_eq!(ticket(1), 2, "expired after 10 s");

    let first = token(1);
    assert_eq!(token(1), first);
    assert_eq!(token(1), first);
    assert_ne!(token(1), first, "served twice, then recomputed");
}

counter!(RECENT);
#[memoize(cache = CACHE, store = Lru(2))]
fn recent(n: u8) -> u8 {
    bump(&RECENT);
    n
}

#[test]
fn store_lru_bounds_the_entries() {
    recent(1);
    recent(2);
    recent(3);
    assert_eq!(calls(&RECENT), 3);
    recent(3);
    recent(2);
    assert_eq!(calls(&RECENT), 3);
    recent(1);
    assert_eq!(calls(&RECENT), 4, "1 was evicted");
    assert_eq!(recent::memoizer().stats().entries, Some(2));
}

counter!(DEFAULT);
#[memoize]
fn in_default_cache(x: i32) -> i32 {
    bump(&DEFAULT);
    -x
}

counter!(CONFIG);
#[memoize(name = "app.config")]
fn config() -> Vec<String> {
    bump(&CONFIG);
    vec!["a".into(), "b".into()]
}

#[test]
fn without_options_memoizes_in_memory() {
    assert_eq!(in_default_cache(3), -3);
    assert_eq!(in_default_cache(3), -3);
    assert_eq!(calls(&DEFAULT), 1);
    assert_eq!(config().len(), 2);
    assert_eq!(config().len(), 2);
    assert_eq!(calls(&CONFIG), 1);
    assert_eq!(config::memoizer().name(), "app.config");
}

counter!(FIB);
#[memoize(cache = FILE_CACHE)]
fn fib(n: u32) -> u128 {
    bump(&FIB);
    if n < 2 {
        n as u128
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

counter!(SUM);
#[memoize(cache = FILE_CACHE, version = "1")]
fn sum((a, b): (u64, u64), mut extra: Vec<u64>) -> u64 {
    bump(&SUM);
    extra.push(a + b);
    extra.iter().sum()
}

#[test]
fn recursion_patterns_and_a_persistent_store() {
    assert_eq!(fib(90), 2_880_067_194_370_816_120);
    assert_eq!(calls(&FIB), 91);
    assert_eq!(fib(90), 2_880_067_194_370_816_120);
    assert_eq!(calls(&FIB), 91);
    FILE_CACHE.flush().unwrap();
    assert_eq!(fib::memoizer().stats().entries, Some(91));

    assert_eq!(sum((1, 2), vec![10]), 13);
    assert_eq!(sum((1, 2), vec![10]), 13);
    assert_eq!(calls(&SUM), 1);
    assert!(FILE_CACHE.check_integrity().unwrap().is_ok());
    // Statics are never dropped: remove the (still open) file's directory by hand.
    std::fs::remove_dir_all(FILE_DIR.path()).unwrap();
}

counter!(SLOW);
#[memoize(cache = CACHE)]
fn slow(n: u64) -> u64 {
    bump(&SLOW);
    std::thread::sleep(Duration::from_millis(50));
    n + 1
}

#[test]
fn concurrent_calls_compute_once() {
    let threads: Vec<_> = (0..8).map(|_| std::thread::spawn(|| slow(1))).collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), 2);
    }
    assert_eq!(calls(&SLOW), 1);
}

static MISCONFIGURED: LazyLock<Zone> = LazyLock::new(|| {
    CACHE
        .zone("Misconfigured")
        .unwrap()
        .key(|author: &Author| author.id)
});
counter!(UNKEYED);
/// Joins a zone whose default key takes `&Author`, with a `u64` argument and no zonekey:
/// the memoizer cannot be built.
#[memoize(cache = CACHE, zone = MISCONFIGURED)]
fn unkeyed(n: u64) -> u64 {
    bump(&UNKEYED);
    n
}

#[test]
fn a_memoizer_that_cannot_be_built_leaves_the_function_working_uncached() {
    let before = CACHE.health().errors;
    assert_eq!(unkeyed(4), 4);
    assert_eq!(unkeyed(4), 4);
    assert_eq!(calls(&UNKEYED), 2);
    let err = unkeyed::try_memoizer().unwrap_err();
    assert!(
        matches!(err, fresco_memoize::Error::MissingZoneKey { .. }),
        "{err}"
    );
    assert!(CACHE.health().errors > before, "the failure was reported");
    let panicked = std::panic::catch_unwind(|| unkeyed::memoizer().name().to_string());
    assert!(panicked.is_err());
}

static PAIRS: LazyLock<Zone> =
    LazyLock::new(|| CACHE.zone("Pairs").unwrap().key(|pair: &(u64, u64)| pair.0));
counter!(PAIRED);
/// Two arguments, and a zone whose default key function takes exactly the key tuple
/// `(u64, u64)`. The call path derives dependency rows from the borrowed arguments and
/// cannot apply it, while the builder could: entries would be stored without the rows
/// the zone promises, and `PAIRS.invalidate(&a)` would leave them in place. The
/// memoizer must refuse to build instead.
#[memoize(cache = CACHE, zone = PAIRS)]
fn paired(a: u64, b: u64) -> u64 {
    bump(&PAIRED);
    a + b
}

#[test]
fn a_default_key_over_the_tuple_of_several_arguments_is_refused() {
    let err = paired::try_memoizer().unwrap_err();
    assert!(
        matches!(err, fresco_memoize::Error::MissingZoneKey { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("zonekey"), "{err}");
    assert_eq!(paired(1, 2), 3);
    assert_eq!(paired(1, 2), 3);
    assert_eq!(calls(&PAIRED), 2, "uncached, never stale");
}
