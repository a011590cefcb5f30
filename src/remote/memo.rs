//! A memoizer's reads through its server tier: the same steps as the file's (check the
//! bytes, ask the fence, count, promote), with the server in the file's place. Above
//! `tiers`: the miss protocol's server steps (lease, stamps, put) are `RemoteTier`'s,
//! which `tiers` calls downward; invalidations are `tiers::invalidate`'s, like every
//! other: the server step (`Service::invalidate`) stands where a file's disk job does.
//!
//! The local tier of a connected memoizer (`Store::Tiered`) is served and filled only
//! while the invalidation listener is live (`Service::local_tiers_live`); a value is
//! promoted into it only if no invalidation - local, or pushed by another machine -
//! bumped the memoizer's epoch since the server was asked.

use std::sync::Arc;

use super::service::RemoteTier;
use super::store::Found;
use crate::Value;
use crate::aligned::with_aligned;
use crate::entry::Meta;
use crate::hit::ArchivedHit;
use crate::key::EncodedKey;
use crate::memoizer::Memoizer;
use crate::stats::Counters;
use crate::storage::StoredBytes;
use crate::tiers::{Looked, Read, Tiers, Verdict};

/// Entry bytes from the server that passed the checks, their payload offset and header.
type Checked = (Arc<[u8]>, usize, Meta);

/// The checked entry bytes the server holds for `ek` (a hit counted there), with the
/// payload offset. `Err(())`: the server failed (reported).
fn read(core: &Tiers, rt: &RemoteTier, ek: &EncodedKey) -> Result<Option<Checked>, ()> {
    let bytes = match rt.read(&ek.hash) {
        Ok(Found::Served(bytes)) => bytes,
        Ok(Found::Absent | Found::Stale) => return Ok(None),
        Ok(Found::UsedUp) => {
            Counters::add(&core.stats.expirations, 1);
            return Ok(None);
        }
        Err(e) => {
            core.report(e);
            return Err(());
        }
    };
    Ok(core
        .admit(ek, &bytes)
        .map(|(offset, meta)| (Arc::from(bytes), offset, meta)))
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
        let Ok(Some((bytes, offset, meta))) = read(core, rt, ek) else {
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
