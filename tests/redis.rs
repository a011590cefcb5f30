//! The Redis store (issue 15) against a real server (`FRESCO_REDIS_URL`, started by
//! `.ci/redis-tests`): the same API as a file cache, over several `Cache` handles on
//! separate connections standing in for machines - shared results, zones, expiry,
//! exact `max_hits`, refused stale stores, single-flight with leases (also across a
//! killed process), and the local tier's invalidation pushes. Fails without a server.

mod redis_common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, ManualClock, Memoizer, Store, Zone, memoize};
use redis_common::{Calls, Server, eventually, namespace, url};
use serde::Serialize;

#[derive(Serialize, Clone, Debug)]
struct Book {
    id: u64,
    author_id: u64,
    publisher_id: u64,
}

fn book(id: u64, author_id: u64, publisher_id: u64) -> Book {
    Book {
        id,
        author_id,
        publisher_id,
    }
}

/// Two "machines": caches on separate connections, one namespace.
fn machines(test: &str, n: usize) -> Vec<Cache> {
    let ns = namespace(test);
    (0..n).map(|_| connect(&url(), &ns)).collect()
}

fn connect(url: &str, ns: &str) -> Cache {
    Cache::builder()
        .namespace(ns)
        .connect(url)
        .expect("connect to the test server")
}

#[test]
fn two_machines_share_results_and_invalidations() {
    let [a, b] = <[Cache; 2]>::try_from(machines("share", 2)).unwrap();
    let calls = Calls::default();
    let ma = a.memoizer::<u64, String>("square").build().unwrap();
    let mb = b.memoizer::<u64, String>("square").build().unwrap();
    let square = |n: &u64| calls.count(format!("{}", n * n));
    assert_eq!(ma.get_or_compute(&7, square), "49");
    assert_eq!(mb.get_or_compute(&7, square), "49");
    assert_eq!(
        calls.get(),
        1,
        "the second machine is served the first one's value"
    );
    assert!(mb.get_archived(&7).unwrap().is_some());

    // invalidate_key on one machine: the other recomputes.
    assert!(mb.invalidate_key(&7).unwrap());
    assert_eq!(ma.get_or_compute(&7, square), "49");
    assert_eq!(calls.get(), 2);

    // invalidate_all on one machine: every key recomputes on the other.
    for n in 0..20 {
        ma.get_or_compute(&n, square);
    }
    let before = calls.get();
    mb.invalidate_all().unwrap();
    for n in 0..20 {
        assert_eq!(ma.get_or_compute(&n, square), format!("{}", n * n));
    }
    assert_eq!(calls.get(), before + 20);

    let stats = ma.stats();
    assert!(
        stats.hits >= 1 && stats.misses >= 21 && stats.inserts >= 21,
        "{stats:?}"
    );
    assert_eq!(stats.errors, 0);
    assert_eq!(a.health().errors, 0, "{:?}", a.health());
}

#[test]
fn a_changed_value_type_reads_as_a_miss_on_another_machine() {
    let [a, b] = <[Cache; 2]>::try_from(machines("types", 2)).unwrap();
    let ma = a.memoizer::<u64, String>("m").build().unwrap();
    let mb = b.memoizer::<u64, u64>("m").build().unwrap();
    ma.get_or_compute(&1, |_| "text".to_string());
    assert_eq!(mb.get_or_compute(&1, |_| 5), 5);
    assert_eq!(mb.stats().hits, 0);
}

struct Library {
    authors: Zone,
    publishers: Zone,
    by_author: Memoizer<u64, String>,
    blurb: Memoizer<Book, String>,
    listing: Memoizer<Book, String>,
}

fn library(cache: &Cache, store: Store) -> Library {
    let authors = cache.zone("authors").unwrap().key(|a: &u64| *a);
    let publishers = cache.zone("publishers").unwrap();
    Library {
        by_author: cache
            .memoizer("by_author")
            .store(store)
            .zone(&authors)
            .build()
            .unwrap(),
        blurb: cache
            .memoizer("blurb")
            .store(store)
            .zone_key(&authors, |b: &Book| b.author_id)
            .build()
            .unwrap(),
        listing: cache
            .memoizer("listing")
            .store(store)
            .zone_keys(&authors, |b: &Book| [b.author_id])
            .zone_key(&publishers, |b: &Book| b.publisher_id)
            .build()
            .unwrap(),
        authors,
        publishers,
    }
}

