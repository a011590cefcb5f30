//! The stored entry: a short fixed header, the optional deadline, the key and dependency
//! row lengths, the encoded key, dependency rows, then the rkyv archive. This layout is
//! an on-disk compatibility boundary (see ARCHITECTURE.md).
//!
//! ```text
//! offset size field
//!   0     4  checksum: xxh3_64 of bytes[4..], its low 32 bits, LE
//!   4     1  tag 0xF6 (format 6)
//!   5     1  flags: bits 0-3 the pad (< 16), bit 4 a deadline follows, bit 5 dependency
//!            rows follow, bits 6-7 zero
//!   6     8  fingerprint u64 LE (value type + format + memoizer version)
//!  14     8  stored_at_ms  u64 LE
//!  22     8  entry_id  u64 LE (unique per write; identifies a value for max_hits)
//!  30    (8) expires_at_ms u64 LE, only with flag bit 4 (absent: never)
//!   .   1-5  key_len: LEB128 varint (u32)
//!   .  (1-3) dep_count: LEB128 varint (u16, at least 1), only with flag bit 5
//!   .    ..  key bytes (key_len), dep rows (dep_count x 24), pad zero bytes, rkyv
//!            archive (to the end)
//! ```
//!
//! An entry without a deadline, zone rows or a key of 128 bytes or more has a 31-byte
//! header: every byte of a row costs about 1.5 bytes of file (leaves end about two
//! thirds full), so fields a typical entry does not use take no room. The checksum is
//! 32 bits: it catches damage to bytes that also pass the tag, flag, bound, key,
//! fingerprint and bytecheck tests (a collision needs all of those to pass too).
//!
//! The pad puts an archive of [`PAD_MIN_LEN`] bytes or more at a multiple of
//! [`ARCHIVE_ALIGN`] from the entry's start, so such an entry in an 8-aligned buffer (ours,
//! or a redb page holding it alone) has an aligned archive that hits read in place (see
//! [`crate::aligned`]). Smaller archives get no pad: copying one costs less than the pad's
//! bytes cost every lookup in the B-tree (measured: ARCHITECTURE.md, "Values and
//! alignment"). Entries that never leave this process's memory pad every archive
//! ([`Pad::All`]). The rule is part of the value fingerprint that entries carry
//! ([`PAD_RULE`]), so a build placing archives otherwise never decodes these.
//!
//! The dependency rows start with the entry's *primary* row (the first key of its first
//! keyed zone, which decides where the entry is filed, see [`crate::key::place`]); the
//! others follow sorted, without duplicates.

use crate::aligned::ARCHIVE_ALIGN;
use crate::key::DepRow;

/// Version of the whole on-disk format (tables and entry layout). Bump it on any change.
pub(crate) const FORMAT_VERSION: u32 = 6;

/// The entry's tag byte: an entry of another format (or foreign bytes) fails it first.
const TAG: u8 = 0xF6;
const AT_TAG: usize = 4;
const AT_FLAGS: usize = 5;
const AT_FINGERPRINT: usize = 6;
const AT_STORED: usize = 14;
const AT_ENTRY_ID: usize = 22;
/// Where the deadline is, when the entry has one; the fixed header ends here.
const AT_DEADLINE: usize = 30;
const FIXED_LEN: usize = AT_DEADLINE;
const PAD_MASK: u8 = 0x0f;
const HAS_DEADLINE: u8 = 0x10;
const HAS_DEPS: u8 = 0x20;
const FLAGS_MASK: u8 = PAD_MASK | HAS_DEADLINE | HAS_DEPS;
/// Archives at least this long are padded to [`ARCHIVE_ALIGN`].
const PAD_MIN_LEN: usize = 512;
/// Names how archives are placed in entries; mixed into every value fingerprint.
pub(crate) const PAD_RULE: &str = "archives of 512+ bytes padded to align_of(Archived<u64>)";

