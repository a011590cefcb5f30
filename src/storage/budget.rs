//! The file's byte budget (`CacheBuilder::max_bytes`): what an entry is charged, the
//! admission and eviction policy, and the eviction rounds the writer runs inside its
//! batches.
//!
//! The policy is TinyLFU admission over a second-chance order. Every persistent lookup
//! of a cache with a budget counts its key in a count-min sketch held in memory (four
//! 4-bit counters, halved every `10 x width` counts, so old popularity fades): that is
//! how recency and frequency of hits are recorded without a write per hit. When the
//! entries' charge passes the live target, an eviction round looks at the first rows
//! of the on-disk eviction order ([`super::tables::EVICT_ORDER`]) and compares each with
//! the entry just stored (the candidate): a row less popular than the candidate is
//! evicted; a more popular one is moved to the end of the order (its second chance, one
//! write per eviction rather than per hit); if none of them is less popular, the
//! candidate itself goes (it is not admitted). A one-pass scan of cold keys therefore
//! passes through without pushing out what is popular.
//!
//! A memoizer may also have a budget of its own (`MemoizerBuilder::max_bytes`,
//! [`MemoBudget`]): the same rounds then keep its charge under that budget, choosing
//! among its own entries only, through its own run of the eviction order. Its lookups
//! are counted in the file's sketch if the file has a budget, else in a sketch of its
//! own.
//!
//! Evictions go through [`ops::evict`], which removes entries with the removal code of
//! invalidations (`ops::remove_refs`), so every index stays exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;
use redb::WriteTransaction;

use super::{Storage, ops};
use crate::key::KeyHash;
use crate::stats::{stripe_count, thread_stripe};

/// Counts (entries of the sketch) per row of the sketch: four rows.
const DEPTH: usize = 4;

/// The bytes the file is charged for an entry of `len` bytes: what redb spends on it.
/// A small row shares a leaf page (its 16-byte key, its bytes, redb's offsets), and
/// leaves of rows landing at random places end about two thirds full; its index rows
/// (eviction, dependency, expiry) add about 100 bytes. A value of half a page or more
/// gets a page of its own, of a power-of-two size.
pub(crate) fn charge(len: usize) -> u64 {
    let raw = len as u64 + 16 + 8;
    if raw >= 2048 {
        raw.next_power_of_two().max(4096)
    } else {
        (raw + 100) * 3 / 2
    }
}

/// The byte budget of a cache file and its policy's state.
pub(crate) struct Budget {
    max_bytes: u64,
    sketch: Sketch,
}

/// The sketch for a budget that keeps `live` bytes of entries: about one column per 144
/// bytes of them (one per 256 bytes of a file budget, of which 9/16 is live), a few
/// times the entries held for small values, plenty for large ones.
fn sketch_for(live: u64) -> Sketch {
    let width = (live / 144).clamp(1 << 10, 1 << 22).next_power_of_two() as usize;
    Sketch::new(width)
}

/// Bytes stored between eviction rounds for a budget of `max_bytes`.
fn slack_for(max_bytes: u64) -> u64 {
    (max_bytes / 32).max(64 << 10)
}

impl Budget {
    pub(crate) fn new(max_bytes: u64) -> Budget {
        Budget {
            max_bytes,
            sketch: sketch_for(max_bytes / 16 * 9),
        }
    }

    /// The budget for the whole file.
    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The charge the live entries are kept under: 9/16 of the budget. The file is
    /// allowed 5/4 of it ([`Budget::file_bound`]), and redb grows a file (of less than a
    /// 4 GiB region) by doubling it: the live pages, what redb adds (branch pages, the
    /// registry) and the pages freed by the last batches must fit in 5/8 of the budget
    /// for a doubled file to stay within the bound.
    pub(crate) fn live_target(&self) -> u64 {
        self.max_bytes / 16 * 9
    }

    /// The file length past which it is compacted: 5/4 of the budget.
    pub(crate) fn file_bound(&self) -> u64 {
        self.max_bytes / 4 * 5
    }

    /// Bytes stored in one batch between eviction rounds, so a burst never runs far
    /// past the budget before its batch commits.
    fn slack(&self) -> u64 {
        slack_for(self.max_bytes)
    }

