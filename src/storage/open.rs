//! Opening (and reopening) the redb database: the file checks at open, the move-aside of a
//! damaged file, and the [`Origin`] the writer reopens after a failed commit.
//!
//! A file is known by its identity (device and inode on Unix), taken from the handle the
//! database is opened over, not from the path: a path can come to name another file (a
//! temp cleaner deletes it and something creates it again, a backup is copied over it).
//! Invariants:
//! - The writer never reopens a path that names another file than the one it opened, and
//!   never creates a file at a path except with the old file's registry written into it
//!   ([`Origin::create_fresh`]), so ids keep their meaning.
//! - Only the file that was found damaged is moved aside, and a move never overwrites a
//!   name ([`Origin::move_aside`]).
//! - A file this library created and could not initialise (a full disk) is removed, so it
//!   is not later refused as "not a cache".

use std::fs::{File, Metadata, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use super::faults::FaultyBackend;
use super::guarded;
use super::ops::{self, InitOutcome};
use crate::error::{Error, Result};

/// What to do when the cache file turns out to be damaged at open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnCorruption {
    /// Move the damaged file aside (`<file>.corrupt-<unix ms>`), report it through
    /// [`Cache::health`](crate::Cache::health) and the error hook, and start with an empty cache. A cache is
    /// disposable; this is the default.
    #[default]
    Recreate,
    /// Fail with [`Error::Corrupted`] and leave the file alone.
    Fail,
}

const REDB_MAGIC: [u8; 4] = *b"redb";

/// Which file a path named: device and inode (on other systems, only that one existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    #[cfg(unix)]
    fn of(meta: &Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }

    #[cfg(not(unix))]
    fn of(_: &Metadata) -> FileId {
        FileId { dev: 0, ino: 0 }
    }

    fn at(path: &Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId::of(&m))
    }
}

/// What a path names now, compared with the file last opened there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtPath {
    /// That file (or there is no path: a backend).
    Same,
    /// Nothing.
    Gone,
    /// Another file.
    Other,
}

/// How [`open_file`] gets its file handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Open the file, creating it if missing.
    Create,
    /// Open an existing file only.
    Existing,
    /// Create a new file; fail if the path names one.
    Fresh,
}

/// Where the database lives, and how to open it again.
pub(crate) enum Origin {
    /// A file: reopened by path; may be moved aside when damaged.
    File {
        path: PathBuf,
        page_cache_bytes: usize,
        verify_on_open: bool,
        /// Whether a missing file is created (`false`: it is an error).
        create: bool,
        /// The file the last open looked at (and, once open, the database's file).
        seen: Mutex<Option<FileId>>,
        /// Opened in redb's `MultiWriter` mode, beside other processes
        /// (`CacheBuilder::shared`).
        shared: bool,
    },
    /// A backend shared with the caller (memory, or a fault-injecting wrapper): reopened
    /// over a clone of it; never moved aside.
    Backend(FaultyBackend),
}

impl Origin {
    /// A file at `path`; `create`: a missing file is created on the first open.
    pub(crate) fn file(
        path: &Path,
        page_cache_bytes: usize,
        verify_on_open: bool,
        create: bool,
    ) -> Origin {
        Origin::File {
            path: path.to_path_buf(),
            page_cache_bytes,
            verify_on_open,
            create,
            seen: Mutex::new(None),
            shared: false,
        }
    }

    /// The same origin, opened in shared mode (`CacheBuilder::shared`) if `shared`.
    pub(crate) fn shared(mut self, on: bool) -> Origin {
        if let Origin::File { shared, .. } = &mut self {
            *shared = on;
        }
        self
    }

    /// Whether the file is opened in shared mode.
    pub(crate) fn is_shared(&self) -> bool {
        matches!(self, Origin::File { shared: true, .. })
    }

    /// Whether a missing file may be created (a backend always may: it is reopened).
    pub(crate) fn creates(&self) -> bool {
        !matches!(self, Origin::File { create: false, .. })
    }

    /// The file, if there is one.
    pub(crate) fn path(&self) -> Option<&Path> {
        match self {
            Origin::File { path, .. } => Some(path),
            Origin::Backend(_) => None,
        }
    }

    /// Opens the database and checks that it is ours. Damage becomes [`Error::Corrupted`].
    pub(crate) fn open(&self) -> Result<redb::Database> {
        match self {
            Origin::File { create: true, .. } => self.open_file(Mode::Create),
            Origin::File { .. } => self.open_file(Mode::Existing),
            Origin::Backend(backend) => open_backend(backend.clone()),
        }
    }

