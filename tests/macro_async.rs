//! `#[memoize]` on `async fn` and async `&self` methods: the body runs on a miss only,
//! `Result` errors are not cached, several borrowed arguments key like the sync form,
//! and concurrent calls of one key (tasks of a multi-thread runtime, and a thread)
//! compute once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use fresco_memoize::{Cache, memoize};

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
