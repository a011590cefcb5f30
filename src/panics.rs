//! Panics this library catches, kept off stderr.
//!
//! A damaged file can make redb panic, and a user's error hook may panic; both are caught
//! and reported as errors. But the process panic hook runs before the unwinding reaches
//! `catch_unwind`, and the default one prints `thread '...' panicked at ...`, which reads
//! as a crash. So [`catch_quietly`] installs, once per process, a hook that stays silent
//! for panics raised while the current thread is inside `catch_quietly` (a thread-local
//! depth) and hands every other panic to the hook that was installed before it. It keeps
//! the silenced panic's message and location, for the error that reports it.
//!
//! A program that sets its own panic hook after the first cache call replaces this one:
//! caught panics then reach its hook, which is its choice.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

thread_local! {
    /// How many `catch_quietly` calls this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    /// Where the last silenced panic of this thread was raised.
    static LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

fn install() {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if DEPTH.with(Cell::get) == 0 {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            LOCATION.with(|slot| *slot.borrow_mut() = at);
        }));
    });
}

/// Leaves the quiet region even when `f` unwinds.
struct Depth;

impl Depth {
    fn enter() -> Depth {
        DEPTH.with(|d| d.set(d.get() + 1));
        Depth
    }
}

impl Drop for Depth {
    fn drop(&mut self) {
        DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// Runs `f`; a panic inside it is caught without reaching stderr, and returned as its
/// message (with where it was raised).
pub(crate) fn catch_quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install();
    let depth = Depth::enter();
    let caught = catch_unwind(AssertUnwindSafe(f));
    drop(depth);
    caught.map_err(|payload| {
        let message = message(&*payload);
        match LOCATION.with(|slot| slot.borrow_mut().take()) {
            Some(at) => format!("{message} (at {at})"),
            None => message,
        }
    })
}

fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
