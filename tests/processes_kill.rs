//! Shared mode under SIGKILL: four worker processes (the test binary itself) memoize
//! into one shared file and invalidate dependencies of its zone at random, while the
//! test kills one of them at a random moment - inside a write transaction, holding a
//! single-flight lock, in the middle of an invalidation - and starts another, at least
//! 30 times (`FRESCO_PROCESS_KILLS=300` for a longer run). Guards that the survivors
//! keep going (each answers within a bound after the last kill), that no process is
//! ever served a wrong value or a value computed before an invalidation it saw return,
//! that a value made durable under a dependency nobody invalidates is never lost, that
//! no value of a `max_hits(LIMIT)` memoizer is served more than `LIMIT` times by all
//! the processes together, and that the file's indexes stay exact.
//!
//! Values are `(key, ns)`: `ns` is when the computation began (the machine's clock,
//! shared by the processes). An invalidation of dependency `d` is recorded before it
//! starts (`i d ns`) and once it returned (`t d ns`, the same `ns`): every value of a
//! key of `d` served after that must have begun after `ns`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fresco_memoize::{Cache, Memoizer, Store, Zone};

const ROLE: &str = "FRESCO_KILL_ROLE";
const DIR: &str = "FRESCO_KILL_DIR";
const KEYS: u64 = 64;
/// Dependencies (`key % DEPS`); the last two are never invalidated.
const DEPS: u64 = 8;
const INVALIDATED: u64 = 6;
/// Longest a worker may go without progress before the test fails.
const PROGRESS: Duration = Duration::from_secs(60);

type Value = (u64, u64);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct Memos {
    cache: Cache,
    zone: Zone,
    persistent: Memoizer<u64, Value>,
    tiered: Memoizer<u64, Value>,
    limited: Memoizer<u64, Value>,
}

/// The `max_hits` of `limited`.
const LIMIT: u32 = 3;

fn memos(path: &Path) -> Memos {
    let cache = Cache::builder()
        .shared(true)
        .sweep_interval(None)
        .open(path)
        .unwrap();
    let zone = cache.zone("z").unwrap().key(|k: &u64| k % DEPS);
    let build = |name: &str, store: Store| {
        cache
            .memoizer::<u64, Value>(name)
            .store(store)
            .zone(&zone)
            .build()
            .unwrap()
    };
    let persistent = build("persistent", Store::Persistent);
    let tiered = build("tiered", Store::Tiered(32));
    let limited = cache
        .memoizer::<u64, Value>("limited")
        .store(Store::Tiered(32))
        .max_hits(LIMIT)
        .build()
        .unwrap();
    Memos {
        cache,
        zone,
        persistent,
        tiered,
        limited,
    }
}

fn append(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(format!("{line}\n").as_bytes()).unwrap();
}

/// A small xorshift generator (no dependency for a test's dice).
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A worker: memoizes, invalidates and flushes at random until it is killed, checking
/// every value it is served; prints `ops N` every 20 operations.
#[test]
fn churn_role() {
    if std::env::var(ROLE).as_deref() != Ok("churn") {
        return;
    }
    let dir = PathBuf::from(std::env::var(DIR).unwrap());
    let m = memos(&dir.join("shared.memo"));
    let journal = dir.join("journal");
    let mut dice = Dice(now_ns() | 1);
    // The dependencies this worker saw invalidated, and when each invalidation began.
    let mut returned = [0u64; DEPS as usize];
    let mut unflushed: Vec<Value> = Vec::new();
    for op in 1u64.. {
        match dice.roll(20) {
            0 => {
                let d = dice.roll(INVALIDATED);
                let ns = now_ns();
                append(&journal, &format!("i {d} {ns}"));
                m.zone.invalidate(&d).unwrap();
                append(&journal, &format!("t {d} {ns}"));
                returned[d as usize] = ns;
            }
            1 => {
                m.cache.flush().unwrap();
                for (k, ns) in unflushed.drain(..) {
                    append(&journal, &format!("d {k} {ns}"));
                }
            }
            2 | 3 => {
                // Few keys, so that the processes share their budgets; every serve is
                // journaled (one a kill cuts short is missing: the check can only
                // undercount).
                let k = dice.roll(4);
                let mut computed = false;
                let v = m.limited.get_or_compute(&k, |&k| {
                    computed = true;
                    (k, now_ns())
                });
                assert_eq!(v.0, k, "a wrong value");
                if !computed {
                    append(&journal, &format!("h {} {}", v.0, v.1));
                }
            }
            roll => {
                let k = dice.roll(KEYS);
                let memo = if roll % 2 == 0 {
                    &m.persistent
                } else {
                    &m.tiered
                };
                let mut mine = None;
                let v = memo.get_or_compute(&k, |&k| {
                    let v = (k, now_ns());
                    mine = Some(v);
                    v
                });
                assert_eq!(v.0, k, "a wrong value");
                assert!(
                    v.1 > returned[(k % DEPS) as usize],
                    "key {k} served a value computed before an invalidation that returned"
                );
                if let Some(v) = mine.filter(|_| std::ptr::eq(memo, &m.persistent)) {
                    unflushed.push(v);
                }
            }
        }
        if op % 20 == 0 {
            println!("@@ ops {op}");
        }
    }
}

