//! In-process stores: unbounded (the original's dict) and bounded LRU (its LRUCacheDict).
//!
//! An entry is one shared allocation holding the encoded entry (the layout of
//! [`crate::entry`]: header, key, dependency rows, rkyv archive), so a hit touches the
//! map's bucket and then one contiguous buffer, and hits are read in place. A tiered
//! store shares that buffer with the write queue: a value is encoded once.
//!
//! Entries of zoned memoizers carry dependency rows; the store keeps a dependency index
//! (row -> hashes of the entries carrying it) in step with every insert, overwrite,
//! eviction, removal, expiry and clear, so a zone invalidation finds its entries without
//! looking at the others. Entries without rows (no zone key) never touch the index, and
//! the hit path never does.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, MutexGuard};

use crate::entry::{self, Meta};
use crate::key::DepRow;
use crate::key::{HashMapByKey, KeyHash, PrehashedBuild};
use crate::shards::{self, Shards};

/// One in-memory entry: encoded entry bytes (see [`crate::entry`]), shared. Cheap to
/// clone (one reference count).
#[derive(Clone)]
pub(crate) struct MemEntry {
    bytes: Arc<[u8]>,
    /// Where the key ends (and the dependency rows start). Where it starts is read from
    /// the header ([`entry::key_start`]): one more field would grow the map's buckets.
    key_end: u32,
    /// Where the rkyv archive starts; it runs to the end.
    payload_offset: u32,
}

impl MemEntry {
    /// Wraps encoded entry bytes; `None` if they do not parse as an entry.
    pub(crate) fn new(bytes: Arc<[u8]>) -> Option<MemEntry> {
        let view = entry::decode(&bytes, false).ok()?;
        Some(MemEntry {
            key_end: u32::try_from(entry::key_start(&bytes) + view.key.len()).ok()?,
            payload_offset: u32::try_from(view.payload_offset).ok()?,
            bytes,
        })
    }

    /// The header fields.
    pub(crate) fn meta(&self) -> Meta {
        entry::meta(&self.bytes)
    }

    /// The deadline (unix ms, 0 = never): one header field, read alone on the hit path.
    #[inline]
    pub(crate) fn expires_at_ms(&self) -> u64 {
        entry::expires_at_ms(&self.bytes)
    }

    /// The entry id (for `max_hits`).
    #[inline]
    pub(crate) fn entry_id(&self) -> u64 {
        entry::entry_id(&self.bytes).unwrap_or(0)
    }

    /// The encoded key.
    #[inline]
    pub(crate) fn key(&self) -> &[u8] {
        let span = entry::key_start(&self.bytes)..self.key_end as usize;
        self.bytes.get(span).unwrap_or_default()
    }

    /// The dependency rows (off the hit path: read from the header).
    pub(crate) fn deps(&self) -> impl Iterator<Item = DepRow> + '_ {
        entry::deps_of(&self.bytes)
    }

    /// The whole encoded entry.
    pub(crate) fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// Where the archive starts in [`MemEntry::bytes`].
    pub(crate) fn payload_offset(&self) -> usize {
        self.payload_offset as usize
    }

    /// The rkyv archive.
    #[inline]
    pub(crate) fn payload(&self) -> &[u8] {
        &self.bytes[self.payload_offset as usize..]
    }
}

/// A node's place in the recency list. 32 bits keep a node at 8 bytes, so the list
/// updates of an LRU hit mostly stay in cache.
type Ix = u32;
const NIL: Ix = Ix::MAX;

/// A place in the recency list.
#[derive(Clone, Copy)]
struct Node {
    prev: Ix,
    next: Ix,
}

/// What the index holds per key: the entry itself (so a hit reads the bucket and then
/// the entry's bytes, nothing else) and its place in the recency list.
struct Slot {
    node: Ix,
    entry: MemEntry,
    /// What the entry weighs against the byte bound ([`MemStore::weigh`]), fixed when it
    /// was inserted.
    weight: u32,
}

