//! Reading archives whose bytes may sit at any address.
//!
//! rkyv's default format needs an archive aligned for its type; redb stores values at
//! whatever address its page layout gives them. Entries place the archive at a multiple of
//! [`ARCHIVE_ALIGN`] from their start (`entry.rs`), so an archive in a buffer of ours (an
//! in-memory entry, the write overlay, a promoted copy: `Arc<[u8]>` data is 8-aligned) and
//! a large value alone in its redb page are aligned and read in place. Anything else is
//! copied into a buffer taken from a per-thread spare, which goes back when the copy is
//! done with, so a hit allocates nothing once the thread has a buffer large enough.
//!
//! With rkyv's `unaligned` format every archive has alignment 1: nothing is ever copied.

use std::cell::Cell;

use rkyv::util::AlignedVec;

/// The alignment entries give their archive: that of an archived `u64` in the format in
/// force (8 by default, 1 with rkyv's `unaligned`). An archive with fields needing more
/// (128-bit integers) that fails in place is tried again from a copy ([`with_aligned`]).
pub(crate) const ARCHIVE_ALIGN: usize = std::mem::align_of::<rkyv::Archived<u64>>();

/// The largest alignment an rkyv archive needs (128-bit integers).
const COPY_ALIGN: usize = 16;

/// An aligned copy of an archive, aligned for anything.
pub(crate) type AlignedCopy = AlignedVec<COPY_ALIGN>;

/// A spare buffer larger than this is dropped instead of kept, so one huge hit does not
/// pin its size for the thread's lifetime.
const KEEP_LIMIT: usize = 1 << 20;

thread_local! {
    /// This thread's spare copy buffer. A `Cell` taken and put back, never borrowed: a
    /// nested hit (a deserializer that itself reads a memoizer) finds it empty and
    /// allocates, and a copy handed to a guard is the guard's alone until it is dropped.
    static SPARE: Cell<Option<AlignedCopy>> = const { Cell::new(None) };
}

/// Whether `bytes` start at a multiple of `align`.
pub(crate) fn is_aligned(bytes: &[u8], align: usize) -> bool {
    (bytes.as_ptr() as usize).is_multiple_of(align)
}

/// An aligned copy of `bytes`, in this thread's spare buffer if it has one.
pub(crate) fn copy(bytes: &[u8]) -> AlignedCopy {
    let mut buf = SPARE
        .try_with(Cell::take)
        .ok()
        .flatten()
        .unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(bytes);
    buf
}

/// Makes `buf` this thread's spare for the next [`copy`].
pub(crate) fn recycle(buf: AlignedCopy) {
    if buf.capacity() <= KEEP_LIMIT {
        // During thread teardown the slot may be gone: then the buffer is just dropped.
        let _ = SPARE.try_with(|spare| spare.set(Some(buf)));
    }
}

/// Runs `f` on `bytes` if they are aligned to `align` (see [`archive_align`]), else - or
/// if `f` finds nothing there - on a copy aligned for any archive. `f` must have no
/// effect when it returns `None`: it may run twice.
pub(crate) fn with_aligned<R>(
    bytes: &[u8],
    align: usize,
    mut f: impl FnMut(&[u8]) -> Option<R>,
) -> Option<R> {
    if is_aligned(bytes, align) {
        if let Some(found) = f(bytes) {
            return Some(found);
        }
        // A field deeper in the archive may need more than `align` (128-bit integers
        // need 16): only a copy aligned for anything can tell that from damage.
        if is_aligned(bytes, COPY_ALIGN) {
            return None;
        }
    }
    let buf = copy(bytes);
    let result = f(&buf);
    recycle(buf);
    result
}

/// The alignment at which an archive whose root is `A` is tried in place: the root's,
/// and at least that of an archived `u64`. The root's alone is not enough: the root of a
/// `Vec<u64>` (a relative pointer and a length) needs 4, its elements 8.
pub(crate) fn archive_align<A>() -> usize {
    ARCHIVE_ALIGN.max(std::mem::align_of::<A>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_are_aligned_and_reuse_the_spare_buffer() {
        let bytes = vec![7u8; 4096 + 1];
        let misaligned = &bytes[1..];
        let first = copy(misaligned);
        assert!(is_aligned(&first, 16));
        assert_eq!(&first[..], misaligned);
        let at = first.as_ptr();
        recycle(first);
        let second = copy(&bytes[..100]);
        assert_eq!(
            second.as_ptr(),
            at,
            "the spare buffer is reused, not reallocated"
        );
        assert_eq!(&second[..], &bytes[..100]);
        // While `second` is out, another copy gets a buffer of its own.
        let third = copy(&bytes[..10]);
        assert_ne!(third.as_ptr(), second.as_ptr());
        assert_eq!(
            &second[..],
            &bytes[..100],
            "a live copy is never written by another"
        );
    }

    #[test]
    fn aligned_bytes_are_read_in_place() {
        let buf = copy(&[1, 2, 3, 4]);
        let seen = with_aligned(&buf, 16, |b| b.as_ptr());
        assert_eq!(seen, buf.as_ptr());
        let seen = with_aligned(&buf[1..], 2, |b| (b.as_ptr(), b.to_vec()));
        assert_ne!(seen.0, buf[1..].as_ptr());
        assert_eq!(seen.1, [2, 3, 4]);
    }

    #[test]
    fn huge_buffers_are_not_kept() {
        recycle(copy(&[1]));
        assert!(SPARE.with(Cell::take).is_some(), "a small buffer is kept");
        recycle(copy(&vec![0u8; KEEP_LIMIT + 1]));
        assert!(SPARE.with(Cell::take).is_none(), "a huge one is dropped");
    }
}
