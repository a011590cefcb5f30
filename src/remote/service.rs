//! What a connected cache holds of its server: the store, the lease renewer and, once a
//! memoizer has a local tier, the invalidation listener - and one memoizer's view of it
//! ([`RemoteTier`]).

use std::sync::{Arc, OnceLock};

use super::lease::{self, Held, Renewer};
use super::store::{Found, Remote, Settings, Stamps};
use super::tracking::{Event, Tracker};
use crate::error::Error;
use crate::key::DepRow;
use crate::key::KeyHash;

pub(crate) struct Service {
    pub remote: Arc<Remote>,
    pub leases: Arc<Renewer>,
    tracker: OnceLock<Tracker>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.remote.fmt(f)
    }
}

impl Service {
    /// Parses the URL and namespace; connects lazily (a server that is down only makes
    /// calls compute, see [`Service::ping`]).
    pub(crate) fn new(url: &str, namespace: &str, settings: Settings) -> Result<Self, Error> {
        Ok(Service {
            remote: Arc::new(Remote::new(url, namespace, settings)?),
            leases: Arc::default(),
            tracker: OnceLock::new(),
        })
    }

    /// The server's address, credentials removed.
    pub(crate) fn server(&self) -> String {
        self.remote.pool.url.to_string()
    }

    /// Asks the server for a `PONG`.
    pub(crate) fn ping(&self) -> Result<(), Error> {
        self.remote
            .pool
            .with(|con| redis::cmd("PING").query::<()>(con))
    }

    /// Starts the invalidation listener (once; later calls keep the first handler).
    pub(crate) fn track(&self, on_event: impl Fn(Event) + Send + 'static) -> Result<(), Error> {
        if self.tracker.get().is_some() {
            return Ok(());
        }
        let tracker = Tracker::start(&self.remote, on_event).map_err(|e| Error::Remote {
            server: self.remote.pool.url.to_string(),
            detail: format!("could not start the invalidation listener thread: {e}"),
        })?;
        let _ = self.tracker.set(tracker);
        // Give the listener the time of one connect and one answer to come up, so that
        // a local tier works from the first call when the server is there.
        let timeouts = self.remote.settings.timeouts;
        let deadline = std::time::Instant::now() + timeouts.connect + timeouts.response;
        while !self.local_tiers_live() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// Whether local tiers may be served and filled: pushes are flowing.
    pub(crate) fn local_tiers_live(&self) -> bool {
        self.tracker.get().is_some_and(Tracker::live)
    }

    /// A call to the server failed: local tiers are distrusted until the listener has
    /// reconnected (and flushed them), and idle connections are dropped.
    pub(crate) fn failed(&self) {
        if let Some(t) = self.tracker.get() {
            t.suspect();
        }
        self.remote.pool.reset();
    }
}

/// What an invalidation removes on the server: the server step of
/// `tiers::invalidate`, where a file-backed cache has its disk job. Each is one write,
/// O(1) whatever the cache holds (see the module docs of `remote`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum ServerRemoval {
    /// One key of one memoizer (its key stamp goes).
    Key { memo: u64, row: KeyHash },
    /// Every entry of a memoizer (a new generation).
    Memoizer(u64),
    /// Every entry carrying this dependency row (its stamp goes).
    Dep(DepRow),
    /// Every entry of every member of a zone (a new zone generation).
    Zone(u64),
}

impl Service {
    /// Carries out `what` on the server; returns how many entries went where the
    /// server can tell (a key: 0 or 1; stamps and generations are not counted). On an
    /// error the invalidation may not have happened, and local tiers are distrusted
    /// until the listener has reconnected.
    pub(crate) fn invalidate(&self, what: ServerRemoval) -> Result<u64, Error> {
        let remote = &self.remote;
        let done = match what {
            ServerRemoval::Key { memo, row } => remote.remove(memo, &row).map(u64::from),
            ServerRemoval::Memoizer(memo) => remote.bump_memoizer(memo).map(|()| 0),
            ServerRemoval::Dep(row) => remote.drop_stamp(&row).map(|_| 0),
            ServerRemoval::Zone(zone) => remote.bump_zone(zone).map(|()| 0),
        };
        if done.is_err() {
            self.failed();
        }
        done
    }
}

