//! `max_hits` accounting: per key hash, the entry id whose hits are counted and how many
//! times it has been served.
//!
//! Sharded by key hash like the memory tier (`memory::Sharded`), so counted hits on
//! different keys take different locks. One key's count lives in one shard, under one
//! lock, so the budget stays exact however many threads spend it.

use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use crate::key::{HashMapByKey, KeyHash, shard_of};

type Shard = CachePadded<Mutex<HashMapByKey<(u64, u32)>>>;

pub(crate) struct HitCounts {
    shards: Box<[Shard]>,
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
        let count = crate::stats::stripe_count() * 4;
        HitCounts {
            shards: (0..count).map(|_| Shard::default()).collect(),
        }
    }
}

impl HitCounts {
    fn shard(&self, hash: &KeyHash) -> MutexGuard<'_, HashMapByKey<(u64, u32)>> {
        let shard = &self.shards[shard_of(hash, self.shards.len())];
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one hit of the value `entry_id` under `hash` if its budget of `limit` has
    /// room.
    pub(crate) fn take(&self, hash: &KeyHash, entry_id: u64, limit: u32) -> Take {
        let mut shard = self.shard(hash);
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

    /// Starts the count of the value `entry_id` about to be stored under `hash`.
    pub(crate) fn reset(&self, hash: &KeyHash, entry_id: u64) {
        self.shard(hash).insert(*hash, (entry_id, 0));
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.shard(hash).remove(hash);
    }

    pub(crate) fn clear(&self) {
        for shard in self.shards.iter() {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// How many values are being counted.
    pub(crate) fn len(&self) -> usize {
        let len = |s: &Shard| s.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.shards.iter().map(len).sum()
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
}
