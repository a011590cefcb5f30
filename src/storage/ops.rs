//! Operations inside one write transaction. Every function keeps the dependency index
//! exact: an entry's dependency rows are written and removed together with the entry.

use redb::{
    MultimapTableHandle, ReadTransaction, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    ReadableTableMetadata, TableHandle, WriteTransaction,
};

use super::budget;
use super::tables::{
    DEPS, ENTRIES_PREFIX, EVICT, EVICT_ORDER, EVICTIONS_PREFIX, EXPIRY, EntriesDef, GENERATIONS,
    GRAVE_PREFIX, GRAVES, INVALIDATIONS, KEY_EVICT_INDEX, KEY_FORMAT_VERSION, KEY_MAX_BYTES,
    KEY_NEXT_MEMOIZER, KEY_NEXT_ZONE, MEMO_MAX_BYTES_PREFIX, MEMOIZER_NAMES, MEMOIZERS, META,
    MemoRecord, PREFIX, SIZES, ZONE_MEMBERS, ZONES, entries_name, entry_ref, evictions_key,
    expiry_end, expiry_key, grave_key, grave_name, memo_max_bytes_key, order_bounds, order_key,
    order_memo, split_entry_ref, split_expiry_key, split_grave_key, split_order_key,
};
use crate::entry::{self, FORMAT_VERSION};
use crate::key::DepRow;
use crate::key::KeyHash;

type R<T> = Result<T, redb::Error>;

/// What [`init`] found in the file.
pub(crate) enum InitOutcome {
    Ready,
    /// Ours, written by an earlier format version ([`init`] upgrades it).
    Older,
    Foreign(String),
    Newer(u32),
}

