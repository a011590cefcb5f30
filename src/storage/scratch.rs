//! A scratch copy of a closed cache file, for looking into it with what needs a writable
//! redb database - redb's checksum verification, the recovery of a file that was not
//! closed cleanly - while the file itself is never written to.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// A copy of a file in the system's temporary directory, removed when dropped.
pub(crate) struct ScratchCopy {
    path: PathBuf,
}

impl ScratchCopy {
    /// Copies `original`. Costs a read and a write of the whole file.
    pub(crate) fn of(original: &Path) -> Result<ScratchCopy> {
        let stamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!(
            "fresco-memoize-scratch-{}-{stamp}.memo",
            std::process::id()
        ));
        let copy = ScratchCopy { path };
        std::fs::copy(original, &copy.path).map_err(|source| Error::Io {
            path: original.to_path_buf(),
            source,
        })?;
        Ok(copy)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// `e` as if it had been met on `original` rather than on this copy.
    pub(crate) fn blame(&self, original: &Path, e: Error) -> Error {
        let own = |p: PathBuf| {
            if p == self.path {
                original.to_path_buf()
            } else {
                p
            }
        };
        match e {
            Error::Corrupted { path, detail } => Error::Corrupted {
                path: own(path),
                detail,
            },
            Error::NotACache { path, reason } => Error::NotACache {
                path: own(path),
                reason,
            },
            Error::NewerFormat {
                path,
                found,
                supported,
            } => Error::NewerFormat {
                path: own(path),
                found,
                supported,
            },
            Error::Io { path, source } => Error::Io {
                path: own(path),
                source,
            },
            Error::Storage { path, source } => Error::Storage {
                path: path.map(own),
                source,
            },
            other => other,
        }
    }
}

impl Drop for ScratchCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
