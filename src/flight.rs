//! Single-flight: concurrent misses on one key run the computation once.
//!
//! The first caller becomes the leader; later callers wait on its flight. When the leader
//! finishes - with a value, an error or a panic - its [`Leader`] guard is dropped, which
//! removes the flight and wakes the waiters. Waiters then look the key up again: they
//! find the stored value, or (if the leader failed) one of them becomes the next leader.
//! No lock is held while the computation runs, and different keys never share a flight.
//!
//! [`Flights::landed`] counts finished flights, so a new leader can tell whether anyone
//! could have stored the value since its own lookup, and skip a second lookup if not.
//!
//! Its tests are in `tests/shuttle_flight.rs`: this file compiled against shuttle's
//! primitives and model-checked (randomized and PCT schedules).

use crate::key::{HashMapByKey, KeyHash};
// Through `crate::sync` so that tests/shuttle_flight.rs can model-check this very file.
use crate::sync::{Arc, AtomicU64, Condvar, Mutex, Ordering, ThreadId, current_thread};

pub(crate) struct Flight {
    leader: ThreadId,
    done: Mutex<bool>,
    cv: Condvar,
}

impl Flight {
    /// Blocks until the leader is done.
    pub(crate) fn wait(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        while !*done {
            done = self.cv.wait(done).unwrap_or_else(|e| e.into_inner());
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

    pub(crate) fn join(&self, hash: KeyHash) -> Role<'_> {
        let me = current_thread();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = map.get(&hash) {
            return if f.leader == me {
                Role::Reentrant
            } else {
                Role::Waiter(f.clone())
            };
        }
        let flight = Arc::new(Flight {
            leader: me,
            done: Mutex::new(false),
            cv: Condvar::new(),
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
        *self.flight.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.flight.cv.notify_all();
    }
}
