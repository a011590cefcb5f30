//! `max_hits` accounting: per key hash, the entry id whose hits are counted and how many
//! times it has been served.
//!
//! Sharded by key hash ([`Shards`]), like the memory tier, so counted hits on different
//! keys take different locks. One key's count lives in one shard, under one
//! lock, so the budget stays exact however many threads spend it.

use crate::key::{HashMapByKey, KeyHash};
use crate::shards::{self, Shards};

pub(crate) struct HitCounts {
    shards: Shards<HashMapByKey<(u64, u32)>>,
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
        HitCounts {
            shards: Shards::new(shards::most(), |_| HashMapByKey::default()),
        }
    }
}

impl HitCounts {
    /// Counts one hit of the value `entry_id` under `hash` if its budget of `limit` has
    /// room.
    pub(crate) fn take(&self, hash: &KeyHash, entry_id: u64, limit: u32) -> Take {
        let mut shard = self.shards.get(hash);
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
        self.shards.get(hash).insert(*hash, (entry_id, 0));
    }

    pub(crate) fn remove(&self, hash: &KeyHash) {
        self.shards.get(hash).remove(hash);
    }

    pub(crate) fn clear(&self) {
        for mut shard in self.shards.each() {
            shard.clear();
        }
    }

    /// How many values are being counted.
    pub(crate) fn len(&self) -> usize {
        self.shards.each().map(|s| s.len()).sum()
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
