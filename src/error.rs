//! The library's one error type.

use std::fmt;
use std::path::PathBuf;

/// Everything that can go wrong inside fresco-memoize itself.
///
/// Errors of *your* computation never appear here: [`Memoizer::try_get_or_compute`] hands
/// your own error type back untouched.
///
/// [`Memoizer::try_get_or_compute`]: crate::Memoizer::try_get_or_compute
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The cache file is held by another `Cache` in this process or by another process.
    AlreadyOpen {
        /// The file that could not be locked.
        path: PathBuf,
    },
    /// The file exists but is not a fresco-memoize cache (not a redb database, or a redb
    /// database with someone else's tables). It is never modified or moved.
    NotACache {
        /// The offending file.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },
    /// The file was written by a newer version of fresco-memoize.
    NewerFormat {
        /// The offending file.
        path: PathBuf,
        /// The format version found in the file.
        found: u32,
        /// The newest format version this build understands.
        supported: u32,
    },
    /// The cache file is damaged and [`CacheBuilder::on_corruption`] asked to fail rather
    /// than to start afresh.
    ///
    /// [`CacheBuilder::on_corruption`]: crate::CacheBuilder::on_corruption
    Corrupted {
        /// The damaged file.
        path: PathBuf,
        /// What redb or the entry checks reported.
        detail: String,
    },
    /// A damaged cache file was moved aside and the cache carried on with a fresh file at
    /// its path. Only reported (through [`Cache::health`] and the error hook), never
    /// returned: there is nothing left to do.
    ///
    /// [`Cache::health`]: crate::Cache::health
    MovedAside {
        /// The cache file, now a fresh one.
        path: PathBuf,
        /// Where the damaged file went.
        moved_to: PathBuf,
        /// What was found damaged.
        detail: String,
    },
    /// One stored entry failed its checks (checksum, structure) and was read as a miss;
    /// the recomputed value overwrites it. Only reported.
    DamagedEntry {
        /// The cache file, or `None` for an in-memory cache.
        path: Option<PathBuf>,
        /// The memoizer the entry belongs to.
        memoizer: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The cache stopped using its file and runs without one (values are computed and
    /// returned, nothing is stored) until it is reopened: the file was replaced by
    /// another one, or could not be replaced after damage. Only reported.
    Detached {
        /// The cache file's path.
        path: PathBuf,
        /// What happened to the file.
        reason: String,
    },
    /// redb reported an error (I/O, a full disk, a damaged page...).
    Storage {
        /// The cache file, or `None` for an in-memory cache.
        path: Option<PathBuf>,
        /// The underlying error.
        source: redb::Error,
    },
    /// A file-system operation around the cache file failed.
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key could not be encoded by postcard (for example a map whose length is unknown).
    KeyEncoding(postcard::Error),
    /// A value could not be archived by rkyv.
    ValueEncoding(String),
    /// A memoizer or zone name is empty or too long.
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A memoizer with this name is already alive in this `Cache`.
    MemoizerInUse {
        /// The memoizer's name.
        name: String,
    },
    /// A memoizer joined a zone whose default key function does not apply to its
    /// arguments (another argument type, or a `#[memoize]` function of several
    /// arguments), and gave no key function of its own (`zone_key`, `zonekey`).
    MissingZoneKey {
        /// The memoizer's name.
        memoizer: String,
        /// The zone's name.
        zone: String,
    },
    /// A memoizer joined a zone of another `Cache`.
    ForeignZone {
        /// The memoizer's name.
        memoizer: String,
        /// The zone's name.
        zone: String,
    },
    /// A zone key function returned more dependency keys for one entry than an entry can
    /// record (65,535); the value was returned but not stored.
    TooManyDependencies {
        /// The memoizer's name.
        memoizer: String,
        /// How many distinct dependency keys the entry had.
        count: usize,
    },
    /// The cache's background writer has stopped (after a panic or a fatal storage error).
    WriterStopped,
    /// The write transaction carrying this operation failed; the cause is shared by every
    /// operation of that batch.
    WriteFailed(std::sync::Arc<Error>),
    /// The cache server (Redis or Valkey, feature `redis`) could not be reached, timed out
    /// or refused a command. Calls that meet it still compute and return their value.
    Remote {
        /// The server's address, credentials removed.
        server: String,
        /// What went wrong, credentials removed.
        detail: String,
    },
    /// The cache file is open in the other sharing mode: a shared cache
    /// (`CacheBuilder::shared(true)`) beside an exclusive one, or the reverse. Every
    /// program on one file must open it the same way.
    ModeMismatch {
        /// The file.
        path: PathBuf,
        /// Whether this open asked for shared mode.
        shared: bool,
        /// Who holds the file, in the other mode.
        holder: &'static str,
    },
    /// A shared cache was used in a child process forked after it was opened. The child
    /// shares its parent's open files, and with them the parent's locks on the cache
    /// file, so it must not touch it: calls compute without the cache, and this is what
    /// they report. Open the cache in the child (after `fork`), not before.
    Forked {
        /// The cache file.
        path: PathBuf,
    },
    /// Something a shared cache (`CacheBuilder::shared(true)`) does not offer.
    NotShareable {
        /// What was asked, and what to do instead.
        reason: &'static str,
    },
    /// A memoizer was configured with something its store does not offer (for example
    /// [`MemoizerBuilder::max_bytes`](crate::MemoizerBuilder::max_bytes) on a store
    /// without a file tier).
    Unsupported {
        /// What was asked, and what to do instead.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::AlreadyOpen { path } => write!(
                f,
                "cache file {} is already open in another Cache or process; share one Cache \
                 (it is cheap to clone) or give each process its own file",
                path.display()
            ),
            Error::NotACache { path, reason } => write!(
                f,
                "{} is not a fresco-memoize cache ({reason}); it was left untouched - choose \
                 another path",
                path.display()
            ),
            Error::NewerFormat {
                path,
                found,
                supported,
            } => write!(
                f,
                "cache file {} has format version {found}, newer than this build understands \
                 ({supported}); upgrade fresco-memoize or delete the file",
                path.display()
            ),
            Error::Corrupted { path, detail } => write!(
                f,
                "cache file {} is damaged ({detail}); delete it, or open with \
                 OnCorruption::Recreate to start afresh automatically",
                path.display()
            ),
            Error::MovedAside {
                path,
                moved_to,
                detail,
            } => write!(
                f,
                "cache file {} was damaged ({detail}); it was moved to {} and the cache \
                 carries on with a fresh file - nothing to do (delete the moved file once \
                 it is of no use for diagnosis)",
                path.display(),
                moved_to.display()
            ),
            Error::DamagedEntry {
                path,
                memoizer,
                detail,
            } => write!(
                f,
                "an entry of memoizer {memoizer:?} in {} is damaged ({detail}); it was read \
                 as a miss and the recomputed value replaces it - if this repeats, check \
                 the disk",
                path.as_ref().map_or_else(
                    || "the in-memory cache".to_string(),
                    |p| p.display().to_string()
                )
            ),
            Error::Detached { path, reason } => write!(
                f,
                "cache {} stopped using its file: {reason}; until the Cache is reopened, \
                 values are computed and returned but not stored",
                path.display()
            ),
            Error::Storage {
                path: Some(path),
                source,
            } => {
                write!(
                    f,
                    "storage error on cache file {}: {source}",
                    path.display()
                )
            }
            Error::Storage { path: None, source } => {
                write!(f, "storage error in the in-memory cache: {source}")
            }
            Error::Io { path, source } => write!(f, "I/O error on {}: {source}", path.display()),
            Error::KeyEncoding(e) => write!(
                f,
                "the memoizer key could not be encoded ({e}); use a keyfunc that maps it to \
                 plain data"
            ),
            Error::ValueEncoding(e) => write!(f, "the value could not be archived by rkyv ({e})"),
            Error::InvalidName { name, reason } => write!(f, "invalid name {name:?}: {reason}"),
            Error::MemoizerInUse { name } => write!(
                f,
                "a memoizer named {name:?} is already alive in this Cache; clone that one \
                 instead of building it twice"
            ),
            Error::MissingZoneKey { memoizer, zone } => write!(
                f,
                "memoizer {memoizer:?} joins zone {zone:?}, whose default key function does \
                 not apply to its arguments (another argument type, or a #[memoize] function \
                 of several arguments); give it its own with .zone_key(&zone, |args| key), \
                 or zonekey = |args| key in #[memoize]"
            ),
            Error::ForeignZone { memoizer, zone } => write!(
                f,
                "memoizer {memoizer:?} joins zone {zone:?} of another Cache; take the zone \
                 from the Cache the memoizer is built with"
            ),
            Error::TooManyDependencies { memoizer, count } => write!(
                f,
                "an entry of memoizer {memoizer:?} has {count} dependency keys, more than the \
                 65535 an entry can record; it was not stored"
            ),
            Error::WriteFailed(cause) => {
                write!(f, "the cache write failed and was rolled back: {cause}")
            }
            Error::Remote { server, detail } => write!(
                f,
                "the cache server {server} failed ({detail}); values are computed without it \
                 meanwhile - check that it is running and reachable (the cache reconnects by \
                 itself)"
            ),
            Error::WriterStopped => write!(
                f,
                "the cache's background writer has stopped; reopen the Cache"
            ),
            Error::ModeMismatch {
                path,
                shared,
                holder,
            } => write!(
                f,
                "cache file {} is held by {holder}, and this Cache asked for {} mode; open                  every program on one file the same way (CacheBuilder::shared(true) for all                  or none), or give each mode its own file",
                path.display(),
                if *shared { "shared" } else { "exclusive" }
            ),
            Error::Forked { path } => write!(
                f,
                "the shared cache on {} was opened before this process was forked; a child                  must not use its parent's Cache (it would share the parent's file locks):                  open the Cache in the child instead; meanwhile values are computed without it",
                path.display()
            ),
            Error::NotShareable { reason } => {
                write!(f, "not available in a shared cache: {reason}")
            }
            Error::Unsupported { reason } => write!(f, "not supported: {reason}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Storage { source, .. } => Some(source),
            Error::Io { source, .. } => Some(source),
            Error::KeyEncoding(e) => Some(e),
            Error::WriteFailed(cause) => Some(&**cause),
            _ => None,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