    /// Opens the same file again (after a failed commit): never creates one, and refuses
    /// a path that names another file by now (reported as [`Error::Detached`]).
    pub(crate) fn reopen(&self) -> Result<redb::Database> {
        let Origin::File { path, .. } = self else {
            return self.open();
        };
        let detached = || Error::Detached {
            path: path.clone(),
            reason: "another file was put at its path; that file is left alone".into(),
        };
        if self.at_path() == AtPath::Other {
            return Err(detached());
        }
        let expected = self.seen();
        let db = self.open_file(Mode::Existing)?;
        // Replaced between the look and the open: let go of it at once.
        if expected.is_some() && self.seen() != expected {
            drop(db);
            self.set_seen(expected);
            return Err(detached());
        }
        Ok(db)
    }

    /// Creates a new file at the path, which must name none (see [`AtPath::Gone`]).
    pub(crate) fn create_fresh(&self) -> Result<redb::Database> {
        match self {
            Origin::File { .. } => self.open_file(Mode::Fresh),
            Origin::Backend(_) => self.open(),
        }
    }

    /// Removes the file last opened, if the path still names it: a fresh file that could
    /// not be made ready.
    pub(crate) fn discard(&self) {
        if let Origin::File { path, .. } = self
            && self.at_path() == AtPath::Same
        {
            let _ = std::fs::remove_file(path);
        }
    }

    /// What the path names now.
    pub(crate) fn at_path(&self) -> AtPath {
        let Origin::File { path, .. } = self else {
            return AtPath::Same;
        };
        match (FileId::at(path), self.seen()) {
            (None, _) => AtPath::Gone,
            (Some(now), Some(seen)) if now != seen => AtPath::Other,
            _ => AtPath::Same,
        }
    }

    fn set_seen(&self, id: Option<FileId>) {
        if let Origin::File { seen, .. } = self {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = id;
        }
    }

    fn seen(&self) -> Option<FileId> {
        match self {
            Origin::File { seen, .. } => *seen.lock().unwrap_or_else(|e| e.into_inner()),
            Origin::Backend(_) => None,
        }
    }

    fn open_file(&self, mode: Mode) -> Result<redb::Database> {
        let Origin::File {
            path,
            page_cache_bytes,
            verify_on_open,
            seen,
            shared,
            ..
        } = self
        else {
            return self.open();
        };
        open_file(
            path,
            *page_cache_bytes,
            *verify_on_open,
            mode,
            seen,
            *shared,
        )
    }

    /// Renames the file last opened (found damaged) to `<file>.corrupt-<unix ms>`, and
    /// returns the new name - or `None`, moving nothing, if the path names another file
    /// by now (another `Cache` replaced it first). Never overwrites a name: the file is
    /// hard-linked under its new name, which fails if that name exists, and only then
    /// unlinked from the path. The caller holds [`take_turn`] until the file that
    /// replaces it is in place.
    pub(crate) fn move_aside(&self, _turn: &Turn) -> Result<Option<PathBuf>> {
        let Origin::File { path, .. } = self else {
            return Ok(None);
        };
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        if self.at_path() != AtPath::Same {
            return Ok(None);
        }
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let name = |n: u32| {
            let mut aside = path.as_os_str().to_owned();
            match n {
                0 => aside.push(format!(".corrupt-{stamp}")),
                n => aside.push(format!(".corrupt-{stamp}-{n}")),
            }
            PathBuf::from(aside)
        };
        let mut n = 0;
        let aside = loop {
            let aside = name(n);
            match std::fs::hard_link(path, &aside) {
                Ok(()) => break aside,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => n += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                // No hard links here (some file systems): a checked rename instead.
                Err(_) if !aside.exists() => {
                    std::fs::rename(path, &aside).map_err(io)?;
                    return Ok(Some(aside));
                }
                Err(_) => n += 1,
            }
        };
        // The link names whatever the path named a moment ago: keep it only if that was
        // the damaged file.
        if FileId::at(&aside) != self.seen() {
            let _ = std::fs::remove_file(&aside);
            return Ok(None);
        }
        if FileId::at(path) != self.seen() {
            return Ok(None);
        }
        std::fs::remove_file(path).map_err(io)?;
        Ok(Some(aside))
    }
}

/// This process's turn to open, move aside or create cache files (see [`take_turn`]).
pub(crate) type Turn = MutexGuard<'static, ()>;

