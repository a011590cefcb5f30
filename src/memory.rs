//! In-process stores: unbounded (the original's dict) and bounded LRU (its LRUCacheDict).
//!
//! Entries keep their rkyv payload in an aligned buffer, so hits are read in place.

use std::sync::Arc;

use rkyv::util::AlignedVec;

use crate::entry::{DepRow, Meta};
use crate::key::{HashMapByKey, KeyHash};

/// One in-memory entry.
pub(crate) struct MemEntry {
    pub meta: Meta,
    pub key: Box<[u8]>,
    pub deps: Box<[DepRow]>,
    pub payload: AlignedVec,
}

const NIL: usize = usize::MAX;

struct Node {
    hash: KeyHash,
    entry: Arc<MemEntry>,
    prev: usize,
    next: usize,
}

/// A map of entries with optional LRU bound. Recency is a doubly linked list threaded
/// through a slab, so a hit moves its node to the front in O(1).
pub(crate) struct MemStore {
    capacity: Option<usize>,
    index: HashMapByKey<usize>,
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: usize,
    tail: usize,
}

impl MemStore {
    /// `capacity: None` is unbounded.
    pub(crate) fn new(capacity: Option<usize>) -> Self {
        MemStore {
            capacity: capacity.map(|c| c.max(1)),
            index: HashMapByKey::default(),
            nodes: Vec::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.head = next
        } else {
            self.nodes[prev].next = next
        }
        if next == NIL {
            self.tail = prev
        } else {
            self.nodes[next].prev = prev
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head != NIL {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
        if self.tail == NIL {
            self.tail = i;
        }
    }

    /// Looks an entry up, marking it most recently used.
    pub(crate) fn get(&mut self, hash: &KeyHash) -> Option<Arc<MemEntry>> {
        let i = *self.index.get(hash)?;
        if self.capacity.is_some() && self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
        Some(self.nodes[i].entry.clone())
    }

    /// Inserts or replaces; returns the entries evicted to make room (not the replaced one).
    pub(crate) fn insert(
        &mut self,
        hash: KeyHash,
        entry: Arc<MemEntry>,
    ) -> Vec<(KeyHash, Arc<MemEntry>)> {
        if let Some(&i) = self.index.get(&hash) {
            self.nodes[i].entry = entry;
            if self.capacity.is_some() {
                self.unlink(i);
                self.push_front(i);
            }
            return Vec::new();
        }
        let mut evicted = Vec::new();
        if let Some(cap) = self.capacity {
            while self.index.len() >= cap && self.tail != NIL {
                let victim = self.nodes[self.tail].hash;
                if let Some(e) = self.remove(&victim) {
                    evicted.push((victim, e));
                }
            }
        }
        let node = Node {
            hash,
            entry,
            prev: NIL,
            next: NIL,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        self.index.insert(hash, i);
        self.push_front(i);
        evicted
    }

    pub(crate) fn remove(&mut self, hash: &KeyHash) -> Option<Arc<MemEntry>> {
        let i = self.index.remove(hash)?;
        self.unlink(i);
        self.free.push(i);
        Some(self.nodes[i].entry.clone())
    }

    /// Removes everything; returns how many entries there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.index.len();
        *self = MemStore::new(self.capacity);
        n
    }

    /// Removes every entry whose dependency rows contain `row`; returns their hashes.
    /// O(entries of this store): in-memory stores keep no index (they are small and a
    /// scan of memory is cheap next to one redb transaction).
    pub(crate) fn remove_dep(&mut self, row: &DepRow) -> Vec<KeyHash> {
        let hit: Vec<KeyHash> = self
            .index
            .iter()
            .filter(|(_, i)| self.nodes[**i].entry.deps.contains(row))
            .map(|(h, _)| *h)
            .collect();
        for h in &hit {
            self.remove(h);
        }
        hit
    }

    /// Removes every entry past its deadline; returns how many.
    pub(crate) fn remove_expired(&mut self, now_ms: u64) -> u64 {
        let due: Vec<KeyHash> = self
            .index
            .iter()
            .filter(|(_, i)| self.nodes[**i].entry.meta.expired(now_ms))
            .map(|(h, _)| *h)
            .collect();
        for h in &due {
            self.remove(h);
        }
        due.len() as u64
    }

    /// Checks the list and the index agree. For tests and fuzzing.
    #[cfg(test)]
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut seen = 0;
        let mut i = self.head;
        let mut prev = NIL;
        while i != NIL {
            if self.nodes[i].prev != prev {
                return Err(format!("node {i} has a wrong back link"));
            }
            if self.index.get(&self.nodes[i].hash) != Some(&i) {
                return Err(format!("node {i} is linked but not indexed"));
            }
            seen += 1;
            prev = i;
            i = self.nodes[i].next;
        }
        if self.tail != prev || seen != self.index.len() {
            return Err(format!("list has {seen} nodes, index {}", self.index.len()));
        }
        if let Some(cap) = self.capacity
            && seen > cap
        {
            return Err(format!("{seen} entries exceed capacity {cap}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64) -> Arc<MemEntry> {
        Arc::new(MemEntry {
            meta: Meta {
                fingerprint: 0,
                stored_at_ms: 0,
                expires_at_ms: id,
                entry_id: id,
            },
            key: Box::new([id as u8]),
            deps: Box::new([]),
            payload: AlignedVec::new(),
        })
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
}
