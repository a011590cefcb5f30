//! Shared mode's storage side (`CacheBuilder::shared`): several processes open one file
//! in redb's `MultiWriter` mode. What this module adds to the one-process design:
//!
//! - **The board** (`crate::shm`): every commit of any process bumps a shared counter
//!   after it committed; a reader that sees it move catches up (`crate::shared_mode`)
//!   before it reads any tier: it applies the invalidation log's new rows to its memory
//!   tiers and drops its cached snapshots.
//! - **The invalidation log** (`fresco/invalidations`): each invalidation appends what it
//!   removed ([`Logged`]) in its own transaction, so the log and the removal commit
//!   together - a process killed mid-invalidation leaves both or neither.
//! - **No stale store across processes**: a store remembers the log sequence its
//!   computation began after ([`Multi::hold`]); the writer's put transaction, which sees
//!   every commit before it (redb takes the file's write lock in `begin_write`), drops
//!   the value if a logged row since then covers it ([`Refusals`]).
//! - **Single-flight across processes** (`super::flights`): a word per key in flight in
//!   the board's flight table, and a kernel lock per process, so a dead holder is known
//!   dead at once. The holder keeps its flight until its value committed
//!   ([`Multi::settled`]), so a waiter that takes it over finds the value.
//! - **fork()**: the process id at open; a child (which shares its parent's open file
//!   descriptions, and with them redb's locks) is refused (`Error::Forked`).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redb::{ReadableMultimapTable, ReadableTable, WriteTransaction};

use super::PendingKey;
use super::flights::{FlightTable, FlightWord};
use super::tables::{INVALIDATIONS, LOG_KEEP, ZONE_MEMBERS};
use crate::entry;
use crate::error::{Error, Result};
use crate::key::{DepRow, KeyHash};
use crate::shm::Peers;

type R<T> = std::result::Result<T, redb::Error>;

/// First and longest pause between two tries of an open waiting for its turn.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);

/// Longest an open waits for another process's open of the same shared file.
const OPEN_WAIT: Duration = Duration::from_secs(30);

/// Takes the turn to open the shared cache file at `path` among processes (a `flock` on
/// its board file, `<file>-shm`): two processes creating the file at once would both
/// initialise it, and one opening it while another creates it would find it half
/// written. Held until the returned handle drops (the kernel releases it if the opener
/// dies); after [`OPEN_WAIT`] the open goes on without it.
pub(crate) fn open_turn(path: &Path) -> Result<Option<File>> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| Error::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let board = crate::shm::board_path(path);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&board)
        .map_err(|source| Error::Io {
            path: board.clone(),
            source,
        })?;
    let start = Instant::now();
    let mut pause = POLL_FIRST;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(Some(file)),
            Err(TryLockError::WouldBlock) if start.elapsed() < OPEN_WAIT => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(POLL_MAX);
            }
            Err(_) => return Ok(None),
        }
    }
}

/// What one row of the invalidation log says was removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Logged {
    /// One entry of memoizer `id`.
    Key { id: u64, hash: KeyHash },
    /// Every entry of memoizer `id`.
    Memoizer(u64),
    /// Every entry carrying the dependency row.
    Dep(DepRow),
    /// Every entry of every member of the zone.
    Zone(u64),
}

impl Logged {
    pub(crate) fn of(removal: &super::ops::Removal) -> Logged {
        use super::ops::Removal;
        match *removal {
            Removal::Key { id, hash } => Logged::Key { id, hash },
            Removal::Memoizer(id) => Logged::Memoizer(id),
            Removal::Dep(row) | Removal::DepByScan { row, .. } => Logged::Dep(row),
            Removal::Zone(zone) => Logged::Zone(zone),
        }
    }

    fn encode(&self, token: u64) -> Vec<u8> {
        let mut out = token.to_le_bytes().to_vec();
        match self {
            Logged::Key { id, hash } => {
                out.push(0);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(hash);
            }
            Logged::Memoizer(id) => {
                out.push(1);
                out.extend_from_slice(&id.to_le_bytes());
            }
            Logged::Dep(row) => {
                out.push(2);
                out.extend_from_slice(row);
            }
            Logged::Zone(zone) => {
                out.push(3);
                out.extend_from_slice(&zone.to_le_bytes());
            }
        }
        out
    }

    /// (writer's token, what), or `None` for bytes that do not parse.
    fn decode(bytes: &[u8]) -> Option<(u64, Logged)> {
        let word = |b: &[u8]| Some(u64::from_le_bytes(b.get(..8)?.try_into().ok()?));
        let token = word(bytes)?;
        let body = bytes.get(9..)?;
        let what = match *bytes.get(8)? {
            0 if body.len() == 24 => Logged::Key {
                id: word(body)?,
                hash: body[8..].try_into().ok()?,
            },
            1 if body.len() == 8 => Logged::Memoizer(word(body)?),
            2 if body.len() == 24 => Logged::Dep(body.try_into().ok()?),
            3 if body.len() == 8 => Logged::Zone(word(body)?),
            _ => return None,
        };
        Some((token, what))
    }

