//! `#[memoize]` on `async fn` and async `&self` methods: the body runs on a miss only,
//! `Result` errors are not cached, several borrowed arguments key like the sync form,
//! and concurrent calls of one key (tasks of a multi-thread runtime, and a thread)
//! compute once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fresco_memoize::{Cache, Zone, memoize};

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::in_memory().unwrap());

static WORDS: AtomicU32 = AtomicU32::new(0);

#[memoize(cache = CACHE)]
async fn word_count(text: &str) -> usize {
    WORDS.fetch_add(1, Ordering::SeqCst);
    smol::Timer::after(Duration::from_millis(1)).await;
    text.split_whitespace().count()
}

static PARSES: AtomicU32 = AtomicU32::new(0);

#[memoize(cache = CACHE)]
async fn parse(text: &str, radix: u32) -> Result<u64, std::num::ParseIntError> {
    PARSES.fetch_add(1, Ordering::SeqCst);
    let n = u64::from_str_radix(text, radix)?;
    if n == 99 {
        return Ok(100); // an early return inside the body
    }
    Ok(n)
}

static SLOW: AtomicU32 = AtomicU32::new(0);

#[memoize(cache = CACHE)]
async fn slow_square(n: u64) -> u64 {
    SLOW.fetch_add(1, Ordering::SeqCst);
    smol::Timer::after(Duration::from_millis(50)).await; // works on any executor
    n * n
}

#[derive(serde::Serialize)]
struct Shelf {
    id: u32,
}

static LABELS: AtomicU32 = AtomicU32::new(0);

impl Shelf {
    #[memoize(cache = CACHE)]
    async fn label(&self, lang: &str) -> String {
        LABELS.fetch_add(1, Ordering::SeqCst);
        format!("shelf {} ({lang})", self.id)
    }
}

static AUTHORS: LazyLock<Zone> = LazyLock::new(|| CACHE.zone("Authors").unwrap());

static BLURBS: AtomicU32 = AtomicU32::new(0);

#[derive(Debug, PartialEq)]
enum FetchError {
    Parse(std::num::ParseIntError),
}

impl From<std::num::ParseIntError> for FetchError {
    fn from(e: std::num::ParseIntError) -> Self {
        FetchError::Parse(e)
    }
}

// A keyfunc, a zone key, and `?` converting the error through `From`.
#[memoize(
    cache = CACHE,
    keyfunc = |title: &str, author: &u64| (title.to_lowercase(), *author),
    zone = AUTHORS,
    zonekey = |_title: &str, author: &u64| *author
)]
async fn blurb(title: &str, author: u64) -> Result<String, FetchError> {
    BLURBS.fetch_add(1, Ordering::SeqCst);
    let year: u32 = match title.strip_prefix('#') {
        Some(number) => number.parse()?,
        None => title.len() as u32,
    };
    smol::future::yield_now().await;
    Ok(format!("{title} by {author} ({year})"))
}

#[test]
fn an_async_fn_with_a_keyfunc_and_a_zone_key_is_invalidated_by_its_zone() {
    smol::block_on(async {
        assert_eq!(blurb("War", 7).await.unwrap(), "War by 7 (3)");
        assert_eq!(
            blurb("WAR", 7).await.unwrap(),
            "War by 7 (3)",
            "keyfunc ignored"
        );
        assert_eq!(BLURBS.load(Ordering::SeqCst), 1);
        assert_eq!(AUTHORS.invalidate_async(&7u64).await.unwrap(), 1);
        assert_eq!(blurb("war", 7).await.unwrap(), "war by 7 (3)");
        assert_eq!(BLURBS.load(Ordering::SeqCst), 2);
        // `?` converted the error; errors are not cached.
        assert!(matches!(blurb("#x", 7).await, Err(FetchError::Parse(_))));
        assert!(matches!(blurb("#x", 7).await, Err(FetchError::Parse(_))));
        assert_eq!(BLURBS.load(Ordering::SeqCst), 4);
        assert_eq!(blurb("#12", 7).await.unwrap(), "#12 by 7 (12)");
    });
}

#[test]
fn an_async_fn_runs_its_body_on_a_miss_only() {
    smol::block_on(async {
        assert_eq!(word_count("war and peace").await, 3);
        assert_eq!(word_count("war and peace").await, 3);
        assert_eq!(WORDS.load(Ordering::SeqCst), 1);
        assert_eq!(word_count("anna").await, 1);
        assert_eq!(WORDS.load(Ordering::SeqCst), 2);
        assert!(
            word_count::memoizer()
                .invalidate_key_async("anna")
                .await
                .unwrap()
        );
        assert_eq!(word_count("anna").await, 1);
        assert_eq!(WORDS.load(Ordering::SeqCst), 3);
    });
}

#[test]
fn an_async_fn_returning_result_caches_only_ok_and_keys_several_arguments() {
    smol::block_on(async {
        assert!(parse("zz", 10).await.is_err());
        assert!(parse("zz", 10).await.is_err());
        assert_eq!(PARSES.load(Ordering::SeqCst), 2, "an Err was cached");
        assert_eq!(parse("ff", 16).await, Ok(255));
        assert_eq!(parse("ff", 16).await, Ok(255));
        assert_eq!(parse("99", 10).await, Ok(100));
        assert_eq!(PARSES.load(Ordering::SeqCst), 4);
        // Keyed by the owned tuple, like the sync form.
        let key = ("ff".to_string(), 16u32);
        assert!(parse::memoizer().invalidate_key(&key).unwrap());
    });
}

#[test]
fn an_async_method_is_memoized_per_receiver_and_argument() {
    smol::block_on(async {
        let (a, b) = (Shelf { id: 1 }, Shelf { id: 2 });
        assert_eq!(a.label("en").await, "shelf 1 (en)");
        assert_eq!(a.label("en").await, "shelf 1 (en)");
        assert_eq!(b.label("en").await, "shelf 2 (en)");
        assert_eq!(LABELS.load(Ordering::SeqCst), 2);
        assert_eq!(Shelf::label_memoizer().stats().misses, 2);
    });
}

#[test]
fn concurrent_tasks_and_a_thread_compute_an_async_fn_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let results = rt.block_on(async {
        let tasks: Vec<_> = (0..200).map(|_| tokio::spawn(slow_square(12))).collect();
        // A thread joins the same flight with a blocking executor.
        let thread = std::thread::spawn(|| smol::block_on(slow_square(12)));
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        results.push(thread.join().unwrap());
        results
    });
    assert!(results.iter().all(|&r| r == 144));
    assert_eq!(SLOW.load(Ordering::SeqCst), 1);
}