/// Puts dependency rows in their stored order: the first one given (the primary row)
/// first, then the others sorted and without duplicates.
pub(crate) fn order_deps(mut rows: Vec<DepRow>) -> Vec<DepRow> {
    let Some(&primary) = rows.first() else {
        return rows;
    };
    rows.sort_unstable();
    rows.dedup();
    if let Some(at) = rows.iter().position(|r| *r == primary) {
        rows[..=at].rotate_right(1);
    }
    rows
}

/// The header fields a writer supplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Meta {
    pub fingerprint: u64,
    pub stored_at_ms: u64,
    /// The deadline (unix ms); 0 = never (stored as no deadline field at all).
    pub expires_at_ms: u64,
    pub entry_id: u64,
}

impl Meta {
    /// Whether the entry is past its deadline at `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }
}

/// Which archives an entry pads to [`ARCHIVE_ALIGN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pad {
    /// Those of [`PAD_MIN_LEN`] bytes or more ([`PAD_RULE`]): every entry that may
    /// reach a file or a server, where a pad costs bytes in every B-tree lookup.
    Large,
    /// Every archive: for entries that only ever live in a buffer of ours (a store with
    /// nothing behind it), where a few bytes more save a copy on every hit. Decoding
    /// reads the pad from the header, so both kinds decode alike.
    All,
}

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint of at most `u32` at `at`: the value and where it ends. `None`
/// past the end of `bytes` or beyond `u32`.
#[inline]
fn varint(bytes: &[u8], at: usize) -> Option<(u32, usize)> {
    match bytes.get(at) {
        // The usual length: under 128.
        Some(&b) if b < 0x80 => Some((u32::from(b), at + 1)),
        _ => long_varint(bytes, at),
    }
}

/// [`varint`] of two bytes or more.
fn long_varint(bytes: &[u8], mut at: usize) -> Option<(u32, usize)> {
    let mut v: u32 = 0;
    for shift in [0, 7, 14, 21, 28] {
        let b = *bytes.get(at)?;
        at += 1;
        let bits = u32::from(b & 0x7f);
        if shift == 28 && bits > 0x0f {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            return Some((v, at));
        }
    }
    None
}

/// Where the varints start: after the fixed header and the deadline, if any.
#[inline]
fn lengths_at(flags: u8) -> usize {
    // Without a branch: the flag bit (16) halved is the deadline's 8 bytes.
    const _: () = assert!(HAS_DEADLINE == 16);
    FIXED_LEN + usize::from(flags & HAS_DEADLINE) / 2
}

/// Encodes an entry.
pub(crate) fn encode(
    meta: &Meta,
    key: &[u8],
    deps: &[DepRow],
    payload: &[u8],
    pad: Pad,
) -> Vec<u8> {
    let mut flags = 0u8;
    if meta.expires_at_ms != 0 {
        flags |= HAS_DEADLINE;
    }
    if !deps.is_empty() {
        flags |= HAS_DEPS;
    }
    // One allocation: the varints take at most 5 + 3 bytes, the pad less than 16.
    let mut out = Vec::with_capacity(
        lengths_at(flags) + 8 + key.len() + deps.len() * 24 + 15 + payload.len(),
    );
    out.extend_from_slice(&[0u8; 4]); // checksum, filled below
    out.push(TAG);
    out.push(flags); // the pad joins it below
    out.extend_from_slice(&meta.fingerprint.to_le_bytes());
    out.extend_from_slice(&meta.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.entry_id.to_le_bytes());
    if flags & HAS_DEADLINE != 0 {
        out.extend_from_slice(&meta.expires_at_ms.to_le_bytes());
    }
    // Keys and row counts past u32 / u16 cannot be described: the caller's limits
    // (postcard output held in memory, dependency keys per entry) stay far below.
    put_varint(&mut out, key.len() as u32);
    if flags & HAS_DEPS != 0 {
        put_varint(&mut out, u32::from(deps.len() as u16));
    }
    out.extend_from_slice(key);
    for d in deps {
        out.extend_from_slice(d);
    }
    let deps_end = out.len();
    let pad = if pad == Pad::All || payload.len() >= PAD_MIN_LEN {
        deps_end.next_multiple_of(ARCHIVE_ALIGN) - deps_end
    } else {
        0
    };
    out[AT_FLAGS] |= pad as u8;
    out.resize(deps_end + pad, 0);
    out.extend_from_slice(payload);
    let sum = checksum(&out);
    out[..4].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Why stored bytes could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    TooShort,
    BadMagic,
    BadFlags,
    BadChecksum,
}

