//! The synchronization primitives of the modules that are model-checked with shuttle.
//!
//! `tests/shuttle_flight.rs` compiles `src/flight.rs` by path next to its own `sync`
//! module, which maps these names to shuttle's primitives (and an `Event` built on
//! them); here they are std's and `event-listener`'s.

pub(crate) use event_listener::{Event, Listener};
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::thread::ThreadId;

/// The calling thread's id.
pub(crate) fn current_thread() -> ThreadId {
    std::thread::current().id()
}
