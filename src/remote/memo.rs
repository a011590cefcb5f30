//! A memoizer's reads and stores through its server tier: the same steps as the file's
//! (check the bytes, ask the fence, store unless invalidated meanwhile), with the server
//! in the file's place. Invalidations are `tiers::invalidate`'s, like every other: the
//! server step ([`Service::invalidate`]) stands where a file's disk job does.
//!
//! The local tier of a connected memoizer (`Store::Tiered`) is served and filled only
//! while the invalidation listener is live ([`Service::local_tiers_live`]); a value is
//! promoted into it only if no invalidation - local, or pushed by another machine -
//! bumped the memoizer's epoch since the server was asked.

use std::sync::Arc;

use super::lease::{Held, Turn};
use super::service::{RemoteTier, Service};
use super::store::{Found, Stamps};
use crate::Value;
use crate::aligned::with_aligned;
use crate::entry::Meta;
use crate::error::Error;
use crate::hit::ArchivedHit;
use crate::key::{DepRow, EncodedKey, KeyHash};
use crate::memoizer::Memoizer;
use crate::stats::Counters;
use crate::storage::StoredBytes;
use crate::tiers::{Looked, Read, Tiers, Verdict};

/// Entry bytes from the server that passed the checks, their payload offset and header.
pub(crate) type Checked = (Arc<[u8]>, usize, Meta);

impl Tiers {
    /// Reports a failed call to the server and distrusts the local tiers until the
    /// listener has reconnected.
    pub(crate) fn remote_failed(&self, service: &Service, error: Error) {
        service.failed();
        self.report(error);
    }

    /// The checked entry bytes the server holds for `ek` (a hit counted there), with the
    /// payload offset. `Err(())`: the server failed (reported).
    pub(crate) fn remote_read(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
    ) -> Result<Option<Checked>, ()> {
        let bytes = match rt.read(&ek.hash) {
            Ok(Found::Served(bytes)) => bytes,
            Ok(Found::Absent | Found::Stale) => return Ok(None),
            Ok(Found::UsedUp) => {
                Counters::add(&self.stats.expirations, 1);
                return Ok(None);
            }
            Err(e) => {
                self.remote_failed(&rt.service, e);
                return Err(());
            }
        };
        Ok(self
            .admit(ek, &bytes)
            .map(|(offset, meta)| (Arc::from(bytes), offset, meta)))
    }

    /// Copies bytes read from the server into the local tier, unless an invalidation
    /// bumped the epoch since `epoch` was read (before asking the server; a local one
    /// or a push), no fence window opened since `stamp` (a local invalidation in
    /// progress, whose purge may have passed already) and the listener is live.
    pub(crate) fn remote_promote(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        bytes: Arc<[u8]>,
        epoch: u64,
        stamp: u64,
    ) {
        self.promote_if(ek, bytes, || {
            self.shared.fence.unchanged(stamp)
                && self.epoch() == epoch
                && rt.service.local_tiers_live()
        });
    }

    /// The stamps a computation starts under; `None` if the server failed (reported: the
    /// value is then returned but not stored).
    pub(crate) fn remote_begin(
        &self,
        rt: &RemoteTier,
        row: &KeyHash,
        deps: &[DepRow],
    ) -> Option<Stamps> {
        match rt.begin(row, deps) {
            Ok(stamps) => Some(stamps),
            Err(e) => {
                self.remote_failed(&rt.service, e);
                None
            }
        }
    }

    /// Stores encoded entry bytes on the server unless a stamp moved since `stamps`
    /// were read (every invalidation moves one, so nothing invalidated since is stored),
    /// then in the local tier unless an invalidation was applied to it since the put
    /// began (which the put may have overtaken) or a window opened since `stamp`, read
    /// when the computation began (a local invalidation whose server step the put may
    /// have overtaken, and whose purge may have passed already). Pushes that came before the put -
    /// including those of the stamps this computation created - need not stop it.
    pub(crate) fn remote_store(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        bytes: Arc<[u8]>,
        deadline_ms: u64,
        stamps: &Stamps,
        stamp: u64,
    ) {
        let epoch = self.epoch();
        match rt.put(&ek.hash, &bytes, stamps, deadline_ms) {
            Ok(true) => Counters::add(&self.stats.inserts, 1),
            Ok(false) => return,
            Err(e) => return self.remote_failed(&rt.service, e),
        }
        self.remote_promote(rt, ek, bytes, epoch, stamp);
    }
}