/// A parsed, bounds-checked view of an entry. The payload is not yet validated by rkyv.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EntryView<'a> {
    pub meta: Meta,
    pub key: &'a [u8],
    deps: &'a [u8],
    /// Offset of the payload (the rkyv archive) in the entry bytes; it runs to the end.
    pub payload_offset: usize,
}

impl<'a> EntryView<'a> {
    /// The dependency rows of this entry.
    pub(crate) fn deps(&self) -> impl Iterator<Item = DepRow> + 'a {
        rows(self.deps)
    }
}

/// Dependency rows packed back to back.
fn rows(packed: &[u8]) -> impl Iterator<Item = DepRow> + '_ {
    packed.chunks_exact(24).map(|c| {
        let mut row = [0u8; 24];
        row.copy_from_slice(c);
        row
    })
}

/// The checksum covers everything but itself.
#[inline]
fn checksum(bytes: &[u8]) -> u32 {
    xxhash_rust::xxh3::xxh3_64(&bytes[4..]) as u32
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

/// The entry id of encoded entry bytes, if they are long enough to hold one (read
/// without checking anything else).
#[inline]
pub(crate) fn entry_id(bytes: &[u8]) -> Option<u64> {
    (bytes.len() >= AT_ENTRY_ID + 8).then(|| u64_at(bytes, AT_ENTRY_ID))
}

/// The deadline of an entry that [`decode`]s (0 = never): the field read alone on a
/// memory hit.
#[inline]
pub(crate) fn expires_at_ms(bytes: &[u8]) -> u64 {
    match bytes.get(AT_FLAGS) {
        Some(flags) if flags & HAS_DEADLINE != 0 => u64_at(bytes, AT_DEADLINE),
        _ => 0,
    }
}

/// The header fields of an entry that [`decode`]s (zeros past the end of shorter bytes).
pub(crate) fn meta(bytes: &[u8]) -> Meta {
    Meta {
        fingerprint: u64_at(bytes, AT_FINGERPRINT),
        stored_at_ms: u64_at(bytes, AT_STORED),
        expires_at_ms: expires_at_ms(bytes),
        entry_id: entry_id(bytes).unwrap_or(0),
    }
}

/// Where the parts of an entry lie (offsets into its bytes).
struct Layout {
    key_start: usize,
    key_end: usize,
    deps_end: usize,
    payload_offset: usize,
}

/// Reads the layout of `bytes` from its header, checking every bound (not the checksum).
#[inline(always)]
fn layout(bytes: &[u8]) -> Result<Layout, Malformed> {
    if bytes.len() < FIXED_LEN {
        return Err(Malformed::TooShort);
    }
    if bytes[AT_TAG] != TAG {
        return Err(Malformed::BadMagic);
    }
    let flags = bytes[AT_FLAGS];
    if flags & !FLAGS_MASK != 0 {
        return Err(Malformed::BadFlags);
    }
    let (key_len, mut at) = varint(bytes, lengths_at(flags)).ok_or(Malformed::TooShort)?;
    let mut dep_count = 0;
    if flags & HAS_DEPS != 0 {
        let (count, end) = varint(bytes, at).ok_or(Malformed::TooShort)?;
        if count == 0 || count > u32::from(u16::MAX) {
            return Err(Malformed::BadFlags);
        }
        (dep_count, at) = (count as usize, end);
    }
    let key_start = at;
    let key_end = key_start
        .checked_add(key_len as usize)
        .ok_or(Malformed::TooShort)?;
    let deps_end = key_end
        .checked_add(dep_count * 24)
        .ok_or(Malformed::TooShort)?;
    let payload_offset = deps_end + usize::from(flags & PAD_MASK);
    if payload_offset > bytes.len() {
        return Err(Malformed::TooShort);
    }
    Ok(Layout {
        key_start,
        key_end,
        deps_end,
        payload_offset,
    })
}

/// Where the key starts in entry bytes that [`decode`] (the memory store's hit path: it
/// skips the varints without the checks `decode` made when the entry was stored).
#[inline]
pub(crate) fn key_start(bytes: &[u8]) -> usize {
    let Some(&flags) = bytes.get(AT_FLAGS) else {
        return 0;
    };
    let at = lengths_at(flags);
    match bytes.get(at) {
        // The usual entry: a key under 128 bytes and no dependency rows.
        Some(len) if len & 0x80 == 0 && flags & HAS_DEPS == 0 => at + 1,
        _ => layout(bytes).map_or(0, |l| l.key_start),
    }
}

/// The dependency rows of entry bytes (none for bytes that do not [`decode`]).
pub(crate) fn deps_of(bytes: &[u8]) -> impl Iterator<Item = DepRow> + '_ {
    rows(layout(bytes).map_or(&[][..], |l| &bytes[l.key_end..l.deps_end]))
}

