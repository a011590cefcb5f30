//! Concurrency model checking with shuttle: thousands of randomized (and PCT) thread
//! schedules per property, with deadlocks detected.
//!
//! What is checked, honestly:
//! - Single-flight runs on the real `src/flight.rs`, compiled here against shuttle's
//!   `Mutex`/thread ids and an `Event` built on shuttle's `Condvar` (the library
//!   reaches its primitives through `crate::sync`). The lookup/store loops around it
//!   are copies of the shape of `Memoizer::run` and `Memoizer::run_async` over a plain
//!   map, not the library's stores; futures run on shuttle's `block_on` or are polled
//!   by hand (to cancel one mid-flight).
//! - The invalidation protocol (epoch + pending-overlay lock + one FIFO writer) is a
//!   faithful model written here: `Storage::add_pending`, `Storage::with_pending_lock`,
//!   the writer's put/settle and the invalidation's removal, step for step. It is not the
//!   library's code. A deliberately broken variant (the epoch checked outside the lock)
//!   must be caught, which shows the check has teeth.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use shuttle::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use shuttle::sync::mpsc;
use shuttle::sync::{Arc, Condvar, Mutex};
use shuttle::thread;

/// What `src/flight.rs` imports as `crate::key`.
mod key {
    pub type KeyHash = [u8; 16];
    pub type HashMapByKey<V> = std::collections::HashMap<KeyHash, V>;
}

/// What `src/flight.rs` imports as `crate::sync`: shuttle's primitives, and an `Event`
/// with `event-listener`'s shape built on them (a generation counter under a mutex,
/// a condvar for blocked threads, wakers for futures), so that shuttle schedules every
/// wait.
mod sync {
    pub use shuttle::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    pub use shuttle::sync::{Arc, Mutex};
    pub use shuttle::thread::ThreadId;

    use shuttle::sync::Condvar;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    pub fn current_thread() -> ThreadId {
        shuttle::thread::current().id()
    }

    /// Its locks ignore poisoning, like the library's: a panicking leader notifies
    /// while it unwinds, and std (and shuttle) poison a lock released during a panic.
    #[derive(Default)]
    pub struct Event {
        state: Mutex<(u64, Vec<Waker>)>,
        cv: Condvar,
    }

    impl Event {
        pub fn new() -> Self {
            Event::default()
        }

        pub fn listen(&self) -> EventListener<'_> {
            let seen = self.state.lock().unwrap_or_else(|e| e.into_inner()).0;
            EventListener { event: self, seen }
        }

        pub fn notify(&self, _all: usize) {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            state.0 += 1;
            for waker in state.1.drain(..) {
                waker.wake();
            }
            self.cv.notify_all();
        }
    }

    /// Fires once the event has been notified after `listen`.
    pub struct EventListener<'a> {
        event: &'a Event,
        seen: u64,
    }

    pub trait Listener {
        fn wait(self);
    }

    impl Listener for EventListener<'_> {
        fn wait(self) {
            let mut state = self.event.state.lock().unwrap_or_else(|e| e.into_inner());
            while state.0 == self.seen {
                state = self.event.cv.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        }
    }

    impl Future for EventListener<'_> {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self.event.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.0 != self.seen {
                return Poll::Ready(());
            }
            state.1.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

#[path = "../src/flight.rs"]
mod flight;

use flight::{Caller, Flights, Role};

const ITERATIONS: usize = 2_000;

/// A memoized function over `Flights`, shaped like `Memoizer::try_get_or_compute`
/// (including its `landed` shortcut: a new leader looks again only if a flight landed).
#[derive(Default)]
struct Memo {
    flights: Flights,
    store: Mutex<HashMap<key::KeyHash, u64>>,
    computed: AtomicUsize,
}

impl Memo {
    fn lookup(&self, key: key::KeyHash) -> Option<u64> {
        // As in the library: a lock poisoned by a panicking computation is still usable.
        let store = self.store.lock().unwrap_or_else(|e| e.into_inner());
        store.get(&key).copied()
    }

