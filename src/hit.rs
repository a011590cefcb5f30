//! Zero-copy hits: a guard over a stored, validated archive.

use std::marker::PhantomData;

use crate::Value;
use crate::aligned::{self, AlignedCopy};
use crate::error::{Error, Result};
use crate::memory::MemEntry;
use crate::storage::StoredBytes;

enum Backing {
    Stored(StoredBytes),
    /// The stored bytes were not aligned for this archive type (only without rkyv's
    /// `unaligned` feature): an aligned copy, the guard's alone until it is dropped.
    Copied(AlignedCopy),
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Backing::Copied(copy) = self {
            // No borrow of the copy outlives the guard: reuse it for the next copy.
            aligned::recycle(std::mem::take(copy));
        }
    }
}

/// A cache hit read in place: dereferences to the archived value (`&V::Archived`)
/// without copying or deserializing it.
///
/// A hit on a persistent memoizer read in place pins the redb snapshot it was read from:
/// pages of that snapshot cannot be reused until the guard is dropped, so hold it
/// briefly, or call [`ArchivedHit::deserialize`] to keep an owned copy. (In rkyv's
/// default aligned format, an archive redb stored at a misaligned address is copied into
/// the guard instead; archives of 512 bytes or more are placed so that this is rare.)
///
/// ```
/// use fresco_memoize::{Cache, Store};
///
/// let cache = Cache::in_memory()?;
/// let squares = cache.memoizer::<u64, Vec<u64>>("squares").store(Store::Persistent).build()?;
/// squares.get_or_compute(&4, |n| (0..*n).map(|i| i * i).collect());
/// let hit = squares.get_archived(&4)?.expect("stored above");
/// assert_eq!(hit.len(), 4);
/// assert_eq!(hit[3], 9);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
pub struct ArchivedHit<V: Value> {
    backing: Backing,
    offset: usize,
    _value: PhantomData<fn() -> V>,
}

impl<V: Value> ArchivedHit<V> {
    /// Validates `bytes[offset..]` as an archived `V`; `None` if it is not one.
    pub(crate) fn from_stored(stored: StoredBytes, offset: usize) -> Option<Self> {
        let payload = stored.bytes().get(offset..)?;
        if aligned::is_aligned(payload, aligned::archive_align::<V::Archived>())
            && V::__access(payload).is_ok()
        {
            return Some(ArchivedHit {
                backing: Backing::Stored(stored),
                offset,
                _value: PhantomData,
            });
        }
        // Not aligned, or aligned for the root but not for a deeper field (see
        // `aligned::with_aligned`): a copy aligned for anything tells that from damage.
        Self::checked(Backing::Copied(aligned::copy(payload)), 0)
    }

    /// A guard over a value's own archive (a miss hands back what it just computed).
    pub(crate) fn from_archive(archive: AlignedCopy) -> Option<Self> {
        Self::checked(Backing::Copied(archive), 0)
    }

    pub(crate) fn from_memory(entry: MemEntry) -> Option<Self> {
        let offset = entry.payload_offset();
        Self::from_stored(StoredBytes::Shared(entry.bytes().clone()), offset)
    }

    fn checked(backing: Backing, offset: usize) -> Option<Self> {
        let hit: ArchivedHit<V> = ArchivedHit {
            backing,
            offset,
            _value: PhantomData,
        };
        V::__access(hit.payload()).ok()?;
        Some(hit)
    }

    fn payload(&self) -> &[u8] {
        match &self.backing {
            Backing::Stored(s) => &s.bytes()[self.offset..],
            Backing::Copied(v) => &v[self.offset..],
        }
    }

    /// Deserializes the archived value into an owned `V`.
    pub fn deserialize(&self) -> Result<V> {
        V::__deserialize(self).map_err(|e| Error::ValueEncoding(e.to_string()))
    }
}

impl<V: Value> std::ops::Deref for ArchivedHit<V> {
    type Target = V::Archived;

    fn deref(&self) -> &V::Archived {
        #[allow(unsafe_code)]
        // SAFETY: `checked` validated these exact bytes as a `V::Archived` with bytecheck
        // before the guard was built. The bytes never change afterwards: they live in an
        // immutable redb page or overlay buffer (`Arc`, kept alive by the guard), an
        // `Arc`'d in-memory entry, or the guard's own copy (taken out of the thread's
        // spare slot, so no other hit writes into it, and put back only when the guard
        // drops), and their address does not move when the guard moves. `from_stored`
        // copied misaligned bytes, so alignment holds too. Skipping re-validation saves ~10 ns per dereference (measured in
        // benches/hits.rs, `archived_deref`).
        unsafe {
            rkyv::access_unchecked::<V::Archived>(self.payload())
        }
    }
}

impl<V: Value> std::fmt::Debug for ArchivedHit<V>
where
    V::Archived: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ArchivedHit").field(&**self).finish()
    }
}
