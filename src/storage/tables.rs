//! Table definitions: the names and types below are part of the on-disk format.

use redb::{MultimapTableDefinition, TableDefinition};

/// Format version, id counters. Its presence marks a file as ours.
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("fresco/meta");
/// Memoizer name -> record (id u64 LE, fingerprint u64 LE, flags u64 LE: bit 0 indexed,
/// bit 1 placed).
pub(crate) const MEMOIZERS: TableDefinition<&str, &[u8]> = TableDefinition::new("fresco/memoizers");
/// Memoizer id -> name.
pub(crate) const MEMOIZER_NAMES: TableDefinition<u64, &str> =
    TableDefinition::new("fresco/memoizer_names");
/// Zone name -> zone id.
pub(crate) const ZONES: TableDefinition<&str, u64> = TableDefinition::new("fresco/zones");
/// Zone id -> ids of its member memoizers.
pub(crate) const ZONE_MEMBERS: MultimapTableDefinition<u64, u64> =
    MultimapTableDefinition::new("fresco/zone_members");
/// Dependency row (zone id BE ++ dep hash) -> entry ref (memoizer id BE ++ key hash ++
/// table generation BE).
pub(crate) const DEPS: MultimapTableDefinition<&[u8; 24], &[u8; 32]> =
    MultimapTableDefinition::new("fresco/deps");

/// Expiry index: deadline (unix ms, BE) ++ memoizer id (BE) ++ table generation (BE) ++
/// key hash -> (). Ordered by deadline, so expired entries are found by one range read.
pub(crate) const EXPIRY: TableDefinition<&[u8; 40], ()> = TableDefinition::new("fresco/expiry");

/// Memoizer id -> the generation of its live entries table (absent: 0). Clearing a
/// memoizer renames its table to a grave and bumps this.
pub(crate) const GENERATIONS: TableDefinition<u64, u64> =
    TableDefinition::new("fresco/generations");

/// Graves: cleared entries tables awaiting reclamation, by memoizer id (BE) ++ generation
/// (BE) -> (). Each names a table [`grave_name`]; its entries and their index rows are
/// removed in bounded batches in the background (`ops::reclaim`).
pub(crate) const GRAVES: TableDefinition<&[u8; 16], ()> = TableDefinition::new("fresco/graves");

/// Shared mode's invalidation log: sequence -> what was removed (`storage::multi`):
/// written in each invalidation's transaction, read by the other processes of a shared
/// cache to purge their memory tiers and by every put transaction to refuse a value
/// computed before an invalidation. Trimmed to the last [`LOG_KEEP`] rows.
pub(crate) const INVALIDATIONS: TableDefinition<u64, &[u8]> =
    TableDefinition::new("fresco/invalidations");

/// How many rows of [`INVALIDATIONS`] are kept; a process further behind purges all.
pub(crate) const LOG_KEEP: u64 = 4096;

/// Eviction index of a cache with a byte budget (kept from the first time the file or
/// one of its memoizers was given one, [`KEY_EVICT_INDEX`]): entry ref (as in [`DEPS`])
/// -> its eviction tick, the position of its row in [`EVICT_ORDER`].
pub(crate) const EVICT: TableDefinition<&[u8; 32], u64> = TableDefinition::new("fresco/evict");

/// Eviction order, one run of rows per memoizer: memoizer id (BE) ++ tick (BE) ++ row
/// hash ++ table generation (BE) -> (). A memoizer's first row is its next candidate for
/// eviction (a memoizer's own budget, `MemoizerBuilder::max_bytes`); the file's next
/// candidate is the first row with the lowest tick among the memoizers' first rows.
/// Ticks count up across the file: a put, or an entry given a second chance, gets one
/// past every tick in the table.
pub(crate) const EVICT_ORDER: TableDefinition<&[u8; 40], ()> =
    TableDefinition::new("fresco/evict_order");

/// Memoizer id -> bytes its entries (live and in graves) are charged for
/// ([`crate::storage::budget::charge`]); the file's use is the sum.
pub(crate) const SIZES: TableDefinition<u64, u64> = TableDefinition::new("fresco/sizes");

/// An [`EVICT_ORDER`] key.
pub(crate) fn order_key(tick: u64, entry_ref: &[u8; 32]) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&entry_ref[..8]);
    k[8..16].copy_from_slice(&tick.to_be_bytes());
    k[16..].copy_from_slice(&entry_ref[8..]);
    k
}

/// Splits an [`EVICT_ORDER`] key into (tick, entry ref).
pub(crate) fn split_order_key(k: &[u8; 40]) -> (u64, [u8; 32]) {
    let mut r = [0u8; 32];
    r[..8].copy_from_slice(&k[..8]);
    r[8..].copy_from_slice(&k[16..]);
    (word(&k[8..16]), r)
}

/// The first and the last possible [`EVICT_ORDER`] key of memoizer `memo_id`.
pub(crate) fn order_bounds(memo_id: u64) -> ([u8; 40], [u8; 40]) {
    let (mut first, mut last) = ([0u8; 40], [0xffu8; 40]);
    first[..8].copy_from_slice(&memo_id.to_be_bytes());
    last[..8].copy_from_slice(&memo_id.to_be_bytes());
    (first, last)
}

/// The memoizer id an [`EVICT_ORDER`] key belongs to.
pub(crate) fn order_memo(k: &[u8; 40]) -> u64 {
    word(&k[..8])
}

/// Prefix of every grave's name.
pub(crate) const GRAVE_PREFIX: &str = "fresco/reclaim/";

/// Name of the grave of memoizer `id`'s entries table of generation `generation`.
pub(crate) fn grave_name(id: u64, generation: u64) -> String {
    format!("{GRAVE_PREFIX}{id}.{generation}")
}

