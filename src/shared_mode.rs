//! Shared mode's process side (`CacheBuilder::shared`): catching up with what the other
//! processes on the file committed. The fence calls it ([`crate::shm::Peers::caught_up`])
//! before a read once the board says some process committed since the last catch-up:
//! it reads the invalidation log's new rows (`storage::multi`) in a fresh read
//! transaction, applies each one that another process wrote to the live memoizers it
//! reaches ([`Tiers::forget_elsewhere`]: their epoch, then their in-memory copies - the
//! same step 3 as `tiers::invalidate`'s), and drops every cached snapshot, so the next
//! read sees the other processes' commits. Like `remote/push.rs` for a connected cache.
//!
//! A log it cannot read, or one trimmed past what this process applied, makes it forget
//! every memory tier: a recomputation, never a removed value served.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::inner::CacheInner;
use crate::shm::{Board, Peers, board_path};
use crate::storage::Storage;
use crate::storage::multi::{self, Logged, Multi};
use crate::tiers::{Remove, Tiers};

/// The shared-mode state of a cache opening `path` over `storage`: the board mapped,
/// the log's head taken as applied (this process has nothing older in memory).
pub(crate) fn open(
    storage: &Storage,
    path: &Path,
    commit_interval: Duration,
) -> Result<(Multi, Arc<Peers>)> {
    let board = Board::open(path).map_err(|source| Error::Io {
        path: board_path(path),
        source,
    })?;
    let peers = Arc::new(Peers::new(board));
    let head = storage.read(multi::log_head)?;
    let multi = Multi::new(path, peers.clone(), head, commit_interval);
    Ok((multi, peers))
}

/// Makes the shared cache `inner` catch up with its peers before its reads.
pub(crate) fn install(inner: &Arc<CacheInner>) {
    let Some(multi) = inner.shared.storage.multi() else {
        return;
    };
    let cache = Arc::downgrade(inner);
    multi.peers.set_catch_up(move || {
        if let Some(cache) = cache.upgrade() {
            catch_up(&cache);
        }
    });
}

/// The log rows another process wrote since this one last looked, with the recorded
/// members of each zone they name.
struct News {
    tail: multi::LogTail,
    members: Vec<(u64, Vec<u64>)>,
}

fn catch_up(cache: &CacheInner) {
    let storage = &cache.shared.storage;
    let Some(multi) = storage.multi() else {
        return;
    };
    // A forked child reads nothing of the file (its reads miss): nothing to catch up.
    if !multi.forked() {
        let after = multi.applied();
        let news = storage.read(|txn| {
            let tail = multi::read_log_after(txn, after)?;
            let mut members = Vec::new();
            for (_, token, what) in &tail.rows {
                if let (false, Logged::Dep(row)) = (*token == multi.token, what) {
                    members.push((zone_of(row), multi::zone_members(txn, zone_of(row))?));
                } else if let (false, Logged::Zone(zone)) = (*token == multi.token, what) {
                    members.push((*zone, multi::zone_members(txn, *zone)?));
                }
            }
            Ok(News { tail, members })
        });
        let live = cache.live_all();
        match news {
            Ok(news) if !news.tail.gap => {
                for (_, token, what) in &news.tail.rows {
                    if *token != multi.token {
                        apply(cache, &live, what, &news.members);
                    }
                }
                multi.set_applied(news.tail.head);
            }
            Ok(news) => {
                forget_all(&live);
                multi.set_applied(news.tail.head);
            }
            Err(e) => {
                storage.reporter.report(&e);
                forget_all(&live);
            }
        }
    }
    storage.refresh();
}

fn zone_of(row: &[u8; 24]) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&row[..8]);
    u64::from_be_bytes(id)
}

/// Applies one row another process logged to this process's live memoizers.
fn apply(cache: &CacheInner, live: &[Arc<Tiers>], what: &Logged, members: &[(u64, Vec<u64>)]) {
    let has_id = |t: &Tiers, id: u64| t.persistent.as_ref().is_some_and(|p| p.id == id);
    // A zone's live members, and memoizers an earlier run recorded as members.
    let zone_targets = |zone: u64| {
        let recorded: &[u64] = members
            .iter()
            .find(|(z, _)| *z == zone)
            .map_or(&[], |(_, ids)| ids);
        cache.with_strangers(cache.zone_members_by_id(zone), recorded)
    };
    match *what {
        Logged::Key { id, hash } => live
            .iter()
            .filter(|t| has_id(t, id))
            .for_each(|t| t.forget_elsewhere(&Remove::Key(hash))),
        Logged::Memoizer(id) => live
            .iter()
            .filter(|t| has_id(t, id))
            .for_each(|t| t.forget_elsewhere(&Remove::All)),
        Logged::Dep(row) => {
            let zone = zone_of(&row);
            let what = Remove::Dep {
                row,
                zone,
                by_scan: false,
            };
            zone_targets(zone)
                .iter()
                .for_each(|t| t.forget_elsewhere(&what));
        }
        Logged::Zone(zone) => zone_targets(zone)
            .iter()
            .for_each(|t| t.forget_elsewhere(&Remove::Zone(zone))),
    }
}

fn forget_all(live: &[Arc<Tiers>]) {
    for t in live {
        t.forget_elsewhere(&Remove::All);
    }
}