#[test]
fn zone_invalidation_on_one_machine_reaches_the_other() {
    for store in [Store::Persistent, Store::Tiered(64)] {
        let [a, b] = <[Cache; 2]>::try_from(machines("zones", 2)).unwrap();
        let (la, lb) = (library(&a, store), library(&b, store));
        let calls = Calls::default();
        let fill = |l: &Library| {
            for id in 0..6 {
                let bk = book(id, id % 2, id % 3);
                l.by_author
                    .get_or_compute(&(id % 2), |a| calls.count(format!("a{a}")));
                l.blurb
                    .get_or_compute(&bk, |b| calls.count(format!("b{}", b.id)));
                l.listing
                    .get_or_compute(&bk, |b| calls.count(format!("l{}", b.id)));
            }
        };
        // Whether every member has dropped (here or on the server) its entries about `bk`.
        let gone = |l: &Library, bk: &Book| {
            l.by_author.get_archived(&bk.author_id).unwrap().is_none()
                && l.blurb.get_archived(bk).unwrap().is_none()
                && l.listing.get_archived(bk).unwrap().is_none()
        };
        fill(&la);
        let first = calls.get();
        assert_eq!(first, 2 + 6 + 6);
        fill(&lb);
        assert_eq!(calls.get(), first, "{store:?}: all shared");

        // Author 0, invalidated on machine B.
        lb.authors.invalidate(&0u64).unwrap();
        eventually("the push reaches A's local tier", || {
            gone(&la, &book(0, 0, 0))
        });
        let before = calls.get();
        fill(&la);
        assert_eq!(
            calls.get(),
            before + 1 + 3 + 3,
            "{store:?}: by_author(0), the blurbs and listings of books 0, 2 and 4"
        );

        // Publisher 1 (a second dependency key of listing): books 1 and 4.
        lb.publishers.invalidate(&1u64).unwrap();
        eventually("publisher push", || {
            la.listing.get_archived(&book(1, 1, 1)).unwrap().is_none()
        });
        let before = calls.get();
        fill(&la);
        assert_eq!(
            calls.get(),
            before + 2,
            "{store:?}: listings of publisher 1"
        );

        // The whole zone: every member of authors recomputes, O(1) on the server.
        la.authors.invalidate_all().unwrap();
        eventually("the zone push reaches B", || gone(&lb, &book(1, 1, 1)));
        let before = calls.get();
        fill(&lb);
        assert_eq!(calls.get(), before + 2 + 6 + 6, "{store:?}");
    }
}

#[test]
fn a_store_whose_dependency_was_invalidated_while_computing_is_refused() {
    let [a, b] = <[Cache; 2]>::try_from(machines("refused", 2)).unwrap();
    let (la, lb) = (
        library(&a, Store::Persistent),
        library(&b, Store::Persistent),
    );
    let bk = book(1, 42, 7);
    let value = la.blurb.get_or_compute(&bk, |_| {
        // While A computes, B invalidates author 42 (another machine).
        lb.authors.invalidate(&42u64).unwrap();
        "stale".to_string()
    });
    assert_eq!(value, "stale", "the caller still gets its value");
    assert_eq!(
        lb.blurb.get_or_compute(&bk, |_| "fresh".to_string()),
        "fresh"
    );
    assert_eq!(
        la.blurb.get_or_compute(&bk, |_| "again".to_string()),
        "fresh"
    );

    // The same for invalidate_all and Zone::invalidate_all.
    let m = a.memoizer::<u64, u64>("plain").build().unwrap();
    let mb = b.memoizer::<u64, u64>("plain").build().unwrap();
    m.get_or_compute(&1, |_| {
        mb.invalidate_all().unwrap();
        1
    });
    assert_eq!(mb.get_or_compute(&1, |_| 2), 2);
    la.by_author.get_or_compute(&5, |_| {
        lb.authors.invalidate_all().unwrap();
        "stale".into()
    });
    assert_eq!(lb.by_author.get_or_compute(&5, |_| "fresh".into()), "fresh");
}

