//! Persistent memoization: compute a function's result once, keep it in an embedded
//! [redb](https://docs.rs/redb) file, and hand it back in well under a microsecond - also
//! after a restart, from many threads at once.
//!
//! # Tour
//!
//! - A [`Cache`] is one redb file (or an in-memory database) shared by many memoizers.
//! - A [`Memoizer`] memoizes one function: [`Memoizer::get_or_compute`] returns the stored
//!   value or computes, stores and returns it. Its [`MemoizerBuilder`] sets
//!   [`expires`](MemoizerBuilder::expires), [`max_hits`](MemoizerBuilder::max_hits), a
//!   [`keyfunc`](MemoizerBuilder::keyfunc), a [`version`](MemoizerBuilder::version) and the
//!   [`Store`]: in memory, a bounded LRU, a table in the file, or both tiered.
//! - Values are [rkyv](https://docs.rs/rkyv) archives: [`Memoizer::get_archived`] reads a
//!   stored value in place ([`ArchivedHit`]), always validated first. Every value type
//!   implements [`Value`]: derive `rkyv::Archive`, `rkyv::Serialize`, `rkyv::Deserialize`
//!   and [`Fingerprint`], so that a changed definition reads as a miss, never a misread.
//! - A [`Zone`] groups memoizers: [`Zone::invalidate_all`] clears them all, and
//!   [`Zone::invalidate`] removes exactly the entries that depend on one key, through an
//!   index kept in the file.
//! - Failures of the cache itself never cost you your value: see [`Cache::health`].
//! - Async code uses the same memoizers on any executor:
//!   [`Memoizer::get_or_compute_async`], `#[memoize]` on `async fn`, and `_async` forms of
//!   invalidations, [`Cache::flush_async`] and [`CacheBuilder::open_async`]. Threads and
//!   tasks share one single-flight per key.
//! - [`MemoizerBuilder::refresh_after`] serves a stored value while one caller refreshes
//!   it; [`Memoizer::get_archived_or_compute`] reads hits in place and computes on a miss;
//!   [`Memoizer::get_or_compute_with`] takes a borrowed form of the key ([`KeyLike`]).
//! - [`#[memoize]`](macro@memoize) puts all of this on a function or method, like the
//!   Python original's decorator: `#[memoize(cache = CACHE, expires = 10)]`.
//! - Bounded caches: a byte budget for the file ([`CacheBuilder::max_bytes`]) and for
//!   one memoizer's entries in it ([`MemoizerBuilder::max_bytes`]), evicting by TinyLFU
//!   through an eviction index in the file; the in-memory stores are bounded by entries
//!   and by bytes ([`MemoizerBuilder::max_memory_bytes`], weighed by a
//!   [`weigher`](MemoizerBuilder::weigher) if given).
//! - Expired entries leave the file on their own: a background sweeper
//!   ([`CacheBuilder::sweep_interval`]) and [`Cache::purge_expired`] remove them, with
//!   their index rows, through an index ordered by deadline.
//! - A file can be looked into and maintained by name: [`Cache::inspect`],
//!   [`Cache::invalidate_memoizer`], [`Cache::compact_file`], [`Cache::verify_file`], and
//!   the `fresco-memoize` command (feature `cli`) built on them.
//!
//! ```
//! use fresco_memoize::{Cache, Fingerprint};
//! use std::time::Duration;
//!
//! #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug, PartialEq)]
//! struct Synopsis { title: String, words: u32 }
//!
//! let dir = tempfile::tempdir().unwrap();
//! let cache = Cache::open(dir.path().join("books.memo"))?;
//! let synopsis = cache
//!     .memoizer::<u64, Synopsis>("books.synopsis")
//!     .expires(Duration::from_secs(10))
//!     .build()?;
//! let s = synopsis.get_or_compute(&7, |id| Synopsis { title: format!("book {id}"), words: 900 });
//! assert_eq!(s.words, 900);
//! let hit = synopsis.get_archived(&7)?.expect("just stored");
//! assert_eq!(hit.title, "book 7");
//! # Ok::<(), fresco_memoize::Error>(())
//! ```
//!
//! The same with the attribute, on a cache that lives as long as the program:
//!
//! ```
//! use std::sync::LazyLock;
//! use fresco_memoize::{Cache, memoize};
//!
//! static PATH: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
//!     std::env::temp_dir().join(format!("fresco-memoize-doc-{}.memo", std::process::id()))
//! });
//! static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::open(&*PATH).expect("cache file"));
//!
//! #[memoize(cache = CACHE, expires = 10)]
//! fn word_count(text: &str) -> usize {
//!     text.split_whitespace().count()
//! }
//!
//! assert_eq!(word_count("war and peace"), 3);
//! assert!(word_count::memoizer().invalidate_key("war and peace")?);
//! CACHE.flush()?; // a static is never dropped: make the last values durable
//! # std::fs::remove_file(&*PATH).unwrap();
//! # Ok::<(), fresco_memoize::Error>(())
//! ```
//!
//! # Features
//!
//! | Feature | Default | Gives | Costs |
//! |---|---|---|---|
//! | `macros` | on | `#[derive(Fingerprint)]`, `#[memoize]` | syn, quote at build time |
//! | `unaligned` | off | every persistent hit read in place | **changes rkyv's format for the whole program** (Cargo unifies features): every crate's rkyv archives become unaligned, so bytes written before read back differently |
//! | `log` | on | the cache's own reports (a full disk, a damaged file) go to the [`log`](https://docs.rs/log) crate, target `fresco_memoize` | the `log` crate |
//! | `cli` | off | the `fresco-memoize` binary | clap, serde_json |
//! | `redis` | off | `CacheBuilder::connect`: memoizers on a Redis/Valkey server, shared by machines (README, "Beyond one machine") | the `redis` client crate |
//!
//! Without `unaligned` the crate enables no rkyv format control: a program's own rkyv
//! archives keep their format. Persistent hits then read an archive in place when redb
//! placed it aligned (always for archives of 512 bytes or more, which entries pad; often
//! for smaller ones) and otherwise copy it into a reused per-thread buffer: no hit
//! allocates for it, and a small hit costs about 2.5 % more instructions than with
//! `unaligned`. A file written by one format reads as misses in the other.
#![deny(unsafe_code)]
#![warn(missing_docs)]