    /// Whether this removal covers the entry `bytes` of memoizer `memo` under `hash`
    /// (`members`: the memoizers of the zone, for a zone row).
    fn covers(&self, memo: u64, hash: &KeyHash, bytes: &[u8], members: &[u64]) -> bool {
        match self {
            Logged::Key { id, hash: h } => *id == memo && h == hash,
            Logged::Memoizer(id) => *id == memo,
            Logged::Zone(_) => members.contains(&memo),
            // An entry that does not parse is never served: refusing it costs nothing.
            Logged::Dep(row) => {
                entry::decode(bytes, false).map_or(true, |view| view.deps().any(|r| r == *row))
            }
        }
    }
}

/// What the log holds after some sequence.
pub(crate) struct LogTail {
    /// Rows after it, in order: (sequence, writer's token, what).
    pub rows: Vec<(u64, u64, Logged)>,
    /// Whether rows after it were trimmed away (or did not parse): the reader must
    /// assume anything was removed.
    pub gap: bool,
    /// The last sequence in the log (the asked one if there is none after it).
    pub head: u64,
}

/// Reads the log after sequence `after`.
pub(crate) fn log_after(table: &impl ReadableTable<u64, &'static [u8]>, after: u64) -> R<LogTail> {
    let mut tail = LogTail {
        rows: Vec::new(),
        gap: false,
        head: after,
    };
    let first = table.first()?.map(|(k, _)| k.value());
    if first.is_some_and(|f| f > after.saturating_add(1)) {
        tail.gap = true;
    }
    for row in table.range(after.saturating_add(1)..)? {
        let (seq, bytes) = row?;
        let seq = seq.value();
        tail.head = tail.head.max(seq);
        match Logged::decode(bytes.value()) {
            Some((token, what)) => tail.rows.push((seq, token, what)),
            None => tail.gap = true,
        }
    }
    Ok(tail)
}