#[test]
fn max_hits_is_exact_across_machines_and_threads() {
    let caches = machines("max-hits", 4);
    let memos: Vec<Memoizer<u64, u64>> = caches
        .iter()
        .map(|c| {
            c.memoizer("counted")
                .store(Store::Tiered(16)) // never served locally with max_hits
                .max_hits(3)
                .build()
                .unwrap()
        })
        .collect();
    let calls = Calls::default();
    let per_thread = 10;
    let barrier = Barrier::new(memos.len());
    std::thread::scope(|s| {
        for m in &memos {
            let (calls, barrier) = (&calls, &barrier);
            s.spawn(move || {
                barrier.wait();
                for _ in 0..per_thread {
                    m.get_or_compute(&1, |k| calls.count(*k));
                }
            });
        }
    });
    // 40 calls with n = 3: ceil(40 / 4) computes, whatever the interleaving.
    assert_eq!(calls.get(), 10);
    let hits: u64 = memos.iter().map(|m| m.stats().hits).sum();
    assert_eq!(hits, 30);
}

#[test]
fn single_flight_holds_across_machines() {
    let caches = machines("flight", 3);
    let memos: Vec<Memoizer<u64, u64>> = caches
        .iter()
        .map(|c| c.memoizer("slow").build().unwrap())
        .collect();
    let calls = Calls::default();
    let barrier = Barrier::new(memos.len() * 2);
    std::thread::scope(|s| {
        for m in &memos {
            for _ in 0..2 {
                let (calls, barrier) = (&calls, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let v = m.get_or_compute(&9, |k| {
                        std::thread::sleep(Duration::from_millis(200));
                        calls.count(k * 2)
                    });
                    assert_eq!(v, 18);
                });
            }
        }
    });
    assert_eq!(
        calls.get(),
        1,
        "six callers on three machines, one computation"
    );
}

const CHILD_ENV: &str = "FRESCO_REDIS_LEASE_CHILD";

/// The child: takes the lease by starting a computation that never ends, says so, and
/// waits to be killed.
#[test]
fn lease_child() {
    let Ok(ns) = std::env::var(CHILD_ENV) else {
        return; // only meaningful when spawned by the test below
    };
    let cache = Cache::builder()
        .namespace(&ns)
        .lease(Duration::from_millis(600))
        .connect(&url())
        .unwrap();
    let m = cache.memoizer::<u64, u64>("leased").build().unwrap();
    m.get_or_compute(&1, |_| {
        println!("computing");
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    });
}

