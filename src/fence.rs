//! The invalidation fence: the one linearization point of every invalidation, for every
//! reader of every tier.
//!
//! An invalidation removes entries from several places that readers look at one after
//! the other: in-memory stores, the writer's pending overlay, the committed file (whose
//! new snapshot readers pick up after the commit). Removing them one by one would let a
//! reader see some entries gone and others still there. Instead every invalidation opens
//! a *window* ([`Fence::open`]) before it touches anything and closes it after the last
//! tier is clean; while the window is open, every entry it [`Covers`] reads as missing,
//! whichever tier still holds it. The window's opening is the moment the removal
//! happens for readers; the tiers catch up behind it.
//!
//! Readers work like a seqlock's: [`Fence::stamp`] before looking at any tier,
//! [`Fence::check`] on what they found before they serve it (and before they spend a
//! `max_hits` budget on it). A check fails (`Moved`) if a window opened or closed in
//! between: the reader looks again. The hit path pays one atomic load before and one
//! after, of a cache line that only invalidations write.
//!
//! A window covers only entries stored before it opened (their entry ids are below the
//! window's `floor`): a value computed and stored while the window is open is fresh (its
//! computation began after the invalidation's epoch bump) and is served at once.
//!
//! Invariant: between a window's opening and its closing, a read whose stamp and check
//! see that same window serves no entry the window covers; a read whose stamp and check
//! see no window (an even sequence, unchanged) ran entirely before an opening or after
//! a closing, when every tier agreed. Windows never overlap: invalidations take turns
//! (each costs a durable commit anyway).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, RwLock};

use crate::entry;
use crate::key::{DepRow, KeyHash};
use crate::shm::Peers;
use crate::storage::writer::Wait;
use crate::sync::{Event, Listener};

/// What an open window removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Covers {
    /// One key of one memoizer (by [`uid`](crate::tiers::Tiers::uid)).
    Key { uid: u64, hash: KeyHash },
    /// Every entry of these memoizers.
    Memoizers(Vec<u64>),
    /// Every entry carrying this dependency row, in any memoizer.
    Dep(DepRow),
}

impl Covers {
    /// Whether the entry `bytes` of memoizer `uid` under `hash` is removed by this window.
    fn covers(&self, uid: u64, hash: &KeyHash, bytes: &[u8]) -> bool {
        match self {
            Covers::Key { uid: u, hash: h } => *u == uid && h == hash,
            Covers::Memoizers(uids) => uids.contains(&uid),
            // An entry that does not parse is never served anyway.
            Covers::Dep(row) => {
                entry::decode(bytes, false).map_or(true, |view| view.deps().any(|r| r == *row))
            }
        }
    }
}

/// What [`Fence::check`] says about a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Serve it.
    Valid,
    /// An invalidation in progress removes it: a miss.
    Covered,
    /// A window opened or closed since the stamp: look again.
    Moved,
}

/// A per-cache seqlock over invalidations (see the module docs).
#[derive(Default)]
pub(crate) struct Fence {
    /// A shared cache's other processes (`CacheBuilder::shared`): their commits count
    /// like windows here. A stamp is taken once this process has caught up with them
    /// ([`Peers::caught_up`]: their invalidations applied to its memory tiers, its
    /// snapshots dropped), and a check fails (`Moved`) if any process committed since,
    /// so a read never serves what another process removed before the read's check.
    /// Stamps add twice the board's count, which keeps the window's parity.
    peers: Option<Arc<Peers>>,
    /// Odd while a window is open; bumped at every opening and closing.
    seq: AtomicU64,
    /// What the open window removes, and its floor (set before the opening, cleared
    /// after the closing).
    covers: RwLock<Option<(Covers, u64)>>,
    /// Held by the open window (or the invalidation about to open it): windows take
    /// turns. A flag and an event rather than a mutex, so an async invalidation can
    /// await its turn and hold it across its awaits.
    busy: AtomicBool,
    /// Fires when the turn is given back.
    freed: Event,
}

impl Fence {
    /// The fence of a shared cache, whose peers' commits also move it.
    pub(crate) fn with_peers(peers: Arc<Peers>) -> Self {
        Fence {
            peers: Some(peers),
            ..Fence::default()
        }
    }

    /// Taken before a read looks at any tier.
    #[inline]
    pub(crate) fn stamp(&self) -> u64 {
        let local = self.seq.load(Ordering::Acquire);
        match &self.peers {
            None => local,
            Some(peers) => local.wrapping_add(peers.caught_up() << 1),
        }
    }

    /// The stamp a read taking it now would get, without catching up.
    #[inline]
    fn current(&self) -> u64 {
        let local = self.seq.load(Ordering::Relaxed);
        match &self.peers {
            None => local,
            Some(peers) => local.wrapping_add(peers.now() << 1),
        }
    }

