//! Looking into a cache file, and maintenance by name: what the `fresco-memoize` command
//! shows and does, without the Rust types of the memoizers.
//!
//! Reads take one read transaction (like the invariant checker); changes go through the
//! writer and the `ops` functions like every other write, or through a memoizer of this
//! run when one of that name is alive (so its in-memory tier and in-flight computes see
//! the invalidation too). `compact_file` and `verify_file` work on a closed file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use serde::Serialize;

use crate::Cache;
use crate::cache::CacheBuilder;
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::integrity::IntegrityReport;
use crate::key::{KeyBytes, xxh3_key_hash};
use crate::storage::guarded;
use crate::storage::multi::{self, Logged};
use crate::storage::open::{OnCorruption, Origin, open_read_only};
use crate::storage::ops;
use crate::storage::scratch::ScratchCopy;
use crate::storage::tables::{
    DEPS, EXPIRY, EntriesDef, KEY_FORMAT_VERSION, MEMOIZER_NAMES, MEMOIZERS, META, MemoRecord,
    ZONE_MEMBERS, ZONES, entries_name, expiry_end, split_expiry_key,
};
use crate::tiers::Remove;

/// What a cache holds, as [`Cache::inspect`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheInfo {
    /// The cache file, or `None` for an in-memory cache.
    pub path: Option<PathBuf>,
    /// Size of the file on disk (allocated pages, including free ones: see
    /// [`Cache::compact_file`]).
    pub file_bytes: Option<u64>,
    /// The on-disk format version recorded in the file.
    pub format_version: u64,
    /// The cache clock's time the expiry counts refer to (ms since the Unix epoch).
    pub now_ms: u64,
    /// The byte budget ([`CacheBuilder::max_bytes`]) in force when entries were last
    /// evicted for it; `None` if none ever was.
    pub max_bytes: Option<u64>,
    /// Every memoizer recorded in the file, by name.
    pub memoizers: Vec<MemoizerInfo>,
    /// Every zone recorded in the file, by name.
    pub zones: Vec<ZoneInfo>,
}

impl CacheInfo {
    /// Entries across all memoizers.
    pub fn entries(&self) -> u64 {
        self.memoizers.iter().map(|m| m.entries).sum()
    }

    /// Entries past their deadline (not served; removed by the next sweep or purge).
    pub fn expired(&self) -> u64 {
        self.memoizers.iter().map(|m| m.expired).sum()
    }

    /// Bytes of keys and values stored in the memoizers' tables.
    pub fn stored_bytes(&self) -> u64 {
        self.memoizers.iter().map(|m| m.stored_bytes).sum()
    }

    /// Bytes the entries are charged against the byte budget, all memoizers.
    pub fn charged_bytes(&self) -> u64 {
        self.memoizers.iter().map(|m| m.charged_bytes).sum()
    }

    /// Entries evicted for the byte budget, all memoizers, over the file's life.
    pub fn budget_evictions(&self) -> u64 {
        self.memoizers.iter().map(|m| m.budget_evictions).sum()
    }
}

/// One memoizer recorded in a cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoizerInfo {
    /// Its name.
    pub name: String,
    /// Its id in the file (names its table).
    pub id: u64,
    /// Entries stored.
    pub entries: u64,
    /// Bytes of its rows (entry headers, keys, dependency rows and values).
    pub stored_bytes: u64,
    /// Entries past their deadline.
    pub expired: u64,
    /// Bytes its entries (with those of cleared tables not reclaimed yet) are charged
    /// against the byte budget ([`CacheBuilder::max_bytes`]): what redb spends on them,
    /// estimated.
    pub charged_bytes: u64,
    /// Its entries evicted for the byte budget, over the file's life: the file's
    /// ([`CacheBuilder::max_bytes`]) and its own
    /// ([`MemoizerBuilder::max_bytes`](crate::MemoizerBuilder::max_bytes)).
    pub budget_evictions: u64,
    /// Its own byte budget ([`MemoizerBuilder::max_bytes`](crate::MemoizerBuilder::max_bytes))
    /// in force when its entries were last evicted for it; `None` if none ever was.
    pub max_bytes: Option<u64>,
    /// Names of the zones it belongs to.
    pub zones: Vec<String>,
}

