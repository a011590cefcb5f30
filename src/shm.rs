//! The board of a shared cache (`CacheBuilder::shared`): a few 64-bit counters in a
//! sidecar file (`<cache file>-shm`) that every process of the cache maps into memory.
//! The crate's second `unsafe` module (the first is `hit.rs`); nothing else maps memory.
//!
//! Why shared memory: in redb's `MultiWriter` mode every fresh read transaction reads the
//! file header under a lock to find the latest commit (2 `fcntl` and a `pread`, about
//! 5 us; `research/scale-out.md` §1.2), and a persistent hit costs about 0.75 us. A hit
//! must still learn whether another process committed since its snapshot was taken, so
//! every commit in any process bumps [`Board::commits`] and a hit compares it with the
//! value its process last caught up with: one load from a mapped page. A file read or a
//! `stat` per hit would cost a system call (0.3-1 us), itself more than the 1.5x budget
//! of issue 14 allows.
//!
//! After the counters' page come the single-flight table ([`Board::flights`], its
//! protocol in `storage::flights`: words that name which process computes which key)
//! and the `max_hits` table ([`Board::counts`], its protocol in `hit_counts`: how often
//! each stored value has been served, by every process together).
//!
//! Zeros are a valid start for every word (counters start at zero, a zero flight word is
//! a free one), so a file created or grown by `set_len` needs no initialisation and
//! processes opening it at once need no lock. The file is never shrunk (a peer's mapping
//! of a truncated page would fault); a file made by an older version, one page long,
//! is grown on open.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The counters' page, of which the slots below use the first cache line.
const PAGE: usize = 4096;
/// Words of the single-flight table, after the counters' page (512 KiB: pages a process
/// never touches cost nothing, the file is sparse).
pub(crate) const FLIGHT_WORDS: usize = 1 << 16;
/// Words of the `max_hits` table, after the flight table (1 MiB, sparse as well).
pub(crate) const COUNT_WORDS: usize = 1 << 17;
/// Bytes mapped.
const LEN: usize = PAGE + (FLIGHT_WORDS + COUNT_WORDS) * 8;
/// Counters on the board.
const SLOTS: usize = 8;
/// Slot of the commit counter.
const COMMITS: usize = 0;

/// The sidecar file of the cache file at `path`.
pub(crate) fn board_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-shm");
    PathBuf::from(name)
}

/// A mapped board. Unmapped when dropped.
pub(crate) struct Board {
    slots: NonNull<AtomicU64>,
    /// Keeps the descriptor open as long as the mapping (not needed by `mmap`, but it
    /// names what is mapped in `/proc/self/maps` and in a debugger).
    _file: File,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which are safe to
// share and send between threads; the pointer is valid until `drop`, which needs the
// board owned, so no other thread can be using it then.
unsafe impl Send for Board {}
// SAFETY: as above: every access is an atomic operation on the mapped words.
unsafe impl Sync for Board {}

impl Board {
    /// Maps the board of the cache file at `path`, creating the sidecar if missing.
    pub(crate) fn open(path: &Path) -> std::io::Result<Board> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(board_path(path))?;
        if file.metadata()?.len() < LEN as u64 {
            // Growing only; two processes doing it at once both end at `LEN`.
            file.set_len(LEN as u64)?;
        }
        Self::map(file)
    }

    #[cfg(unix)]
    fn map(file: File) -> std::io::Result<Board> {
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared read-write mapping of `LEN` bytes of a file at least
        // `LEN` bytes long (checked above, and no process ever shrinks it); the kernel
        // picks the address. The result is checked before use.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Page-aligned, so aligned for `AtomicU64`; `SLOTS * 8 <= PAGE` and the flight
        // table's words end at `LEN`, so every word handed out is in range.
        let slots = NonNull::new(addr.cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null mapping"))?;
        Ok(Board { slots, _file: file })
    }

    #[cfg(not(unix))]
    fn map(_file: File) -> std::io::Result<Board> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "shared caches need a Unix system",
        ))
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        debug_assert!(i < SLOTS);
        // SAFETY: `i < SLOTS`, so the word lies inside the live mapping (see `map`),
        // which outlives `&self`; every process only accesses it atomically.
        unsafe { &*self.slots.as_ptr().add(i) }
    }

    /// The single-flight table: [`FLIGHT_WORDS`] words.
    pub(crate) fn flights(&self) -> &[AtomicU64] {
        self.words(PAGE, FLIGHT_WORDS)
    }

    /// The `max_hits` table: [`COUNT_WORDS`] words.
    pub(crate) fn counts(&self) -> &[AtomicU64] {
        self.words(PAGE + FLIGHT_WORDS * 8, COUNT_WORDS)
    }

    /// `len` words from byte `offset` of the mapping, each only ever accessed
    /// atomically, by every process of the cache.
    fn words(&self, offset: usize, len: usize) -> &[AtomicU64] {
        assert!(offset.is_multiple_of(8) && offset + len * 8 <= LEN);
        // SAFETY: `offset` is a multiple of 8 from a page-aligned start, so the words
        // are aligned for `AtomicU64`, and they end inside the live mapping (asserted;
        // see `map`), which outlives `&self`. `AtomicU64` has no invalid bit patterns,
        // and every process accesses these words only atomically, so shared references
        // to them are sound even while other processes write them.
        unsafe {
            std::slice::from_raw_parts(
                self.slots
                    .as_ptr()
                    .cast::<u8>()
                    .add(offset)
                    .cast::<AtomicU64>(),
                len,
            )
        }
    }

    /// Commits made to the cache file by every process since the board was created.
    #[inline]
    pub(crate) fn commits(&self) -> u64 {
        self.slot(COMMITS).load(Ordering::Acquire)
    }

    /// Called after each commit of this process (and after each invalidation's commit).
    pub(crate) fn bump_commits(&self) {
        self.slot(COMMITS).fetch_add(1, Ordering::SeqCst);
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: unmaps exactly the mapping `map` made; `&mut self` means no reference
        // into it (all borrow `&self`) is alive.
        unsafe {
            libc::munmap(self.slots.as_ptr().cast(), LEN);
        }
    }
}