    /// Counts a lookup of `hash` in memoizer `memo_id`.
    pub(crate) fn record(&self, memo_id: u64, hash: &KeyHash) {
        self.sketch.record(mix(memo_id, hash));
    }

    /// How popular `hash` of memoizer `memo_id` has been lately (0..=15), as counted
    /// at the last [`settle`](Self::settle).
    pub(crate) fn frequency(&self, memo_id: u64, hash: &KeyHash) -> u8 {
        self.sketch.estimate(mix(memo_id, hash))
    }

    /// Counts the lookups still buffered.
    fn settle(&self) {
        self.sketch.settle();
    }
}

/// A memoizer's own byte budget (`MemoizerBuilder::max_bytes`): its entries' charge is
/// kept under `max_bytes` (the charge itself, not a share of a file length: the file's
/// own growth is the file budget's business).
pub(crate) struct MemoBudget {
    max_bytes: u64,
    /// Where its lookups are counted when the file has no budget (whose sketch they go
    /// to otherwise).
    sketch: Option<Sketch>,
}

impl MemoBudget {
    /// A budget of `max_bytes`; `own_sketch` when the file has no budget (and so no
    /// sketch) of its own.
    pub(crate) fn new(max_bytes: u64, own_sketch: bool) -> MemoBudget {
        MemoBudget {
            max_bytes,
            sketch: own_sketch.then(|| sketch_for(max_bytes)),
        }
    }

    /// Counts a lookup of `hash` in memoizer `memo_id` (if this budget has a sketch).
    pub(crate) fn record(&self, memo_id: u64, hash: &KeyHash) {
        if let Some(sketch) = &self.sketch {
            sketch.record(mix(memo_id, hash));
        }
    }

    fn frequency(&self, memo_id: u64, hash: &KeyHash) -> u8 {
        self.sketch
            .as_ref()
            .map_or(0, |sketch| sketch.estimate(mix(memo_id, hash)))
    }

    /// Counts the lookups still buffered.
    fn settle(&self) {
        if let Some(sketch) = &self.sketch {
            sketch.settle();
        }
    }
}

