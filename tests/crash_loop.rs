//! Crash loop: a child process memoizes continuously into one cache file and is killed
//! with SIGKILL at random moments, again and again.
//!
//! Guards crash safety: after every kill the file opens (and is not moved aside as
//! damaged), the invariant checker finds the indexes exact, every entry served equals
//! the value its key derives, every invalidation the child saw return `Ok` is still in
//! effect, and the cache keeps working. The child also clears whole memoizers (plain,
//! with `expires` and zone keys, and whole zones), so kills land while the sweeper
//! reclaims cleared tables: a kill during reclamation loses nothing and brings nothing
//! back.
//!
//! 30 kills by default (a few seconds); set `FRESCO_CRASH_KILLS=1000` for a longer run and
//! `FRESCO_CRASH_SEED=<n>` to replay one. The child is this same test binary, run with
//! `FRESCO_CRASH_CHILD=<file>`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fresco_memoize::{Cache, Memoizer, Store, Zone};

const KEYS: u64 = 1500;
const AUTHORS: u64 = 17;
const CHILD_ENV: &str = "FRESCO_CRASH_CHILD";

fn square(k: u64) -> String {
    format!(
        "sq:{k}:{}",
        k.wrapping_mul(k).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    )
}

fn series(k: u64) -> Vec<u64> {
    // Up to ~8 KiB: values that span pages.
    (0..(k % 64) * 16).map(|i| k ^ (i * 0x0101_0101)).collect()
}

fn book(k: u64) -> (u64, String) {
    (k % AUTHORS, format!("book {k} by author {}", k % AUTHORS))
}

struct Memos {
    squares: Memoizer<u64, String>,
    series: Memoizer<u64, Vec<u64>>,
    books: Memoizer<u64, (u64, String)>,
    ttl: Memoizer<u64, String>,
    tombs: Memoizer<u64, u64>,
    authors: Zone,
}

fn memos(cache: &Cache) -> Memos {
    let authors = cache.zone("authors").unwrap().key(|k: &u64| k % AUTHORS);
    Memos {
        squares: cache.memoizer("squares").build().unwrap(),
        series: cache
            .memoizer("series")
            .store(Store::Tiered(64))
            .build()
            .unwrap(),
        books: cache.memoizer("books").zone(&authors).build().unwrap(),
        ttl: cache
            .memoizer("ttl")
            .expires(Duration::from_secs(3600))
            .zone_key(&authors, |k: &u64| k % AUTHORS)
            .build()
            .unwrap(),
        tombs: cache.memoizer("tombs").build().unwrap(),
        authors,
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The child: memoizes until killed. Exits with 3 if it ever sees a wrong value.
fn child(path: &Path, seed: u64, run: u64) -> ! {
    let cache = Cache::builder()
        .durable_interval(Duration::from_millis(15))
        .on_error(|e| eprintln!("child cache error: {e}"))
        .open(path)
        .unwrap();
    let m = memos(&cache);
    let mut rng = Rng(seed | 1);
    let mut tomb = run * 1_000_000;
    let wrong = |what: &str, k: u64| -> ! {
        println!("WRONG {what} {k}");
        std::process::exit(3)
    };
    println!("@ready");
    loop {
        let k = rng.below(KEYS);
        match rng.below(100) {
            0..=19 => {
                if m.squares.get_or_compute(&k, |k| square(*k)) != square(k) {
                    wrong("squares", k)
                }
            }
            20..=39 => {
                if m.series.get_or_compute(&k, |k| series(*k)) != series(k) {
                    wrong("series", k)
                }
            }
            40..=54 => {
                if m.books.get_or_compute(&k, |k| book(*k)) != book(k) {
                    wrong("books", k)
                }
            }
            55..=64 => {
                if m.ttl.get_or_compute(&k, |k| square(*k)) != square(k) {
                    wrong("ttl", k)
                }
            }
            65..=74 => {
                let _ = m.squares.invalidate_key(&k);
                let _ = m.series.invalidate_key(&k);
            }
            75..=77 => {
                let _ = m.authors.invalidate(&rng.below(AUTHORS));
            }
            78 => match rng.below(12) {
                0 => drop(m.series.invalidate_all()),
                1 => drop(m.ttl.invalidate_all()),
                2 => drop(m.books.invalidate_all()),
                3 => drop(m.authors.invalidate_all()),
                _ => {}
            },
            79..=81 => {
                let _ = cache.flush();
            }
            82..=89 => {
                // A tombstone: stored durably, then invalidated. Once the invalidation
                // returned Ok, no crash may bring the entry back.
                tomb += 1;
                m.tombs.get_or_compute(&tomb, |t| *t);
                if cache.flush().is_err() {
                    continue;
                }
                // Sometimes by clearing the memoizer: the cleared table is then
                // reclaimed in the background, across later kills.
                let removed = if rng.below(4) == 0 {
                    m.tombs.invalidate_all().is_ok_and(|n| n > 0)
                } else {
                    m.tombs.invalidate_key(&tomb).is_ok_and(|gone| gone)
                };
                if removed {
                    println!("gone {tomb} .");
                }
            }
            _ => {
                let _ = m.books.get_archived(&k);
            }
        }
    }
}

/// After a kill: the file opens, is sound, serves only right values, keeps working.
/// Returns how many entries it found (and checked).
fn verify(path: &Path, gone: &[u64], round: u64) -> usize {
    let cache = Cache::open(path).unwrap_or_else(|e| panic!("round {round}: open failed: {e}"));
    let health = cache.health();
    assert_eq!(
        health.moved_aside, None,
        "round {round}: a kill damaged the file: {health:?}"
    );
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "round {round}: {report:?}");
    let m = memos(&cache);
    let mut found = 0;
    for k in 0..KEYS {
        if let Some(hit) = m.squares.get_archived(&k).unwrap() {
            assert_eq!(hit.as_str(), square(k), "round {round}: squares {k}");
            found += 1;
        }
        if let Some(hit) = m.series.get_archived(&k).unwrap() {
            assert_eq!(
                hit.deserialize().unwrap(),
                series(k),
                "round {round}: series {k}"
            );
            found += 1;
        }
        if let Some(hit) = m.books.get_archived(&k).unwrap() {
            assert_eq!(
                hit.deserialize().unwrap(),
                book(k),
                "round {round}: books {k}"
            );
            found += 1;
        }
        if let Some(hit) = m.ttl.get_archived(&k).unwrap() {
            assert_eq!(hit.as_str(), square(k), "round {round}: ttl {k}");
            found += 1;
        }
    }
    for t in gone {
        assert!(
            m.tombs.get_archived(t).unwrap().is_none(),
            "round {round}: invalidated tombstone {t} came back"
        );
    }
    // Keeps working: store, invalidate, flush.
    let k = KEYS + round;
    assert_eq!(m.squares.get_or_compute(&k, |k| square(*k)), square(k));
    assert!(m.squares.invalidate_key(&k).unwrap());
    m.authors.invalidate(&(round % AUTHORS)).unwrap();
    cache.flush().unwrap();
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "round {round} after use: {report:?}");
    found
}