/// Checks an existing database: ours and current (`Ready`), ours but older (`Older`),
/// someone else's (`Foreign`), newer (`Newer`), or `None` when our tables still need
/// creating.
pub(crate) fn inspect(db: &impl ReadableDatabase) -> R<Option<InitOutcome>> {
    let read = db.begin_read()?;
    match read.open_table(META) {
        Ok(meta) => {
            let version = meta
                .get(KEY_FORMAT_VERSION)?
                .map(|v| v.value())
                .unwrap_or(0);
            if version > FORMAT_VERSION as u64 {
                return Ok(Some(InitOutcome::Newer(version as u32)));
            }
            if version == FORMAT_VERSION as u64 {
                check_directory(&read)?;
                return Ok(Some(InitOutcome::Ready));
            }
            if version > 0 {
                return Ok(Some(InitOutcome::Older));
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {
            let foreign: Vec<String> = read
                .list_tables()?
                .map(|t| t.name().to_string())
                .chain(read.list_multimap_tables()?.map(|t| t.name().to_string()))
                .filter(|n| !n.starts_with(PREFIX))
                .collect();
            if !foreign.is_empty() {
                return Ok(Some(InitOutcome::Foreign(format!(
                    "a redb database with other tables: {}",
                    foreign.join(", ")
                ))));
            }
        }
        Err(e) => return Err(e.into()),
    }
    Ok(None)
}

/// Whether the table named `name` is an entries table, live or a grave.
fn holds_entries(name: &str) -> bool {
    name.starts_with(ENTRIES_PREFIX) || name.starts_with(GRAVE_PREFIX)
}

/// Opens every table of the file with the types this crate gives it: a table recorded
/// with other types (a damaged table directory) fails the open as damage now, instead of
/// failing every later use of that table. Reads the directory only, no table's rows.
fn check_directory(read: &ReadTransaction) -> R<()> {
    // A table not there yet is fine: it is created when first written.
    fn present<T>(opened: Result<T, redb::TableError>) -> R<()> {
        match opened {
            Ok(_) | Err(redb::TableError::TableDoesNotExist(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
    present(read.open_table(META))?;
    present(read.open_table(MEMOIZERS))?;
    present(read.open_table(MEMOIZER_NAMES))?;
    present(read.open_table(ZONES))?;
    present(read.open_table(EXPIRY))?;
    present(read.open_table(GENERATIONS))?;
    present(read.open_table(GRAVES))?;
    present(read.open_table(INVALIDATIONS))?;
    present(read.open_table(EVICT))?;
    present(read.open_table(EVICT_ORDER))?;
    present(read.open_table(SIZES))?;
    present(read.open_multimap_table(ZONE_MEMBERS))?;
    present(read.open_multimap_table(DEPS))?;
    let names: Vec<String> = read
        .list_tables()?
        .map(|t| t.name().to_string())
        .filter(|n| holds_entries(n))
        .collect();
    for name in names {
        present(read.open_table(EntriesDef::new(&name)))?;
    }
    Ok(())
}

/// Creates our tables in a fresh file, or checks an existing file is ours and not newer.
pub(crate) fn init(db: &redb::Database) -> R<InitOutcome> {
    let txn = match inspect(db)? {
        None => db.begin_write()?,
        Some(InitOutcome::Older) => {
            let txn = db.begin_write()?;
            drop_entries(&txn)?;
            txn
        }
        Some(outcome) => return Ok(outcome),
    };
    {
        let mut meta = txn.open_table(META)?;
        meta.insert(KEY_FORMAT_VERSION, FORMAT_VERSION as u64)?;
        txn.open_table(MEMOIZERS)?;
        txn.open_table(MEMOIZER_NAMES)?;
        txn.open_table(ZONES)?;
        txn.open_multimap_table(ZONE_MEMBERS)?;
        txn.open_multimap_table(DEPS)?;
        txn.open_table(EXPIRY)?;
        txn.open_table(EVICT)?;
        txn.open_table(EVICT_ORDER)?;
        txn.open_table(SIZES)?;
    }
    txn.commit()?;
    Ok(InitOutcome::Ready)
}

/// Upgrading a file of an earlier format: drops every entry and both indexes, keeping the
/// registry (ids, zones, memberships). Entries could not be kept anyway: every
/// memoizer's fingerprint includes the format version, and format 1 filed entries
/// without regard to their dependencies. Costs a table drop per memoizer, no per-entry
/// work.
fn drop_entries(txn: &WriteTransaction) -> R<()> {
    let names: Vec<String> = txn
        .list_tables()?
        .map(|t| t.name().to_string())
        .filter(|n| holds_entries(n))
        .collect();
    for name in names {
        txn.delete_table(EntriesDef::new(&name))?;
    }
    txn.delete_multimap_table(DEPS)?;
    txn.delete_table(EXPIRY)?;
    txn.delete_table(GENERATIONS)?;
    txn.delete_table(GRAVES)?;
    txn.delete_table(EVICT)?;
    txn.delete_table(EVICT_ORDER)?;
    txn.delete_table(SIZES)?;
    Ok(())
}

fn next_id(txn: &WriteTransaction, counter: &str) -> R<u64> {
    let mut meta = txn.open_table(META)?;
    let id = meta.get(counter)?.map(|v| v.value()).unwrap_or(1);
    meta.insert(counter, id + 1)?;
    Ok(id)
}

/// Looks up a memoizer's record, creating it if missing. If the stored fingerprint differs
/// (the value type or version changed), the memoizer's old entries are removed first.
pub(crate) fn register_memoizer(
    txn: &WriteTransaction,
    name: &str,
    fingerprint: u64,
    indexed: bool,
    placed: bool,
) -> R<MemoRecord> {
    let existing = {
        let table = txn.open_table(MEMOIZERS)?;
        table.get(name)?.and_then(|v| MemoRecord::decode(v.value()))
    };
    let record = match existing {
        Some(old)
            if old.fingerprint == fingerprint
                && (old.indexed || !indexed)
                && old.placed == placed =>
        {
            return Ok(old);
        }
        Some(old) => {
            // Entries of another value type, or filed the other way (they would never be
            // found again), go.
            if old.fingerprint != fingerprint || old.placed != placed {
                clear(txn, &old)?;
            }
            MemoRecord {
                id: old.id,
                fingerprint,
                indexed: indexed || old.indexed,
                placed,
            }
        }
        None => {
            let id = next_id(txn, KEY_NEXT_MEMOIZER)?;
            txn.open_table(MEMOIZER_NAMES)?.insert(id, name)?;
            MemoRecord {
                id,
                fingerprint,
                indexed,
                placed,
            }
        }
    };
    txn.open_table(MEMOIZERS)?
        .insert(name, record.encode().as_slice())?;
    Ok(record)
}

/// The record of `name` if it is registered exactly as [`register_memoizer`] and
/// [`add_zone_member`] would leave it (same fingerprint and placement, indexed if asked,
/// a member of every zone in `zone_ids`), so building it again needs no write
/// transaction.
pub(crate) fn registered(
    txn: &ReadTransaction,
    name: &str,
    fingerprint: u64,
    indexed: bool,
    placed: bool,
    zone_ids: &[u64],
) -> R<Option<MemoRecord>> {
    let table = match txn.open_table(MEMOIZERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let Some(record) = table.get(name)?.and_then(|v| MemoRecord::decode(v.value())) else {
        return Ok(None);
    };
    if record.fingerprint != fingerprint || (indexed && !record.indexed) || record.placed != placed
    {
        return Ok(None);
    }
    if !zone_ids.is_empty() {
        let members = match txn.open_multimap_table(ZONE_MEMBERS) {
            Ok(members) => members,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        for zone_id in zone_ids {
            let mut of_zone = members.get(zone_id)?;
            if !of_zone.any(|m| m.is_ok_and(|m| m.value() == record.id)) {
                return Ok(None);
            }
        }
    }
    Ok(Some(record))
}

/// Reads a memoizer's record.
pub(crate) fn memoizer_record(txn: &WriteTransaction, name: &str) -> R<Option<MemoRecord>> {
    let table = txn.open_table(MEMOIZERS)?;
    let found = table.get(name)?.and_then(|v| MemoRecord::decode(v.value()));
    Ok(found)
}

fn memoizer_record_by_id(txn: &WriteTransaction, id: u64) -> R<Option<MemoRecord>> {
    let name = {
        let names = txn.open_table(MEMOIZER_NAMES)?;
        names.get(id)?.map(|v| v.value().to_string())
    };
    match name {
        Some(name) => memoizer_record(txn, &name),
        None => Ok(None),
    }
}

/// Returns a zone's id, creating it if missing.
pub(crate) fn register_zone(txn: &WriteTransaction, name: &str) -> R<u64> {
    let existing = txn.open_table(ZONES)?.get(name)?.map(|v| v.value());
    if let Some(id) = existing {
        return Ok(id);
    }
    let id = next_id(txn, KEY_NEXT_ZONE)?;
    txn.open_table(ZONES)?.insert(name, id)?;
    Ok(id)
}

/// The id of zone `name` if it is registered already (so no write is needed).
pub(crate) fn zone_id(txn: &ReadTransaction, name: &str) -> R<Option<u64>> {
    match txn.open_table(ZONES) {
        Ok(zones) => Ok(zones.get(name)?.map(|v| v.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Records that memoizer `memo_id` belongs to zone `zone_id`.
pub(crate) fn add_zone_member(txn: &WriteTransaction, zone_id: u64, memo_id: u64) -> R<()> {
    txn.open_multimap_table(ZONE_MEMBERS)?
        .insert(zone_id, memo_id)?;
    Ok(())
}

/// The index tables, opened at most once for a run of index updates (opening a table in
/// a write transaction costs a lookup, and closing it a write of its root).
struct Indexes<'t> {
    txn: &'t WriteTransaction,
    deps: Option<redb::MultimapTable<'t, &'static [u8; 24], &'static [u8; 32]>>,
    expiry: Option<redb::Table<'t, &'static [u8; 40], ()>>,
    /// The eviction index and the byte accounting: every entry has them.
    evict: Option<EvictTables<'t>>,
}

/// [`EVICT`], [`EVICT_ORDER`] and [`SIZES`], opened together.
struct EvictTables<'t> {
    evict: redb::Table<'t, &'static [u8; 32], u64>,
    order: redb::Table<'t, &'static [u8; 40], ()>,
    sizes: redb::Table<'t, u64, u64>,
    /// The next tick to give, once found ([`EvictTables::next_tick`]).
    next: Option<u64>,
    /// Whether the file keeps eviction rows ([`KEY_EVICT_INDEX`]); charges are kept
    /// either way.
    indexed: bool,
    /// Charges gathered, not written yet ([`Indexes::finish`] writes them): (memoizer
    /// id, bytes added, bytes removed).
    charges: Vec<(u64, u64, u64)>,
}

impl<'t> EvictTables<'t> {
    fn open(txn: &'t WriteTransaction) -> R<Self> {
        let indexed = txn.open_table(META)?.get(KEY_EVICT_INDEX)?.is_some();
        Ok(EvictTables {
            evict: txn.open_table(EVICT)?,
            order: txn.open_table(EVICT_ORDER)?,
            sizes: txn.open_table(SIZES)?,
            next: None,
            indexed,
            charges: Vec::new(),
        })
    }

    /// Writes the charges gathered: one get and one insert per memoizer, not per entry
    /// (per put they were a tenth of a miss's cost).
    fn write_charges(&mut self) -> R<()> {
        for (memo_id, added, removed) in std::mem::take(&mut self.charges) {
            let used = self.sizes.get(memo_id)?.map_or(0, |v| v.value());
            let used = used.saturating_add(added).saturating_sub(removed);
            if used == 0 {
                self.sizes.remove(memo_id)?;
            } else {
                self.sizes.insert(memo_id, used)?;
            }
        }
        Ok(())
    }

    /// A tick past every tick in the order: where a new or spared entry goes. Found
    /// once per opening by looking at the last row of each memoizer's run (one range
    /// read per memoizer with entries), then counted up in memory.
    fn next_tick(&mut self) -> R<u64> {
        let next = match self.next {
            Some(next) => next,
            None => {
                let mut next = 0;
                let mut below: Option<[u8; 40]> = None;
                loop {
                    let last = match &below {
                        None => self.order.last()?,
                        Some(end) => self
                            .order
                            .range::<&[u8; 40]>(..end)?
                            .next_back()
                            .transpose()?,
                    };
                    let Some((k, _)) = last else { break };
                    let k = *k.value();
                    next = next.max(split_order_key(&k).0 + 1);
                    below = Some(order_bounds(order_memo(&k)).0);
                }
                next
            }
        };
        self.next = Some(next + 1);
        Ok(next)
    }

    /// Adds (`add = true`) or removes entry `target`'s eviction rows and its charge.
    fn update(&mut self, target: &[u8; 32], memo_id: u64, charge: u64, add: bool) -> R<()> {
        let old_tick = if !self.indexed {
            None
        } else if add {
            let tick = self.next_tick()?;
            self.order.insert(&order_key(tick, target), ())?;
            self.evict.insert(target, tick)?.map(|t| t.value())
        } else {
            self.evict.remove(target)?.map(|t| t.value())
        };
        // A put over an entry removes the old one's rows first: `old_tick` is then only
        // found on removal.
        if let Some(tick) = old_tick {
            self.order.remove(&order_key(tick, target))?;
        }
        let (added, removed) = if add { (charge, 0) } else { (0, charge) };
        match self.charges.iter_mut().find(|(id, _, _)| *id == memo_id) {
            Some(c) => {
                c.1 += added;
                c.2 += removed;
            }
            None => self.charges.push((memo_id, added, removed)),
        }
        Ok(())
    }

    /// Moves entry `target` (now at `tick`) to the end of the order: a second chance.
    fn spare(&mut self, tick: u64, target: &[u8; 32]) -> R<()> {
        let next = self.next_tick()?;
        self.order.remove(&order_key(tick, target))?;
        self.order.insert(&order_key(next, target), ())?;
        self.evict.insert(target, next)?;
        Ok(())
    }

    /// The first `n` rows of the eviction order of memoizer `scope`, or of the whole
    /// file (`None`: merged from the first rows of every memoizer's run, by tick), as
    /// (tick, entry ref), first candidate first.
    fn head(&self, scope: Option<u64>, n: usize) -> R<Vec<(u64, [u8; 32])>> {
        let mut head = Vec::with_capacity(n);
        if let Some(memo_id) = scope {
            let (first, last) = order_bounds(memo_id);
            for item in self.order.range::<&[u8; 40]>(&first..=&last)?.take(n) {
                head.push(split_order_key(item?.0.value()));
            }
            return Ok(head);
        }
        // Each memoizer's first `n` rows, one memoizer after the other.
        let mut from = [0u8; 40];
        loop {
            let mut memo_id = None;
            for item in self.order.range::<&[u8; 40]>(&from..)?.take(n) {
                let (k, _) = item?;
                let m = order_memo(k.value());
                if *memo_id.get_or_insert(m) != m {
                    break;
                }
                head.push(split_order_key(k.value()));
            }
            match memo_id {
                Some(m) if m < u64::MAX => from = order_bounds(m + 1).0,
                _ => break,
            }
        }
        head.sort_unstable();
        head.truncate(n);
        Ok(head)
    }
}

impl<'t> Indexes<'t> {
    fn new(txn: &'t WriteTransaction) -> Self {
        Indexes {
            txn,
            deps: None,
            expiry: None,
            evict: None,
        }
    }

    /// Writes the charges gathered by [`Indexes::update`]. Every run of updates ends
    /// with it, before the transaction commits or anything in it reads `fresco/sizes`.
    fn finish(&mut self) -> R<()> {
        match &mut self.evict {
            Some(evict) => evict.write_charges(),
            None => Ok(()),
        }
    }

    /// Adds (`add = true`) or removes the index rows of one entry of table generation
    /// `generation`: its dependency rows (but `skip`, a row the caller already removed
    /// for every entry carrying it) and its expiry row.
    fn update(
        &mut self,
        (memo_id, generation): (u64, u64),
        hash: &KeyHash,
        bytes: &[u8],
        add: bool,
        skip: Option<&DepRow>,
    ) -> R<()> {
        let target = entry_ref(memo_id, generation, hash);
        // Every entry, even one that no longer parses, is charged, and has its eviction
        // rows in a file that keeps them.
        if self.evict.is_none() {
            self.evict = Some(EvictTables::open(self.txn)?);
        }
        if let Some(evict) = &mut self.evict {
            evict.update(&target, memo_id, budget::charge(bytes.len()), add)?;
        }
        // A damaged entry that no longer parses cannot name its rows; the invariant
        // checker reports any row left behind, and such entries only arise from outside
        // damage.
        let Ok(view) = entry::decode(bytes, false) else {
            return Ok(());
        };
        for row in view.deps().filter(|r| Some(r) != skip) {
            if self.deps.is_none() {
                self.deps = Some(self.txn.open_multimap_table(DEPS)?);
            }
            if let Some(deps) = &mut self.deps {
                if add {
                    deps.insert(&row, &target)?;
                } else {
                    deps.remove(&row, &target)?;
                }
            }
        }
        if view.meta.expires_at_ms != 0 {
            if self.expiry.is_none() {
                self.expiry = Some(self.txn.open_table(EXPIRY)?);
            }
            if let Some(expiry) = &mut self.expiry {
                let key = expiry_key(view.meta.expires_at_ms, memo_id, generation, hash);
                if add {
                    expiry.insert(&key, ())?;
                } else {
                    expiry.remove(&key)?;
                }
            }
        }
        Ok(())
    }
}

/// Makes the file keep eviction rows ([`KEY_EVICT_INDEX`]) if it does not yet: every
/// entry, live or in a grave, gets its rows, in table order. Done once per file, when it
/// or one of its memoizers is first given a byte budget (the one pass over the entries
/// that a budget costs; evictions never scan). Returns whether it indexed.
pub(crate) fn index_for_eviction(txn: &WriteTransaction) -> R<bool> {
    if txn.open_table(META)?.get(KEY_EVICT_INDEX)?.is_some() {
        return Ok(false);
    }
    // Rows an unindexed file may hold (written by an earlier build, never kept up):
    // start afresh.
    txn.delete_table(EVICT)?;
    txn.delete_table(EVICT_ORDER)?;
    let mut tables: Vec<(u64, u64, String)> = Vec::new();
    for name in txn.list_tables()? {
        if let Some(Ok(id)) = name.name().strip_prefix(ENTRIES_PREFIX).map(str::parse) {
            tables.push((id, generation(txn, id)?, name.name().to_string()));
        }
    }
    for item in txn.open_table(GRAVES)?.iter()? {
        let (id, generation) = split_grave_key(item?.0.value());
        tables.push((id, generation, grave_name(id, generation)));
    }
    let mut evict = txn.open_table(EVICT)?;
    let mut order = txn.open_table(EVICT_ORDER)?;
    let mut tick = 0;
    for (id, generation, name) in tables {
        let entries = match txn.open_table(EntriesDef::new(&name)) {
            Ok(entries) => entries,
            Err(redb::TableError::TableDoesNotExist(_)) => continue,
            Err(e) => return Err(e.into()),
        };
        for item in entries.iter()? {
            let target = entry_ref(id, generation, item?.0.value());
            order.insert(&order_key(tick, &target), ())?;
            evict.insert(&target, tick)?;
            tick += 1;
        }
    }
    txn.open_table(META)?.insert(KEY_EVICT_INDEX, 1)?;
    Ok(true)
}

/// Adds (`add = true`) or removes the index rows of one live entry.
fn index_rows(
    txn: &WriteTransaction,
    table: (u64, u64),
    hash: &KeyHash,
    bytes: &[u8],
    add: bool,
) -> R<()> {
    let mut indexes = Indexes::new(txn);
    indexes.update(table, hash, bytes, add, None)?;
    indexes.finish()
}

/// The generation of memoizer `id`'s live entries table.
pub(crate) fn generation(txn: &WriteTransaction, id: u64) -> R<u64> {
    Ok(txn
        .open_table(GENERATIONS)?
        .get(id)?
        .map_or(0, |v| v.value()))
}

/// The name of the table holding entries of memoizer `id`, generation `generation`: its
/// live table, or a grave.
fn table_name(txn: &WriteTransaction, id: u64, generation: u64) -> R<String> {
    Ok(if self::generation(txn, id)? == generation {
        entries_name(id)
    } else {
        grave_name(id, generation)
    })
}

/// Stores entries, each replacing (and un-indexing) any previous entry under the same
/// hash. Keeps the entries table of the last memoizer
/// open in between: opening and closing a table (a lookup and an update of the table
/// tree) costs more than the insert itself. [`Puts::close`] it before anything else may
/// open that table in the same transaction.
pub(crate) struct Puts<'t> {
    txn: &'t WriteTransaction,
    /// The open entries table, whose it is and its generation.
    open: Option<(u64, u64, EntriesTableMut<'t>)>,
    /// The index tables, kept open across the batch's puts (opening the eviction
    /// tables for every put was most of a store's cost in the file).
    indexes: Indexes<'t>,
}

type EntriesTableMut<'t> = redb::Table<'t, &'static [u8; 16], &'static [u8]>;

impl<'t> Puts<'t> {
    pub(crate) fn new(txn: &'t WriteTransaction) -> Self {
        Puts {
            txn,
            open: None,
            indexes: Indexes::new(txn),
        }
    }

    /// Stores one entry.
    pub(crate) fn put(&mut self, memo_id: u64, hash: &KeyHash, bytes: &[u8]) -> R<()> {
        let (generation, table) = match &mut self.open {
            Some((id, generation, table)) if *id == memo_id => (*generation, table),
            open => {
                *open = None; // closes the previous table first
                let generation = generation(self.txn, memo_id)?;
                let name = entries_name(memo_id);
                let table = self.txn.open_table(EntriesDef::new(&name))?;
                let (_, generation, table) = open.insert((memo_id, generation, table));
                (*generation, table)
            }
        };
        let old = table.insert(hash, bytes)?.map(|g| g.value().to_vec());
        let at = (memo_id, generation);
        if let Some(old) = old {
            self.indexes.update(at, hash, &old, false, None)?;
        }
        self.indexes.update(at, hash, bytes, true, None)
    }

    /// Writes the charges gathered and closes the open tables, if any, so other work in
    /// the transaction may open them. Needed before the transaction commits.
    pub(crate) fn close(&mut self) -> R<()> {
        self.open = None;
        self.indexes.finish()?;
        self.indexes = Indexes::new(self.txn);
        Ok(())
    }
}

/// Removes one entry and its dependency rows. Returns whether it existed.
pub(crate) fn remove(txn: &WriteTransaction, memo_id: u64, hash: &KeyHash) -> R<bool> {
    let generation = generation(txn, memo_id)?;
    let name = entries_name(memo_id);
    let def = EntriesDef::new(&name);
    let mut table = txn.open_table(def)?;
    let old = table.remove(hash)?.map(|g| g.value().to_vec());
    drop(table);
    match old {
        Some(old) => {
            index_rows(txn, (memo_id, generation), hash, &old, false)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// The row of the entry whose encoded key is `key`, in a memoizer that files entries
/// under their primary dependency ([`crate::key::place`]), found without knowing the
/// dependency: the entry is under `key_hash` itself if it has no dependency rows, else
/// under a row whose second half is the start of `key_hash`, and its stored key says
/// which. Reads the memoizer's whole table: only for invalidating by key when the
/// memoizer's zone key functions are not at hand.
pub(crate) fn find_placed(
    txn: &WriteTransaction,
    memo_id: u64,
    key_hash: &KeyHash,
    key: &[u8],
) -> R<Option<KeyHash>> {
    let name = entries_name(memo_id);
    let table = txn.open_table(EntriesDef::new(&name))?;
    let holds_key = |bytes: &[u8]| entry::decode(bytes, false).is_ok_and(|v| v.key == key);
    if table.get(key_hash)?.is_some_and(|v| holds_key(v.value())) {
        return Ok(Some(*key_hash));
    }
    for item in table.iter()? {
        let (row, bytes) = item?;
        if row.value()[8..] == key_hash[..8] && holds_key(bytes.value()) {
            return Ok(Some(*row.value()));
        }
    }
    Ok(None)
}

/// What an invalidation removes from the file, as [`remove_what`] carries it out.
#[derive(Debug, Clone)]
pub(crate) enum Removal {
    /// One entry of memoizer `id`, under its row hash.
    Key { id: u64, hash: KeyHash },
    /// Every entry of memoizer `id`.
    Memoizer(u64),
    /// Every entry carrying the row, through the dependency index.
    Dep(DepRow),
    /// The same, found by reading every entry of zone `zone`'s members (the baseline
    /// `benches/zones.rs` compares the index against).
    DepByScan { zone: u64, row: DepRow },
    /// Every entry of every memoizer recorded as a member of the zone.
    Zone(u64),
}

/// What [`remove_what`] removed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Removed {
    /// Entries removed one by one: (memoizer id, row hash).
    pub keys: Vec<(u64, KeyHash)>,
    /// Memoizers cleared whole: (memoizer id, entries it held).
    pub cleared: Vec<(u64, u64)>,
}

impl Removed {
    /// How many entries of memoizer `id` went.
    pub(crate) fn of(&self, id: u64) -> u64 {
        let keys = self.keys.iter().filter(|(m, _)| *m == id).count() as u64;
        let cleared: u64 = self
            .cleared
            .iter()
            .filter(|(m, _)| *m == id)
            .map(|c| c.1)
            .sum();
        keys + cleared
    }

    /// How many entries went in all.
    pub(crate) fn total(&self) -> u64 {
        self.keys.len() as u64 + self.cleared.iter().map(|c| c.1).sum::<u64>()
    }
}

/// Carries out `removal` in one transaction, keeping the indexes exact.
pub(crate) fn remove_what(txn: &WriteTransaction, removal: &Removal) -> R<Removed> {
    let mut removed = Removed::default();
    match removal {
        Removal::Key { id, hash } => {
            if remove(txn, *id, hash)? {
                removed.keys.push((*id, *hash));
            }
        }
        Removal::Memoizer(id) => {
            if let Some(record) = memoizer_record_by_id(txn, *id)? {
                removed.cleared.push((*id, clear(txn, &record)?));
            }
        }
        Removal::Dep(row) => removed.keys = invalidate_dep(txn, row)?,
        Removal::DepByScan { zone, row } => {
            removed.keys = invalidate_dep_by_scan(txn, *zone, row)?;
        }
        Removal::Zone(zone) => removed.cleared = clear_zone(txn, *zone)?,
    }
    Ok(removed)
}

/// Removes every entry of a memoizer, at a cost independent of how many it has: its
/// entries table becomes a grave (a rename), its index rows stay and stay exact (they
/// name the grave's generation), and the memoizer starts a new generation. The grave is
/// reclaimed later, in bounded batches ([`reclaim`]). Returns how many entries it held.
pub(crate) fn clear(txn: &WriteTransaction, record: &MemoRecord) -> R<u64> {
    let name = entries_name(record.id);
    let def = EntriesDef::new(&name);
    let count = match txn.open_table(def) {
        Ok(table) => table.len()?,
        Err(e) => return Err(e.into()),
    };
    if count == 0 {
        txn.delete_table(def)?;
        return Ok(0);
    }
    let generation = generation(txn, record.id)?;
    let grave = grave_name(record.id, generation);
    txn.rename_table(def, EntriesDef::new(&grave))?;
    txn.open_table(GRAVES)?
        .insert(&grave_key(record.id, generation), ())?;
    txn.open_table(GENERATIONS)?
        .insert(record.id, generation + 1)?;
    Ok(count)
}

/// Reclaims up to `limit` entries of the oldest grave (with their index rows), and drops
/// the grave once it is empty. Returns how many entries went and whether graves remain.
pub(crate) fn reclaim(txn: &WriteTransaction, limit: usize) -> R<(u64, bool)> {
    let first = txn.open_table(GRAVES)?.first()?.map(|(k, _)| *k.value());
    let Some(key) = first else {
        return Ok((0, false));
    };
    let (id, generation) = split_grave_key(&key);
    let name = grave_name(id, generation);
    let def = EntriesDef::new(&name);
    let mut table = txn.open_table(def)?;
    let batch: Vec<(KeyHash, Vec<u8>)> = {
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in table.iter()?.take(limit) {
            let (k, v) = item?;
            out.push((*k.value(), v.value().to_vec()));
        }
        out
    };
    let mut indexes = Indexes::new(txn);
    for (hash, bytes) in &batch {
        table.remove(hash)?;
        indexes.update((id, generation), hash, bytes, false, None)?;
    }
    indexes.finish()?;
    let empty = table.is_empty()?;
    drop(table);
    drop(indexes);
    let mut graves = txn.open_table(GRAVES)?;
    if empty {
        txn.delete_table(def)?;
        graves.remove(&key)?;
    }
    Ok((batch.len() as u64, !graves.is_empty()?))
}

/// Whether any grave awaits reclamation (a read, no write).
pub(crate) fn has_graves(db: &redb::Database) -> R<bool> {
    let read = db.begin_read()?;
    match read.open_table(GRAVES) {
        Ok(graves) => Ok(!graves.is_empty()?),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Removes every entry whose dependency rows include `row`, in every member memoizer.
/// Returns the (memoizer id, hash) of each removed entry. Cost: the removed entries and
/// their index rows only; each table is opened once.
pub(crate) fn invalidate_dep(txn: &WriteTransaction, row: &DepRow) -> R<Vec<(u64, KeyHash)>> {
    let targets: Vec<[u8; 32]> = {
        let mut deps = txn.open_multimap_table(DEPS)?;
        let removed = deps.remove_all(row)?;
        let mut out = Vec::new();
        for v in removed {
            out.push(*v?.value());
        }
        out
    };
    let mut removed = remove_refs(txn, &targets, Some(row))?;
    removed.extend(sweep_placed(txn, row)?);
    Ok(removed)
}

/// Whether entry `bytes` depends on `row`.
fn carries(bytes: &[u8], row: &DepRow) -> bool {
    entry::decode(bytes, false).is_ok_and(|v| v.deps().any(|d| d == *row))
}

/// Removes what the index may have missed: redb does not checksum pages on read, so a
/// damaged index row can point elsewhere. In every placed member of `row`'s zone, the
/// entries whose primary dependency is `row` lie in one run of rows (`key::place`); those
/// still there that carry `row` go too. Cost: one range read per placed member, of a run
/// the index removal has just emptied. Entries for which `row` is not the primary
/// dependency, and entries of unplaced memoizers, have no such run: a damaged index row
/// still misses them (`check_integrity` and `verify_on_open` find such damage).
fn sweep_placed(txn: &WriteTransaction, row: &DepRow) -> R<Vec<(u64, KeyHash)>> {
    let mut zone_id = [0u8; 8];
    zone_id.copy_from_slice(&row[..8]);
    let mut lo = [0u8; 16];
    lo[..8].copy_from_slice(&row[8..16]);
    let mut hi = [0xffu8; 16];
    hi[..8].copy_from_slice(&row[8..16]);
    let mut removed = Vec::new();
    let mut indexes = Indexes::new(txn);
    for memo_id in zone_members(txn, u64::from_be_bytes(zone_id))? {
        if !memoizer_record_by_id(txn, memo_id)?.is_some_and(|r| r.placed) {
            continue;
        }
        // Only the live table: graves were invalidated whole already.
        let generation = generation(txn, memo_id)?;
        let name = entries_name(memo_id);
        let mut table = txn.open_table(EntriesDef::new(&name))?;
        let mut strays = Vec::new();
        for item in table.range::<&[u8; 16]>(&lo..=&hi)? {
            let (hash, bytes) = item?;
            if carries(bytes.value(), row) {
                strays.push(*hash.value());
            }
        }
        for hash in strays {
            if let Some(old) = table.remove(&hash)? {
                indexes.update((memo_id, generation), &hash, old.value(), false, Some(row))?;
                removed.push((memo_id, hash));
            }
        }
    }
    indexes.finish()?;
    Ok(removed)
}

/// Removes the entries `targets` (entry refs) and their index rows, except `skip`, a
/// dependency row the caller already removed for all of them. Each table is opened once.
/// Returns the (memoizer id, hash) of each live entry that existed (entries of graves
/// are removed too, to keep the index exact, but were invalidated already).
fn remove_refs(
    txn: &WriteTransaction,
    targets: &[[u8; 32]],
    skip: Option<&DepRow>,
) -> R<Vec<(u64, KeyHash)>> {
    let mut by_table: std::collections::BTreeMap<(u64, u64), Vec<KeyHash>> = Default::default();
    for target in targets {
        let (id, generation, hash) = split_entry_ref(target);
        by_table.entry((id, generation)).or_default().push(hash);
    }
    let mut removed = Vec::with_capacity(targets.len());
    let mut indexes = Indexes::new(txn);
    for ((memo_id, generation), hashes) in by_table {
        let live = self::generation(txn, memo_id)? == generation;
        let name = table_name(txn, memo_id, generation)?;
        let mut table = txn.open_table(EntriesDef::new(&name))?;
        for hash in hashes {
            let Some(old) = table.remove(&hash)? else {
                continue;
            };
            // A damaged index row may point at an entry that does not depend on `skip`:
            // that one stays.
            if skip.is_some_and(|row| !carries(old.value(), row)) {
                let kept = old.value().to_vec();
                drop(old);
                table.insert(&hash, kept.as_slice())?;
                continue;
            }
            indexes.update((memo_id, generation), &hash, old.value(), false, skip)?;
            if live {
                removed.push((memo_id, hash));
            }
        }
    }
    indexes.finish()?;
    Ok(removed)
}

/// The memoizers recorded as members of zone `zone_id` (by this run or an earlier one).
fn zone_members(txn: &WriteTransaction, zone_id: u64) -> R<Vec<u64>> {
    let table = txn.open_multimap_table(ZONE_MEMBERS)?;
    let mut out = Vec::new();
    for v in table.get(zone_id)? {
        out.push(v?.value());
    }
    Ok(out)
}

/// [`zone_members`], read from a snapshot (no write transaction).
pub(crate) fn read_zone_members(txn: &ReadTransaction, zone_id: u64) -> R<Vec<u64>> {
    let table = match txn.open_multimap_table(ZONE_MEMBERS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for v in table.get(zone_id)? {
        out.push(v?.value());
    }
    Ok(out)
}

/// Each memoizer's live table generation, read from a snapshot (memoizers never cleared
/// have none: generation 0). A file of an older format has no such table: an empty map.
pub(crate) fn read_generations(txn: &ReadTransaction) -> R<std::collections::BTreeMap<u64, u64>> {
    let table = match txn.open_table(GENERATIONS) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
        Err(e) => return Err(e.into()),
    };
    let mut out = std::collections::BTreeMap::new();
    for item in table.iter()? {
        let (id, generation) = item?;
        out.insert(id.value(), generation.value());
    }
    Ok(out)
}

/// Clears every memoizer recorded as a member of zone `zone_id`, including members this
/// run has not built. Returns (memoizer id, entries removed) for each member.
pub(crate) fn clear_zone(txn: &WriteTransaction, zone_id: u64) -> R<Vec<(u64, u64)>> {
    let mut cleared = Vec::new();
    for id in zone_members(txn, zone_id)? {
        if let Some(record) = memoizer_record_by_id(txn, id)? {
            cleared.push((id, clear(txn, &record)?));
        }
    }
    Ok(cleared)
}

/// What [`invalidate_dep`] does, done without the index: reads every entry of every
/// member of the zone and removes those carrying `row`. The baseline the benchmarks
/// compare against (what a cache without dependency index must do).
pub(crate) fn invalidate_dep_by_scan(
    txn: &WriteTransaction,
    zone_id: u64,
    row: &DepRow,
) -> R<Vec<(u64, KeyHash)>> {
    let mut targets = Vec::new();
    for memo_id in zone_members(txn, zone_id)? {
        let generation = generation(txn, memo_id)?;
        let name = entries_name(memo_id);
        let table = txn.open_table(EntriesDef::new(&name))?;
        for item in table.iter()? {
            let (hash, bytes) = item?;
            if entry::decode(bytes.value(), false).is_ok_and(|v| v.deps().any(|d| d == *row)) {
                targets.push(entry_ref(memo_id, generation, hash.value()));
            }
        }
    }
    targets.sort_unstable();
    remove_refs(txn, &targets, None)
}

/// Removes up to `limit` entries whose deadline is at or before `now_ms`, oldest first,
/// from live tables and graves alike. Returns the (memoizer id, hash) of each removed
/// live entry.
pub(crate) fn purge_expired(
    txn: &WriteTransaction,
    now_ms: u64,
    limit: usize,
) -> R<Vec<(u64, KeyHash)>> {
    let due: Vec<[u8; 40]> = {
        let expiry = txn.open_table(EXPIRY)?;
        let mut out = Vec::new();
        for item in expiry
            .range::<&[u8; 40]>(..=&expiry_end(now_ms))?
            .take(limit)
        {
            out.push(*item?.0.value());
        }
        out
    };
    let mut removed = Vec::with_capacity(due.len());
    for key in due {
        let (_, memo_id, generation, hash) = split_expiry_key(&key);
        let live = self::generation(txn, memo_id)? == generation;
        let name = table_name(txn, memo_id, generation)?;
        let old = txn
            .open_table(EntriesDef::new(&name))?
            .remove(&hash)?
            .map(|g| g.value().to_vec());
        match old {
            Some(old) => {
                index_rows(txn, (memo_id, generation), &hash, &old, false)?;
                if live {
                    removed.push((memo_id, hash));
                }
            }
            // Only outside damage leaves a row without its entry; drop it.
            None => {
                txn.open_table(EXPIRY)?.remove(&key)?;
            }
        }
    }
    Ok(removed)
}

/// Counts the entries of one memoizer (O(1): redb keeps table lengths). Run in the
/// writer's transaction, so it includes every store queued before it.
pub(crate) fn count_entries(txn: &WriteTransaction, memo_id: u64) -> R<u64> {
    let name = entries_name(memo_id);
    Ok(txn.open_table(EntriesDef::new(&name))?.len()?)
}

/// Whether any entry's deadline is at or before `now_ms`: one read of the expiry index,
/// so an idle sweeper never opens a write transaction.
pub(crate) fn has_expired(db: &redb::Database, now_ms: u64) -> R<bool> {
    let read = db.begin_read()?;
    let expiry = read.open_table(EXPIRY)?;
    let mut due = expiry.range::<&[u8; 40]>(..=&expiry_end(now_ms))?;
    Ok(due.next().transpose()?.is_some())
}

/// Bytes the file's entries are charged for, all memoizers (live tables and graves).
pub(crate) fn bytes_used(txn: &WriteTransaction) -> R<u64> {
    let mut used = 0u64;
    for item in txn.open_table(SIZES)?.iter()? {
        used = used.saturating_add(item?.1.value());
    }
    Ok(used)
}

/// Bytes the entries of memoizer `memo_id` are charged for (O(1)).
pub(crate) fn memoizer_bytes(txn: &WriteTransaction, memo_id: u64) -> R<u64> {
    Ok(txn
        .open_table(SIZES)?
        .get(memo_id)?
        .map_or(0, |v| v.value()))
}

/// How many rows at the head of the eviction order one choice of victim looks at.
const EVICT_LOOK: usize = 8;

/// Evicts entries of `scope` - one memoizer's (its own budget,
/// `MemoizerBuilder::max_bytes`), or the whole file's (`None`) - until they are charged
/// no more than `target` bytes (TinyLFU over a second-chance order, see
/// `storage::budget`). Each victim is chosen against one of `candidates` (entries of the
/// scope just stored, newest first): among the first rows of the scope's eviction
/// order, the first one less popular than the candidate goes, more popular ones move to
/// the end of the order, and if none goes the candidate does. Without candidates left,
/// the first row goes. Victims are removed by [`remove_refs`], like every removal.
/// Records the budget (`max_bytes`) and the evictions per memoizer in [`META`] (for
/// `inspect`). Returns the live entries evicted.
pub(crate) fn evict(
    txn: &WriteTransaction,
    scope: Option<u64>,
    (max_bytes, target): (u64, u64),
    candidates: &[(u64, KeyHash)],
    frequency: &dyn Fn(u64, &KeyHash) -> u8,
) -> R<Vec<(u64, KeyHash)>> {
    let used = |txn: &WriteTransaction| match scope {
        None => bytes_used(txn),
        Some(memo_id) => memoizer_bytes(txn, memo_id),
    };
    let mut evicted = Vec::new();
    let mut candidates = candidates.iter().rev();
    // The next tick, carried from one opening of the tables to the next.
    let mut next_tick = None;
    while used(txn)? > target {
        let candidate = match candidates.next() {
            Some(&(memo_id, hash)) => Some((
                entry_ref(memo_id, generation(txn, memo_id)?, &hash),
                frequency(memo_id, &hash),
            )),
            None => None,
        };
        let victim = {
            let mut tables = EvictTables::open(txn)?;
            tables.next = next_tick;
            let head = tables.head(scope, EVICT_LOOK)?;
            let mut victim = None;
            for (tick, target) in &head {
                let Some((candidate, popularity)) = candidate else {
                    victim = Some(*target);
                    break;
                };
                if *target == candidate {
                    continue;
                }
                let (memo_id, _, hash) = split_entry_ref(target);
                let seen = frequency(memo_id, &hash);
                if seen < popularity {
                    victim = Some(*target);
                    break;
                }
                if seen > popularity {
                    tables.spare(*tick, target)?;
                }
            }
            next_tick = tables.next;
            match (victim, candidate) {
                (Some(victim), _) => victim,
                (None, Some((candidate, _))) if tables.evict.get(&candidate)?.is_some() => {
                    candidate
                }
                // The candidate is gone already (evicted, or replaced since): the head.
                (None, _) => match head.first() {
                    Some(&(_, first)) => first,
                    None => break,
                },
            }
        };
        // A grave's entry goes too (its space counts), but was no longer live.
        evicted.extend(remove_refs(txn, &[victim], None)?);
        // Rows without their entry (outside damage): drop them, so every turn of the
        // loop takes a row out of the order and the round ends.
        let mut tables = EvictTables::open(txn)?;
        if let Some(tick) = tables.evict.remove(&victim)?.map(|t| t.value()) {
            tables.order.remove(&order_key(tick, &victim))?;
        }
    }
    if !evicted.is_empty() {
        let mut meta = txn.open_table(META)?;
        let budget_key = match scope {
            None => KEY_MAX_BYTES.to_string(),
            Some(memo_id) => memo_max_bytes_key(memo_id),
        };
        if meta.get(budget_key.as_str())?.map(|v| v.value()) != Some(max_bytes) {
            meta.insert(budget_key.as_str(), max_bytes)?;
        }
        let mut counts = std::collections::BTreeMap::<u64, u64>::new();
        for (memo_id, _) in &evicted {
            *counts.entry(*memo_id).or_default() += 1;
        }
        for (memo_id, n) in counts {
            let key = evictions_key(memo_id);
            let before = meta.get(key.as_str())?.map_or(0, |v| v.value());
            meta.insert(key.as_str(), before + n)?;
        }
    }
    Ok(evicted)
}

/// What the file records of its budgets' evictions (read from a snapshot).
pub(crate) struct Evictions {
    /// The file's budget at its last eviction for it.
    pub(crate) max_bytes: Option<u64>,
    /// Evictions of each memoizer so far (by id), for either budget.
    pub(crate) counts: std::collections::BTreeMap<u64, u64>,
    /// Each memoizer's own budget at its last eviction for it (by id).
    pub(crate) memo_max_bytes: std::collections::BTreeMap<u64, u64>,
}

/// The budgets recorded by the last evictions, and the evictions of each memoizer so
/// far, read from a snapshot.
pub(crate) fn read_evictions(txn: &ReadTransaction) -> R<Evictions> {
    let meta = txn.open_table(META)?;
    let max_bytes = meta.get(KEY_MAX_BYTES)?.map(|v| v.value());
    let by_id = |prefix: &str| -> R<std::collections::BTreeMap<u64, u64>> {
        let mut out = std::collections::BTreeMap::new();
        for item in meta.range(prefix..)? {
            let (key, n) = item?;
            let Some(id) = key.value().strip_prefix(prefix) else {
                break;
            };
            if let Ok(id) = id.parse() {
                out.insert(id, n.value());
            }
        }
        Ok(out)
    };
    Ok(Evictions {
        max_bytes,
        counts: by_id(EVICTIONS_PREFIX)?,
        memo_max_bytes: by_id(MEMO_MAX_BYTES_PREFIX)?,
    })
}

/// Each memoizer's charge, read from a snapshot.
pub(crate) fn read_sizes(txn: &ReadTransaction) -> R<std::collections::BTreeMap<u64, u64>> {
    let mut out = std::collections::BTreeMap::new();
    let sizes = match txn.open_table(SIZES) {
        Ok(sizes) => sizes,
        // A file of an older format, looked into read-only.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(out),
        Err(e) => return Err(e.into()),
    };
    for item in sizes.iter()? {
        let (id, bytes) = item?;
        out.insert(id.value(), bytes.value());
    }
    Ok(out)
}