/// A [`MemStore`] split by key hash into shards, each behind its own lock on its own
/// cache line: threads hitting different keys take different locks, so hits scale with
/// threads (one lock made two threads slower than one).
///
/// A bounded store gives every shard an equal share of the capacity and each shard
/// evicts its own least recently used entry: a sharded LRU, as quick_cache and moka
/// shard theirs. Only capacities of at least [`MIN_PER_SHARD`] entries per shard are
/// split, so small LRUs stay exact.
///
/// Invariant: an entry lives in the shard its hash picks ([`Shards::index_of`]), and
/// nowhere else. Operations over every shard (clear, dependency and expiry purges)
/// lock the shards one at a time; an invalidation's fence window hides the entries
/// they have not reached yet.
pub(crate) struct Sharded {
    shards: Shards<MemStore>,
}

/// The smallest share of a bounded store's capacity that gets a shard of its own.
pub(crate) const MIN_PER_SHARD: usize = 256;

/// The smallest share of a byte bound that gets a shard of its own.
const MIN_BYTES_PER_SHARD: usize = 4 << 20;

/// What a bounded store holds at most: entries, bytes (each entry weighs its encoded
/// size, or what `weigher` says), or both; `None` for no bound of that kind.
#[derive(Clone, Default)]
pub(crate) struct Bound {
    pub(crate) entries: Option<usize>,
    pub(crate) bytes: Option<usize>,
    pub(crate) weigher: Option<Weigher>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("entries", &self.entries)
            .field("bytes", &self.bytes)
            .field("weigher", &self.weigher.is_some())
            .finish()
    }
}

/// A user's weight of an entry (`MemoizerBuilder::weigher`), given its archive bytes;
/// `None` falls back to the entry's encoded size.
pub(crate) type Weigher = Arc<dyn Fn(&[u8]) -> Option<u64> + Send + Sync>;

impl Sharded {
    /// `capacity: None` is unbounded.
    #[cfg(test)]
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        Sharded::bounded(Bound {
            entries: capacity,
            ..Bound::default()
        })
    }

    /// A store held to `bound`, split evenly over its shards.
    pub(crate) fn bounded(bound: Bound) -> Self {
        let by_entries = bound.entries.map_or(shards::most(), |cap| {
            (cap / MIN_PER_SHARD).clamp(1, shards::most())
        });
        let by_bytes = bound.bytes.map_or(shards::most(), |b| {
            (b / MIN_BYTES_PER_SHARD).clamp(1, shards::most())
        });
        let count = by_entries.min(by_bytes);
        // A power of two, so a shard is picked with a mask.
        let count = if count.is_power_of_two() {
            count
        } else {
            count.next_power_of_two() / 2
        };
        let share = |total: usize, i: usize| total / count + usize::from(i < total % count);
        let shards = Shards::new(count, |i| {
            MemStore::bounded(Bound {
                entries: bound.entries.map(|cap| share(cap, i)),
                bytes: bound.bytes.map(|b| share(b, i)),
                weigher: bound.weigher.clone(),
            })
        });
        Sharded { shards }
    }

    /// The shard holding `hash`'s entry, locked.
    pub(crate) fn shard(&self, hash: &KeyHash) -> MutexGuard<'_, MemStore> {
        self.shards.get(hash)
    }

    pub(crate) fn len(&self) -> usize {
        self.shards.each().map(|s| s.len()).sum()
    }

    /// Removes everything; returns how many entries there were.
    pub(crate) fn clear(&self) -> usize {
        self.shards.each().map(|mut s| s.clear()).sum()
    }

    /// [`MemStore::remove_dep`] in every shard.
    pub(crate) fn remove_dep(&self, row: &DepRow) -> Vec<KeyHash> {
        self.shards
            .each()
            .flat_map(|mut s| s.remove_dep(row))
            .collect()
    }

    /// [`MemStore::remove_expired`] in every shard.
    pub(crate) fn remove_expired(&self, now_ms: u64) -> Vec<KeyHash> {
        self.shards
            .each()
            .flat_map(|mut s| s.remove_expired(now_ms))
            .collect()
    }

    /// Checks every shard's invariants, and that each entry is in its own shard.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (i, shard) in self.shards.each().enumerate() {
            shard.validate()?;
            if let Some(h) = shard.index.keys().find(|h| self.shards.index_of(h) != i) {
                return Err(format!("entry {h:02x?} is in shard {i}, not its own"));
            }
        }
        Ok(())
    }
}