    /// Whether a read stamped `stamp` may serve the entry `bytes` of memoizer `uid`
    /// found under `hash`. Call it after every tier read the result depends on.
    #[inline]
    pub(crate) fn check(&self, stamp: u64, uid: u64, hash: &KeyHash, bytes: &[u8]) -> Check {
        // Orders the tier reads before the load below (the seqlock's read side).
        fence(Ordering::Acquire);
        if self.current() != stamp {
            return Check::Moved;
        }
        if stamp & 1 == 0 {
            return Check::Valid;
        }
        let covered = self
            .covers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .is_some_and(|(c, floor)| {
                entry::entry_id(bytes).is_none_or(|id| id < *floor) && c.covers(uid, hash, bytes)
            });
        // The window read above must be the one the stamp saw.
        fence(Ordering::Acquire);
        if self.current() != stamp {
            Check::Moved
        } else if covered {
            Check::Covered
        } else {
            Check::Valid
        }
    }

    /// Whether no window opened or closed since `stamp`, which saw none open (for work
    /// that must not outlive the read, like promoting a disk hit into memory).
    pub(crate) fn unchanged(&self, stamp: u64) -> bool {
        fence(Ordering::Acquire);
        stamp & 1 == 0 && self.current() == stamp
    }

    /// Waits (as `how` says) for an open window to close, and holds the next turn.
    /// Taken before any lock the writer needs (the window waits for the writer while it
    /// is open).
    pub(crate) async fn turn(&self, how: Wait) -> Turn<'_> {
        loop {
            if let Some(turn) = self.try_turn() {
                return turn;
            }
            // Registered before the second try, so a release in between is not lost.
            let freed = self.freed.listen();
            if let Some(turn) = self.try_turn() {
                return turn;
            }
            match how {
                Wait::Block => freed.wait(),
                Wait::Await => freed.await,
            }
        }
    }

    fn try_turn(&self) -> Option<Turn<'_>> {
        self.busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Turn { fence: self })
    }
}

/// The right to open the next window; given back when dropped.
pub(crate) struct Turn<'a> {
    fence: &'a Fence,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.fence.busy.store(false, Ordering::Release);
        self.fence.freed.notify(1);
    }
}

impl<'a> Turn<'a> {
    /// Opens a window removing what `covers` names among the entries whose ids are below
    /// `floor`: from now on readers miss them. The window closes when the guard drops.
    pub(crate) fn open(self, covers: Covers, floor: u64) -> Window<'a> {
        let fence = self.fence;
        *fence.covers.write().unwrap_or_else(|e| e.into_inner()) = Some((covers, floor));
        fence.seq.fetch_add(1, Ordering::SeqCst);
        // Nothing the invalidation changes may become visible before the opening.
        std::sync::atomic::fence(Ordering::SeqCst);
        Window { turn: self }
    }
}

/// An open window; closes on drop (also when the invalidation fails, panics or - in an
/// async call - is dropped), then gives the turn back.
pub(crate) struct Window<'a> {
    turn: Turn<'a>,
}

impl Drop for Window<'_> {
    fn drop(&mut self) {
        let fence = self.turn.fence;
        // Every tier is clean by now: readers may see the state after the removal.
        fence.seq.fetch_add(1, Ordering::SeqCst);
        *fence.covers.write().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_hides_what_it_covers_and_moves_stale_stamps() {
        let fence = Fence::default();
        let before = fence.stamp();
        assert_eq!(fence.check(before, 1, &[1; 16], b""), Check::Valid);
        let turn = crate::storage::writer::now(fence.turn(Wait::Block));
        let window = turn.open(
            Covers::Key {
                uid: 1,
                hash: [1; 16],
            },
            u64::MAX,
        );
        // A read stamped before the opening must look again.
        assert_eq!(fence.check(before, 1, &[1; 16], b""), Check::Moved);
        assert!(!fence.unchanged(before));
        let during = fence.stamp();
        assert_eq!(fence.check(during, 1, &[1; 16], b""), Check::Covered);
        assert_eq!(fence.check(during, 1, &[2; 16], b""), Check::Valid);
        assert_eq!(fence.check(during, 2, &[1; 16], b""), Check::Valid);
        assert!(
            !fence.unchanged(during),
            "nothing is promoted during a window"
        );
        drop(window);
        assert_eq!(fence.check(during, 1, &[1; 16], b""), Check::Moved);
        let after = fence.stamp();
        assert_eq!(fence.check(after, 1, &[1; 16], b""), Check::Valid);
        assert!(fence.unchanged(after));
    }
}