/// Parses an entry, checking structure and (when `verify` is set) the checksum.
pub(crate) fn decode(bytes: &[u8], verify: bool) -> Result<EntryView<'_>, Malformed> {
    let l = layout(bytes)?;
    if verify && u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) != checksum(bytes) {
        return Err(Malformed::BadChecksum);
    }
    Ok(EntryView {
        meta: meta(bytes),
        key: &bytes[l.key_start..l.key_end],
        deps: &bytes[l.key_end..l.deps_end],
        payload_offset: l.payload_offset,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::dep_row;

    #[test]
    fn primary_row_leads_and_the_rest_is_sorted_and_unique() {
        let row = |b: u8| [b; 24];
        assert_eq!(
            order_deps(vec![row(5), row(9), row(1), row(5), row(9)]),
            vec![row(5), row(1), row(9)]
        );
        assert_eq!(order_deps(vec![row(1), row(2)]), vec![row(1), row(2)]);
        assert_eq!(order_deps(Vec::new()), Vec::<DepRow>::new());
    }

    fn sample_meta() -> Meta {
        Meta {
            fingerprint: 7,
            stored_at_ms: 10,
            expires_at_ms: 20,
            entry_id: 3,
        }
    }

    fn sample() -> Vec<u8> {
        encode(
            &sample_meta(),
            b"key",
            &[dep_row(1, [9; 16])],
            b"payload",
            Pad::Large,
        )
    }

    #[test]
    fn round_trips() {
        let bytes = sample();
        let view = decode(&bytes, true).unwrap();
        assert_eq!(view.meta.fingerprint, 7);
        assert_eq!(view.meta.expires_at_ms, 20);
        assert_eq!(view.key, b"key");
        assert_eq!(view.deps().collect::<Vec<_>>(), vec![dep_row(1, [9; 16])]);
        assert_eq!(&bytes[view.payload_offset..], b"payload");
    }

    #[test]
    fn a_large_archive_starts_at_a_multiple_of_the_archive_alignment() {
        let meta = sample_meta();
        let large = vec![5u8; PAD_MIN_LEN];
        for key_len in 0..20 {
            let key = vec![1u8; key_len];
            let bytes = encode(&meta, &key, &[dep_row(1, [9; 16])], &large, Pad::Large);
            let view = decode(&bytes, true).unwrap();
            assert_eq!(
                view.payload_offset % ARCHIVE_ALIGN,
                0,
                "key of {key_len} bytes"
            );
            assert_eq!(view.key, &key[..]);
            assert_eq!(view.deps().count(), 1);
            assert_eq!(&bytes[view.payload_offset..], &large[..]);
            // A small archive follows the dependency rows directly.
            let small = encode(&meta, &key, &[], b"payload", Pad::Large);
            // 30 fixed bytes, the 8-byte deadline, one varint byte for the key length.
            assert_eq!(small.len(), 30 + 8 + 1 + key_len + 7);
            assert_eq!(
                &small[decode(&small, true).unwrap().payload_offset..],
                b"payload"
            );
            // Unless the entry never leaves memory: then every archive is aligned.
            let small = encode(&meta, &key, &[], b"payload", Pad::All);
            let view = decode(&small, true).unwrap();
            assert_eq!(
                view.payload_offset % ARCHIVE_ALIGN,
                0,
                "key of {key_len} bytes"
            );
            assert_eq!(&small[view.payload_offset..], b"payload");
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample();
        for i in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[i] ^= 0x40;
            assert!(
                decode(&damaged, true).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn truncation_is_caught() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len], true).is_err());
        }
    }

    /// Headers with a valid tag and flags but arbitrary lengths (huge varints, counts
    /// past the end) never panic any reader, and what `decode` accepts lies in bounds.
    #[test]
    fn arbitrary_lengths_are_bounded() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 80) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if bytes.len() > AT_FLAGS {
                bytes[AT_TAG] = TAG;
                bytes[AT_FLAGS] &= FLAGS_MASK;
            }
            let _ = key_start(&bytes);
            let _ = expires_at_ms(&bytes);
            let _ = deps_of(&bytes).count();
            let _ = super::meta(&bytes);
            if let Ok(view) = decode(&bytes, false) {
                assert!(view.payload_offset <= bytes.len());
                assert_eq!(
                    key_start(&bytes),
                    view.key.as_ptr() as usize - bytes.as_ptr() as usize
                );
                assert_eq!(deps_of(&bytes).count(), view.deps().count());
            }
        }
    }

    #[test]
    fn an_entry_without_deadline_or_rows_has_a_31_byte_header() {
        let meta = Meta {
            expires_at_ms: 0,
            ..sample_meta()
        };
        let bytes = encode(&meta, b"k", &[], b"payload", Pad::Large);
        assert_eq!(bytes.len(), 31 + 1 + 7);
        let view = decode(&bytes, true).unwrap();
        assert_eq!(view.meta, meta);
        assert_eq!(view.key, b"k");
        assert_eq!(view.deps().count(), 0);
        assert_eq!(key_start(&bytes), 31);
        assert_eq!(expires_at_ms(&bytes), 0);
        assert_eq!(entry_id(&bytes), Some(3));
    }

    #[test]
    fn lengths_of_every_varint_width_round_trip() {
        let meta = sample_meta();
        let rows: Vec<DepRow> = (0..200u32)
            .map(|i| dep_row(i as u64, [i as u8; 16]))
            .collect();
        for key_len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
            let key: Vec<u8> = (0..key_len).map(|i| i as u8).collect();
            for deps in [
                &rows[..0],
                &rows[..1],
                &rows[..127],
                &rows[..128],
                &rows[..],
            ] {
                let bytes = encode(&meta, &key, deps, b"archive", Pad::Large);
                let view = decode(&bytes, true).unwrap();
                assert_eq!(view.key, &key[..], "key of {key_len} bytes");
                assert!(view.deps().eq(deps.iter().copied()));
                assert!(deps_of(&bytes).eq(deps.iter().copied()));
                assert_eq!(
                    key_start(&bytes),
                    view.key.as_ptr() as usize - bytes.as_ptr() as usize
                );
                assert_eq!(&bytes[view.payload_offset..], b"archive");
                assert_eq!(super::meta(&bytes), meta);
            }
        }
    }

    #[test]
    fn varints_past_u32_are_refused() {
        assert_eq!(
            varint(&[0xff, 0xff, 0xff, 0xff, 0x0f], 0),
            Some((u32::MAX, 5))
        );
        assert_eq!(varint(&[0xff, 0xff, 0xff, 0xff, 0x10], 0), None);
        assert_eq!(varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00], 0), None);
        assert_eq!(varint(&[0x80], 0), None);
    }
}
