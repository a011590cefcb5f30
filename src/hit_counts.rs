//! `max_hits` accounting: per key hash, the entry id whose hits are counted and how many
//! times it has been served.
//!
//! In one process: sharded by key hash ([`Shards`]), like the memory tier, so counted
//! hits on different keys take different locks. One key's count lives in one shard,
//! under one lock, so the budget stays exact however many threads spend it.
//!
//! For a persistent memoizer of a shared cache, in the board's count table
//! ([`Board::counts`](crate::shm::Board::counts)), so that every process spends one
//! budget: a word per stored value, `tag << 44 | entry id << 24 | served`, the tag 20
//! bits of the memoizer's table id and the key hash (the lowest forced to one, so a used
//! word is never zero), the entry id's low 20 bits. Buckets of 8 words (a cache line); a
//! hit is one compare-and-swap. What keeps it exact: a value's word is written before
//! the value can be read (`reset`, like the local count), and a value whose word is not
//! found - pushed out of a full bucket, or the board made anew - is never given a fresh
//! budget: it reads as a miss and is recomputed. Counts past 2^24 - 1 stop there (a
//! larger `max_hits` serves that many at most).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use crate::key::{HashMapByKey, KeyHash};
use crate::shards::{self, Shards};
use crate::shm::Peers;

pub(crate) enum HitCounts {
    Local(Shards<HashMapByKey<(u64, u32)>>),
    /// In the board of a shared cache, for the memoizer with table id `memo`.
    Board {
        peers: Arc<Peers>,
        memo: u64,
    },
}

const WAYS: usize = 8;
const SERVED_BITS: u32 = 24;
const SERVED_MAX: u64 = (1 << SERVED_BITS) - 1;
const ID_BITS: u32 = 20;
const TAG_SHIFT: u32 = SERVED_BITS + ID_BITS;

/// A value's word without its count (`tag | id`), and its bucket's first word.
fn place(memo: u64, hash: &KeyHash, entry_id: u64) -> (u64, usize) {
    let (mixed, bucket) = crate::key::board_place(memo, hash, crate::shm::COUNT_WORDS / WAYS);
    let tag = (mixed >> 44) | 1;
    let id = entry_id & ((1 << ID_BITS) - 1);
    (tag << TAG_SHIFT | id << SERVED_BITS, bucket * WAYS)
}

fn same_key(a: u64, b: u64) -> bool {
    a >> TAG_SHIFT == b >> TAG_SHIFT
}

fn same_value(a: u64, b: u64) -> bool {
    a >> SERVED_BITS == b >> SERVED_BITS
}

/// What [`HitCounts::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Counted: serve it.
    Served,
    /// Its budget is spent.
    UsedUp,
    /// The count belongs to another (newer) value stored under this hash.
    Other,
}

impl Default for HitCounts {
    fn default() -> Self {
        HitCounts::Local(Shards::new(shards::most(), |_| HashMapByKey::default()))
    }
}

impl HitCounts {
    /// Counts one hit of the value `entry_id` under `hash` if its budget of `limit` has
    /// room.
    pub(crate) fn take(&self, hash: &KeyHash, entry_id: u64, limit: u32) -> Take {
        match self {
            HitCounts::Local(shards) => {
                let mut shard = shards.get(hash);
                let slot = shard.entry(*hash).or_insert((entry_id, 0));
                if slot.0 != entry_id {
                    Take::Other
                } else if slot.1 >= limit {
                    Take::UsedUp
                } else {
                    slot.1 += 1;
                    Take::Served
                }
            }
            HitCounts::Board { peers, memo } => {
                let (value, first) = place(*memo, hash, entry_id);
                let ways = &peers.board.counts()[first..first + WAYS];
                take_word(ways, value, u64::from(limit).min(SERVED_MAX))
            }
        }
    }

    /// Starts the count of the value `entry_id` about to be stored under `hash`.
    pub(crate) fn reset(&self, hash: &KeyHash, entry_id: u64) {
        match self {
            HitCounts::Local(shards) => {
                shards.get(hash).insert(*hash, (entry_id, 0));
            }
            HitCounts::Board { peers, memo } => {
                let (value, first) = place(*memo, hash, entry_id);
                reset_word(&peers.board.counts()[first..first + WAYS], value);
            }
        }
    }

    /// Forgets the count under `hash` (the board's words are not forgotten: the next
    /// store of the key takes its word over, a full bucket pushes it out).
    pub(crate) fn remove(&self, hash: &KeyHash) {
        if let HitCounts::Local(shards) = self {
            shards.get(hash).remove(hash);
        }
    }

    /// Forgets every count (but the board's, as in [`remove`](Self::remove)).
    pub(crate) fn clear(&self) {
        if let HitCounts::Local(shards) = self {
            for mut shard in shards.each() {
                shard.clear();
            }
        }
    }

    /// How many values this process counts in memory (the board's are bounded by
    /// its size).
    pub(crate) fn len(&self) -> usize {
        match self {
            HitCounts::Local(shards) => shards.each().map(|s| s.len()).sum(),
            HitCounts::Board { .. } => 0,
        }
    }
}

