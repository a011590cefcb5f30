//! Shared mode (`CacheBuilder::shared(true)`) with real processes: the test binary runs
//! itself as worker processes on one file. Guards that a value stored by one process is
//! served to the others without recomputing; that an invalidation in one process is
//! never served again by another once it returned - memory tiers included - and that a
//! computation that began before it in another process stores nothing after it; that
//! processes missing one key at once compute it once, and that a waiter takes over when
//! the computing process is killed - at once, even when a child it forked lives on; that a `max_hits` budget is spent by all processes
//! together (no value served more than N times in all, ceil(C/(N+1)) computations); that a shared and an exclusive open of one file get
//! `Error::ModeMismatch` naming the file; that a process killed inside a write
//! transaction (a store's, an invalidation's) blocks the others only until it dies, and
//! leaves nothing of it behind nor loses what committed before; and that a shared `Cache` used in a child after
//! `fork()` reports `Error::Forked` instead of touching its parent's locks.
//!
//! Every wait on a worker is bounded (a worker that does not answer fails the test).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Error, Memoizer, Store, Zone};

const ROLE: &str = "FRESCO_PROCESSES_ROLE";
const FILE: &str = "FRESCO_PROCESSES_FILE";
/// Starts every answer of a worker on its stdout.
const MARK: &str = "@@ ";
/// Longest a worker may take to answer one command before the test fails.
const ANSWER: Duration = Duration::from_secs(60);

fn open_shared(path: &Path) -> Cache {
    Cache::builder()
        .shared(true)
        .sweep_interval(None)
        .open(path)
        .unwrap()
}

/// The memoizers every process builds: `tiered` (a memory tier in front of the file,
/// zone `z` keyed by `key % 10`), `slow`, persistent, and `limited` and
/// `limited_tiered`, with `max_hits(HITS)`.
struct Memos {
    cache: Cache,
    zone: Zone,
    tiered: Memoizer<u64, u64>,
    slow: Memoizer<u64, u64>,
    limited: Memoizer<u64, u64>,
    limited_tiered: Memoizer<u64, u64>,
}

/// The `max_hits` of `limited`.
const HITS: u32 = 4;

fn memos(path: &Path) -> Memos {
    let cache = open_shared(path);
    let zone = cache.zone("z").unwrap().key(|k: &u64| k % 10);
    let tiered = cache
        .memoizer::<u64, u64>("tiered")
        .store(Store::Tiered(1000))
        .zone(&zone)
        .build()
        .unwrap();
    let slow = cache
        .memoizer::<u64, u64>("slow")
        .store(Store::Persistent)
        .build()
        .unwrap();
    let limited = cache
        .memoizer::<u64, u64>("limited")
        .store(Store::Persistent)
        .max_hits(HITS)
        .build()
        .unwrap();
    let limited_tiered = cache
        .memoizer::<u64, u64>("limited_tiered")
        .store(Store::Tiered(100))
        .max_hits(HITS)
        .build()
        .unwrap();
    Memos {
        cache,
        zone,
        tiered,
        slow,
        limited,
        limited_tiered,
    }
}

fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    writeln!(f, "{line}").unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn wait_for_file(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < ANSWER,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A worker's main loop: one command per stdin line, one answer per stdout line.
///
/// - `get K V`: `tiered` at `K`, computing `V`; answers `V' computed` (`computed` 0/1).
/// - `slow K V MARKS GATE`: `slow` at `K`; the computation appends `computing` to the
///   file `MARKS`, waits for the file `GATE` to exist (`-`: no gate), and returns `V`.
/// - `dep D`: invalidates dependency `D` of zone `z`; answers how many entries went.
/// - `flush`, `quit`.
#[test]
fn worker_role() {
    if std::env::var(ROLE).as_deref() != Ok("worker") {
        return;
    }
    let path = PathBuf::from(std::env::var(FILE).unwrap());
    let m = memos(&path);
    println!("{MARK}ready");
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["get", k, v] => {
                let (k, v): (u64, u64) = (k.parse().unwrap(), v.parse().unwrap());
                let mut computed = 0;
                let got = m.tiered.get_or_compute(&k, |_| {
                    computed += 1;
                    v
                });
                format!("{got} {computed}")
            }
            ["slow", k, v, marks, gate] => {
                let (k, v): (u64, u64) = (k.parse().unwrap(), v.parse().unwrap());
                let got = m.slow.get_or_compute(&k, |_| {
                    append_line(Path::new(marks), "computing");
                    if *gate != "-" {
                        wait_for_file(Path::new(gate));
                    }
                    v
                });
                got.to_string()
            }
            ["limited", which, k, calls, gate] => {
                // Each computation returns a value no other one does (pid, count).
                let memo = if *which == "tiered" {
                    &m.limited_tiered
                } else {
                    &m.limited
                };
                let k: u64 = k.parse().unwrap();
                let mut made = 0u64;
                wait_for_file(Path::new(gate));
                let got: Vec<String> = (0..calls.parse::<u32>().unwrap())
                    .map(|_| {
                        // Paced, so the processes' calls interleave and each sees the
                        // others' values committed.
                        std::thread::sleep(Duration::from_millis(2));
                        let mut computed = false;
                        let v = memo.get_or_compute(&k, |_| {
                            computed = true;
                            made += 1;
                            u64::from(std::process::id()) << 32 | made
                        });
                        format!("{v}:{}", u8::from(computed))
                    })
                    .collect();
                got.join(",")
            }
            ["dep", d] => m
                .zone
                .invalidate(&d.parse::<u64>().unwrap())
                .unwrap()
                .to_string(),
            ["flush"] => {
                m.cache.flush().unwrap();
                "flushed".into()
            }
            ["stall", marker] => {
                fresco_memoize::__faults::stall_write_transactions(marker);
                "armed".into()
            }
            ["unannounced"] => {
                fresco_memoize::__faults::skip_board_bumps();
                "armed".into()
            }
            ["forkchild"] => fork_a_sleeper().to_string(),
            ["check"] => format!("{}", m.cache.check_integrity().unwrap().is_ok()),
            ["quit"] => break,
            _ => panic!("unknown command {line}"),
        };
        println!("{MARK}{answer}");
    }
}

/// Forks a child that only sleeps (up to `ANSWER`, in case the test cannot kill it),
/// holding what it inherited - among it the owner lock of the worker's shared cache.
/// Returns its process id.
#[cfg(unix)]
fn fork_a_sleeper() -> i32 {
    // SAFETY (test): the child only sleeps and leaves with `_exit`, touching nothing the
    // parent's other threads may have held locked at the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        std::thread::sleep(ANSWER);
        // SAFETY (test): leaves the child without running the parent's destructors.
        unsafe { libc::_exit(0) };
    }
    pid
}

/// A worker process and its answers.
struct Worker {
    child: Child,
    stdin: ChildStdin,
    answers: Receiver<String>,
}

impl Worker {
    fn spawn(path: &Path) -> Worker {
        let mut worker = Worker::start(path);
        assert_eq!(worker.answer(), "ready");
        worker
    }