fn seed() -> u64 {
    std::env::var("FRESCO_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

#[test]
fn sigkill_loop_never_corrupts_or_serves_a_wrong_value() {
    if let Some(path) = std::env::var_os(CHILD_ENV) {
        let seed = std::env::var("FRESCO_CRASH_CHILD_SEED")
            .unwrap()
            .parse()
            .unwrap();
        let run = std::env::var("FRESCO_CRASH_CHILD_RUN")
            .unwrap()
            .parse()
            .unwrap();
        child(Path::new(&path), seed, run);
    }
    let kills: u64 = std::env::var("FRESCO_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed = seed();
    eprintln!("crash loop: {kills} kills, FRESCO_CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("crash.memo");
    let mut gone = Vec::new();
    let mut acknowledged = 0usize;
    let mut checked = 0usize;
    for round in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "sigkill_loop_never_corrupts_or_serves_a_wrong_value",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .env("FRESCO_CRASH_CHILD_SEED", rng.next().to_string())
            .env("FRESCO_CRASH_CHILD_RUN", (round + 1).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut gone = Vec::new();
            let mut wrong = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.ends_with("@ready") {
                    let _ = tx.send(());
                } else if let Some(t) = line
                    .strip_prefix("gone ")
                    .and_then(|l| l.strip_suffix(" ."))
                {
                    gone.push(t.parse::<u64>().unwrap());
                } else if line.starts_with("WRONG") {
                    wrong = Some(line);
                }
            }
            (gone, wrong)
        });
        rx.recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("round {round}: the child never got ready"));
        let ran = Duration::from_millis(5 + rng.below(200));
        let until = Instant::now() + ran;
        while Instant::now() < until {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let exited_by_itself = child.try_wait().unwrap();
        child.kill().unwrap_or(());
        child.wait().unwrap();
        let (mut seen, wrong) = reader.join().unwrap();
        assert_eq!(wrong, None, "round {round}: the child served a wrong value");
        assert!(
            exited_by_itself.is_none(),
            "round {round}: the child exited by itself: {exited_by_itself:?}"
        );
        acknowledged += seen.len();
        gone.append(&mut seen);
        checked += verify(&path, &gone, round);
    }
    eprintln!(
        "crash loop: {kills} kills survived; {checked} surviving entries checked, \
         {acknowledged} acknowledged invalidations held"
    );
    assert!(
        checked > 0,
        "no entry ever survived a kill: the loop tested nothing"
    );
}
