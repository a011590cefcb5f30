//! The invariant checker: a full scan comparing entries with the dependency index.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableDatabase, ReadableMultimapTable, ReadableTable, TableHandle};

use crate::entry;
use crate::error::Result;
use crate::inner::CacheInner;
use crate::key::filed_under;
use crate::storage::tables::{
    DEPS, ENTRIES_PREFIX, EVICT, EVICT_ORDER, EXPIRY, EntriesDef, GRAVE_PREFIX, GRAVES,
    KEY_EVICT_INDEX, MEMOIZER_NAMES, MEMOIZERS, META, MemoRecord, SIZES, ZONE_MEMBERS,
    entries_name, entry_ref, expiry_key, grave_name, split_grave_key, split_order_key,
};
use crate::storage::{Storage, budget, guarded, ops};

/// What [`Cache::check_integrity`](crate::Cache::check_integrity) found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Memoizers registered in the file.
    pub memoizers: u64,
    /// Entries across all memoizers.
    pub entries: u64,
    /// Rows in the dependency index.
    pub dep_rows: u64,
    /// Rows in the expiry index.
    pub expiry_rows: u64,
    /// Entries of cleared tables not yet reclaimed (see
    /// [`Memoizer::invalidate_all`](crate::Memoizer::invalidate_all)): no longer entries,
    /// still indexed until the background reclaims them.
    pub reclaiming: u64,
    /// Bytes the entries (with those of cleared tables) are charged against the file's
    /// byte budget ([`CacheBuilder::max_bytes`](crate::CacheBuilder::max_bytes)).
    pub bytes: u64,
    /// Every violated invariant, described. Empty when the file is sound.
    pub problems: Vec<String>,
}

impl IntegrityReport {
    /// Whether no invariant is violated.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Checks the in-memory store of every live memoizer; returns the problems found.
pub(crate) fn check_memory(cache: &CacheInner) -> Vec<String> {
    let mut problems = Vec::new();
    for tiers in cache.live_all() {
        if let Err(e) = tiers.validate_memory() {
            problems.push(format!("memoizer {:?} in memory: {e}", tiers.name()));
        }
    }
    problems
}

pub(crate) fn check(storage: &Storage) -> Result<IntegrityReport> {
    guarded(|| scan(&*storage.db()?)).map_err(|e| storage.error(e))
}

fn scan(db: &redb::Database) -> Result<IntegrityReport, redb::Error> {
    let txn = db.begin_read()?;
    let mut report = IntegrityReport::default();
    let names = txn.open_table(MEMOIZER_NAMES)?;
    let records = txn.open_table(MEMOIZERS)?;
    let mut ids = BTreeSet::new();
    let mut placed = BTreeSet::new();
    for item in records.iter()? {
        let (name, value) = item?;
        report.memoizers += 1;
        match MemoRecord::decode(value.value()) {
            None => report
                .problems
                .push(format!("memoizer {:?}: unreadable record", name.value())),
            Some(record) => {
                ids.insert(record.id);
                if record.placed {
                    placed.insert(record.id);
                }
                let back = names.get(record.id)?.map(|n| n.value().to_string());
                if back.as_deref() != Some(name.value()) {
                    report.problems.push(format!(
                        "memoizer {:?}: id {} maps back to {back:?}",
                        name.value(),
                        record.id
                    ));
                }
            }
        }
    }
    let mut expected = BTreeSet::new();
    let mut expected_expiry = BTreeSet::new();
    // Every entry's eviction row, and each memoizer's charge.
    let mut expected_evict = BTreeSet::new();
    let mut expected_sizes: BTreeMap<u64, u64> = BTreeMap::new();
    let generations = ops::read_generations(&txn)?;
    // Live tables, then graves awaiting reclamation: the indexes are exact over both.
    let mut tables: Vec<(String, u64, u64, bool)> = ids
        .iter()
        .map(|&id| {
            let generation = generations.get(&id).copied().unwrap_or(0);
            (entries_name(id), id, generation, true)
        })
        .collect();
    let mut graves = BTreeSet::new();
    if let Ok(table) = txn.open_table(GRAVES) {
        for item in table.iter()? {
            let (id, generation) = split_grave_key(item?.0.value());
            graves.insert(grave_name(id, generation));
            if !ids.contains(&id) {
                report.problems.push(format!(
                    "grave of unknown memoizer {id} (generation {generation})"
                ));
            }
            if generations.get(&id).copied().unwrap_or(0) <= generation {
                report.problems.push(format!(
                    "memoizer {id}: grave of generation {generation} is not older than its table"
                ));
            }
            tables.push((grave_name(id, generation), id, generation, false));
        }
    }
    for (name, id, generation, live) in tables {
        let table = match txn.open_table(EntriesDef::new(&name)) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) if live => continue,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                report.problems.push(format!("grave {name} has no table"));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        for item in table.iter()? {
            let (hash, value) = item?;
            if live {
                report.entries += 1;
            } else {
                report.reclaiming += 1;
            }
            expected_evict.insert(entry_ref(id, generation, hash.value()));
            *expected_sizes.entry(id).or_default() += budget::charge(value.value().len());
            match entry::decode(value.value(), true) {
                Err(e) => report
                    .problems
                    .push(format!("memoizer {id}: malformed entry ({e:?})")),
                Ok(view) => {
                    if let Some(primary) = view.deps().next()
                        && live
                        && placed.contains(&id)
                        && !filed_under(hash.value(), &primary)
                    {
                        report.problems.push(format!(
                            "memoizer {id}: entry {:02x?} is not filed under its primary dependency",
                            hash.value()
                        ));
                    }
                    for row in view.deps() {
                        expected.insert((row, entry_ref(id, generation, hash.value())));
                    }
                    if view.meta.expires_at_ms != 0 {
                        expected_expiry.insert(expiry_key(
                            view.meta.expires_at_ms,
                            id,
                            generation,
                            hash.value(),
                        ));
                    }
                }
            }
        }
    }
    for table in txn.list_tables()? {
        let name = table.name().to_string();
        if let Some(id) = name.strip_prefix(ENTRIES_PREFIX)
            && !id.parse::<u64>().is_ok_and(|id| ids.contains(&id))
        {
            report
                .problems
                .push(format!("table {name} belongs to no registered memoizer"));
        }
        if name.starts_with(GRAVE_PREFIX) && !graves.contains(&name) {
            report
                .problems
                .push(format!("table {name} is a grave nobody reclaims"));
        }
    }
    let mut actual = BTreeSet::new();
    let deps = txn.open_multimap_table(DEPS)?;
    for item in deps.iter()? {
        let (row, values) = item?;
        for v in values {
            report.dep_rows += 1;
            actual.insert((*row.value(), *v?.value()));
        }
    }
    for missing in expected.difference(&actual) {
        report.problems.push(format!(
            "entry {:02x?} lacks its index row",
            &missing.1[..24]
        ));
    }
    for dangling in actual.difference(&expected) {
        report.problems.push(format!(
            "index row points at missing entry {:02x?}",
            &dangling.1[..24]
        ));
    }
    let mut actual_expiry = BTreeSet::new();
    for item in txn.open_table(EXPIRY)?.iter()? {
        report.expiry_rows += 1;
        actual_expiry.insert(*item?.0.value());
    }
    for missing in expected_expiry.difference(&actual_expiry) {
        report
            .problems
            .push(format!("entry {:02x?} lacks its expiry row", &missing[8..]));
    }
    for dangling in actual_expiry.difference(&expected_expiry) {
        report.problems.push(format!(
            "expiry row points at missing entry {:02x?}",
            &dangling[8..]
        ));
    }
    check_eviction(&txn, &expected_evict, &expected_sizes, &mut report)?;
    let members = txn.open_multimap_table(ZONE_MEMBERS)?;
    for item in members.iter()? {
        let (zone, values) = item?;
        for v in values {
            let id = v?.value();
            if !ids.contains(&id) {
                report
                    .problems
                    .push(format!("zone {} lists unknown memoizer {id}", zone.value()));
            }
        }
    }
    Ok(report)
}