/// The sketch's hash of a key: the row hash is uniform already.
fn mix(memo_id: u64, hash: &KeyHash) -> u64 {
    let mut lo = [0u8; 8];
    lo.copy_from_slice(&hash[..8]);
    let mut hi = [0u8; 8];
    hi.copy_from_slice(&hash[8..]);
    (u64::from_le_bytes(lo) ^ u64::from_le_bytes(hi).rotate_left(29))
        ^ memo_id.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Lookups a thread stripe buffers before counting them in the sketch.
const BUFFERED: usize = 32;

/// One thread stripe's lookups not counted yet.
#[derive(Default)]
struct Pending {
    len: AtomicUsize,
    hashes: [AtomicU64; BUFFERED],
}

/// A count-min sketch of saturating 4-bit counts (one byte each), lossy under races by
/// design: counts are relaxed loads and stores, never read-modify-write loops.
///
/// A lookup is not counted at once: it goes to its thread stripe's buffer, and a full
/// buffer is counted in one go. A sketch of a large budget does not fit the CPU's
/// caches, and counting one lookup missed them once, on every hit (+13-22 % on a
/// persistent hit); the 32 counts of a buffer are independent, so their misses overlap
/// (+4 %).
/// The writer counts every buffer ([`Sketch::settle`]) before an eviction round reads
/// the counts.
struct Sketch {
    counts: Box<[AtomicU8]>,
    mask: usize,
    /// Counts since the last halving, sampled (one in 16 counts adds 16).
    counted: AtomicU64,
    /// Counts between halvings.
    period: u64,
    /// Lookups not counted yet, per thread stripe.
    pending: Box<[CachePadded<Pending>]>,
}

impl Sketch {
    fn new(width: usize) -> Sketch {
        Sketch {
            counts: (0..width * DEPTH).map(|_| AtomicU8::new(0)).collect(),
            // 64-byte blocks of four rows of 16 counts.
            mask: (width * DEPTH / 64).max(1) - 1,
            counted: AtomicU64::new(0),
            period: width as u64 * 10,
            pending: (0..stripe_count())
                .map(|_| CachePadded::default())
                .collect(),
        }
    }

    /// Where row `row`'s count of `h` is: the four counts of a key lie in one 64-byte
    /// block (one cache line), 16 counts per row, each row picking by other bits of the
    /// hash.
    fn slot(&self, h: u64, row: usize) -> usize {
        let block = (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask;
        block * 64 + row * 16 + ((h >> (row * 4)) & 15) as usize
    }

    /// Notes a lookup of `h`: buffered, counted with its stripe's next 31 (or at the
    /// writer's next [`Sketch::settle`]). Two threads sharing a stripe may lose one
    /// another's lookups, by design.
    fn record(&self, h: u64) {
        let pending = &self.pending[thread_stripe(self.pending.len())];
        let i = pending.len.load(Ordering::Relaxed).min(BUFFERED - 1);
        pending.hashes[i].store(h, Ordering::Relaxed);
        if i + 1 < BUFFERED {
            pending.len.store(i + 1, Ordering::Relaxed);
            return;
        }
        pending.len.store(0, Ordering::Relaxed);
        self.count_all(&pending.hashes);
    }

    /// Counts `buffered`: first a load from each key's block, independent of one
    /// another so that their cache misses overlap (the count's own load-then-store
    /// would hold the store buffer while its block is fetched), then the counts.
    fn count_all(&self, buffered: &[AtomicU64]) {
        let mut hashes = [0u64; BUFFERED];
        let mut touched = 0u8;
        for (h, b) in hashes.iter_mut().zip(buffered) {
            *h = b.load(Ordering::Relaxed);
            touched |= self.counts[self.slot(*h, 0)].load(Ordering::Relaxed);
        }
        std::hint::black_box(touched);
        for &h in &hashes[..buffered.len().min(BUFFERED)] {
            self.count(h);
        }
    }

    /// Counts every buffered lookup (before the counts are read for an eviction round).
    fn settle(&self) {
        for pending in self.pending.iter() {
            let n = pending.len.swap(0, Ordering::Relaxed).min(BUFFERED);
            self.count_all(&pending.hashes[..n]);
        }
    }

    fn count(&self, h: u64) {
        for row in 0..DEPTH {
            let cell = &self.counts[self.slot(h, row)];
            let n = cell.load(Ordering::Relaxed);
            if n < 15 {
                cell.store(n + 1, Ordering::Relaxed);
            }
        }
        // Sampling keeps this shared counter off most counts.
        if h & 15 == 0 && self.counted.fetch_add(16, Ordering::Relaxed) + 16 >= self.period {
            self.counted.store(0, Ordering::Relaxed);
            for cell in self.counts.iter() {
                cell.store(cell.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
        }
    }

    fn estimate(&self, h: u64) -> u8 {
        (0..DEPTH)
            .map(|row| self.counts[self.slot(h, row)].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

/// A memoizer with a budget of its own, as one batch's rounds see it.
struct MemoRound {
    memo_id: u64,
    budget: Arc<MemoBudget>,
    /// Its bytes stored since its last round.
    since: u64,
}

impl MemoRound {
    fn budget(&self) -> &MemoBudget {
        &self.budget
    }
}

/// The eviction rounds of one batch: after every [`Budget::slack`] bytes of puts (of the
/// file, or of a memoizer with a budget of its own) and at the end of the batch, entries
/// are evicted until each memoizer with a budget is under it and the file's live charge
/// is under target.
pub(crate) struct Rounds<'b> {
    budget: Option<&'b Budget>,
    /// Memoizers with budgets of their own.
    memos: Vec<MemoRound>,
    /// Puts since the last round: the candidates for admission.
    candidates: Vec<(u64, KeyHash)>,
    since: u64,
    /// Live entries evicted so far: (memoizer id, row hash).
    pub(crate) evicted: Vec<(u64, KeyHash)>,
}

impl<'b> Rounds<'b> {
    pub(crate) fn new(storage: &'b Storage) -> Self {
        let memos = storage
            .memo_budgets()
            .into_iter()
            .map(|(memo_id, budget)| MemoRound {
                memo_id,
                budget,
                since: 0,
            })
            .collect();
        Rounds {
            budget: storage.budget(),
            memos,
            candidates: Vec::new(),
            since: 0,
            evicted: Vec::new(),
        }
    }

    /// Whether any budget counts this transaction's puts.
    pub(crate) fn bounded(&self) -> bool {
        self.budget.is_some() || !self.memos.is_empty()
    }

    /// Notes a put of `len` bytes; true when a round is due (close the open entries
    /// table, then call [`Rounds::run`]).
    pub(crate) fn put(&mut self, memo_id: u64, hash: &KeyHash, len: usize) -> bool {
        let memo = self.memos.iter_mut().find(|m| m.memo_id == memo_id);
        if self.budget.is_none() && memo.is_none() {
            return false;
        }
        self.candidates.push((memo_id, *hash));
        let mut due = false;
        if let Some(memo) = memo {
            memo.since += len as u64;
            due |= memo.since >= slack_for(memo.budget().max_bytes);
        }
        if let Some(budget) = self.budget {
            self.since += len as u64;
            due |= self.since >= budget.slack();
        }
        due
    }

    /// Evicts until every memoizer with a budget of its own is under it, then until the
    /// file's live charge is under target.
    pub(crate) fn run(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        let file = self.budget;
        if file.is_none() && self.memos.is_empty() {
            return Ok(());
        }
        // The first round a file sees under a budget (a fresh file included) gives its
        // entries their eviction rows; the puts before it in this batch are among them.
        ops::index_for_eviction(txn)?;
        if let Some(budget) = file {
            budget.settle();
        }
        for memo in &mut self.memos {
            let own = memo.budget();
            own.settle();
            let frequency = |memo_id: u64, hash: &KeyHash| match file {
                Some(budget) => budget.frequency(memo_id, hash),
                None => own.frequency(memo_id, hash),
            };
            let candidates: Vec<(u64, KeyHash)> = self
                .candidates
                .iter()
                .filter(|(id, _)| *id == memo.memo_id)
                .copied()
                .collect();
            let bound = (own.max_bytes, own.max_bytes);
            let gone = ops::evict(txn, Some(memo.memo_id), bound, &candidates, &frequency)?;
            self.evicted.extend(gone);
            memo.since = 0;
        }
        if let Some(budget) = file {
            let frequency = |memo_id: u64, hash: &KeyHash| budget.frequency(memo_id, hash);
            let bound = (budget.max_bytes, budget.live_target());
            let gone = ops::evict(txn, None, bound, &self.candidates, &frequency)?;
            self.evicted.extend(gone);
        }
        self.candidates.clear();
        self.since = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_grow_with_the_entry_and_pages_round_up() {
        assert!(charge(100) > 124);
        assert!(charge(100) < charge(200));
        assert_eq!(charge(50 << 10), 64 << 10);
        assert_eq!(charge(3000), 4096);
    }

    #[test]
    fn the_sketch_tells_popular_keys_from_cold_ones() {
        let sketch = Sketch::new(1 << 10);
        for i in 0..200u64 {
            sketch.record(7);
            sketch.record(i.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
        sketch.settle();
        assert_eq!(sketch.estimate(7), 15);
        assert!(sketch.estimate(0x1234_5678_9abc_def1) <= 2);
    }

    #[test]
    fn counts_fade_by_halving() {
        let sketch = Sketch::new(1 << 10);
        for _ in 0..15 {
            sketch.record(16 * 7);
        }
        sketch.settle();
        assert_eq!(sketch.estimate(16 * 7), 15);
        // Keys that are multiples of 16 feed the sampled counter.
        for i in 0..(sketch.period / 16 + 1) {
            sketch.record(16 * (1000 + i));
        }
        sketch.settle();
        assert!(sketch.estimate(16 * 7) < 15);
    }

    #[test]
    fn lookups_are_counted_when_a_buffer_fills_or_settles() {
        let sketch = Sketch::new(1 << 10);
        for _ in 0..BUFFERED - 1 {
            sketch.record(9);
        }
        // Buffered, not counted yet.
        assert_eq!(sketch.estimate(9), 0);
        sketch.record(9);
        // The 32nd filled the buffer: all counted (saturating at 15).
        assert_eq!(sketch.estimate(9), 15);
        sketch.record(11);
        assert_eq!(sketch.estimate(11), 0);
        sketch.settle();
        assert_eq!(sketch.estimate(11), 1);
        // Settled once: not counted twice.
        sketch.settle();
        assert_eq!(sketch.estimate(11), 1);
    }
}