/// A [`GRAVES`] key.
pub(crate) fn grave_key(id: u64, generation: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&id.to_be_bytes());
    k[8..].copy_from_slice(&generation.to_be_bytes());
    k
}

/// Splits a [`GRAVES`] key into (memoizer id, generation).
pub(crate) fn split_grave_key(k: &[u8; 16]) -> (u64, u64) {
    (word(&k[..8]), word(&k[8..]))
}

fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(bytes);
    u64::from_be_bytes(w)
}

/// Builds an [`EXPIRY`] key.
pub(crate) fn expiry_key(
    expires_at_ms: u64,
    memo_id: u64,
    generation: u64,
    hash: &[u8; 16],
) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..8].copy_from_slice(&expires_at_ms.to_be_bytes());
    k[8..16].copy_from_slice(&memo_id.to_be_bytes());
    k[16..24].copy_from_slice(&generation.to_be_bytes());
    k[24..].copy_from_slice(hash);
    k
}

/// The last [`EXPIRY`] key with a deadline at or before `now_ms`.
pub(crate) fn expiry_end(now_ms: u64) -> [u8; 40] {
    expiry_key(now_ms, u64::MAX, u64::MAX, &[0xff; 16])
}

/// Splits an [`EXPIRY`] key into (deadline, memoizer id, generation, hash).
pub(crate) fn split_expiry_key(k: &[u8; 40]) -> (u64, u64, u64, [u8; 16]) {
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&k[24..]);
    (word(&k[..8]), word(&k[8..16]), word(&k[16..24]), hash)
}

pub(crate) const KEY_FORMAT_VERSION: &str = "format_version";
pub(crate) const KEY_NEXT_MEMOIZER: &str = "next_memoizer_id";
pub(crate) const KEY_NEXT_ZONE: &str = "next_zone_id";
/// The byte budget in force at the last eviction.
pub(crate) const KEY_MAX_BYTES: &str = "max_bytes";
/// Present once every entry has its rows in [`EVICT`] and [`EVICT_ORDER`]: set (by
/// `ops::index_for_eviction`) when the file or one of its memoizers is first given a
/// byte budget, and kept from then on. A file without it keeps no eviction rows, so a
/// put writes two rows fewer; [`SIZES`] is kept either way.
pub(crate) const KEY_EVICT_INDEX: &str = "evict_index";
/// Prefix of the [`META`] keys holding each memoizer's own byte budget in force at its
/// last eviction for it.
pub(crate) const MEMO_MAX_BYTES_PREFIX: &str = "max_bytes/";
/// Prefix of the [`META`] keys counting each memoizer's evictions for the budget.
pub(crate) const EVICTIONS_PREFIX: &str = "evicted/";

/// The [`META`] key counting memoizer `id`'s evictions for the byte budget.
pub(crate) fn evictions_key(id: u64) -> String {
    format!("{EVICTIONS_PREFIX}{id}")
}

/// The [`META`] key of memoizer `id`'s own byte budget.
pub(crate) fn memo_max_bytes_key(id: u64) -> String {
    format!("{MEMO_MAX_BYTES_PREFIX}{id}")
}

/// Prefix shared by every table this library creates.
pub(crate) const PREFIX: &str = "fresco/";

/// The entries table of one memoizer, keyed by row hash.
pub(crate) type EntriesDef<'a> = TableDefinition<'a, &'static [u8; 16], &'static [u8]>;

/// Prefix of every entries table's name.
pub(crate) const ENTRIES_PREFIX: &str = "fresco/entries/";

/// Name of the entries table of memoizer `id`.
pub(crate) fn entries_name(id: u64) -> String {
    format!("{ENTRIES_PREFIX}{id}")
}

/// An entry reference as stored in [`DEPS`]: memoizer id (BE), key hash, table
/// generation (BE).
pub(crate) fn entry_ref(memo_id: u64, generation: u64, hash: &[u8; 16]) -> [u8; 32] {
    let mut r = [0u8; 32];
    r[..8].copy_from_slice(&memo_id.to_be_bytes());
    r[8..24].copy_from_slice(hash);
    r[24..].copy_from_slice(&generation.to_be_bytes());
    r
}

/// Splits an entry reference into (memoizer id, generation, hash).
pub(crate) fn split_entry_ref(r: &[u8; 32]) -> (u64, u64, [u8; 16]) {
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&r[8..24]);
    (word(&r[..8]), word(&r[24..]), hash)
}

/// A memoizer's registry record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MemoRecord {
    pub id: u64,
    pub fingerprint: u64,
    /// Set once any entry of this memoizer may carry dependency rows or a deadline, i.e.
    /// rows in [`DEPS`] or [`EXPIRY`] that clearing it must remove too.
    pub indexed: bool,
    /// Whether entries with dependency rows are filed under their primary row
    /// ([`crate::key::place`]) rather than under their key's hash.
    pub placed: bool,
}

const FLAG_INDEXED: u64 = 1;
const FLAG_PLACED: u64 = 2;

impl MemoRecord {
    pub(crate) fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..16].copy_from_slice(&self.fingerprint.to_le_bytes());
        let flags = (self.indexed as u64 * FLAG_INDEXED) | (self.placed as u64 * FLAG_PLACED);
        out[16..24].copy_from_slice(&flags.to_le_bytes());
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<MemoRecord> {
        if bytes.len() != 24 {
            return None;
        }
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i..i + 8]);
            u64::from_le_bytes(w)
        };
        Some(MemoRecord {
            id: word(0),
            fingerprint: word(8),
            indexed: word(16) & FLAG_INDEXED != 0,
            placed: word(16) & FLAG_PLACED != 0,
        })
    }
}
