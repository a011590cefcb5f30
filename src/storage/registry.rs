//! The registry of a cache file - format version, id counters, memoizer records, zones and
//! their members - copied from a damaged file into the fresh one that replaces it while
//! the cache is running, so the ids that live memoizers and zones hold stay valid.
//!
//! Every table that gives an id its meaning must be listed here; entries and their
//! indexes are not (they are what the reset throws away).

use redb::{ReadableDatabase, ReadableMultimapTable, ReadableTable, WriteTransaction};

use super::tables::{MEMOIZER_NAMES, MEMOIZERS, META, ZONE_MEMBERS, ZONES};

type R<T> = Result<T, redb::Error>;

/// The registry tables, read into memory.
#[derive(Debug, Default, Clone)]
pub(crate) struct Registry {
    meta: Vec<(String, u64)>,
    memoizers: Vec<(String, Vec<u8>)>,
    names: Vec<(u64, String)>,
    zones: Vec<(String, u64)>,
    members: Vec<(u64, u64)>,
}

/// Reads the registry of `db`. Fails if any of it is unreadable.
pub(crate) fn read(db: &redb::Database) -> R<Registry> {
    let txn = db.begin_read()?;
    let mut reg = Registry::default();
    for item in txn.open_table(META)?.iter()? {
        let (k, v) = item?;
        reg.meta.push((k.value().to_string(), v.value()));
    }
    for item in txn.open_table(MEMOIZERS)?.iter()? {
        let (k, v) = item?;
        reg.memoizers
            .push((k.value().to_string(), v.value().to_vec()));
    }
    for item in txn.open_table(MEMOIZER_NAMES)?.iter()? {
        let (k, v) = item?;
        reg.names.push((k.value(), v.value().to_string()));
    }
    for item in txn.open_table(ZONES)?.iter()? {
        let (k, v) = item?;
        reg.zones.push((k.value().to_string(), v.value()));
    }
    for item in txn.open_multimap_table(ZONE_MEMBERS)?.iter()? {
        let (zone, values) = item?;
        for member in values {
            reg.members.push((zone.value(), member?.value()));
        }
    }
    Ok(reg)
}

/// Writes `reg` into a freshly initialised database.
pub(crate) fn write(txn: &WriteTransaction, reg: &Registry) -> R<()> {
    let mut meta = txn.open_table(META)?;
    for (k, v) in &reg.meta {
        meta.insert(k.as_str(), *v)?;
    }
    let mut memoizers = txn.open_table(MEMOIZERS)?;
    for (k, v) in &reg.memoizers {
        memoizers.insert(k.as_str(), v.as_slice())?;
    }
    let mut names = txn.open_table(MEMOIZER_NAMES)?;
    for (k, v) in &reg.names {
        names.insert(*k, v.as_str())?;
    }
    let mut zones = txn.open_table(ZONES)?;
    for (k, v) in &reg.zones {
        zones.insert(k.as_str(), *v)?;
    }
    let mut members = txn.open_multimap_table(ZONE_MEMBERS)?;
    for (zone, member) in &reg.members {
        members.insert(*zone, *member)?;
    }
    Ok(())
}