/// A shared cache's view of its peers: the board, and how far this process has caught
/// up with it. The fence asks it before every read ([`Peers::caught_up`]).
pub(crate) struct Peers {
    pub board: Board,
    /// The board's commit count this process has caught up with.
    seen: AtomicU64,
    /// Held while catching up: one thread does it, the others wait for it.
    catching_up: Mutex<()>,
    /// Applies what other processes committed since the last catch-up (set once the
    /// cache is built: `crate::shared_mode`).
    catch_up: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// A `seen` no board count reaches: the next read catches up.
const LOOK_AGAIN: u64 = u64::MAX;

/// Most catch-ups one read makes in a row before it goes on (its check then fails and
/// it looks again): peers committing without pause cannot hold a reader here.
const CATCH_UPS: usize = 3;

impl Peers {
    pub(crate) fn new(board: Board) -> Self {
        let seen = AtomicU64::new(board.commits());
        Peers {
            board,
            seen,
            catching_up: Mutex::new(()),
            catch_up: OnceLock::new(),
        }
    }

    /// Sets what a catch-up does.
    pub(crate) fn set_catch_up(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.catch_up.set(Box::new(f));
    }

    /// The board's commit count, once this process has caught up with it: every commit
    /// it counts is visible to a read that starts now, and every invalidation among them
    /// has been applied to this process's memory tiers.
    #[inline]
    pub(crate) fn caught_up(&self) -> u64 {
        let now = self.board.commits();
        if now == self.seen.load(Ordering::Acquire) {
            return now;
        }
        self.catch_up_to_board()
    }

    #[cold]
    fn catch_up_to_board(&self) -> u64 {
        let _turn = self.catching_up.lock().unwrap_or_else(|e| e.into_inner());
        let mut caught = 0;
        for _ in 0..CATCH_UPS {
            // Read before catching up, so the catch-up covers every commit it counts.
            let now = self.board.commits();
            if now == self.seen.load(Ordering::Acquire) {
                return now;
            }
            if let Some(catch_up) = self.catch_up.get() {
                catch_up();
            }
            self.seen.store(now, Ordering::Release);
            caught = now;
        }
        // What this call caught up with (`seen` may have been set to `LOOK_AGAIN` since).
        caught
    }

    /// Makes the next read catch up even if the board has not moved (see
    /// `storage::writer`'s `LOOK_AGAIN`: a commit whose process died before its bump).
    pub(crate) fn look_again(&self) {
        self.seen.store(LOOK_AGAIN, Ordering::Release);
    }

    /// The board's commit count now (for a read's check).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.board.commits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_mappings_of_one_board_see_each_others_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let a = Board::open(&path).unwrap();
        let b = Board::open(&path).unwrap();
        assert_eq!(a.commits(), 0);
        a.bump_commits();
        a.bump_commits();
        assert_eq!(b.commits(), 2);
        drop(a);
        b.bump_commits();
        assert_eq!(Board::open(&path).unwrap().commits(), 3);
        assert_eq!(
            std::fs::metadata(board_path(&path)).unwrap().len(),
            LEN as u64
        );
    }

    #[test]
    fn a_one_page_board_of_an_older_version_grows_and_keeps_its_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let mut page = vec![0u8; PAGE];
        page[..8].copy_from_slice(&5u64.to_ne_bytes());
        std::fs::write(board_path(&path), page).unwrap();
        let a = Board::open(&path).unwrap();
        assert_eq!(a.commits(), 5);
        let b = Board::open(&path).unwrap();
        a.flights()[FLIGHT_WORDS - 1].store(9, Ordering::SeqCst);
        assert_eq!(b.flights()[FLIGHT_WORDS - 1].load(Ordering::SeqCst), 9);
        assert_eq!(b.flights()[0].load(Ordering::SeqCst), 0);
        a.counts()[COUNT_WORDS - 1].store(4, Ordering::SeqCst);
        assert_eq!(b.counts()[COUNT_WORDS - 1].load(Ordering::SeqCst), 4);
        assert_eq!(
            b.counts()[0].load(Ordering::SeqCst),
            0,
            "the tables do not overlap"
        );
    }
}