extern crate self as fresco_memoize;

#[cfg(feature = "fault-injection")]
#[doc(hidden)]
#[path = "entry_hooks.rs"]
pub mod __entry;
mod aligned;
mod asynchronous;
mod borrowed;
mod cache;
mod clock;
mod entry;
mod error;
mod fence;
mod fingerprint;
mod flight;
mod hit;
mod hit_counts;
mod inner;
mod inspect;
mod integrity;
mod key;
#[doc(hidden)]
pub mod macro_support;
mod memoizer;
mod memory;
mod panics;
#[cfg(feature = "redis")]
mod remote;
mod report;
mod serde_value;
mod shards;
mod shared;
mod shared_mode;
mod shm;
mod stats;
mod storage;
mod sweeper;
mod sync;
mod tiers;
mod value;
mod zone;

pub use borrowed::KeyLike;
pub use cache::{Cache, CacheBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use fingerprint::Fingerprint;
#[doc(hidden)]
pub use fingerprint::third_party::crates as __third_party;
#[doc(hidden)]
pub use fingerprint::{mix as __mix, name_hash as __name_hash};
#[cfg(feature = "macros")]
pub use fresco_memoize_macros::{Fingerprint, memoize};
pub use hit::ArchivedHit;
pub use inspect::{CacheInfo, CompactReport, FileCheck, MemoizerInfo, ZoneInfo};
pub use integrity::IntegrityReport;
pub use memoizer::{Memoizer, MemoizerBuilder, Store};
pub use report::{ErrorHook, Health};
pub use serde_value::Serde;
pub use stats::Stats;
pub use storage::open::OnCorruption;
pub use value::Value;
pub use zone::Zone;

/// The Redis client this crate uses, for tests that read the server directly (hidden).
#[cfg(feature = "redis")]
#[doc(hidden)]
pub use redis as __redis;
#[doc(hidden)]
pub use rkyv as __rkyv;

/// Fault injection for tests and fuzzing (hidden; `fault-injection` feature).
#[cfg(feature = "fault-injection")]
#[doc(hidden)]
pub mod __faults {
    pub use crate::storage::faults::{
        FaultKind, FaultyBackend, skip_board_bumps, stall_write_transactions,
    };
}