/// One memoizer's entries on the server. Every failed call marks the service failed
/// ([`Service::failed`]) before it returns its error, which the caller reports.
pub(crate) struct RemoteTier {
    pub service: Arc<Service>,
    /// The memoizer's id on the server: a hash of its name, the same on every machine.
    pub memo: u64,
    /// The zones it belongs to (their generations are part of every entry's stamps).
    pub zones: Vec<u64>,
    /// `max_hits`, counted on the server (0: unlimited).
    pub max_hits: u32,
}

/// What a connected memoizer's leader holds while it computes.
#[derive(Default)]
pub(crate) struct Leading {
    /// The key's lease (none if the server could not be asked); released when dropped,
    /// or by the put.
    lease: Option<Held>,
    /// The stamps read with the lease (before the dependency rows were known).
    before: Option<Stamps>,
    /// The stamps the value is stored under; `None`: the value is not stored.
    pub stamps: Option<Stamps>,
    /// The entry's id, taken before the dependency stamps were read (`Tiers::begin`).
    pub entry_id: u64,
    /// The fence's stamp, read with the entry id.
    pub stamp: u64,
}

/// What a caller that missed should do on the server's side ([`RemoteTier::turn`]).
pub(crate) enum Turn<R> {
    /// Another machine stored the value meanwhile.
    Found(R),
    /// Compute, holding the key's lease.
    Lead(Leading),
    /// Compute, store nothing: the server failed (the error to report, unless `look`
    /// reported it already).
    Alone(Option<Error>),
}

impl RemoteTier {
    fn failed<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        if result.is_err() {
            self.service.failed();
        }
        result
    }

    /// The entry bytes stored under `row`, served (and counted) by the hit script.
    pub(crate) fn read(&self, row: &KeyHash) -> Result<Found, Error> {
        self.failed(self.service.remote.hit(self.memo, row, self.max_hits))
    }

    /// The server side of leading a miss: waits for the key's lease (another machine may
    /// compute it), serving the value if it lands meanwhile (`look` finds it), or takes
    /// it together with the stamps known so far.
    pub(crate) fn turn<R>(&self, row: &KeyHash, look: impl Fn() -> Option<R>) -> Turn<R> {
        let service = &self.service;
        let remote = &service.remote;
        let keys = remote.fixed_stamp_keys(self.memo, &self.zones, row);
        let turn = service.leases.take_turn(
            remote,
            (self.memo, row),
            (&keys, 1 + self.zones.len()),
            || Ok(look()),
        );
        match turn {
            lease::Turn::Found(value) => Turn::Found(value),
            lease::Turn::Lead(held, before) => Turn::Lead(Leading {
                lease: Some(held),
                before: Some(before),
                ..Leading::default()
            }),
            lease::Turn::Alone(error) => {
                service.failed();
                Turn::Alone(error)
            }
        }
    }

    /// Completes the stamps of a computation that leads under `leading` once its
    /// dependency rows are known (a round trip only if there are any). Without stamps
    /// (no lease: the server failed) the value will not be stored.
    pub(crate) fn begin(&self, leading: &mut Leading, deps: &[DepRow]) -> Result<(), Error> {
        let Some(before) = &leading.before else {
            return Ok(());
        };
        let stamps = self.failed(self.service.remote.read_dep_stamps(before, deps))?;
        leading.stamps = Some(stamps);
        Ok(())
    }

    /// Stores entry bytes unless a stamp moved since the computation began, and gives
    /// its lease back. Returns whether it was stored (`false` also without stamps).
    pub(crate) fn put(
        &self,
        row: &KeyHash,
        bytes: &[u8],
        deadline_ms: u64,
        leading: &Leading,
    ) -> Result<bool, Error> {
        let Some(stamps) = &leading.stamps else {
            return Ok(false);
        };
        let lease = leading.lease.as_ref();
        let stored = self.service.remote.put(
            self.memo,
            row,
            bytes,
            stamps,
            deadline_ms,
            lease.map(Held::lease),
        );
        if stored.is_ok()
            && let Some(held) = lease
        {
            held.given_back();
        }
        self.failed(stored)
    }
}