#[test]
fn a_killed_lease_holder_is_taken_over_after_its_lease() {
    use std::io::{BufRead, BufReader};
    let ns = namespace("killed");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["lease_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, &ns)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("computing"))),
        "the child never started computing"
    );
    let cache = Cache::builder()
        .namespace(&ns)
        .lease(Duration::from_millis(600))
        .connect(&url())
        .unwrap();
    let m = cache.memoizer::<u64, u64>("leased").build().unwrap();
    // The child holds the lease (and renews it while alive): we wait for it.
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let v = m.get_or_compute(&1, |_| 7);
        (v, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        !waiter.is_finished(),
        "the waiter must wait for the live holder"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let (v, waited) = waiter.join().unwrap();
    assert_eq!(v, 7, "the waiter took over and computed");
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
}

#[test]
fn deadlines_are_absolute_and_checked_on_read() {
    let ns = namespace("expiry");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let (ca, cb) = (ManualClock::new(now), ManualClock::new(now));
    let a = Cache::builder()
        .namespace(&ns)
        .clock(ca.clone())
        .connect(&url())
        .unwrap();
    let b = Cache::builder()
        .namespace(&ns)
        .clock(cb.clone())
        .connect(&url())
        .unwrap();
    let ma = a
        .memoizer::<u64, u64>("ttl")
        .expires(Duration::from_secs(60))
        .build()
        .unwrap();
    let mb = b
        .memoizer::<u64, u64>("ttl")
        .expires(Duration::from_secs(60))
        .build()
        .unwrap();
    assert_eq!(ma.get_or_compute(&1, |_| 1), 1);
    assert_eq!(mb.get_or_compute(&1, |_| 2), 1, "shared while live");
    // B's clock passes A's deadline: B reads a miss although the server still holds it.
    cb.advance(Duration::from_secs(61));
    assert_eq!(mb.get_or_compute(&1, |_| 3), 3);
    // Hits do not extend the deadline: the server removes the entry at its deadline.
    let short = a
        .memoizer::<u64, u64>("short")
        .expires(Duration::from_millis(300))
        .build()
        .unwrap();
    short.get_or_compute(&1, |_| 1);
    assert_eq!(short.get_or_compute(&1, |_| 2), 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(short.get_or_compute(&1, |_| 2), 2, "removed by PEXPIREAT");
}

static CACHE: std::sync::LazyLock<Cache> = std::sync::LazyLock::new(|| {
    Cache::builder()
        .namespace(&namespace("macro"))
        .connect(&url())
        .unwrap()
});
static MACRO_CALLS: AtomicUsize = AtomicUsize::new(0);

#[memoize(cache = CACHE, expires = 60)]
fn word_count(text: &str) -> usize {
    MACRO_CALLS.fetch_add(1, Ordering::SeqCst);
    text.split_whitespace().count()
}

#[test]
fn memoize_attribute_works_over_the_server() {
    assert_eq!(word_count("war and peace"), 3);
    assert_eq!(word_count("war and peace"), 3);
    assert_eq!(MACRO_CALLS.load(Ordering::SeqCst), 1);
    assert!(
        word_count::memoizer()
            .invalidate_key("war and peace")
            .unwrap()
    );
    assert_eq!(word_count("war and peace"), 3);
    assert_eq!(MACRO_CALLS.load(Ordering::SeqCst), 2);
}

#[test]
fn keyfunc_shares_entries_between_arguments() {
    let [a, b] = <[Cache; 2]>::try_from(machines("keyfunc", 2)).unwrap();
    let ma = a
        .memoizer::<str, usize>("ci")
        .keyfunc(|s: &str| s.to_lowercase())
        .build()
        .unwrap();
    let mb = b
        .memoizer::<str, usize>("ci")
        .keyfunc(|s: &str| s.to_lowercase())
        .build()
        .unwrap();
    ma.get_or_compute("Foo", |s| s.len());
    assert_eq!(mb.get_or_compute("FOO", |_| 99), 3);
}

// ---- the local tier: on a server of its own, so command counts are this test's ----

fn evalsha_calls(server: &Server) -> u64 {
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split("calls=").nth(1))
        .and_then(|v| v.split(',').next())
        .map_or(0, |v| v.parse().unwrap())
}

#[test]
fn the_local_tier_serves_hits_without_the_server_and_hears_invalidations() {
    let server = Server::start(&[]);
    let ns = namespace("local");
    let (a, b) = (connect(&server.url(), &ns), connect(&server.url(), &ns));
    let la = library(&a, Store::Tiered(100));
    let lb = library(&b, Store::Tiered(100));
    let bk = book(1, 42, 7);
    la.blurb.get_or_compute(&bk, |_| "v1".into());
    // The stored value reaches the local tier with its put, or with the first hit after
    // it (when the pushes of the stamps it created came in during the put).
    eventually("a hit served locally", || {
        server.cli(&["CONFIG", "RESETSTAT"]);
        la.blurb.get_or_compute(&bk, |_| unreachable!());
        evalsha_calls(&server) == 0
    });
    server.cli(&["CONFIG", "RESETSTAT"]);
    for _ in 0..100 {
        assert_eq!(la.blurb.get_or_compute(&bk, |_| unreachable!()), "v1");
    }
    assert_eq!(
        evalsha_calls(&server),
        0,
        "local hits send nothing to the server"
    );

    // B (another machine) invalidates author 42: A learns of it within milliseconds.
    assert_eq!(lb.blurb.get_or_compute(&bk, |_| unreachable!()), "v1");
    let at = Instant::now();
    lb.authors.invalidate(&42u64).unwrap();
    eventually("A's local copy is dropped", || {
        la.blurb.get_archived(&bk).unwrap().is_none()
    });
    eprintln!("push reached the other machine after {:?}", at.elapsed());
    assert_eq!(la.blurb.get_or_compute(&bk, |_| "v2".into()), "v2");

    // invalidate_all and Zone::invalidate_all by B reach A's local tier too.
    assert_eq!(lb.blurb.get_or_compute(&bk, |_| unreachable!()), "v2");
    lb.blurb.invalidate_all().unwrap();
    eventually("memoizer push", || {
        la.blurb.get_archived(&bk).unwrap().is_none()
    });
    la.blurb.get_or_compute(&bk, |_| "v3".into());
    lb.authors.invalidate_all().unwrap();
    eventually("zone push", || {
        la.blurb.get_archived(&bk).unwrap().is_none()
    });
}

#[test]
fn the_local_tier_flushes_itself_when_its_connection_drops() {
    let server = Server::start(&[]);
    let ns = namespace("drop");
    let a = connect(&server.url(), &ns);
    let m = a
        .memoizer::<u64, u64>("m")
        .store(Store::Tiered(10))
        .build()
        .unwrap();
    m.get_or_compute(&1, |_| 1);
    assert_eq!(m.get_or_compute(&1, |_| 2), 1);
    // The server loses everything (a restart); the local copy must not outlive it.
    let mut server = server;
    server.restart();
    eventually("the local tier forgot the value", || {
        m.get_or_compute(&1, |_| 2) == 2
    });
    // Working again after the reconnect: stored remotely and served.
    let mut key = 100;
    eventually("stored and served after the reconnect", || {
        key += 1; // a fresh key each time: a miss that did not store leaves no trace
        m.get_or_compute(&key, |k| k * 2);
        m.get_or_compute(&key, |_| 0) == key * 2
    });
}

/// The commands clients sent since the last `CONFIG RESETSTAT` - one round trip each -
/// leaving out those the scripts ran inside (counted by the server too) and the test's
/// own `INFO` and `CONFIG`.
fn round_trips(server: &Server) -> u64 {
    const IN_SCRIPTS: [&str; 11] = [
        "get",
        "set",
        "hset",
        "hmget",
        "exists",
        "del",
        "unlink",
        "pexpire",
        "pexpireat",
        "pttl",
        "hincrby",
    ];
    let stats = server.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            // Subcommands count under their command (`config|resetstat`).
            let name = name.split('|').next()?;
            let calls = rest.split("calls=").nth(1)?.split(',').next()?;
            let counted = !IN_SCRIPTS.contains(&name) && !["info", "config"].contains(&name);
            counted.then(|| calls.parse::<u64>().unwrap())
        })
        .sum()
}

