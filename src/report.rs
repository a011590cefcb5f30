//! Where the library's own failures go when they cannot be returned to a caller.
//!
//! Policy: a failure of the cache never costs the caller its computed value. A store that
//! fails is reported here (counted, kept as the last error, passed to the user's hook or
//! printed to stderr) and the value is returned uncached.

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
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        match &self.hook {
            Some(hook) => hook(error),
            // Print the first few and then every thousandth, so a full disk cannot flood stderr.
            None if n < 10 || n.is_multiple_of(1000) => eprintln!("fresco-memoize: {error}"),
            None => {}
        }
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