    fn get_or_compute(&self, key: key::KeyHash, compute: impl FnOnce() -> u64) -> u64 {
        loop {
            let landed = self.flights.landed();
            if let Some(v) = self.lookup(key) {
                return v;
            }
            let leader = match self.flights.join(key, Caller::Thread) {
                Role::Leader(leader) => leader,
                Role::Waiter(flight) => {
                    flight.wait();
                    continue;
                }
                Role::Reentrant => return compute(),
            };
            // Only if a flight landed since the first look can the value be there now.
            if self.flights.landed() != landed
                && let Some(v) = self.lookup(key)
            {
                return v;
            }
            self.computed.fetch_add(1, Ordering::SeqCst);
            let v = compute();
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            store.insert(key, v);
            drop(leader);
            return v;
        }
    }
}

impl Memo {
    /// `Memoizer::run_async`'s shape: the same loop, the flight awaited.
    async fn get_or_compute_async<F: Future<Output = u64>>(
        &self,
        key: key::KeyHash,
        compute: impl FnOnce() -> F,
    ) -> u64 {
        loop {
            let landed = self.flights.landed();
            if let Some(v) = self.lookup(key) {
                return v;
            }
            let leader = match self.flights.join(key, Caller::Task) {
                Role::Leader(leader) => leader,
                Role::Waiter(flight) => {
                    flight.wait_async().await;
                    continue;
                }
                Role::Reentrant => return compute().await,
            };
            if self.flights.landed() != landed
                && let Some(v) = self.lookup(key)
            {
                return v;
            }
            self.computed.fetch_add(1, Ordering::SeqCst);
            let v = compute().await;
            let mut store = self.store.lock().unwrap_or_else(|e| e.into_inner());
            store.insert(key, v);
            drop(leader);
            return v;
        }
    }
}

#[test]
fn a_cancelled_async_leader_hands_over_and_threads_and_tasks_share_a_flight() {
    // Thread A polls a call whose computation never finishes once - it leads, or waits,
    // or is served - and drops it (cancels it). A thread (B) and a task (C) ask for the
    // same key: between them they compute once, whoever led, and neither hangs.
    let body = || {
        let memo = Arc::new(Memo::default());
        let finished = Arc::new(AtomicUsize::new(0));
        let m = memo.clone();
        let cancelled = thread::spawn(move || {
            let mut cx = Context::from_waker(Waker::noop());
            // Polled once, then dropped as the closure returns: cancelled.
            let call = pin!(m.get_or_compute_async([5; 16], std::future::pending::<u64>));
            call.poll(&mut cx)
        });
        let (m, f) = (memo.clone(), finished.clone());
        let thread_caller = thread::spawn(move || {
            m.get_or_compute([5; 16], || {
                f.fetch_add(1, Ordering::SeqCst);
                5
            })
        });
        let (m, f) = (memo.clone(), finished.clone());
        let task_caller = thread::spawn(move || {
            shuttle::future::block_on(m.get_or_compute_async([5; 16], || async move {
                f.fetch_add(1, Ordering::SeqCst);
                5
            }))
        });
        assert_eq!(thread_caller.join().unwrap(), 5);
        assert_eq!(task_caller.join().unwrap(), 5);
        assert!(matches!(
            cancelled.join().unwrap(),
            Poll::Pending | Poll::Ready(5)
        ));
        assert_eq!(finished.load(Ordering::SeqCst), 1, "computed twice");
        assert!(matches!(
            memo.flights.join([5; 16], Caller::Thread),
            Role::Leader(_)
        ));
    };
    shuttle::check_random(body, ITERATIONS);
    shuttle::check_pct(body, ITERATIONS, 3);
}

#[test]
fn concurrent_misses_on_one_key_compute_once() {
    let body = || {
        let memo = Arc::new(Memo::default());
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let memo = memo.clone();
                thread::spawn(move || memo.get_or_compute([1; 16], || 42))
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), 42);
        }
        assert_eq!(memo.computed.load(Ordering::SeqCst), 1, "computed twice");
    };
    shuttle::check_random(body, ITERATIONS);
    shuttle::check_pct(body, ITERATIONS, 3);
}

