//! Single-flight across machines: the leader of a row holds a lease on the server, renewed
//! by one background thread per remote store while the computation runs; waiters poll
//! the entry with a growing backoff and take over when the lease is gone (released, or
//! expired because its holder died).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::store::{Lease, Remote};
use crate::key::KeyHash;

/// The leases this process holds, renewed at a third of their duration.
#[derive(Default)]
pub(crate) struct Renewer {
    held: Mutex<HashMap<u64, Arc<Lease>>>,
    next: AtomicU64,
    started: std::sync::OnceLock<()>,
    wake: Condvar,
}

/// A held lease; released when dropped.
pub(crate) struct Held {
    remote: Arc<Remote>,
    renewer: Arc<Renewer>,
    id: u64,
    lease: Arc<Lease>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        // A failed release only leaves the lease to expire.
        let _ = self.remote.release(&self.lease);
    }
}

/// What a caller that missed should do.
pub(crate) enum Turn<R> {
    /// Another machine stored the value meanwhile.
    Found(R),
    /// Compute: with the lease, or without one when the server could not be asked.
    Compute(Option<Held>),
}

/// Longest sleep between two looks at a leased row.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

impl Renewer {
    /// Waits for the row's lease, looking for the value with `look` between attempts.
    /// `look` returns `Err` when the server failed: the caller then computes without a
    /// lease (the value is still returned; reads validate stamps, so an unleased store
    /// is never wrong, only possibly duplicated).
    pub(crate) fn take_turn<R>(
        self: &Arc<Self>,
        remote: &Arc<Remote>,
        memo: u64,
        row: &KeyHash,
        mut look: impl FnMut() -> Result<Option<R>, ()>,
    ) -> Turn<R> {
        let mut backoff = Duration::from_millis(1);
        loop {
            match remote.try_lease(memo, row) {
                Err(_) => return Turn::Compute(None),
                Ok(Some(lease)) => {
                    let held = self.hold(remote, lease);
                    // The previous holder may have stored just before releasing.
                    return match look() {
                        Ok(Some(found)) => Turn::Found(found),
                        Ok(None) => Turn::Compute(Some(held)),
                        Err(()) => Turn::Compute(None),
                    };
                }
                Ok(None) => {}
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match look() {
                Ok(Some(found)) => return Turn::Found(found),
                Ok(None) => {}
                Err(()) => return Turn::Compute(None),
            }
        }
    }

    fn hold(self: &Arc<Self>, remote: &Arc<Remote>, lease: Lease) -> Held {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(lease);
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, lease.clone());
        self.started.get_or_init(|| {
            let renewer = Arc::downgrade(self);
            let remote = Arc::downgrade(remote);
            let _ = std::thread::Builder::new()
                .name("fresco-memoize-leases".into())
                .spawn(move || renew_loop(&renewer, &remote));
        });
        self.wake.notify_all();
        Held {
            remote: remote.clone(),
            renewer: self.clone(),
            id,
            lease,
        }
    }
}

fn renew_loop(renewer: &Weak<Renewer>, remote: &Weak<Remote>) {
    loop {
        let (Some(renewer), Some(remote)) = (renewer.upgrade(), remote.upgrade()) else {
            return;
        };
        let every = remote.settings.lease / 3;
        let held: Vec<Arc<Lease>> = {
            let held = renewer.held.lock().unwrap_or_else(|e| e.into_inner());
            let held = if held.is_empty() {
                // Sleep until a lease is taken (or a while, to notice the store going).
                renewer
                    .wake
                    .wait_timeout(held, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            } else {
                held
            };
            held.values().cloned().collect()
        };
        let started = Instant::now();
        for lease in &held {
            // A lost or unrenewable lease is not fatal: another machine may compute too.
            let _ = remote.renew(lease);
        }
        drop((renewer, remote));
        if !held.is_empty() {
            std::thread::sleep(every.saturating_sub(started.elapsed()));
        }
    }
}