/// One zone recorded in a cache file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ZoneInfo {
    /// Its name.
    pub name: String,
    /// Its id in the file.
    pub id: u64,
    /// Names of its member memoizers.
    pub members: Vec<String>,
    /// Rows in the dependency index under this zone: (dependency key, entry) pairs.
    pub dependency_rows: u64,
}

/// What [`Cache::compact_file`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CompactReport {
    /// File size before.
    pub bytes_before: u64,
    /// File size after.
    pub bytes_after: u64,
}

/// What [`Cache::verify_file`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileCheck {
    /// Whether redb found its own structures damaged (their checksums failed) and had to
    /// repair them - in the scratch copy it checked, never in the file itself. `false`:
    /// they were sound.
    pub redb_repaired: bool,
    /// The cache's own invariants (entries parse; the dependency and expiry indexes
    /// match the entries exactly).
    pub invariants: IntegrityReport,
}

impl FileCheck {
    /// Whether the file is sound (nothing repaired, no invariant violated).
    pub fn is_ok(&self) -> bool {
        !self.redb_repaired && self.invariants.is_ok()
    }
}

type R<T> = std::result::Result<T, redb::Error>;

impl Cache {
    /// What the cache holds: its memoizers (entries, bytes, expired entries, zones) and
    /// zones (members, dependency index rows), including memoizers this run has not
    /// built. Commits pending writes first. Reads the expiry index and each table's
    /// metadata, not the entries.
    ///
    /// ```
    /// use fresco_memoize::{Cache, Store};
    ///
    /// let cache = Cache::in_memory()?;
    /// let squares = cache.memoizer::<u64, u64>("squares").store(Store::Persistent).build()?;
    /// squares.get_or_compute(&3, |n| n * n);
    /// let info = cache.inspect()?;
    /// assert_eq!(info.memoizers[0].name, "squares");
    /// assert_eq!(info.entries(), 1);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn inspect(&self) -> Result<CacheInfo> {
        self.flush()?;
        let storage = &self.inner.shared.storage;
        let now_ms = self.inner.shared.clock.now_ms();
        let mut info =
            guarded(|| read_info(&*storage.db()?, now_ms)).map_err(|e| storage.error(e))?;
        info.path = storage.path().map(Path::to_path_buf);
        info.file_bytes = storage
            .path()
            .and_then(|p| std::fs::metadata(p).ok())
            .map(|m| m.len());
        Ok(info)
    }

    /// Removes every entry of the memoizer named `name`, which this run need not have
    /// built (for one it has built, the same as its
    /// [`invalidate_all`](crate::Memoizer::invalidate_all)). Returns how many entries
    /// were removed, or `None` if the file records no memoizer of that name.
    pub fn invalidate_memoizer(&self, name: &str) -> Result<Option<u64>> {
        if let Some(core) = self.inner.live_by_name(name) {
            return core.invalidate(Remove::All).map(Some);
        }
        let owned = name.to_string();
        let shared = &self.inner.shared;
        // A shared cache's other processes may have it alive: they read the log.
        let log = shared.writer.log_token();
        let removed = shared
            .writer
            .run(move |txn| match ops::memoizer_record(txn, &owned)? {
                Some(record) => {
                    let n = ops::clear(txn, &record)?;
                    multi::log(txn, log, Logged::Memoizer(record.id))?;
                    Ok(Some(n))
                }
                None => Ok(None),
            })?;
        shared.storage.reclaim_soon();
        Ok(removed)
    }

    /// Removes the entry of the memoizer named `name` stored under `key` - the key as
    /// stored, that is after the memoizer's keyfunc, if it has one. `key` must encode
    /// like the memoizer's key type: the same serde shape (a `u64` for a `u64`, a tuple
    /// for a tuple). Returns whether an entry was removed, or `None` if the file records
    /// no memoizer of that name.
    ///
    /// Cost: one lookup, except for a memoizer with zone key functions, whose entries
    /// are filed under their dependency keys: without its typed key functions this call
    /// reads that memoizer's entries to find the key. Its own
    /// [`invalidate_key`](crate::Memoizer::invalidate_key) needs one lookup.
    ///
    /// ```
    /// use fresco_memoize::{Cache, Store};
    ///
    /// let cache = Cache::in_memory()?;
    /// let m = cache.memoizer::<(u64, String), u64>("m").store(Store::Persistent).build()?;
    /// m.get_or_compute(&(1, "a".into()), |_| 7);
    /// drop(m);
    /// assert_eq!(cache.invalidate_memoizer_key("m", &(1u64, "a"))?, Some(true));
    /// assert_eq!(cache.invalidate_memoizer_key("m", &(1u64, "a"))?, Some(false));
    /// assert_eq!(cache.invalidate_memoizer_key("nope", &1u64)?, None);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn invalidate_memoizer_key<K: Serialize + ?Sized>(
        &self,
        name: &str,
        key: &K,
    ) -> Result<Option<bool>> {
        let bytes = KeyBytes::encode(key).map_err(Error::KeyEncoding)?;
        if let Some(core) = self.inner.live_by_name(name) {
            let hash = (core.policy.hasher)(bytes.as_slice());
            let placed = core.persistent.as_ref().filter(|_| core.policy.placed);
            let row = match placed {
                None => Some(hash),
                // Its zone key functions take the typed key, which this call does not have.
                Some(p) => {
                    let (id, key) = (p.id, bytes.as_slice().to_vec());
                    self.inner
                        .shared
                        .writer
                        .run(move |txn| ops::find_placed(txn, id, &hash, &key))?
                }
            };
            let Some(row) = row else {
                return Ok(Some(false));
            };
            return Ok(Some(core.invalidate(Remove::Key(row))? > 0));
        }
        let hash = xxh3_key_hash(bytes.as_slice());
        let (owned, key) = (name.to_string(), bytes.as_slice().to_vec());
        let writer = &self.inner.shared.writer;
        let log = writer.log_token();
        writer.run(move |txn| {
            let Some(record) = ops::memoizer_record(txn, &owned)? else {
                return Ok(None);
            };
            let row = match record.placed {
                true => ops::find_placed(txn, record.id, &hash, &key)?,
                false => Some(hash),
            };
            let Some(row) = row else {
                return Ok(Some(false));
            };
            let removed = ops::remove(txn, record.id, &row)?;
            if removed {
                multi::log(
                    txn,
                    log,
                    Logged::Key {
                        id: record.id,
                        hash: row,
                    },
                )?;
            }
            Ok(Some(removed))
        })
    }

    /// Compacts a cache file that no `Cache` holds open, giving free pages back to the
    /// file system. The file must exist and be a cache; it is never created. Tables
    /// cleared by `invalidate_all` whose space was not reclaimed yet (graves) are
    /// reclaimed first, so their pages are given back too.
    ///
    /// ```
    /// use fresco_memoize::Cache;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.memo");
    /// {
    ///     let cache = Cache::open(&path)?;
    ///     let blobs = cache.memoizer::<u32, Vec<u8>>("blobs").build()?;
    ///     for i in 0..100 {
    ///         blobs.get_or_compute(&i, |_| vec![0; 16 << 10]);
    ///     }
    ///     blobs.invalidate_all()?;
    /// }
    /// let report = Cache::compact_file(&path)?;
    /// assert!(report.bytes_after < report.bytes_before);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn compact_file(path: impl AsRef<Path>) -> Result<CompactReport> {
        let path = path.as_ref();
        let bytes_before = file_len(path)?;
        let mut db = open_closed(path)?;
        guarded(|| {
            // A cleared table's pages are free only once its grave is reclaimed, which a
            // program may not have finished before it closed the file: finish it here, or
            // compacting right after a clear would give nothing back.
            loop {
                let txn = db.begin_write()?;
                let (_, more) = ops::reclaim(&txn, crate::sweeper::BATCH)?;
                txn.commit()?;
                if !more {
                    break;
                }
            }
            // Each pass moves pages towards the start; stop when one finds nothing to do.
            for _ in 0..64 {
                if !db.compact()? {
                    break;
                }
            }
            Ok(())
        })
        .map_err(|source| Error::Storage {
            path: Some(path.to_path_buf()),
            source,
        })?;
        drop(db);
        Ok(CompactReport {
            bytes_before,
            bytes_after: file_len(path)?,
        })
    }

    /// What a cache file that no `Cache` holds open contains, as [`inspect`](Self::inspect)
    /// tells it, read without writing a byte to the file: it is opened read-only (a file
    /// that was not closed cleanly, which redb must recover first, is looked into through
    /// a scratch copy in the temporary directory). The file must exist.
    ///
    /// ```
    /// use fresco_memoize::Cache;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.memo");
    /// Cache::open(&path)?.memoizer::<u32, u32>("m").build()?.get_or_compute(&1, |n| n + 1);
    /// let before = std::fs::read(&path).unwrap();
    /// assert_eq!(Cache::inspect_file(&path)?.entries(), 1);
    /// assert_eq!(std::fs::read(&path).unwrap(), before);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn inspect_file(path: impl AsRef<Path>) -> Result<CacheInfo> {
        let path = path.as_ref();
        let now_ms = crate::clock::SystemClock.now_ms();
        let storage_error = |source| Error::Storage {
            path: Some(path.to_path_buf()),
            source,
        };
        let mut info = match open_read_only(path)? {
            Some(db) => guarded(|| read_info(&db, now_ms)).map_err(storage_error)?,
            None => {
                let copy = ScratchCopy::of(path)?;
                let db = open_closed(copy.path()).map_err(|e| copy.blame(path, e))?;
                guarded(|| read_info(&db, now_ms)).map_err(storage_error)?
            }
        };
        info.path = Some(path.to_path_buf());
        info.file_bytes = Some(file_len(path)?);
        Ok(info)
    }

    /// Checks a cache file that no `Cache` holds open, without writing a byte to it: on a
    /// scratch copy in the temporary directory, redb verifies the checksums of its own
    /// structures (repairing the copy if it can), then the cache's invariants are checked
    /// as by [`check_integrity`](Cache::check_integrity). The file must exist; it is never
    /// created, moved, repaired or recreated. A file redb cannot repair is
    /// [`Error::Corrupted`].
    ///
    /// ```
    /// use fresco_memoize::Cache;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("app.memo");
    /// Cache::open(&path)?.memoizer::<u32, u32>("m").build()?.get_or_compute(&1, |n| n + 1);
    /// let check = Cache::verify_file(&path)?;
    /// assert!(check.is_ok(), "{check:?}");
    /// assert_eq!(check.invariants.entries, 1);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    pub fn verify_file(path: impl AsRef<Path>) -> Result<FileCheck> {
        let path = path.as_ref();
        // Refuses what is not ours, newer or busy, before copying anything.
        drop(open_read_only(path)?);
        let copy = ScratchCopy::of(path)?;
        verify_closed(copy.path()).map_err(|e| copy.blame(path, e))
    }
}