    /// Starts a worker without waiting for it to be ready.
    fn start(path: &Path) -> Worker {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "worker_role", "--nocapture", "--test-threads=1"])
            .env(ROLE, "worker")
            .env(FILE, path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, answers) = channel();
        std::thread::spawn(move || {
            // The test harness prints on the same lines: answers follow the mark.
            for line in stdout.lines().map_while(Result::ok) {
                let Some((_, answer)) = line.split_once(MARK) else {
                    continue;
                };
                if tx.send(answer.to_string()).is_err() {
                    return;
                }
            }
        });
        Worker {
            child,
            stdin,
            answers,
        }
    }

    /// `n` workers started at once (opening - creating - the file at the same moment).
    fn spawn_all(path: &Path, n: usize) -> Vec<Worker> {
        let mut workers: Vec<Worker> = (0..n).map(|_| Worker::start(path)).collect();
        for w in &mut workers {
            assert_eq!(w.answer(), "ready");
        }
        workers
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}").unwrap();
        self.stdin.flush().unwrap();
    }

    fn answer(&mut self) -> String {
        self.answers
            .recv_timeout(ANSWER)
            .expect("the worker must answer")
    }

    fn ask(&mut self, command: &str) -> String {
        self.send(command);
        self.answer()
    }

    /// `get`: (value, whether this worker computed it).
    fn get(&mut self, k: u64, v: u64) -> (u64, bool) {
        let answer = self.ask(&format!("get {k} {v}"));
        let (value, computed) = answer.split_once(' ').unwrap();
        (value.parse().unwrap(), computed == "1")
    }

    fn quit(mut self) {
        self.send("quit");
        let start = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            if start.elapsed() > ANSWER {
                let _ = self.child.kill();
                panic!("a worker did not quit");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A failed test leaves no worker behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tiered` at `k` in this process: (value, whether it computed).
fn get(m: &Memoizer<u64, u64>, k: u64, v: u64) -> (u64, bool) {
    let mut computed = false;
    let got = m.get_or_compute(&k, |_| {
        computed = true;
        v
    });
    (got, computed)
}

#[test]
fn a_value_stored_by_one_process_is_served_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let here = memos(&path);
    let mut a = Worker::spawn(&path);
    let mut b = Worker::spawn(&path);
    for k in 0..20 {
        assert_eq!(a.get(k, k * 3), (k * 3, true));
    }
    // Visible once its batch committed: `flush` waits for that.
    assert_eq!(a.ask("flush"), "flushed");
    for k in 0..20 {
        assert_eq!(b.get(k, 999), (k * 3, false), "key {k} recomputed");
        assert_eq!(get(&here.tiered, k, 999), (k * 3, false));
    }
    // And the other way round, from this process to the workers.
    for k in 100..110 {
        assert_eq!(get(&here.tiered, k, k + 1), (k + 1, true));
    }
    here.cache.flush().unwrap();
    for k in 100..110 {
        assert_eq!(a.get(k, 0), (k + 1, false));
    }
    a.quit();
    b.quit();
}

#[test]
fn an_invalidation_in_one_process_is_never_served_by_another_after_it_returned() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let here = memos(&path);
    let mut a = Worker::spawn(&path);
    // Keys 3, 13, 23 depend on 3; 4 on 4. Both processes hold them in memory.
    for k in [3, 13, 23, 4] {
        assert_eq!(get(&here.tiered, k, k), (k, true));
    }
    here.cache.flush().unwrap();
    for k in [3, 13, 23, 4] {
        assert_eq!(a.get(k, 0), (k, false));
    }
    // Served from the worker's memory tier now; the invalidation here must reach it.
    assert_eq!(here.zone.invalidate(&3u64).unwrap(), 3);
    for k in [3, 13, 23] {
        assert_eq!(
            a.get(k, k + 50),
            (k + 50, true),
            "key {k} served after removal"
        );
    }
    assert_eq!(a.get(4, 0), (4, false), "an unrelated key is kept");
    a.ask("flush");
    // The worker's invalidation reaches this process's memory tier the same way.
    assert_eq!(get(&here.tiered, 13, 0), (63, false));
    assert_eq!(a.ask("dep 3"), "3");
    for k in [3, 13, 23] {
        assert_eq!(get(&here.tiered, k, k + 70), (k + 70, true));
    }
    assert_eq!(get(&here.tiered, 4, 0), (4, false));
    a.quit();
}

#[test]
fn a_computation_that_began_before_an_invalidation_elsewhere_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let (marks, gate) = (dir.path().join("marks"), dir.path().join("gate"));
    let here = memos(&path);
    let mut a = Worker::spawn(&path);
    // The worker computes key 5 and waits, mid-computation, for the gate.
    a.send(&format!("slow 5 1 {} {}", marks.display(), gate.display()));
    wait_for_file(&marks);
    // The invalidation here returns while that computation is still running.
    assert_eq!(here.slow.invalidate_all().unwrap(), 0);
    std::fs::write(&gate, "").unwrap();
    assert_eq!(a.answer(), "1");
    assert_eq!(a.ask("flush"), "flushed");
    // Its value (computed under the old state) was not stored.
    let mut computed = false;
    let got = here.slow.get_or_compute(&5, |_| {
        computed = true;
        2
    });
    assert_eq!((got, computed), (2, true));
    a.quit();
}

#[test]
fn processes_missing_one_key_at_once_compute_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let (marks, gate) = (dir.path().join("marks"), dir.path().join("gate"));
    // The file is new: the four also create it at once.
    let mut workers = Worker::spawn_all(&path, 4);
    for w in &mut workers {
        w.send(&format!("slow 7 49 {} {}", marks.display(), gate.display()));
    }
    // Let them all meet the key (the first one waits at the gate, computing).
    wait_for_file(&marks);
    std::thread::sleep(Duration::from_millis(200));
    std::fs::write(&gate, "").unwrap();
    for w in &mut workers {
        assert_eq!(w.answer(), "49");
    }
    assert_eq!(lines(&marks).len(), 1, "computed more than once");
    for w in workers {
        w.quit();
    }
}

/// Four processes calling one `max_hits(HITS)` key of `which` at once, `CALLS` times
/// each: no value is served more than `HITS` times by them all, and the calls make
/// ceil(C / (HITS + 1)) computations (the budget's first call computes).
fn max_hits_is_spent_by_all_processes_together(which: &str) {
    const CALLS: usize = 60;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let gate = dir.path().join("gate");
    let mut workers = Worker::spawn_all(&path, 4);
    for w in &mut workers {
        w.send(&format!("limited {which} 3 {CALLS} {}", gate.display()));
    }
    std::fs::write(&gate, "").unwrap();
    let mut served = std::collections::HashMap::<u64, usize>::new();
    let mut computed = 0;
    for w in &mut workers {
        for call in w.answer().split(',') {
            let (v, c) = call.split_once(':').unwrap();
            let v: u64 = v.parse().unwrap();
            if c == "1" {
                computed += 1;
                served.entry(v).or_default();
            } else {
                *served.entry(v).or_default() += 1;
            }
        }
    }
    for (v, n) in &served {
        assert!(
            *n <= HITS as usize,
            "value {v:x} served {n} times, max_hits {HITS}"
        );
    }
    let calls = 4 * CALLS;
    assert_eq!(computed, served.len(), "every value was computed once");
    assert_eq!(computed, calls.div_ceil(HITS as usize + 1), "{served:?}");
    for w in workers {
        w.quit();
    }
}

#[test]
fn max_hits_is_exact_across_processes_on_a_persistent_memoizer() {
    max_hits_is_spent_by_all_processes_together("persistent");
}

#[test]
fn max_hits_is_exact_across_processes_on_a_tiered_memoizer() {
    max_hits_is_spent_by_all_processes_together("tiered");
}

#[test]
fn a_waiter_takes_over_when_the_computing_process_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let (marks, never) = (dir.path().join("marks"), dir.path().join("never"));
    drop(open_shared(&path));
    let mut holder = Worker::spawn(&path);
    holder.send(&format!("slow 9 1 {} {}", marks.display(), never.display()));
    wait_for_file(&marks);
    let mut waiter = Worker::spawn(&path);
    waiter.send(&format!("slow 9 81 {} -", marks.display()));
    // The waiter waits for the holder's lock: it computes nothing meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines(&marks).len(), 1);
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    // The kernel released the dead holder's lock: the waiter computes.
    assert_eq!(waiter.answer(), "81");
    assert_eq!(lines(&marks).len(), 2);
    waiter.quit();
}

/// A commit the board does not count (its process died after the commit, before the
/// bump: simulated by skipping the bumps) still reaches the other processes within
/// their writer's `LOOK_AGAIN` interval (100 ms), not only at the next commit anyone
/// makes: here an invalidation, which must reach B's memory tier.
#[test]
fn a_commit_left_unannounced_on_the_board_is_seen_within_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let (mut a, mut b) = (Worker::spawn(&path), Worker::spawn(&path));
    assert_eq!(b.get(1, 11), (11, true));
    assert_eq!(b.ask("flush"), "flushed");
    // In B's memory tier now.
    assert_eq!(b.get(1, 0), (11, false));
    assert_eq!(a.ask("unannounced"), "armed");
    assert_eq!(a.ask("dep 1"), "1");
    // Ten intervals, so that a loaded machine still wakes B's writer in time.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(b.get(1, 99), (99, true), "B never saw A's invalidation");
    a.quit();
    b.quit();
}

/// A process killed inside the write transaction of a store: the other process, blocked
/// behind the file's write lock meanwhile, goes on once it died (every answer comes
/// within `ANSWER`); the dead transaction's value is not there, the values committed
/// before it are, and the file is whole.
#[test]
fn a_process_killed_inside_a_store_transaction_blocks_the_others_only_until_it_dies() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let marker = dir.path().join("inside");
    let (mut a, mut b) = (Worker::spawn(&path), Worker::spawn(&path));
    assert_eq!(a.get(1, 11), (11, true));
    assert_eq!(a.ask("flush"), "flushed");
    assert_eq!(a.ask(&format!("stall {}", marker.display())), "armed");
    assert_eq!(a.get(2, 22), (22, true));
    // A's writer is inside the transaction storing key 2, and stays there.
    wait_for_file(&marker);
    b.send("get 3 33");
    b.send("flush");
    assert_eq!(b.answer(), "33 1");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        b.answers.try_recv().is_err(),
        "B committed inside A's transaction"
    );
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert_eq!(b.answer(), "flushed");
    assert_eq!(b.get(2, 99), (99, true), "the dead transaction's value");
    assert_eq!(b.get(1, 0), (11, false), "a value committed before it");
    assert_eq!(b.ask("check"), "true");
    b.quit();
}

/// A process killed inside the transaction of an invalidation: the invalidation never
/// returned, so the entries it covers are all still served (no process sees it half
/// done), the other process's own invalidation then goes through, and the file is whole.
#[test]
fn a_process_killed_inside_an_invalidation_leaves_it_undone_and_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let marker = dir.path().join("inside");
    let (mut a, mut b) = (Worker::spawn(&path), Worker::spawn(&path));
    for k in [10, 20, 30] {
        assert_eq!(a.get(k, k + 1), (k + 1, true));
    }
    assert_eq!(a.ask("flush"), "flushed");
    assert_eq!(b.get(10, 0), (11, false));
    assert_eq!(a.ask(&format!("stall {}", marker.display())), "armed");
    // Zone `z` keys by `k % 10`: dependency 0 covers all three.
    a.send("dep 0");
    wait_for_file(&marker);
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    for k in [10, 20, 30] {
        assert_eq!(
            b.get(k, 0),
            (k + 1, false),
            "key {k}: a half-done invalidation"
        );
    }
    assert_eq!(b.ask("dep 0"), "3");
    for k in [10, 20, 30] {
        assert_eq!(b.get(k, 7), (7, true));
    }
    assert_eq!(b.ask("check"), "true");
    b.quit();
}

/// As above, but the killed holder had forked a child that keeps running (a pre-fork
/// server's master dying while computing): the child inherited the holder's owner lock,
/// yet the waiter takes over at once - well before the 30 s bound a wait falls back at.
#[cfg(unix)]
#[test]
fn a_waiter_takes_over_when_the_computing_process_dies_but_its_forked_child_lives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let (marks, never) = (dir.path().join("marks"), dir.path().join("never"));
    drop(open_shared(&path));
    let mut holder = Worker::spawn(&path);
    let child: i32 = holder.ask("forkchild").parse().unwrap();
    holder.send(&format!("slow 9 1 {} {}", marks.display(), never.display()));
    wait_for_file(&marks);
    let mut waiter = Worker::spawn(&path);
    waiter.send(&format!("slow 9 81 {} -", marks.display()));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lines(&marks).len(),
        1,
        "the waiter computed while the holder lived"
    );
    holder.child.kill().unwrap();
    holder.child.wait().unwrap();
    let start = Instant::now();
    assert_eq!(waiter.answer(), "81");
    let took = start.elapsed();
    // SAFETY (test): kills and reaps the sleeper forked by the holder.
    unsafe {
        libc::kill(child, libc::SIGKILL);
    }
    assert!(took < Duration::from_secs(10), "the waiter waited {took:?}");
    assert_eq!(lines(&marks).len(), 2);
    waiter.quit();
}

#[test]
fn a_shared_and_an_exclusive_open_of_one_file_name_the_file_and_the_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    drop(open_shared(&path));
    let worker = Worker::spawn(&path);
    match Cache::open(&path) {
        Err(e @ Error::ModeMismatch { .. }) => {
            let shown = e.to_string();
            assert!(shown.contains(&path.display().to_string()), "{shown}");
            assert!(shown.contains("exclusive mode"), "{shown}");
            assert!(matches!(e, Error::ModeMismatch { shared: false, .. }));
        }
        other => panic!("expected ModeMismatch, got {:?}", other.err()),
    }
    worker.quit();
    // The reverse: an exclusive holder refuses a shared open.
    let exclusive = Cache::open(&path).unwrap();
    let shown = match Cache::builder().shared(true).open(&path) {
        Err(e @ Error::ModeMismatch { shared: true, .. }) => e.to_string(),
        other => panic!("expected ModeMismatch, got {:?}", other.err()),
    };
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(shown.contains("shared mode"), "{shown}");
    drop(exclusive);
}

/// In a process of its own (no other test's threads, which might hold a lock across the
/// fork): forks after using a shared cache; the child must get `Error::Forked` from its
/// fallible calls, compute its values uncached, and store nothing.
#[cfg(unix)]
#[test]
fn fork_role() {
    if std::env::var(ROLE).as_deref() != Ok("fork") {
        return;
    }
    let path = PathBuf::from(std::env::var(FILE).unwrap());
    let m = memos(&path);
    assert_eq!(m.slow.get_or_compute(&2, |_| 22), 22);
    m.cache.flush().unwrap();
    // SAFETY (test): the child only runs the code below and leaves with `_exit`; the
    // cache's writer is idle (flushed) and there is no sweeper, so no lock of ours is
    // held across the fork.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut code = 0;
        let mut computed = false;
        let got = m.slow.get_or_compute(&1, |_| {
            computed = true;
            11
        });
        if got != 11 || !computed {
            code |= 1;
        }
        if !matches!(m.cache.flush(), Err(Error::Forked { .. })) {
            code |= 2;
        }
        if !matches!(m.slow.invalidate_all(), Err(Error::Forked { .. })) {
            code |= 4;
        }
        if m.cache.health().errors == 0 {
            code |= 8;
        }
        // SAFETY (test): leaves the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    let start = Instant::now();
    loop {
        // SAFETY (test): polls the child forked above.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            break;
        }
        if start.elapsed() > ANSWER {
            // SAFETY (test): kills the child forked above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("the forked child hung");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "bits: 1 compute, 2 flush, 4 invalidate, 8 report"
    );
    // The child stored nothing: the parent still computes key 1, and still has key 2.
    let mut computed = false;
    m.slow.get_or_compute(&1, |_| {
        computed = true;
        12
    });
    assert!(computed);
    assert_eq!(m.slow.get_or_compute(&2, |_| 0), 22);
    println!("FORK=ok");
}

#[cfg(unix)]
#[test]
fn a_shared_cache_used_after_fork_reports_forked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "fork_role", "--nocapture", "--test-threads=1"])
        .env(ROLE, "fork")
        .env(FILE, &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("FORK=ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
