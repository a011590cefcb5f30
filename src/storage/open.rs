//! Opening (and reopening) the redb database: the file checks at open, the move-aside of a
//! damaged file, and the [`Origin`] the writer reopens after a failed commit.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::faults::FaultyBackend;
use super::guarded;
use super::ops::{self, InitOutcome};
use crate::error::{Error, Result};

const REDB_MAGIC: [u8; 4] = *b"redb";

/// Where the database lives, and how to open it again.
pub(crate) enum Origin {
    /// A file: reopened by path; may be moved aside when damaged.
    File {
        path: PathBuf,
        page_cache_bytes: usize,
        verify_on_open: bool,
        /// Whether a missing file is created (`false`: it is an error).
        create: bool,
    },
    /// A backend shared with the caller (memory, or a fault-injecting wrapper): reopened
    /// over a clone of it; never moved aside.
    Backend(FaultyBackend),
}

impl Origin {
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
            Origin::File {
                path,
                page_cache_bytes,
                verify_on_open,
                create,
            } => open_file(path, *page_cache_bytes, *verify_on_open, *create),
            Origin::Backend(backend) => open_backend(backend.clone()),
        }
    }
}

fn corrupted(path: &Path, detail: impl Into<String>) -> Error {
    Error::Corrupted {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// Opens the redb file at `path` (creating it if missing and `create`) and checks it is
/// ours.
fn open_file(
    path: &Path,
    page_cache_bytes: usize,
    verify: bool,
    create: bool,
) -> Result<redb::Database> {
    if let Some(bytes) = leading_bytes(path)
        && !bytes.is_empty()
        && bytes != REDB_MAGIC[..bytes.len()]
    {
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "not a redb database".into(),
        });
    }
    // A file that is someone else's (foreign tables, a newer format) is refused after a
    // read-only look, so not even redb's header bookkeeping touches it.
    if let Some(refusal) = inspect_read_only(path)? {
        return Err(refusal);
    }
    let opened = crate::panics::catch_quietly(|| {
        let mut builder = redb::Builder::new();
        builder
            .set_cache_size(page_cache_bytes)
            .set_check_integrity_on_open(verify);
        if create {
            builder.create(path)
        } else {
            builder.open(path)
        }
    });
    let db = match opened {
        Err(_) => return Err(corrupted(path, "redb panicked while opening it")),
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(Error::AlreadyOpen {
                path: path.to_path_buf(),
            });
        }
        // A file cut short inside redb's header reads past its end.
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))))
            if source.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            return Err(corrupted(path, format!("truncated ({source})")));
        }
        Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(source)))) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            });
        }
        // redb 4 writes nothing older: not a file of ours, so never moved aside.
        Ok(Err(redb::DatabaseError::UpgradeRequired(v))) => {
            return Err(Error::NotACache {
                path: path.to_path_buf(),
                reason: format!("a redb database of the old file format {v}"),
            });
        }
        // Corrupted, a failed repair...
        Ok(Err(e)) => return Err(corrupted(path, e.to_string())),
    };
    checked(db, Some(path))
}

/// Looks at an existing file read-only: `Some(refusal)` if it is not ours or is newer,
/// `Err(AlreadyOpen)` if someone holds it, `None` to go on (ours, empty, missing, or not
/// readable this way - a file that needs repair or is damaged goes the writable way).
fn inspect_read_only(path: &Path) -> Result<Option<Error>> {
    if std::fs::metadata(path).map_or(true, |m| m.len() == 0) {
        return Ok(None);
    }
    let looked = crate::panics::catch_quietly(|| {
        let db = match redb::Builder::new().open_read_only(path) {
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
        Ok(Err(())) => Err(Error::AlreadyOpen {
            path: path.to_path_buf(),
        }),
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

/// Renames a damaged file to `<file>.corrupt-<unix ms>` and returns the new name.
pub(crate) fn move_aside(path: &Path) -> Result<PathBuf> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut aside = path.as_os_str().to_owned();
    aside.push(format!(".corrupt-{stamp}"));
    let mut aside = PathBuf::from(aside);
    // Two resets within one millisecond must not overwrite the first file moved aside.
    let mut n = 1;
    while aside.exists() {
        let mut next = path.as_os_str().to_owned();
        next.push(format!(".corrupt-{stamp}-{n}"));
        aside = PathBuf::from(next);
        n += 1;
    }
    std::fs::rename(path, &aside).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(aside)
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
    if let Some(bytes) = leading_bytes(path)
        && bytes != REDB_MAGIC[..bytes.len()]
    {
        return Err(Error::NotACache {
            path: path.to_path_buf(),
            reason: "not a redb database".into(),
        });
    }
    if let Some(refusal) = inspect_read_only(path)? {
        return Err(refusal);
    }
    let opened = crate::panics::catch_quietly(|| redb::Builder::new().open_read_only(path));
    let db = match opened {
        Err(panic) => return Err(corrupted(path, format!("redb panicked: {panic}"))),
        Ok(Ok(db)) => db,
        Ok(Err(redb::DatabaseError::RepairAborted)) => return Ok(None),
        Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
            return Err(Error::AlreadyOpen {
                path: path.to_path_buf(),
            });
        }
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