/// Opens an existing cache file directly (for the maintenance redb needs `&mut` for).
fn open_closed(path: &Path) -> Result<redb::Database> {
    Origin::file(path, 16 << 20, false, false).open()
}

/// redb's checks, then the cache's invariants, on a closed file (which they may repair).
fn verify_closed(path: &Path) -> Result<FileCheck> {
    let mut db = open_closed(path)?;
    let sound = guarded(|| Ok(db.check_integrity()?)).map_err(|e| match e {
        redb::Error::Io(source) => Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => Error::Corrupted {
            path: path.to_path_buf(),
            detail: other.to_string(),
        },
    })?;
    drop(db);
    let cache = CacheBuilder::new()
        .sweep_interval(None)
        .on_corruption(OnCorruption::Fail)
        .open_existing(path)?;
    Ok(FileCheck {
        redb_repaired: !sound,
        invariants: cache.check_integrity()?,
    })
}

fn file_len(path: &Path) -> Result<u64> {
    std::fs::metadata(path)
        .map(|m| m.len())
        .map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
}

fn read_info(db: &impl ReadableDatabase, now_ms: u64) -> R<CacheInfo> {
    let txn = db.begin_read()?;
    let format_version = txn
        .open_table(META)?
        .get(KEY_FORMAT_VERSION)?
        .map_or(0, |v| v.value());

    let names: BTreeMap<u64, String> = {
        let table = txn.open_table(MEMOIZER_NAMES)?;
        let mut out = BTreeMap::new();
        for item in table.iter()? {
            let (id, name) = item?;
            out.insert(id.value(), name.value().to_string());
        }
        out
    };

    // Expired live entries per memoizer: one range read of the expiry index (rows of
    // graves, awaiting reclamation, are not entries any more). A file of an older format
    // (looked into read-only, not upgraded) has an index of another layout: no counts.
    let generations = ops::read_generations(&txn)?;
    let mut expired: BTreeMap<u64, u64> = BTreeMap::new();
    match txn.open_table(EXPIRY) {
        Ok(expiry) => {
            for item in expiry.range::<&[u8; 40]>(..=&expiry_end(now_ms))? {
                let (_, memo_id, generation, _) = split_expiry_key(item?.0.value());
                if generations.get(&memo_id).copied().unwrap_or(0) == generation {
                    *expired.entry(memo_id).or_default() += 1;
                }
            }
        }
        Err(redb::TableError::TableTypeMismatch { .. }) if format_version < 3 => {}
        Err(e) => return Err(e.into()),
    }

    let mut zones = Vec::new();
    let mut zones_of: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    {
        let members = txn.open_multimap_table(ZONE_MEMBERS)?;
        let deps = txn.open_multimap_table(DEPS)?;
        for item in txn.open_table(ZONES)?.iter()? {
            let (name, id) = item?;
            let (name, id) = (name.value().to_string(), id.value());
            let mut member_names = Vec::new();
            for m in members.get(id)? {
                let memo_id = m?.value();
                zones_of.entry(memo_id).or_default().insert(name.clone());
                member_names.push(
                    names
                        .get(&memo_id)
                        .cloned()
                        .unwrap_or_else(|| format!("#{memo_id}")),
                );
            }
            member_names.sort();
            // A zone's dependency rows are contiguous: its id is their big-endian prefix.
            let mut lo = [0u8; 24];
            lo[..8].copy_from_slice(&id.to_be_bytes());
            let mut hi = [0xffu8; 24];
            hi[..8].copy_from_slice(&id.to_be_bytes());
            let mut dependency_rows = 0;
            for row in deps.range::<&[u8; 24]>(&lo..=&hi)? {
                dependency_rows += row?.1.len();
            }
            zones.push(ZoneInfo {
                name,
                id,
                members: member_names,
                dependency_rows,
            });
        }
    }

    let sizes = ops::read_sizes(&txn)?;
    let evictions = ops::read_evictions(&txn)?;
    let mut memoizers = Vec::new();
    for item in txn.open_table(MEMOIZERS)?.iter()? {
        let (name, record) = item?;
        let Some(record) = MemoRecord::decode(record.value()) else {
            continue;
        };
        let table_name = entries_name(record.id);
        let (entries, stored_bytes) = match txn.open_table(EntriesDef::new(&table_name)) {
            Ok(t) => (t.len()?, t.stats()?.stored_bytes()),
            Err(redb::TableError::TableDoesNotExist(_)) => (0, 0),
            Err(e) => return Err(e.into()),
        };
        memoizers.push(MemoizerInfo {
            name: name.value().to_string(),
            id: record.id,
            entries,
            stored_bytes,
            expired: expired.get(&record.id).copied().unwrap_or(0),
            charged_bytes: sizes.get(&record.id).copied().unwrap_or(0),
            budget_evictions: evictions.counts.get(&record.id).copied().unwrap_or(0),
            max_bytes: evictions.memo_max_bytes.get(&record.id).copied(),
            zones: zones_of
                .remove(&record.id)
                .map(|z| z.into_iter().collect())
                .unwrap_or_default(),
        });
    }
    Ok(CacheInfo {
        path: None,
        file_bytes: None,
        format_version,
        now_ms,
        max_bytes: evictions.max_bytes,
        memoizers,
        zones,
    })
}