#[test]
fn different_keys_never_wait_on_each_other() {
    // The leader of key 1 cannot finish until key 2 has been computed by another thread:
    // if key 2 waited on key 1's flight, shuttle would report the deadlock.
    shuttle::check_random(
        || {
            let memo = Arc::new(Memo::default());
            let gate = Arc::new((Mutex::new(false), Condvar::new()));
            let (m1, g1) = (memo.clone(), gate.clone());
            let first = thread::spawn(move || {
                m1.get_or_compute([1; 16], || {
                    let mut open = g1.0.lock().unwrap();
                    while !*open {
                        open = g1.1.wait(open).unwrap();
                    }
                    1
                })
            });
            let (m2, g2) = (memo.clone(), gate.clone());
            let second = thread::spawn(move || {
                let v = m2.get_or_compute([2; 16], || 2);
                *g2.0.lock().unwrap() = true;
                g2.1.notify_all();
                v
            });
            assert_eq!(second.join().unwrap(), 2);
            assert_eq!(first.join().unwrap(), 1);
        },
        ITERATIONS,
    );
}

#[test]
fn a_panicking_leader_releases_its_waiters() {
    let body = || {
        let memo = Arc::new(Memo::default());
        let attempts = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let (memo, attempts) = (memo.clone(), attempts.clone());
                thread::spawn(move || {
                    catch_unwind(AssertUnwindSafe(|| {
                        memo.get_or_compute([7; 16], || {
                            // The first computation panics; the retry succeeds.
                            if attempts.fetch_add(1, Ordering::SeqCst) == 0 {
                                panic!("compute failed");
                            }
                            7
                        })
                    }))
                    .ok()
                })
            })
            .collect();
        let results: Vec<Option<u64>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Exactly the caller whose computation panicked got the panic; everyone else -
        // including callers that waited on it - got the value.
        assert_eq!(results.iter().filter(|r| r.is_none()).count(), 1);
        assert!(results.iter().flatten().all(|v| *v == 7));
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        // No flight is left behind: a later call leads at once.
        assert!(matches!(
            memo.flights.join([7; 16], Caller::Thread),
            Role::Leader(_)
        ));
    };
    shuttle::check_random(body, ITERATIONS);
    shuttle::check_pct(body, ITERATIONS, 3);
}

