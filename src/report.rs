//! Where the library's own failures go when they cannot be returned to a caller.
//!
//! Policy: a failure of the cache never costs the caller its computed value. A store that
//! fails is reported here (counted, kept as the last error for [`Health`], passed to the
//! user's hook, and logged through the `log` crate when the `log` feature is on) and the
//! value is returned uncached. Nothing is printed to stderr: a GUI program has none, and
//! the application's logger decides where reports go.
//!
//! A panicking hook is caught (quietly, see [`crate::panics`]) and reported like any other
//! failure, but not to the hook again: the hook may run on the cache's writer thread,
//! which must outlive it.

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::Error;

/// A callback receiving every error the cache could not return to a caller.
pub type ErrorHook = Box<dyn Fn(&Error) + Send + Sync>;

pub(crate) struct Reporter {
    errors: AtomicU64,
    last: Mutex<Option<String>>,
    moved_aside: Mutex<Option<PathBuf>>,
    durable_commits: AtomicU64,
    hook: Option<ErrorHook>,
}

impl Reporter {
    pub(crate) fn new(hook: Option<ErrorHook>) -> Self {
        Reporter {
            errors: AtomicU64::new(0),
            last: Mutex::new(None),
            moved_aside: Mutex::new(None),
            durable_commits: AtomicU64::new(0),
            hook,
        }
    }

    /// Records an error that no caller will see.
    pub(crate) fn report(&self, error: &Error) {
        let rendered = error.to_string();
        log_line(self.record(rendered.clone()), log_level(error), &rendered);
        let Some(hook) = &self.hook else { return };
        if let Err(panic) = crate::panics::catch_quietly(|| hook(error)) {
            let rendered = format!("the on_error hook panicked ({panic}) while reporting: {error}");
            let n = self.record(rendered.clone());
            log_line(n, log_level(error), &rendered);
        }
    }

    /// Counts one reported error and keeps it as the last; returns how many came before.
    fn record(&self, rendered: String) -> u64 {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(rendered);
        n
    }

    pub(crate) fn set_moved_aside(&self, path: PathBuf) {
        *self.moved_aside.lock().unwrap_or_else(|e| e.into_inner()) = Some(path);
    }

    /// Counts a commit that reached the disk (an fsync).
    pub(crate) fn durable_commit(&self) {
        self.durable_commits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn health(&self) -> Health {
        Health {
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            moved_aside: self
                .moved_aside
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            durable_commits: self.durable_commits.load(Ordering::Relaxed),
        }
    }
}

/// What the cache has had to swallow so far. See [`Cache::health`](crate::Cache::health).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Errors reported since the cache was opened.
    pub errors: u64,
    /// The most recent of them, rendered.
    pub last_error: Option<String>,
    /// Where a damaged cache file was moved when the cache started afresh, if it did.
    pub moved_aside: Option<PathBuf>,
    /// Commits made durable (fsynced) since the cache was opened.
    pub durable_commits: u64,
}

/// How serious a report is: the cache dealt with damage on its own (a warning), or it
/// failed to do what it was asked (an error).
#[cfg_attr(not(feature = "log"), allow(dead_code))]
#[derive(Clone, Copy)]
enum Level {
    Warn,
    Error,
}

fn log_level(error: &Error) -> Level {
    match error {
        Error::MovedAside { .. } | Error::DamagedEntry { .. } => Level::Warn,
        _ => Level::Error,
    }
}

/// Logs the `n`th report (counted from 0): the first few and then every thousandth, so
/// that a full disk cannot flood the log.
#[cfg_attr(not(feature = "log"), allow(unused_variables))]
fn log_line(n: u64, level: Level, text: &str) {
    #[cfg(feature = "log")]
    if n < 10 || n.is_multiple_of(1000) {
        match level {
            Level::Warn => log::warn!(target: "fresco_memoize", "{text}"),
            Level::Error => log::error!(target: "fresco_memoize", "{text}"),
        }
    }
}