#[test]
fn a_miss_costs_three_round_trips_four_with_dependency_keys() {
    let server = Server::start(&[]);
    let cache = connect(&server.url(), &namespace("round-trips"));
    let plain: Memoizer<u64, u64> = cache.memoizer("plain").build().unwrap();
    let lib = library(&cache, Store::Persistent);
    // Warm up: the scripts are loaded and a connection is open.
    plain.get_or_compute(&0, |k| *k);
    lib.blurb.get_or_compute(&book(0, 1, 1), |_| "warm".into());
    let measure = |call: &dyn Fn()| {
        server.cli(&["CONFIG", "RESETSTAT"]);
        call();
        round_trips(&server)
    };
    // A miss: the hit script (absent), the lease with the stamps, the put (which gives
    // the lease back). There were six before the lease and the stamps shared a script
    // and the put gave the lease back.
    assert_eq!(
        measure(&|| assert_eq!(plain.get_or_compute(&1, |k| k + 1), 2)),
        3
    );
    // Dependency keys add one, for their stamps (known only once the key is).
    let bk = book(1, 2, 3);
    assert_eq!(
        measure(&|| {
            lib.blurb.get_or_compute(&bk, |_| "b".into());
        }),
        4
    );
    // A hit: one.
    assert_eq!(
        measure(&|| assert_eq!(plain.get_or_compute(&1, |_| unreachable!()), 2)),
        1
    );
    assert_eq!(
        measure(&|| {
            lib.blurb.get_or_compute(&bk, |_| unreachable!());
        }),
        1
    );
}