/// Dependency row -> hashes of the entries that carry it. Rows and hashes are already
/// uniform hashes, so both levels skip rehashing.
type DepIndex = HashMap<DepRow, HashSet<KeyHash, PrehashedBuild>, PrehashedBuild>;

/// A map of entries with optional LRU bound. Recency is a doubly linked list threaded
/// through a slab, so a hit moves its node to the front in O(1).
pub(crate) struct MemStore {
    capacity: Option<usize>,
    /// The byte bound, and the weight of the entries held ([`MemStore::weigh`]).
    max_bytes: Option<usize>,
    bytes: usize,
    weigher: Option<Weigher>,
    index: HashMapByKey<Slot>,
    nodes: Vec<Node>,
    /// The key of each node (read only to evict).
    hashes: Vec<KeyHash>,
    free: Vec<Ix>,
    head: Ix,
    tail: Ix,
    deps: DepIndex,
}

impl MemStore {
    /// `capacity: None` is unbounded.
    #[cfg(test)]
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        MemStore::bounded(Bound {
            entries: capacity,
            ..Bound::default()
        })
    }

    /// A store held to `bound`.
    pub(crate) fn bounded(bound: Bound) -> Self {
        MemStore {
            capacity: bound.entries.map(|c| c.max(1)),
            max_bytes: bound.bytes,
            bytes: 0,
            weigher: bound.weigher,
            index: HashMapByKey::default(),
            nodes: Vec::new(),
            hashes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
            deps: DepIndex::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the store keeps a recency order (it evicts).
    fn is_bounded(&self) -> bool {
        self.capacity.is_some() || self.max_bytes.is_some()
    }

    /// Whether a store holding `bytes` bytes and `entries` entries is past its bound.
    fn over(&self, entries: usize, bytes: usize) -> bool {
        self.capacity.is_some_and(|cap| entries > cap)
            || self.max_bytes.is_some_and(|max| bytes > max)
    }

    fn node(&mut self, i: Ix) -> &mut Node {
        &mut self.nodes[i as usize]
    }

    fn unlink(&mut self, i: Ix) {
        let Node { prev, next } = *self.node(i);
        if prev == NIL {
            self.head = next
        } else {
            self.node(prev).next = next
        }
        if next == NIL {
            self.tail = prev
        } else {
            self.node(next).prev = prev
        }
    }

    fn push_front(&mut self, i: Ix) {
        let head = self.head;
        *self.node(i) = Node {
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.node(head).prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    fn index_deps(&mut self, hash: KeyHash, entry: &MemEntry) {
        for row in entry.deps() {
            self.deps.entry(row).or_default().insert(hash);
        }
    }

    fn unindex_deps(&mut self, hash: &KeyHash, entry: &MemEntry) {
        for row in entry.deps() {
            if let Some(set) = self.deps.get_mut(&row) {
                set.remove(hash);
                if set.is_empty() {
                    self.deps.remove(&row);
                }
            }
        }
    }

    /// Looks an entry up, marking it most recently used.
    #[cfg(test)]
    pub(crate) fn get(&mut self, hash: &KeyHash) -> Option<MemEntry> {
        self.get_with(hash, MemEntry::clone)
    }

    /// Looks an entry up, marking it most recently used, and reads it in place: no
    /// reference count is touched, so the reads of the entry's bytes can overlap.
    pub(crate) fn get_with<R>(
        &mut self,
        hash: &KeyHash,
        f: impl FnOnce(&MemEntry) -> R,
    ) -> Option<R> {
        let slot = self.index.get(hash)?;
        let (i, found) = (slot.node, f(&slot.entry));
        if self.is_bounded() && self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(found)
    }

    /// What `entry` weighs against the byte bound: the weigher's answer, else its
    /// encoded size (header, key, dependency rows, archive); past `u32::MAX`, `None`.
    fn weigh(&self, entry: &MemEntry) -> Option<u32> {
        let weight = match &self.weigher {
            // Without a byte bound a weight means nothing: the weigher is not asked.
            Some(weigher) if self.max_bytes.is_some() => weigher(entry.payload()),
            _ => None,
        };
        let weight = weight.unwrap_or(entry.bytes().len() as u64);
        u32::try_from(weight).ok()
    }

    /// Inserts or replaces; returns the entries evicted to make room (not the replaced one).
    /// An entry heavier than the byte bound is not kept (and replaces nothing); so is
    /// one weighing more than `u32::MAX` in a store with a byte bound.
    pub(crate) fn insert(&mut self, hash: KeyHash, entry: MemEntry) -> Vec<(KeyHash, MemEntry)> {
        // Weighed before anything changes: should a weigher panic, the store is intact.
        let weight = match self.weigh(&entry) {
            Some(weight) => weight,
            None if self.max_bytes.is_none() => u32::MAX,
            None => {
                self.remove(&hash);
                return Vec::new();
            }
        };
        let (weight32, weight) = (weight, weight as usize);
        if self.max_bytes.is_some_and(|max| weight > max) {
            self.remove(&hash);
            return Vec::new();
        }
        if self.index.contains_key(&hash) {
            self.remove(&hash);
        }
        let mut evicted = Vec::new();
        while self.over(self.index.len() + 1, self.bytes + weight) && self.tail != NIL {
            let victim = self.hashes[self.tail as usize];
            if let Some(e) = self.remove(&victim) {
                evicted.push((victim, e));
            }
        }
        let node = Node {
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                *self.node(i) = node;
                self.hashes[i as usize] = hash;
                i
            }
            None => {
                // Past 2^32 - 1 entries a value is simply not kept in memory.
                let i = match Ix::try_from(self.nodes.len()) {
                    Ok(i) if i != NIL => i,
                    _ => return evicted,
                };
                self.nodes.push(node);
                self.hashes.push(hash);
                i
            }
        };
        self.index_deps(hash, &entry);
        self.bytes += weight;
        self.index.insert(
            hash,
            Slot {
                node: i,
                entry,
                weight: weight32,
            },
        );
        self.push_front(i);
        evicted
    }

    pub(crate) fn remove(&mut self, hash: &KeyHash) -> Option<MemEntry> {
        let Slot {
            node,
            entry,
            weight,
        } = self.index.remove(hash)?;
        self.unlink(node);
        self.free.push(node);
        self.unindex_deps(hash, &entry);
        self.bytes -= weight as usize;
        Some(entry)
    }

    /// Removes everything; returns how many entries there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.index.len();
        *self = MemStore::bounded(Bound {
            entries: self.capacity,
            bytes: self.max_bytes,
            weigher: self.weigher.take(),
        });
        n
    }

    /// Removes every entry whose dependency rows contain `row`; returns their hashes.
    /// Cost grows with those entries, through the dependency index.
    pub(crate) fn remove_dep(&mut self, row: &DepRow) -> Vec<KeyHash> {
        let Some(hashes) = self.deps.remove(row) else {
            return Vec::new();
        };
        let mut removed = Vec::with_capacity(hashes.len());
        for h in hashes {
            if self.remove(&h).is_some() {
                removed.push(h);
            }
        }
        removed
    }

    /// Removes every entry past its deadline; returns their hashes.
    pub(crate) fn remove_expired(&mut self, now_ms: u64) -> Vec<KeyHash> {
        let due: Vec<KeyHash> = self
            .index
            .iter()
            .filter(|(_, slot)| slot.entry.meta().expired(now_ms))
            .map(|(h, _)| *h)
            .collect();
        for h in &due {
            self.remove(h);
        }
        due
    }

    /// Checks the recency list, the key index and the dependency index agree exactly.
    /// Called by [`Cache::check_integrity`](crate::Cache::check_integrity) for every live
    /// in-memory store, and by the tests.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut seen = 0;
        let mut i = self.head;
        let mut prev = NIL;
        while i != NIL {
            let node = self.nodes[i as usize];
            if node.prev != prev {
                return Err(format!("node {i} has a wrong back link"));
            }
            if self.index.get(&self.hashes[i as usize]).map(|s| s.node) != Some(i) {
                return Err(format!("node {i} is linked but not indexed"));
            }
            seen += 1;
            prev = i;
            i = node.next;
            if seen > self.nodes.len() {
                return Err("the recency list has a cycle".into());
            }
        }
        if self.tail != prev || seen != self.index.len() {
            return Err(format!("list has {seen} nodes, index {}", self.index.len()));
        }
        if let Some(cap) = self.capacity
            && seen > cap
        {
            return Err(format!("{seen} entries exceed capacity {cap}"));
        }
        let weighed: usize = self.index.values().map(|s| s.weight as usize).sum();
        if weighed != self.bytes {
            return Err(format!(
                "entries of {weighed} bytes counted as {}",
                self.bytes
            ));
        }
        if let Some(max) = self.max_bytes
            && weighed > max
        {
            return Err(format!("{weighed} bytes exceed the bound {max}"));
        }
        let free: HashSet<Ix> = self.free.iter().copied().collect();
        if let Some(slot) = self.index.values().find(|s| free.contains(&s.node)) {
            return Err(format!("free node {} is still indexed", slot.node));
        }
        let mut expected: HashSet<(DepRow, KeyHash)> = HashSet::new();
        for (hash, slot) in &self.index {
            for row in slot.entry.deps() {
                expected.insert((row, *hash));
            }
        }
        let mut actual = 0;
        for (row, hashes) in &self.deps {
            if hashes.is_empty() {
                return Err(format!("dependency row {:02x?} has no entries", &row[..8]));
            }
            for hash in hashes {
                actual += 1;
                if !expected.contains(&(*row, *hash)) {
                    return Err(format!(
                        "dependency row {:02x?} points at {:02x?}, which does not carry it",
                        &row[..8],
                        &hash[..4]
                    ));
                }
            }
        }
        if actual != expected.len() {
            return Err(format!(
                "dependency index has {actual} rows, entries carry {}",
                expected.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> MemEntry {
        with_deps(id, id, &[])
    }

    fn with_deps(id: u64, expires_at_ms: u64, deps: &[DepRow]) -> MemEntry {
        let meta = Meta {
            fingerprint: 0,
            stored_at_ms: 0,
            expires_at_ms,
            entry_id: id,
        };
        let bytes = entry::encode(&meta, &[id as u8], deps, b"payload", entry::Pad::Large);
        MemEntry::new(bytes.into()).unwrap()
    }

    #[test]
    fn an_entry_reads_back_its_parts() {
        let e = with_deps(7, 99, &[row(1), row(2)]);
        assert_eq!(e.meta().entry_id, 7);
        assert_eq!(e.meta().expires_at_ms, 99);
        assert_eq!(e.key(), &[7]);
        assert_eq!(e.deps().collect::<Vec<_>>(), vec![row(1), row(2)]);
        assert_eq!(e.payload(), b"payload");
        assert_eq!(&e.bytes()[e.payload_offset()..], b"payload");
        assert!(MemEntry::new(Arc::from(&b"not an entry"[..])).is_none());
    }

    #[test]
    fn lru_keeps_list_and_index_in_step() {
        let mut store = MemStore::new(Some(4));
        for i in 0..50u64 {
            let hash = [(i % 7) as u8; 16];
            store.insert(hash, entry(i));
            store.validate().unwrap();
            if i % 3 == 0 {
                store.get(&[(i % 5) as u8; 16]);
                store.validate().unwrap();
            }
            if i % 11 == 0 {
                store.remove(&[(i % 7) as u8; 16]);
                store.validate().unwrap();
            }
        }
        assert!(store.len() <= 4);
        store.remove_expired(40);
        store.validate().unwrap();
    }

    /// xorshift64*: deterministic, dependency-free randomness for the model test.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
        }
    }

    fn row(dep: u64) -> DepRow {
        crate::key::dep_row(1 + dep % 2, [dep as u8; 16])
    }

    /// Random inserts (with 0-3 dependency rows), overwrites, hits, removals, evictions,
    /// expiry, clears and dependency removals against a plain model of what the store
    /// holds; the dependency index must match after every step, and `remove_dep` must
    /// remove exactly the entries a full scan of the model finds.
    #[test]
    fn dependency_index_stays_exact_against_a_model() {
        let counts = [None, Some(1), Some(5), Some(16)].map(|entries| Bound {
            entries,
            ..Bound::default()
        });
        // Byte bounds of a few entries (they weigh 60-200 bytes), alone and with a count.
        let weights =
            [(None, Some(400)), (Some(8), Some(700)), (None, Some(150))].map(|(entries, bytes)| {
                Bound {
                    entries,
                    bytes,
                    ..Bound::default()
                }
            });
        // Weighers: by the archive (7 bytes here) x 20; no answer (the encoded size
        // counts); a weight past u32::MAX (never kept).
        let by_archive: Weigher = Arc::new(|archive: &[u8]| Some(archive.len() as u64 * 20));
        let fallback: Weigher = Arc::new(|_: &[u8]| None);
        let huge: Weigher = Arc::new(|_: &[u8]| Some(u64::MAX));
        let weighed = [
            (None, Some(400), by_archive),
            (Some(8), Some(700), fallback),
            (None, Some(usize::MAX), huge),
        ]
        .map(|(entries, bytes, weigher)| Bound {
            entries,
            bytes,
            weigher: Some(weigher),
        });
        let bounds = counts.into_iter().chain(weights).chain(weighed);
        for (n, bound) in bounds.enumerate() {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ n as u64);
            let mut store = MemStore::bounded(bound.clone());
            let capacity = bound.clone();
            // hash byte -> (deps, expires_at_ms) of the entry the store should hold, if
            // it has not been evicted (the model does not track LRU order).
            let mut model: HashMap<u8, (Vec<DepRow>, u64)> = HashMap::new();
            for step in 0..3000u64 {
                let k = rng.below(24) as u8;
                let hash = [k; 16];
                match rng.below(10) {
                    0..=3 => {
                        let deps: Vec<DepRow> =
                            (0..rng.below(4)).map(|_| row(rng.below(6))).collect();
                        let mut unique = deps.clone();
                        unique.sort();
                        unique.dedup();
                        let expires = 1 + rng.below(400);
                        let entry = with_deps(step, expires, &unique);
                        let weight = bound
                            .weigher
                            .as_ref()
                            .and_then(|w| w(entry.payload()))
                            .unwrap_or(entry.bytes().len() as u64);
                        let heavy = bound
                            .bytes
                            .is_some_and(|b| weight > b as u64 || weight > u64::from(u32::MAX));
                        let evicted = store.insert(hash, entry);
                        for (h, _) in evicted {
                            assert!(model.remove(&h[0]).is_some(), "evicted an absent entry");
                        }
                        if heavy {
                            // Not kept, and what it replaced is gone.
                            model.remove(&k);
                        } else {
                            model.insert(k, (unique, expires));
                        }
                    }
                    4 => {
                        assert_eq!(store.get(&hash).is_some(), model.contains_key(&k));
                    }
                    5 => {
                        assert_eq!(store.remove(&hash).is_some(), model.remove(&k).is_some());
                    }
                    6 | 7 => {
                        let r = row(rng.below(6));
                        let mut got: Vec<u8> = store.remove_dep(&r).iter().map(|h| h[0]).collect();
                        let mut want: Vec<u8> = model
                            .iter()
                            .filter(|(_, (deps, _))| deps.contains(&r))
                            .map(|(k, _)| *k)
                            .collect();
                        got.sort();
                        want.sort();
                        assert_eq!(got, want, "step {step}");
                        model.retain(|_, (deps, _)| !deps.contains(&r));
                    }
                    8 => {
                        let now = rng.below(400);
                        let n = store.remove_expired(now).len();
                        let before = model.len();
                        model.retain(|_, (_, at)| now < *at);
                        assert_eq!(n, before - model.len());
                    }
                    _ => {
                        if rng.below(20) == 0 {
                            assert_eq!(store.clear(), model.len());
                            model.clear();
                        }
                    }
                }
                assert_eq!(store.len(), model.len(), "step {step}");
                if let Err(e) = store.validate() {
                    panic!("capacity {capacity:?}, step {step}: {e}");
                }
            }
        }
    }

    #[test]
    fn validate_catches_a_dangling_dependency_row() {
        let mut store = MemStore::new(None);
        store.insert([1; 16], with_deps(1, 0, &[row(1)]));
        store.validate().unwrap();
        store.deps.entry(row(2)).or_default().insert([1; 16]);
        assert!(store.validate().is_err());
        store.deps.remove(&row(2));
        store.deps.get_mut(&row(1)).unwrap().clear();
        assert!(store.validate().is_err());
    }

    #[test]
    fn removed_entries_are_released() {
        let mut store = MemStore::new(None);
        let e = with_deps(1, 0, &[row(1)]);
        store.insert([1; 16], e.clone());
        assert_eq!(store.remove_dep(&row(1)), vec![[1; 16]]);
        assert_eq!(
            Arc::strong_count(e.bytes()),
            1,
            "a free slot still holds the entry"
        );
    }

    fn hash_of(i: u64) -> KeyHash {
        crate::key::xxh3_key_hash(&i.to_le_bytes())
    }

    #[test]
    fn a_sharded_store_keeps_every_entry_in_its_shard_and_its_capacity() {
        let cap = 64 * MIN_PER_SHARD;
        let store = Sharded::new(Some(cap));
        assert!(store.shards.count() > 1, "a large LRU is split");
        let share_sum: usize = store.shards.each().map(|s| s.capacity.unwrap()).sum();
        assert_eq!(share_sum, cap, "the shares add up to the capacity");
        for i in 0..(3 * cap as u64) {
            let h = hash_of(i);
            store.shard(&h).insert(h, entry(i));
            assert!(store.len() <= cap);
        }
        store.validate().unwrap();
        // Every shard filled up to its share: the store as a whole is full.
        assert!(store.len() > cap * 9 / 10, "{} of {cap}", store.len());
        // The last entries inserted are all still there (each shard's most recent).
        for i in (3 * cap as u64 - 100)..(3 * cap as u64) {
            let h = hash_of(i);
            assert!(
                store.shard(&h).get(&h).is_some(),
                "recent entry {i} evicted"
            );
        }
        let n = store.len();
        assert_eq!(store.clear(), n);
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn small_lrus_stay_one_exact_lru() {
        let store = Sharded::new(Some(MIN_PER_SHARD + 1));
        assert_eq!(store.shards.count(), 1);
        let unbounded = Sharded::new(None);
        assert!(unbounded.shards.count().is_power_of_two());
        assert_eq!(Sharded::new(Some(3 * MIN_PER_SHARD)).shards.count(), 2);
    }

    #[test]
    fn validate_catches_an_entry_in_a_foreign_shard() {
        let store = Sharded::new(None);
        let h = hash_of(7);
        let own = store.shards.index_of(&h);
        let other = (own + 1) % store.shards.count();
        store.shards.at(other).insert(h, entry(7));
        assert!(store.validate().is_err());
    }
}
