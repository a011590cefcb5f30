//! Applies the invalidation listener's events to this process's local tiers: each one
//! bumps the affected memoizers' epoch (so a value read from the server before it is not
//! promoted after it) and then drops the local copies it covers.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use super::layout::Invalidated;
use super::service::Service;
use super::tracking::Event;
use crate::cache::CacheInner;
use crate::entry::DepRow;
use crate::error::Result;
use crate::memoizer::MemoCore;
use crate::stats::Counters;
use crate::zone::ZoneInner;

/// Starts the cache's invalidation listener when `core` is its first memoizer with a
/// local tier in front of the server.
pub(crate) fn listen_for(cache: &Arc<CacheInner>, core: &Arc<MemoCore>) -> Result<()> {
    let (Some(rt), Some(_)) = (&core.remote, &core.memory) else {
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
    let live: Vec<Arc<MemoCore>> = cache
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(Weak::upgrade)
        .collect();
    for core in live {
        let (Some(rt), Some(memory)) = (&core.remote, &core.memory) else {
            continue;
        };
        let zone_of = |row: &[u8; 24]| u64::from_be_bytes(row[..8].try_into().unwrap_or_default());
        let covered = match event {
            Event::Flush => true,
            Event::Invalidated(Invalidated::Memoizer(m) | Invalidated::Key(m, _)) => rt.memo == m,
            Event::Invalidated(Invalidated::Zone(z)) => rt.zones.contains(&z),
            Event::Invalidated(Invalidated::Dependency(row)) => rt.zones.contains(&zone_of(&row)),
        };
        if !covered {
            continue;
        }
        core.epoch.fetch_add(1, Ordering::SeqCst);
        let mut memory = memory.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Invalidated(Invalidated::Dependency(row)) => {
                memory.remove_dep(&row);
            }
            Event::Invalidated(Invalidated::Key(_, hash)) => {
                memory.remove(&hash);
            }
            _ => {
                memory.clear();
            }
        }
    }
}

/// `Zone::invalidate(dep)` (`row: Some`, the dependency's stamp is deleted) or
/// `Zone::invalidate_all` (a new zone generation) on the server, O(1) either way, then
/// in this process's live members' local tiers. Returns how many local entries went:
/// the server's are not counted. On an error the invalidation may not have happened.
pub(crate) fn invalidate_zone(
    cache: &CacheInner,
    service: &Service,
    zone: &ZoneInner,
    row: Option<DepRow>,
) -> Result<u64> {
    let members = zone.live_members();
    for m in &members {
        m.epoch.fetch_add(1, Ordering::SeqCst);
    }
    let done = match &row {
        Some(row) => service.remote.drop_stamp(row).map(drop),
        None => service.remote.bump_zone(zone.id),
    };
    let mut removed = 0;
    for m in &members {
        let n = match &row {
            Some(row) => m.forget_in_memory(row, &[]),
            None => m.clear_in_memory(),
        };
        Counters::add(&m.stats.invalidations, n);
        removed += n;
    }
    if let Err(e) = &done {
        service.failed();
        cache.storage.reporter.report(e);
    }
    done.map(|()| removed)
}
