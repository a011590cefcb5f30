//! Applies the invalidation listener's events to this process's local tiers: each one
//! is an invalidation made elsewhere, which the memoizers it covers forget
//! ([`Tiers::forget_elsewhere`]: their epoch, then their in-memory copies).

use std::sync::Arc;

use super::layout::Invalidated;
use super::tracking::Event;
use crate::error::Result;
use crate::inner::CacheInner;
use crate::tiers::{Remove, Tiers};

/// Starts the cache's invalidation listener when `tiers` is its first memoizer with a
/// local tier in front of the server.
pub(crate) fn listen_for(cache: &Arc<CacheInner>, tiers: &Tiers) -> Result<()> {
    let Some(rt) = tiers.remote.as_ref().filter(|_| tiers.has_memory()) else {
        return Ok(());
    };
    let cache = Arc::downgrade(cache);
    rt.service.track(move |event| {
        if let Some(cache) = cache.upgrade() {
            apply(&cache, event);
        }
    })
}

fn apply(cache: &CacheInner, event: Event) {
    let zone_of = |row: &[u8; 24]| u64::from_be_bytes(row[..8].try_into().unwrap_or_default());
    for tiers in cache.live_all() {
        let Some(rt) = tiers.remote.as_ref().filter(|_| tiers.has_memory()) else {
            continue;
        };
        let what = match event {
            Event::Flush => Remove::All,
            Event::Invalidated(Invalidated::Memoizer(m)) if rt.memo == m => Remove::All,
            Event::Invalidated(Invalidated::Key(m, hash)) if rt.memo == m => Remove::Key(hash),
            Event::Invalidated(Invalidated::Zone(z)) if rt.zones.contains(&z) => Remove::Zone(z),
            Event::Invalidated(Invalidated::Dependency(row))
                if rt.zones.contains(&zone_of(&row)) =>
            {
                Remove::Dep {
                    row,
                    zone: zone_of(&row),
                    by_scan: false,
                }
            }
            Event::Invalidated(_) => continue,
        };
        tiers.forget_elsewhere(&what);
    }
}