struct Worker {
    child: Child,
    progress: Receiver<u64>,
}

impl Worker {
    fn spawn(dir: &Path) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "churn_role", "--nocapture", "--test-threads=1"])
            .env(ROLE, "churn")
            .env(DIR, dir)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, progress) = channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if let Some((_, n)) = line.split_once("@@ ops ")
                    && tx.send(n.trim().parse().unwrap_or(0)).is_err()
                {
                    return;
                }
            }
        });
        Worker { child, progress }
    }

    /// Waits until the worker made `n` more operations; fails if it stops meanwhile.
    fn progresses(&mut self, n: u64) {
        let mut first = None;
        loop {
            let done = self
                .progress
                .recv_timeout(PROGRESS)
                .expect("a worker stopped making progress");
            let start = *first.get_or_insert(done);
            if done >= start + n {
                return;
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the worker died by itself (a failed check); its status.
    fn died(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn sigkill_of_any_process_never_blocks_the_others_nor_serves_a_wrong_value() {
    let kills: usize = std::env::var("FRESCO_PROCESS_KILLS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    drop(memos(&path));
    let mut dice = Dice(now_ns() | 1);
    let mut workers: Vec<Worker> = (0..4).map(|_| Worker::spawn(dir.path())).collect();
    for w in &mut workers {
        w.progresses(1);
    }
    for _ in 0..kills {
        std::thread::sleep(Duration::from_millis(10 + dice.roll(90)));
        for w in &mut workers {
            assert!(w.died().is_none(), "a worker failed a check");
        }
        let victim = dice.roll(4) as usize;
        workers[victim].kill();
        workers[victim] = Worker::spawn(dir.path());
    }
    // Every worker, old and new, keeps going after the last kill.
    for w in &mut workers {
        w.progresses(40);
        assert!(w.died().is_none(), "a worker failed a check");
    }
    for w in &mut workers {
        w.kill();
    }
    verify(dir.path(), &path);
}

/// After the run: no max_hits value was served more than LIMIT times in all, the
/// file's indexes are exact, every value is right and younger than
/// every invalidation of its dependency that returned, and every durable value of a
/// dependency nobody invalidated is still there.
fn verify(dir: &Path, path: &Path) {
    let m = memos(path);
    let report = m.cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let journal = std::fs::read_to_string(dir.join("journal")).unwrap_or_default();
    let mut returned = [0u64; DEPS as usize];
    let mut durable: Vec<Value> = Vec::new();
    let mut served = std::collections::HashMap::<Value, u32>::new();
    for line in journal.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        // A kill can cut the last line of the journal short.
        let (Some(kind), Some(Ok(a)), Some(Ok(b))) = (
            words.first(),
            words.get(1).map(|w| w.parse::<u64>()),
            words.get(2).map(|w| w.parse::<u64>()),
        ) else {
            continue;
        };
        match *kind {
            "h" => *served.entry((a, b)).or_default() += 1,
            "t" => returned[a as usize] = returned[a as usize].max(b),
            "d" => durable.push((a, b)),
            _ => {}
        }
    }
    assert!(
        !served.is_empty(),
        "no max_hits value was served: the check saw nothing"
    );
    for (v, n) in &served {
        assert!(
            *n <= LIMIT,
            "{v:?} served {n} times by all processes, max_hits {LIMIT}"
        );
    }
    for (k, _) in durable.iter().filter(|(k, _)| k % DEPS >= INVALIDATED) {
        let mut lost = false;
        m.persistent.get_or_compute(k, |&k| {
            lost = true;
            (k, now_ns())
        });
        assert!(!lost, "key {k} was durable and is gone");
    }
    for k in 0..KEYS {
        for memo in [&m.persistent, &m.tiered] {
            let v = memo.get_or_compute(&k, |&k| (k, now_ns()));
            assert_eq!(v.0, k);
            assert!(
                v.1 > returned[(k % DEPS) as usize],
                "key {k}: an undone invalidation"
            );
        }
    }
}