/// The last sequence of the log of a read transaction (0 when empty or missing).
pub(crate) fn log_head(txn: &redb::ReadTransaction) -> R<u64> {
    match txn.open_table(INVALIDATIONS) {
        Ok(table) => Ok(table.last()?.map_or(0, |(k, _)| k.value())),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The log after `after`, read in a read transaction.
pub(crate) fn read_log_after(txn: &redb::ReadTransaction, after: u64) -> R<LogTail> {
    match txn.open_table(INVALIDATIONS) {
        Ok(table) => log_after(&table, after),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(LogTail {
            rows: Vec::new(),
            gap: false,
            head: after,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The recorded members of zone `zone` (memoizer ids), in a read transaction.
pub(crate) fn zone_members(txn: &redb::ReadTransaction, zone: u64) -> R<Vec<u64>> {
    match txn.open_multimap_table(ZONE_MEMBERS) {
        Ok(table) => members_of(&table, zone),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

fn members_of(table: &impl ReadableMultimapTable<u64, u64>, zone: u64) -> R<Vec<u64>> {
    let mut ids = Vec::new();
    for id in table.get(zone)? {
        ids.push(id?.value());
    }
    Ok(ids)
}

/// Appends `what` to the log in `txn` (an invalidation's), as process `token`, and
/// trims rows older than the last [`LOG_KEEP`].
pub(crate) fn append(txn: &WriteTransaction, token: u64, what: Logged) -> R<()> {
    let mut table = txn.open_table(INVALIDATIONS)?;
    let seq = table.last()?.map_or(0, |(k, _)| k.value()) + 1;
    table.insert(seq, what.encode(token).as_slice())?;
    if seq > LOG_KEEP {
        table.retain_in(..seq - LOG_KEEP, |_, _| false)?;
    }
    Ok(())
}

/// In a shared cache (`log`: this process's token), [`append`]s a removal; nothing in
/// the default mode. For removals made outside `Writer::remove` too (of a memoizer not
/// alive in this process, which may be alive in another).
pub(crate) fn log(txn: &WriteTransaction, log: Option<u64>, what: Logged) -> R<()> {
    match log {
        Some(token) => append(txn, token, what),
        None => Ok(()),
    }
}

/// A stored value waiting for its commit: the log sequence its computation began after,
/// and the flight its process holds until then.
struct Held {
    seq: u64,
    since: u64,
    _flight: Option<FlightWord>,
}

/// The shared-mode state of one cache's storage.
pub(crate) struct Multi {
    pub peers: Arc<Peers>,
    /// Identifies this process's rows in the log (random per open).
    pub token: u64,
    /// The process that opened the cache.
    pid: u32,
    /// The last log sequence applied to this process's memory tiers.
    applied: AtomicU64,
    /// Single-flight across processes.
    flights: FlightTable,
    held: Mutex<HashMap<PendingKey, Held>>,
    /// How long the writer gathers puts into one (durable) commit.
    pub commit_interval: Duration,
}

impl std::fmt::Debug for Multi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Multi")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Multi {
    pub(crate) fn new(
        path: &Path,
        peers: Arc<Peers>,
        applied: u64,
        commit_interval: Duration,
    ) -> Multi {
        // Random per open (std's hasher keys are), so no two opens share one.
        let token = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::hash::RandomState::new().build_hasher();
            h.write_u32(std::process::id());
            h.finish()
        };
        Multi {
            flights: FlightTable::new(path, peers.clone()),
            peers,
            token,
            pid: std::process::id(),
            applied: AtomicU64::new(applied),
            held: Mutex::new(HashMap::new()),
            commit_interval,
        }
    }

    /// Fails in a child process forked after the cache was opened.
    pub(crate) fn check_pid(&self, path: &Path) -> Result<()> {
        if std::process::id() == self.pid {
            Ok(())
        } else {
            Err(Error::Forked {
                path: path.to_path_buf(),
            })
        }
    }

    /// Whether this is a child forked after the open.
    pub(crate) fn forked(&self) -> bool {
        std::process::id() != self.pid
    }

    /// The log sequence applied to this process's tiers; a computation records it
    /// before it starts.
    pub(crate) fn applied(&self) -> u64 {
        self.applied.load(Ordering::SeqCst)
    }

    /// Records that the log up to `head` is applied.
    pub(crate) fn set_applied(&self, head: u64) {
        self.applied.fetch_max(head, Ordering::SeqCst);
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, HashMap<PendingKey, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a store queued for the writer: `seq` its write sequence, `since` the log
    /// sequence its computation began after, `flight` its flight (given back when the
    /// store has committed or failed).
    pub(crate) fn hold(&self, key: PendingKey, seq: u64, since: u64, flight: Option<FlightWord>) {
        self.lock_held().insert(
            key,
            Held {
                seq,
                since,
                _flight: flight,
            },
        );
    }

    /// The stores of a batch are committed (or failed): their locks go.
    pub(crate) fn settled(&self, done: &[(PendingKey, u64)]) {
        let mut held = self.lock_held();
        for (key, seq) in done {
            if held.get(key).is_some_and(|h| h.seq == *seq) {
                held.remove(key);
            }
        }
    }

    /// The log sequence the store `(key, seq)` was computed after (0 if unknown: then
    /// every logged row counts against it).
    fn since(&self, key: &PendingKey, seq: u64) -> u64 {
        self.lock_held()
            .get(key)
            .filter(|h| h.seq == seq)
            .map_or(0, |h| h.since)
    }

    /// Takes the flight of key `hash` of the memoizer with table id `memo` across
    /// processes, or waits until the process leading it landed its value (`Err`): see
    /// [`FlightTable::lead`].
    pub(crate) fn lead<T>(
        &self,
        memo: u64,
        hash: &KeyHash,
        look: impl FnMut() -> Option<T>,
    ) -> std::result::Result<Option<FlightWord>, T> {
        self.flights.lead(memo, hash, look)
    }
}

/// The writer's check of one batch's puts against the log (see the module docs).
pub(crate) struct Refusals<'a> {
    multi: &'a Multi,
    /// The log read so far: rows after `from`.
    tail: Option<(u64, LogTail)>,
    members: HashMap<u64, Vec<u64>>,
}

impl<'a> Refusals<'a> {
    pub(crate) fn new(multi: &'a Multi) -> Self {
        Refusals {
            multi,
            tail: None,
            members: HashMap::new(),
        }
    }

    /// Whether the put `(key, seq)` of `bytes` must be dropped: an invalidation logged
    /// after its computation began covers it.
    pub(crate) fn refuses(
        &mut self,
        txn: &WriteTransaction,
        key: &PendingKey,
        seq: u64,
        bytes: &[u8],
    ) -> R<bool> {
        let since = self.multi.since(key, seq);
        let reload = self.tail.as_ref().is_none_or(|(from, _)| since < *from);
        if reload {
            let table = txn.open_table(INVALIDATIONS)?;
            self.tail = Some((since, log_after(&table, since)?));
        }
        let Some((_, tail)) = &self.tail else {
            return Ok(false);
        };
        if tail.gap {
            return Ok(true);
        }
        for (row_seq, _, what) in &tail.rows {
            if *row_seq <= since {
                continue;
            }
            let members: &[u64] = match what {
                Logged::Zone(zone) => {
                    if !self.members.contains_key(zone) {
                        let ids = members_of(&txn.open_multimap_table(ZONE_MEMBERS)?, *zone)?;
                        self.members.insert(*zone, ids);
                    }
                    &self.members[zone]
                }
                _ => &[],
            };
            if what.covers(key.0, &key.1, bytes, members) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rows_round_trip_and_garbage_reads_as_nothing() {
        for what in [
            Logged::Key {
                id: 7,
                hash: [9; 16],
            },
            Logged::Memoizer(3),
            Logged::Dep([4; 24]),
            Logged::Zone(u64::MAX),
        ] {
            assert_eq!(Logged::decode(&what.encode(42)), Some((42, what)));
        }
        assert_eq!(Logged::decode(&[1, 2, 3]), None);
        let mut bad = Logged::Zone(1).encode(1);
        bad[8] = 9;
        assert_eq!(Logged::decode(&bad), None);
    }
}