impl Tiers {
    /// The server side of leading a miss: wait for the key's lease (another machine may
    /// compute it), serving the value if it lands meanwhile (`Err`), or take it.
    pub(crate) fn remote_turn<R>(
        &self,
        ek: &EncodedKey,
        look: impl Fn() -> Option<R>,
    ) -> Result<Leading, R> {
        let Some(rt) = &self.remote else {
            return Ok(Leading::default());
        };
        let service = &rt.service;
        let turn = service
            .leases
            .take_turn(&service.remote, rt.memo, &ek.hash, || Ok(look()));
        let lease = match turn {
            Turn::Found(value) => return Err(value),
            Turn::Lead(held) => Some(held),
            Turn::Alone(error) => {
                if let Some(e) = error {
                    self.remote_failed(service, e);
                }
                None
            }
        };
        Ok(Leading {
            _lease: lease,
            ..Leading::default()
        })
    }
}

/// What a connected memoizer's leader holds while it computes.
#[derive(Default)]
pub(crate) struct Leading {
    /// The key's lease (none if the server could not be asked); released when dropped.
    _lease: Option<Held>,
    /// The stamps read before computing; `None`: the value is not stored.
    pub stamps: Option<Stamps>,
    /// The entry's id, taken before the stamps were read (`Tiers::begin`).
    pub entry_id: u64,
    /// The fence's stamp, read with the entry id.
    pub stamp: u64,
}

impl<K: ?Sized, V: Value> Memoizer<K, V> {
    /// A hit from the server (counted there against `max_hits`), passed by the fence of
    /// the lookup stamped `stamp`, deserialized and promoted into the local tier. An
    /// entry due for a refresh is [`Looked::Due`] unless `serve_due`.
    pub(crate) fn remote_lookup(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        serve_due: bool,
        stamp: u64,
    ) -> Read<Looked<V>> {
        let align = crate::aligned::archive_align::<V::Archived>();
        self.remote_hit(rt, ek, serve_due, stamp, |bytes, offset| {
            with_aligned(&bytes[offset..], align, |payload| {
                V::__access(payload).and_then(V::__deserialize).ok()
            })
        })
    }

    /// A hit from the server read in place (see [`remote_lookup`](Self::remote_lookup)).
    pub(crate) fn remote_archived(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        serve_due: bool,
        stamp: u64,
    ) -> Read<Looked<ArchivedHit<V>>> {
        self.remote_hit(rt, ek, serve_due, stamp, |bytes, offset| {
            ArchivedHit::from_stored(StoredBytes::Shared(bytes.clone()), offset)
        })
    }

    /// The one read path of both: fetch, refresh check, `decode` (a value that does not
    /// decode is stale), the fence, then the count and the promotion.
    fn remote_hit<R>(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        serve_due: bool,
        stamp: u64,
        decode: impl FnOnce(&Arc<[u8]>, usize) -> Option<R>,
    ) -> Read<Looked<R>> {
        let core = &*self.core;
        let epoch = core.epoch();
        let Ok(Some((bytes, offset, meta))) = core.remote_read(rt, ek) else {
            return Read::Miss;
        };
        if !serve_due && core.due(|| meta.stored_at_ms) {
            return Read::Found(Looked::Due);
        }
        let Some(found) = decode(&bytes, offset) else {
            Counters::add(&core.stats.stale, 1);
            return Read::Miss;
        };
        match core.fenced(stamp, &ek.hash, &bytes) {
            Verdict::Serve => {}
            Verdict::Miss => return Read::Miss,
            Verdict::Retry => return Read::Retry,
        }
        Counters::add(&core.stats.hits, 1);
        core.remote_promote(rt, ek, bytes, epoch, stamp);
        Read::Found(Looked::Hit(found))
    }
}