/// In a file that keeps eviction rows (`KEY_EVICT_INDEX`), the eviction index holds
/// exactly one row per entry, in the order under the tick it names; in every file, each
/// memoizer's charge is the sum of its entries' charges.
fn check_eviction(
    txn: &redb::ReadTransaction,
    expected: &BTreeSet<[u8; 32]>,
    sizes: &BTreeMap<u64, u64>,
    report: &mut IntegrityReport,
) -> Result<(), redb::Error> {
    let indexed = match txn.open_table(META) {
        Ok(meta) => meta.get(KEY_EVICT_INDEX)?.is_some(),
        Err(redb::TableError::TableDoesNotExist(_)) => false,
        Err(e) => return Err(e.into()),
    };
    if indexed {
        check_eviction_rows(txn, expected, report)?;
    }
    let mut recorded = BTreeMap::new();
    for item in txn.open_table(SIZES)?.iter()? {
        let (id, bytes) = item?;
        recorded.insert(id.value(), bytes.value());
        report.bytes += bytes.value();
    }
    if &recorded != sizes {
        report.problems.push(format!(
            "recorded charges {recorded:?} are not the entries' charges {sizes:?}"
        ));
    }
    Ok(())
}

fn check_eviction_rows(
    txn: &redb::ReadTransaction,
    expected: &BTreeSet<[u8; 32]>,
    report: &mut IntegrityReport,
) -> Result<(), redb::Error> {
    let mut ticks = BTreeMap::new();
    for item in txn.open_table(EVICT)?.iter()? {
        let (target, tick) = item?;
        ticks.insert(*target.value(), tick.value());
    }
    let mut order = BTreeSet::new();
    for item in txn.open_table(EVICT_ORDER)?.iter()? {
        let (tick, target) = split_order_key(item?.0.value());
        if ticks.get(&target) != Some(&tick) {
            report.problems.push(format!(
                "eviction order row {tick} of {:02x?} disagrees with the eviction index",
                &target[..24]
            ));
        }
        order.insert(target);
    }
    for (target, tick) in &ticks {
        if !order.contains(target) {
            report.problems.push(format!(
                "entry {:02x?} has no eviction order row (tick {tick})",
                &target[..24]
            ));
        }
        if !expected.contains(target) {
            report.problems.push(format!(
                "eviction row points at missing entry {:02x?}",
                &target[..24]
            ));
        }
    }
    for target in expected {
        if !ticks.contains_key(target) {
            report.problems.push(format!(
                "entry {:02x?} lacks its eviction row",
                &target[..24]
            ));
        }
    }
    Ok(())
}