/// Opening a cache file, moving a damaged one aside and creating the fresh one that
/// replaces it take turns in this process. Otherwise one `Cache` could find another's
/// fresh file half-written (and refuse it as not a cache), or move it aside as the
/// damaged file both had found. (Another process is kept out only by redb's lock and the
/// identity checks, which leave a window of microseconds.)
pub(crate) fn take_turn() -> Turn {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn corrupted(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupted {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The handle to open the database over, and whether this call created the file.
fn handle(path: &Path, mode: Mode) -> std::io::Result<(File, bool)> {
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    match mode {
        Mode::Existing => Ok((options.open(path)?, false)),
        Mode::Fresh => Ok((options.create_new(true).open(path)?, true)),
        Mode::Create => match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(file) => Ok((file, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Ok((options.open(path)?, false))
            }
            Err(e) => Err(e),
        },
    }
}

/// Opens the redb file at `path` as `mode` says and checks it is ours. Records in `seen`
/// the file it looked at, also when that file is then refused as damaged. A file this
/// call created and could not initialise is removed again.
fn open_file(
    path: &Path,
    page_cache_bytes: usize,
    verify: bool,
    mode: Mode,
    seen: &Mutex<Option<FileId>>,
    shared: bool,
) -> Result<redb::Database> {
    if mode != Mode::Fresh {
        refuse_foreign(path, shared)?;
    }
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let (file, created) = handle(path, mode).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let id = FileId::of(&meta);
    *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
    if mode == Mode::Existing && meta.len() == 0 {
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "an empty file".into(),
        });
    }
    let opened = open_db(path, file, page_cache_bytes, verify, shared)
        .and_then(|db| checked(db, Some(path)));
    match opened {
        Ok(db) => Ok(db),
        Err(e) => {
            // Ours and useless (a full disk cut its initialisation short): left behind, it
            // would be refused as not a cache once there is space again.
            if created && FileId::at(path) == Some(id) {
                let _ = std::fs::remove_file(path);
            }
            Err(e)
        }
    }
}

/// Opens redb over `file`, mapping its failures.
fn open_db(
    path: &Path,
    file: File,
    page_cache_bytes: usize,
    verify: bool,
    shared: bool,
) -> Result<redb::Database> {
    let opened = crate::panics::catch_quietly(|| {
        let backend = redb::backends::FileBackend::new(file)?;
        builder(shared)
            .set_cache_size(page_cache_bytes)
            .set_check_integrity_on_open(verify)
            .create_with_backend(backend)
    });
    match opened {
        Err(_) => Err(corrupted(path, "redb panicked while opening it")),
        Ok(Ok(db)) => Ok(db),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => Err(held(path, shared)),
        Ok(Err(redb::DatabaseError::LockProtocolMismatch)) => Err(Error::ModeMismatch {
            path: path.to_path_buf(),
            shared,
            holder: "a program built with another redb version's locking protocol",
        }),
        // A file cut short inside redb's header reads past its end.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))))
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Err(corrupted(path, format!("truncated ({source})")))
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source)))) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
        // redb 4 writes nothing older: not a file of ours, so never moved aside.
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: format!("a redb database of the old file format {v}"),
        }),
        // Corrupted, a failed repair...
        Ok(Err(e)) => Err(corrupted(path, e.to_string())),
    }
}

/// Refuses a file that is not ours (not redb, foreign tables), newer, or held by someone,
/// after a read-only look, so not even redb's header bookkeeping touches it. A missing or
/// empty file passes.
fn refuse_foreign(path: &Path, shared: bool) -> Result<()> {
    if let Some(bytes) = leading_bytes(path)
        && bytes != REDB_MAGIC[..bytes.len()]
    {
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "not a redb database".into(),
        });
    }
    match inspect_read_only(path, shared)? {
        Some(refusal) => Err(refusal),
        None => Ok(()),
    }
}

/// Looks at an existing file read-only: `Some(refusal)` if it is not ours or is newer,
/// `Err(AlreadyOpen)` if someone holds it, `None` to go on (ours, empty, missing, or not
/// readable this way - a file that needs repair or is damaged goes the writable way).
fn inspect_read_only(path: &Path, shared: bool) -> Result<Option<Error>> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(None);
    }
    let looked = crate::panics::catch_quietly(|| {
        let db = match builder(shared).open_read_only(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(()),
            Err(_) => return Ok(None),
        };
        Ok(guarded(|| ops::inspect(&db)).ok().flatten())
    });
    match looked {
        Err(_)
        | Ok(Ok(None))
        | Ok(Ok(Some(InitOutcome::Ready)))
        | Ok(Ok(Some(InitOutcome::Older))) => Ok(None),
        Ok(Err(())) => Err(held(path, shared)),
        Ok(Ok(Some(InitOutcome::Foreign(reason)))) => Ok(Some(Error::NotACache {
            path: path.to_path_buf(),
            reason,
        })),
        Ok(Ok(Some(InitOutcome::Newer(found)))) => Ok(Some(Error::NewerFormat {
            path: path.to_path_buf(),
            found,
            supported: crate::entry::FORMAT_VERSION,
        })),
    }
}

/// A redb builder for the mode: `MultiWriter` for a shared cache, redb's default
/// (`ExclusiveWriter`) otherwise.
fn builder(shared: bool) -> redb::Builder {
    let mut builder = redb::Builder::new();
    if shared {
        builder.set_concurrency_mode(redb::ConcurrencyMode::MultiWriter);
    }
    builder
}