/// [`HitCounts::take`] on a bucket of the board.
fn take_word(ways: &[AtomicU64], value: u64, limit: u64) -> Take {
    'look: loop {
        for w in ways {
            let v = w.load(SeqCst);
            if !same_value(v, value) {
                continue;
            }
            if v & SERVED_MAX >= limit {
                return Take::UsedUp;
            }
            if w.compare_exchange(v, v + 1, SeqCst, SeqCst).is_ok() {
                return Take::Served;
            }
            continue 'look;
        }
        // Another value's count, or none at all: never a fresh budget.
        return Take::Other;
    }
}

/// [`HitCounts::reset`] on a bucket of the board: the key's word if it has one, else a
/// free word, else one chosen by the value (whose key then reads as used up).
fn reset_word(ways: &[AtomicU64], value: u64) {
    loop {
        let mut free = None;
        let mut pick = None;
        for (i, w) in ways.iter().enumerate() {
            let v = w.load(SeqCst);
            if same_key(v, value) {
                pick = Some((i, v));
                break;
            }
            if v == 0 && free.is_none() {
                free = Some((i, 0));
            }
        }
        let (i, old) = pick.or(free).unwrap_or_else(|| {
            let i = ((value >> SERVED_BITS) as usize) % WAYS;
            (i, ways[i].load(SeqCst))
        });
        if ways[i].compare_exchange(old, value, SeqCst, SeqCst).is_ok() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_is_spent_exactly_and_belongs_to_one_value() {
        let counts = HitCounts::default();
        let h = crate::key::xxh3_key_hash(b"k");
        counts.reset(&h, 7);
        assert_eq!(counts.take(&h, 7, 2), Take::Served);
        assert_eq!(counts.take(&h, 7, 2), Take::Served);
        assert_eq!(counts.take(&h, 7, 2), Take::UsedUp);
        assert_eq!(counts.take(&h, 6, 2), Take::Other);
        counts.reset(&h, 8);
        assert_eq!(counts.take(&h, 8, 2), Take::Served);
        assert_eq!(counts.len(), 1);
        counts.remove(&h);
        assert_eq!(counts.len(), 0);
    }

    #[test]
    fn two_processes_spend_one_board_budget_and_a_lost_count_is_never_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let board = |memo| HitCounts::Board {
            peers: Arc::new(Peers::new(crate::shm::Board::open(&path).unwrap())),
            memo,
        };
        let (a, b) = (board(1), board(1));
        let h = crate::key::xxh3_key_hash(b"k");
        a.reset(&h, 7);
        assert_eq!(a.take(&h, 7, 3), Take::Served);
        assert_eq!(b.take(&h, 7, 3), Take::Served);
        assert_eq!(a.take(&h, 7, 3), Take::Served);
        assert_eq!(b.take(&h, 7, 3), Take::UsedUp);
        assert_eq!(a.take(&h, 7, 3), Take::UsedUp);
        // A newer value of the key, stored by the other process: a fresh budget for it,
        // none for the old one.
        b.reset(&h, 8);
        assert_eq!(a.take(&h, 7, 3), Take::Other);
        assert_eq!(a.take(&h, 8, 3), Take::Served);
        // Another memoizer's count of the same key hash is its own.
        let c = board(2);
        assert_eq!(c.take(&h, 8, 3), Take::Other, "never counted: not fresh");
        c.reset(&h, 8);
        assert_eq!(c.take(&h, 8, 1), Take::Served);
        assert_eq!(a.take(&h, 8, 2), Take::Served);
        assert_eq!(a.take(&h, 8, 2), Take::UsedUp);
        // Fill the key's bucket with other keys' values: the pushed-out count reads as
        // a miss (`Other`), never as a fresh budget.
        let HitCounts::Board { peers, .. } = &a else {
            unreachable!()
        };
        let (_, first) = place(1, &h, 8);
        for (i, w) in peers.board.counts()[first..first + WAYS].iter().enumerate() {
            w.store(((i as u64 + 1) << 1 | 1) << TAG_SHIFT, SeqCst);
        }
        assert_eq!(b.take(&h, 8, 3), Take::Other);
        a.reset(&h, 9);
        assert_eq!(b.take(&h, 9, 3), Take::Served);
    }

    #[test]
    fn threads_of_two_processes_never_overspend_a_board_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let counts: Vec<Arc<HitCounts>> = (0..2)
            .map(|_| {
                Arc::new(HitCounts::Board {
                    peers: Arc::new(Peers::new(crate::shm::Board::open(&path).unwrap())),
                    memo: 1,
                })
            })
            .collect();
        let h = crate::key::xxh3_key_hash(b"k");
        counts[0].reset(&h, 1);
        let served: usize = (0..4)
            .map(|t| {
                let c = counts[t % 2].clone();
                std::thread::spawn(move || {
                    (0..5000)
                        .filter(|_| c.take(&h, 1, 7000) == Take::Served)
                        .count()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(served, 7000);
    }
}
