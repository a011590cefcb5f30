//! The expiry sweeper: a background thread per [`Cache`] that removes expired entries
//! (with their dependency and expiry index rows) every `sweep_interval`.
//!
//! - It never blocks hits: it removes at most [`BATCH`] entries per write transaction,
//!   through the one writer like any other write, so a hit (which reads a snapshot) never
//!   waits on it and other writes wait at most one batch. An idle sweep is one read of
//!   the expiry index and opens no write transaction.
//! - It holds only a weak reference to the cache, and never outlives it: dropping the
//!   last `Cache` handle waits for a sweep under way, stops the thread and joins it, so
//!   the file is closed when `drop` returns. (Should a memoizer rather than a handle be
//!   the last to go, during a sweep, the file closes as that sweep ends.)
//! - The interval is measured on the real (monotonic) clock; "expired" is judged by the
//!   cache's [`Clock`](crate::Clock), so tests advance a `ManualClock` and then ask for a
//!   sweep.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::inner::{Background, CacheInner};
use crate::key::KeyHash;
use crate::storage::ops;

/// Most entries removed by one write transaction of a sweep or a purge.
pub(crate) const BATCH: usize = 1024;

/// Removes every entry expired at the cache clock's `now`, in batches of `batch`
/// entries per write transaction, on disk and in this run's in-memory stores. Returns
/// how many entries were removed.
///
/// The first batch always goes through the writer, behind every write queued before
/// the call, so entries stored just before are seen. With `peek`, a read of the expiry
/// index decides first whether the disk holds anything expired at all (an idle sweep
/// then opens no write transaction).
pub(crate) fn purge(inner: &CacheInner, batch: usize, peek: bool) -> Result<u64> {
    let shared = &inner.shared;
    let now = shared.clock.now_ms();
    let mut on_disk: Vec<(u64, KeyHash)> = Vec::new();
    if !peek || shared.storage.has_expired(now)? {
        loop {
            let removed = shared
                .writer
                .run(move |txn| ops::purge_expired(txn, now, batch))?;
            let full = removed.len() >= batch;
            on_disk.extend(removed);
            if !full {
                break;
            }
        }
    }
    let touched: std::collections::BTreeSet<u64> = on_disk.iter().map(|(id, _)| *id).collect();
    let mut in_memory_only = 0;
    for tiers in inner.live_all() {
        let mine = tiers
            .persistent
            .as_ref()
            .is_some_and(|p| touched.contains(&p.id));
        // Only memoizers with a deadline (or whose disk entries just went) have anything
        // to drop; the others' stores are not scanned.
        if tiers.policy.expires.is_none() && !mine {
            continue;
        }
        let n = tiers.forget_expired(now, &on_disk);
        if tiers.persistent.is_none() {
            in_memory_only += n;
        }
    }
    Ok(on_disk.len() as u64 + in_memory_only)
}

