//! Single-flight across machines: the leader of a row holds a lease on the server, renewed
//! by one background thread per remote store while the computation runs; waiters poll
//! the entry with a growing backoff and take over when the lease is gone (released, or
//! expired because its holder died).
//!
//! A lease whose acquisition or release failed (a timeout: the command may still run
//! when the server answers again) is an *orphan*: the same thread releases it as soon as
//! the server answers, so that an outage does not leave other machines waiting a whole
//! lease for a holder that gave up on it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::store::{Lease, Led, Remote, Stamps};
use crate::key::KeyHash;

/// The leases this process holds, renewed at a third of their duration.
#[derive(Default)]
pub(crate) struct Renewer {
    /// Each with when it was taken or last renewed.
    held: Mutex<HashMap<u64, (Arc<Lease>, Instant)>>,
    /// Leases to release once the server answers, until they expire anyway.
    orphans: Mutex<Vec<(Lease, Instant)>>,
    next: AtomicU64,
    started: std::sync::OnceLock<()>,
    wake: Condvar,
}

/// A held lease; released when dropped, unless the put that stored its computation
/// released it already ([`Held::given_back`]).
pub(crate) struct Held {
    remote: Arc<Remote>,
    renewer: Arc<Renewer>,
    id: u64,
    lease: Arc<Lease>,
    given_back: AtomicBool,
}

impl Held {
    /// The lease, for a put that gives it back.
    pub(crate) fn lease(&self) -> &Lease {
        &self.lease
    }

    /// The server released the lease (the put did): dropping it sends nothing.
    pub(crate) fn given_back(&self) {
        self.given_back.store(true, Ordering::Relaxed);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer
            .held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
        if !self.given_back.load(Ordering::Relaxed) && self.remote.release(&self.lease).is_err() {
            self.renewer.orphan(&self.remote, (*self.lease).clone());
        }
    }
}

/// What a caller that missed should do.
pub(crate) enum Turn<R> {
    /// Another machine stored the value meanwhile.
    Found(R),
    /// Compute, holding the lease, under these stamps (those known before the
    /// dependency rows).
    Lead(Held, Stamps),
    /// Compute without a lease: the server failed (the error, unless `look` reported it
    /// already).
    Alone(Option<crate::error::Error>),
}

/// Longest sleep between two looks at a leased row.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

impl Renewer {
    /// Waits for the row's lease, looking for the value with `look` between attempts.
    /// `look` returns `Err` when the server failed (it reported it): the caller then
    /// computes without a lease (the value is still returned; reads validate stamps, so
    /// an unleased store is never wrong, only possibly duplicated).
    ///
    /// Taking the lease reads the stamps `keys` too (`generations` of them generations),
    /// in the same round trip.
    pub(crate) fn take_turn<R>(
        self: &Arc<Self>,
        remote: &Arc<Remote>,
        (memo, row): (u64, &KeyHash),
        (keys, generations): (&[String], usize),
        mut look: impl FnMut() -> Result<Option<R>, ()>,
    ) -> Turn<R> {
        let mut backoff = Duration::from_millis(1);
        loop {
            let lease = remote.new_lease(memo, row);
            match remote.lead(&lease, memo, row, keys, generations) {
                Err(e) => {
                    self.orphan(remote, lease);
                    return Turn::Alone(Some(e));
                }
                Ok(Led::Taken { exists, stamps }) => {
                    let held = self.hold(remote, lease);
                    // The previous holder may have stored just before releasing.
                    if !exists {
                        return Turn::Lead(held, stamps);
                    }
                    return match look() {
                        Ok(Some(found)) => Turn::Found(found),
                        Ok(None) => Turn::Lead(held, stamps),
                        Err(()) => Turn::Alone(None),
                    };
                }
                Ok(Led::Busy) => {}
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
            match look() {
                Ok(Some(found)) => return Turn::Found(found),
                Ok(None) => {}
                Err(()) => return Turn::Alone(None),
            }
        }
    }

    fn hold(self: &Arc<Self>, remote: &Arc<Remote>, lease: Lease) -> Held {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let lease = Arc::new(lease);
        self.held
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, (lease.clone(), Instant::now()));
        self.wake_thread(remote);
        Held {
            remote: remote.clone(),
            renewer: self.clone(),
            id,
            lease,
            given_back: AtomicBool::new(false),
        }
    }
}

impl Renewer {
    /// Releases `lease` later, once the server answers.
    fn orphan(self: &Arc<Self>, remote: &Arc<Remote>, lease: Lease) {
        let expires = Instant::now() + remote.settings.lease;
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((lease, expires));
        self.wake_thread(remote);
    }

    /// Starts the renewing thread if it is not running, and wakes it.
    fn wake_thread(self: &Arc<Self>, remote: &Arc<Remote>) {
        self.started.get_or_init(|| {
            let renewer = Arc::downgrade(self);
            let remote = Arc::downgrade(remote);
            let _ = std::thread::Builder::new()
                .name("fresco-memoize-leases".into())
                .spawn(move || renew_loop(&renewer, &remote));
        });
        self.wake.notify_all();
    }

    /// Tries to release every orphan; keeps those the server did not answer for.
    fn release_orphans(&self, remote: &Remote) -> bool {
        let orphans = std::mem::take(&mut *self.orphans.lock().unwrap_or_else(|e| e.into_inner()));
        let now = Instant::now();
        let left: Vec<_> = orphans
            .into_iter()
            .filter(|(lease, expires)| *expires > now && remote.release(lease).is_err())
            .collect();
        let any = !left.is_empty();
        self.orphans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(left);
        any
    }
}

/// How often orphans are retried while the server does not answer.
const ORPHAN_RETRY: Duration = Duration::from_millis(20);

fn renew_loop(renewer: &Weak<Renewer>, remote: &Weak<Remote>) {
    loop {
        let (Some(renewer), Some(remote)) = (renewer.upgrade(), remote.upgrade()) else {
            return;
        };
        let orphans_left = renewer.release_orphans(&remote);
        // A lease is renewed once a third of it has passed since it was taken or last
        // renewed: a computation shorter than that costs no renewal at all.
        let every = remote.settings.lease / 3;
        let due: Vec<(u64, Arc<Lease>)> = {
            let held = renewer.held.lock().unwrap_or_else(|e| e.into_inner());
            let held = if held.is_empty() && !orphans_left {
                // Sleep until a lease is taken (or a while, to notice the store going).
                renewer
                    .wake
                    .wait_timeout(held, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            } else {
                held
            };
            held.iter()
                .filter(|(_, (_, since))| since.elapsed() >= every)
                .map(|(id, (lease, _))| (*id, lease.clone()))
                .collect()
        };
        for (_, lease) in &due {
            // A lost or unrenewable lease is not fatal: another machine may compute too.
            let _ = remote.renew(lease);
        }
        let next = {
            let mut held = renewer.held.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            for (id, _) in &due {
                if let Some((_, since)) = held.get_mut(id) {
                    *since = now;
                }
            }
            held.values()
                .map(|(_, since)| every.saturating_sub(since.elapsed()))
                .min()
        };
        drop((renewer, remote));
        let sleep = match (next, orphans_left) {
            (Some(next), true) => Some(next.min(ORPHAN_RETRY)),
            (Some(next), false) => Some(next),
            (None, true) => Some(ORPHAN_RETRY),
            (None, false) => None,
        };
        if let Some(sleep) = sleep {
            std::thread::sleep(sleep.max(Duration::from_millis(1)));
        }
    }
}
