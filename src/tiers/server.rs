//! The server tier's steps of the miss protocol (feature `redis`): the tiers' side of
//! them - reporting, counting, filling the local tier - around the calls down to the
//! server tier (`remote::RemoteTier`), which knows nothing of `Tiers`.

use std::sync::Arc;

use super::Tiers;
use crate::key::{DepRow, EncodedKey};
use crate::remote::{Leading, RemoteTier, Turn};
use crate::stats::Counters;

impl Tiers {
    /// A connected memoizer leads on the server too: waits for (or takes) the key's
    /// lease, which another machine may hold; `Err`: the value landed meanwhile.
    pub(super) fn remote_turn<R>(
        &self,
        ek: &EncodedKey,
        look: impl Fn() -> Option<R>,
    ) -> std::result::Result<Leading, R> {
        let Some(rt) = &self.remote else {
            return Ok(Leading::default());
        };
        match rt.turn(&ek.hash, look) {
            Turn::Found(value) => Err(value),
            Turn::Lead(leading) => Ok(leading),
            Turn::Alone(error) => {
                if let Some(e) = error {
                    self.report(e);
                }
                Ok(Leading::default())
            }
        }
    }

    /// Stores an entry on the server unless a stamp moved since `leading` read them
    /// (every invalidation moves one, so nothing invalidated since is stored), then in
    /// the local tier unless an invalidation was applied to it since the put began
    /// (which the put may have overtaken) or a window opened since `leading.stamp` (a
    /// local invalidation whose server step the put may have overtaken, and whose purge
    /// may have passed already). Pushes that came before the put - including those of
    /// the stamps this computation created - need not stop it.
    pub(super) fn remote_store(
        &self,
        rt: &RemoteTier,
        ek: &EncodedKey,
        archive: &[u8],
        deps: &[DepRow],
        leading: &Leading,
    ) {
        let (meta, bytes) = self.encode_entry(ek, archive, deps, leading.entry_id);
        let epoch = self.epoch();
        match rt.put(&ek.hash, &bytes, meta.expires_at_ms, leading) {
            Ok(true) => Counters::add(&self.stats.inserts, 1),
            Ok(false) => return,
            Err(e) => return self.report(e),
        }
        self.remote_promote(rt, ek, bytes, epoch, leading.stamp);
    }

    /// Copies bytes read from (or put on) the server into the local tier, unless an
    /// invalidation bumped the epoch since `epoch` was read (before asking the server; a
    /// local one or a push), a fence window opened since `stamp` (a local invalidation
    /// in progress, whose purge may have passed already) or the listener is not live.
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
}