/// Why a file that redb found held could not be opened: by a program in the other mode
/// ([`Error::ModeMismatch`]), or by another exclusive one ([`Error::AlreadyOpen`]).
/// A shared open is refused only by an exclusive holder; an exclusive open is refused by
/// anyone, so it asks whether a shared reader could join the holders.
fn held(path: &Path, shared: bool) -> Error {
    let holder = if shared {
        "an exclusive program (a Cache opened without shared(true))"
    } else {
        let joins = crate::panics::catch_quietly(|| builder(true).open_read_only(path).is_ok());
        if joins != Ok(true) {
            return Error::AlreadyOpen {
                path: path.to_path_buf(),
            };
        }
        "shared programs (Caches opened with shared(true))"
    };
    Error::ModeMismatch {
        path: path.to_path_buf(),
        shared,
        holder,
    }
}

/// Opens (or creates) a database over `backend`.
fn open_backend(backend: FaultyBackend) -> Result<redb::Database> {
    let opened = crate::panics::catch_quietly(|| redb::Builder::new().create_with_backend(backend));
    let db = match opened {
        Err(_) => {
            return Err(storage_error(redb::Error::Corrupted(
                "redb panicked".into(),
            )));
        }
        Ok(Err(e)) => return Err(storage_error(e.into())),
        Ok(Ok(db)) => db,
    };
    checked(db, None)
}

fn storage_error(source: redb::Error) -> Error {
    Error::Storage { path: None, source }
}

/// Runs [`ops::init`]: creates our tables in a fresh database, or checks an existing one
/// is ours and not newer (upgrading an older one).
fn checked(db: redb::Database, path: Option<&Path>) -> Result<redb::Database> {
    let outcome = guarded(|| ops::init(&db));
    let Some(path) = path else {
        return match outcome {
            Ok(InitOutcome::Ready | InitOutcome::Older) => Ok(db),
            Ok(InitOutcome::Foreign(reason)) => Err(storage_error(redb::Error::Corrupted(reason))),
            Ok(InitOutcome::Newer(found)) => Err(storage_error(redb::Error::Corrupted(format!(
                "format version {found} is newer than this build"
            )))),
            Err(e) => Err(storage_error(e)),
        };
    };
    match outcome {
        Ok(InitOutcome::Ready | InitOutcome::Older) => Ok(db),
        Ok(InitOutcome::Foreign(reason)) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason,
        }),
        Ok(InitOutcome::Newer(found)) => Err(Error::NewerFormat {
            path: path.to_path_buf(),
            found,
            supported: crate::entry::FORMAT_VERSION,
        }),
        Err(redb::Error::Io(source)) => Err(Error::Io {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) => Err(corrupted(path, e.to_string())),
    }
}

/// Up to the first four bytes of `path`, if it can be read.
fn leading_bytes(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::with_capacity(4);
    std::fs::File::open(path)
        .ok()?
        .take(4)
        .read_to_end(&mut buf)
        .ok()?;
    Some(buf)
}

/// Opens an existing cache file read-only: nothing is written to it, not even redb's
/// header bookkeeping. `Ok(None)` if the file was not closed cleanly and so needs redb's
/// recovery, which writes (see [`super::scratch`] for looking into it anyway). A file
/// that is not ours, is newer or is held by a `Cache` is refused as by [`Origin::open`].
pub(crate) fn open_read_only(path: &Path) -> Result<Option<redb::ReadOnlyDatabase>> {
    std::fs::metadata(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    refuse_foreign(path, false)?;
    let opened = crate::panics::catch_quietly(|| redb::Builder::new().open_read_only(path));
    let db = match opened {
        Err(panic) => return Err(corrupted(path, format!("redb panicked: {panic}"))),
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::RepairAborted)) => return Ok(None),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => return Err(held(path, false)),
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))))
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Err(corrupted(path, format!("truncated ({source})")));
        }
        Ok(Err(e)) => return Err(corrupted(path, e.to_string())),
    };
    match guarded(|| ops::inspect(&db)) {
        Ok(Some(InitOutcome::Ready | InitOutcome::Older)) => Ok(Some(db)),
        Ok(None) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "a redb database without the cache's tables".into(),
        }),
        Ok(Some(InitOutcome::Foreign(reason))) => Err(Error::NotACache {
            path: path.to_path_buf(),
            reason,
        }),
        Ok(Some(InitOutcome::Newer(found))) => Err(Error::NewerFormat {
            path: path.to_path_buf(),
            found,
            supported: crate::entry::FORMAT_VERSION,
        }),
        Err(e) => Err(corrupted(path, e.to_string())),
    }
}