#[derive(Default)]
struct State {
    stop: bool,
    /// A sweep was asked for now (test hook).
    kick: bool,
    /// A sweep is under way.
    running: bool,
    /// Graves may await reclamation (set at start, by every clear, and while batches
    /// leave some).
    reclaim: bool,
    sweeps: u64,
    removed: u64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the thread: stop or kick.
    wake: Condvar,
    /// Signalled after every sweep.
    swept: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to a cache's sweeper thread; stops and joins it when dropped.
pub(crate) struct Sweeper {
    shared: Arc<Shared>,
    thread: ThreadId,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Sweeper {
    pub(crate) fn spawn(cache: Weak<CacheInner>, every: Duration) -> Result<Sweeper> {
        let shared = Arc::new(Shared::default());
        // Graves left by an earlier run are looked for at once.
        shared.lock().reclaim = true;
        if let Some(inner) = cache.upgrade() {
            let signal = shared.clone();
            inner.shared.storage.set_reclaim_wake(move || {
                signal.lock().reclaim = true;
                signal.wake.notify_all();
            });
        }
        let theirs = shared.clone();
        let handle = std::thread::Builder::new()
            .name("fresco-sweeper".into())
            .spawn(move || run(&theirs, &cache, every))
            .map_err(|source| Error::Io {
                path: "<sweeper thread>".into(),
                source,
            })?;
        Ok(Sweeper {
            shared,
            thread: handle.thread().id(),
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Stops the thread and waits for it (unless called from it: the cache's last
    /// reference may be dropped by the sweeper itself, which then simply exits).
    pub(crate) fn stop(&self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        self.shared.swept.notify_all();
        if std::thread::current().id() == self.thread {
            return;
        }
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

impl Background for Sweeper {
    fn stop(&self) {
        Sweeper::stop(self);
    }

    /// Called as a `Cache` handle is dropped. If it is the cache's last reference, waits
    /// for a sweep under way to end and stops the sweeper, so that the cache closes on
    /// the caller's thread, at once - and the file can be reopened right away. (The
    /// sweeper takes its reference to the cache under the same lock, and only when not
    /// stopped.)
    fn release(&self, inner: &Arc<CacheInner>) {
        if std::thread::current().id() == self.thread {
            return;
        }
        let mut state = self.shared.lock();
        while state.running {
            state = self
                .shared
                .swept
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        if Arc::strong_count(inner) == 1 {
            state.stop = true;
            drop(state);
            self.shared.wake.notify_all();
        }
    }

    fn sweeps(&self) -> (u64, u64) {
        let state = self.shared.lock();
        (state.sweeps, state.removed)
    }

    /// Waits on a notification, not by polling.
    fn wait_sweeps(&self, sweeps: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        while state.sweeps < sweeps && !state.stop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .shared
                .swept
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.sweeps
    }

    fn sweep_now(&self, timeout: Duration) -> u64 {
        let target = {
            let mut state = self.shared.lock();
            state.kick = true;
            // A sweep under way may have read the clock before the request: then wait
            // for the next one, which the kick starts at once.
            state.sweeps + if state.running { 2 } else { 1 }
        };
        self.shared.wake.notify_all();
        self.wait_sweeps(target, timeout)
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(shared: &Shared, cache: &Weak<CacheInner>, every: Duration) {
    let mut next_sweep = Instant::now() + every;
    loop {
        let sweep = {
            let mut state = shared.lock();
            while !state.stop && !state.kick && !state.reclaim {
                let left = next_sweep.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared
                    .wake
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if state.stop {
                return;
            }
            let sweep = state.kick || Instant::now() >= next_sweep;
            state.kick = false;
            state.running = true;
            sweep
        };
        // Taken after `running` is set, so `release` waits for this sweep to end.
        // `inner` lives for this statement only. It is the last reference only if the
        // cache's other holders let go during the sweep without a `Cache` handle's
        // `release` (say a memoizer was dropped last): the cache then closes on this
        // thread, and `Sweeper::stop` returns without joining.
        let outcome = cache.upgrade().map(|inner| {
            // One batch of reclamation per turn of the loop: other writes wait at most
            // one batch, and a stop or a drop is seen between batches.
            let more = reclaim(&inner, BATCH).unwrap_or_else(|e| {
                inner.shared.storage.reporter.report(&e);
                false
            });
            let removed = sweep.then(|| {
                purge(&inner, BATCH, true).unwrap_or_else(|e| {
                    inner.shared.storage.reporter.report(&e);
                    0
                })
            });
            (more, removed)
        });
        if sweep {
            next_sweep = Instant::now() + every;
        }
        let mut state = shared.lock();
        state.running = false;
        let gone = outcome.is_none();
        if let Some((more, removed)) = outcome {
            state.reclaim = more;
            if let Some(removed) = removed {
                state.sweeps += 1;
                state.removed += removed;
            }
        }
        drop(state);
        shared.swept.notify_all();
        if gone {
            return;
        }
    }
}

/// Reclaims one batch of at most `batch` entries of cleared tables (graves), in one
/// non-durable write transaction: a crash rolls it back, and the grave - never read,
/// still indexed exactly - is reclaimed again. Returns whether graves remain.
pub(crate) fn reclaim(inner: &CacheInner, batch: usize) -> Result<bool> {
    let shared = &inner.shared;
    if !shared.storage.has_graves()? {
        return Ok(false);
    }
    let (_, more) = shared
        .writer
        .run_lazy(move |txn| ops::reclaim(txn, batch))?;
    Ok(more)
}

/// Reclaims every grave, batch by batch (for a cache without a sweeper).
pub(crate) fn reclaim_all(inner: &CacheInner) -> Result<()> {
    while reclaim(inner, BATCH)? {}
    Ok(())
}