#[test]
fn landed_counts_every_finished_flight() {
    shuttle::check_random(
        || {
            let flights = Arc::new(Flights::default());
            let threads: Vec<_> = (0..3u8)
                .map(|i| {
                    let flights = flights.clone();
                    thread::spawn(move || {
                        if let Role::Leader(leader) = flights.join([i; 16], Caller::Thread) {
                            drop(leader);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(flights.landed(), 3);
        },
        200,
    );
}

#[test]
fn a_computation_that_recurses_into_its_own_key_does_not_deadlock() {
    shuttle::check_random(
        || {
            let memo = Arc::new(Memo::default());
            let inner = memo.clone();
            let v = memo.get_or_compute([3; 16], || inner.get_or_compute([3; 16], || 5) + 1);
            assert_eq!(v, 6);
            assert!(matches!(
                memo.flights.join([4; 16], Caller::Thread),
                Role::Leader(_)
            ));
        },
        100,
    );
}

// ---------------------------------------------------------------------------------------
// The invalidation protocol, modelled.

enum Job {
    /// `Writer::put`: (key, seq, value).
    Put(u64, u64, u64),
    /// An invalidation's `Run` job: removes the key from disk, then replies.
    Remove(u64, mpsc::Sender<()>),
    Shutdown,
}

/// `Storage` reduced to what the protocol touches. Values carry the epoch their
/// computation started under, so a stale one can be recognised.
struct Proto {
    /// `Storage::pending` (key -> (seq, value)) and its lock.
    pending: Mutex<HashMap<u64, (u64, u64)>>,
    pending_len: AtomicUsize,
    /// `MemoCore::epoch`.
    epoch: AtomicU64,
    /// The committed table.
    disk: Mutex<HashMap<u64, u64>>,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    seq: AtomicU64,
    /// The correct protocol checks the epoch under the pending lock; `false` checks it
    /// before taking the lock (the race the lock exists to close).
    check_under_lock: bool,
}

impl Proto {
    fn send(&self, job: Job) {
        self.jobs
            .lock()
            .unwrap()
            .as_ref()
            .unwrap()
            .send(job)
            .unwrap();
    }

    /// `MemoCore::store` -> `Storage::add_pending`.
    fn store(&self, key: u64, value: u64, started_epoch: u64) {
        let seq = self.seq.fetch_add(1, Ordering::SeqCst);
        if !self.check_under_lock && self.epoch.load(Ordering::SeqCst) != started_epoch {
            return;
        }
        let mut pending = self.pending.lock().unwrap();
        if self.check_under_lock && self.epoch.load(Ordering::SeqCst) != started_epoch {
            return;
        }
        self.send(Job::Put(key, seq, value));
        if pending.insert(key, (seq, value)).is_none() {
            self.pending_len.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// `Zone::invalidate` / `invalidate_key`: bump the epoch and enqueue the removal under
    /// the pending lock, then wait for the commit.
    fn invalidate(&self, key: u64) {
        let (reply, done) = mpsc::channel();
        {
            let _pending = self.pending.lock().unwrap();
            self.epoch.fetch_add(1, Ordering::SeqCst);
            self.send(Job::Remove(key, reply));
        }
        done.recv().unwrap();
    }

    /// `Storage::get`: the overlay first, then the committed table.
    fn get(&self, key: u64) -> Option<u64> {
        if self.pending_len.load(Ordering::SeqCst) > 0
            && let Some((_, v)) = self.pending.lock().unwrap().get(&key)
        {
            return Some(*v);
        }
        self.disk.lock().unwrap().get(&key).copied()
    }

    /// The writer thread: applies jobs in order; a put leaves the overlay once committed.
    fn writer(&self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::Put(key, seq, value) => {
                    self.disk.lock().unwrap().insert(key, value);
                    let mut pending = self.pending.lock().unwrap();
                    if pending.get(&key).is_some_and(|(s, _)| *s == seq) {
                        pending.remove(&key);
                        self.pending_len.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                Job::Remove(key, reply) => {
                    self.disk.lock().unwrap().remove(&key);
                    let _ = reply.send(());
                }
                Job::Shutdown => return,
            }
        }
    }
}

/// Two computations race one invalidation. Once `invalidate` has returned, no value
/// computed under the epoch before it may ever be read.
fn invalidation_race(check_under_lock: bool) {
    let (tx, rx) = mpsc::channel();
    let proto = Arc::new(Proto {
        pending: Mutex::new(HashMap::new()),
        pending_len: AtomicUsize::new(0),
        epoch: AtomicU64::new(0),
        disk: Mutex::new(HashMap::new()),
        jobs: Mutex::new(Some(tx)),
        seq: AtomicU64::new(0),
        check_under_lock,
    });
    let writer = {
        let p = proto.clone();
        thread::spawn(move || p.writer(rx))
    };
    let computers: Vec<_> = (0..2)
        .map(|_| {
            let p = proto.clone();
            thread::spawn(move || {
                // get_or_compute: read the epoch, compute, store.
                let started = p.epoch.load(Ordering::SeqCst);
                thread::yield_now();
                p.store(9, started, started);
            })
        })
        .collect();
    let invalidator = {
        let p = proto.clone();
        thread::spawn(move || {
            let before = p.epoch.load(Ordering::SeqCst);
            p.invalidate(9);
            // Everything computed under `before` or earlier is stale from here on.
            let seen = p.get(9);
            assert!(
                seen.is_none_or(|v| v > before),
                "stale value {seen:?} read after the invalidation returned"
            );
            before
        })
    };
    for c in computers {
        c.join().unwrap();
    }
    let before = invalidator.join().unwrap();
    proto.send(Job::Shutdown);
    writer.join().unwrap();
    let left = proto.get(9);
    assert!(
        left.is_none_or(|v| v > before),
        "stale value {left:?} resurrected after the invalidation"
    );
}

#[test]
fn an_invalidation_racing_a_computation_never_lets_the_stale_value_back() {
    shuttle::check_random(|| invalidation_race(true), ITERATIONS * 2);
    shuttle::check_pct(|| invalidation_race(true), ITERATIONS * 2, 3);
}

#[test]
fn the_model_catches_an_epoch_check_outside_the_lock() {
    // Shows the model has teeth: without the lock the stale value comes back.
    let caught = catch_unwind(|| {
        shuttle::check_random(|| invalidation_race(false), ITERATIONS * 5);
    });
    assert!(caught.is_err(), "the broken protocol was not caught");
}
