//! Single-flight: concurrent misses on one key run the computation once.
//!
//! The first caller becomes the leader; later callers wait on its flight. When the leader
//! finishes - with a value, an error or a panic, or because its future was dropped - its
//! [`Leader`] guard is dropped, which removes the flight and wakes the waiters. Waiters
//! then look the key up again: they find the stored value, or (if the leader failed or
//! was cancelled) one of them becomes the next leader. No lock is held while the
//! computation runs, and different keys never share a flight.
//!
//! Threads and futures share one flight per key: a waiter blocks on the flight's event
//! ([`Flight::wait`]) or awaits it ([`Flight::wait_async`]) - `event-listener` gives one
//! event both can wait on - so sync and async callers of one key compute once between
//! them.
//!
//! [`Flights::landed`] counts finished flights, so a new leader can tell whether anyone
//! could have stored the value since its own lookup, and skip a second lookup if not.
//!
//! Its tests are in `tests/shuttle_flight.rs`: this file compiled against shuttle's
//! primitives and model-checked (randomized and PCT schedules).

use crate::key::{HashMapByKey, KeyHash};
// Through `crate::sync` so that tests/shuttle_flight.rs can model-check this very file.
use crate::sync::{
    Arc, AtomicBool, AtomicU64, Event, Listener, Mutex, Ordering, ThreadId, current_thread,
};

pub(crate) struct Flight {
    /// The thread of a synchronous leader, to tell a computation that recursed into its
    /// own key. `None` for a future, which may move between threads while it runs.
    leader: Option<ThreadId>,
    /// Set once, when the leader's guard is dropped; `landed` fires right after.
    done: AtomicBool,
    landed: Event,
}

impl Flight {
    /// Blocks the thread until the leader is done.
    pub(crate) fn wait(&self) {
        while !self.done.load(Ordering::SeqCst) {
            // Registered before the second look, so a notification in between is not lost.
            let listener = self.landed.listen();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            listener.wait();
        }
    }

    /// Waits until the leader is done without blocking the thread. Dropping the future
    /// stops waiting and leaves the flight as it is.
    pub(crate) async fn wait_async(&self) {
        while !self.done.load(Ordering::SeqCst) {
            let listener = self.landed.listen();
            if self.done.load(Ordering::SeqCst) {
                return;
            }
            listener.await;
        }
    }
}

#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMapByKey<Arc<Flight>>>,
    /// Flights finished so far; bumped under `map`'s lock as a flight leaves it.
    landed: AtomicU64,
}

pub(crate) enum Role<'a> {
    Leader(Leader<'a>),
    Waiter(Arc<Flight>),
    /// The current thread already leads this key (the computation recursed into itself):
    /// waiting would deadlock, so the caller computes without caching.
    Reentrant,
}

/// Who joins a flight.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Caller {
    /// A thread, which blocks while it computes or waits.
    Thread,
    /// A future, which may be polled on any thread and may be dropped at any await.
    Task,
}

/// Held by the computing caller; dropping it releases the waiters.
pub(crate) struct Leader<'a> {
    flights: &'a Flights,
    hash: KeyHash,
    flight: Arc<Flight>,
}

impl Flights {
    /// How many flights have finished. Read it before a lookup; if it is unchanged once
    /// the same caller has become a leader, no flight (and so no store, which only
    /// leaders make) finished in between, and the lookup's answer still holds.
    pub(crate) fn landed(&self) -> u64 {
        self.landed.load(Ordering::SeqCst)
    }

    /// Leads the flight of `hash`, or joins the one under way. A flight led by a thread
    /// that is now asking again - directly, or through a future it polls to completion -
    /// is reentrant whoever asks.
    pub(crate) fn join(&self, hash: KeyHash, caller: Caller) -> Role<'_> {
        let me = current_thread();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&hash) {
            return if f.leader == Some(me) {
                Role::Reentrant
            } else {
                Role::Waiter(f.clone())
            };
        }
        let flight = Arc::new(Flight {
            leader: (caller == Caller::Thread).then_some(me),
            done: AtomicBool::new(false),
            landed: Event::new(),
        });
        map.insert(hash, flight.clone());
        Role::Leader(Leader {
            flights: self,
            hash,
            flight,
        })
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock().unwrap_or_else(|e| e.into_inner());
        if map
            .get(&self.hash)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            map.remove(&self.hash);
        }
        self.flights.landed.fetch_add(1, Ordering::SeqCst);
        drop(map);
        self.flight.done.store(true, Ordering::SeqCst);
        self.flight.landed.notify(usize::MAX);
    }
}
