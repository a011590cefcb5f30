//! The stored entry: a fixed header, the encoded key, dependency rows, then the rkyv
//! archive. This layout is an on-disk compatibility boundary (see ARCHITECTURE.md).
//!
//! ```text
//! offset size field
//!   0     4  magic b"FMZ1"
//!   4     4  key_len   u32 LE
//!   8     8  checksum  xxh3_64 of bytes[16..], seeded with bytes[0..8]
//!  16     8  fingerprint u64 LE (value type + format + memoizer version)
//!  24     8  stored_at_ms  u64 LE
//!  32     8  expires_at_ms u64 LE (0 = never)
//!  40     8  entry_id  u64 LE (unique per write; identifies a value for max_hits)
//!  48     2  dep_count u16 LE
//!  50     1  pad: zero bytes between the dep rows and the archive (< 16)
//!  51     5  reserved (zero)
//!  56     .. key bytes (key_len), dep rows (dep_count x 24), pad, rkyv archive (to the end)
//! ```
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
pub(crate) const FORMAT_VERSION: u32 = 5;

const MAGIC: &[u8; 4] = b"FMZ1";
pub(crate) const HEADER_LEN: usize = 56;
/// Offset of the pad length in the header.
const PAD: usize = 50;
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
    pub expires_at_ms: u64,
    pub entry_id: u64,
}

impl Meta {
    /// Whether the entry is past its deadline at `now_ms`.
    pub(crate) fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms != 0 && now_ms >= self.expires_at_ms
    }
}

/// The entry id of encoded entry bytes, if they are long enough to hold one (read
/// without checking anything else).
pub(crate) fn entry_id(bytes: &[u8]) -> Option<u64> {
    let word = bytes.get(ENTRY_ID..ENTRY_ID + 8)?;
    Some(u64::from_le_bytes(word.try_into().ok()?))
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

/// Encodes an entry.
pub(crate) fn encode(
    meta: &Meta,
    key: &[u8],
    deps: &[DepRow],
    payload: &[u8],
    pad: Pad,
) -> Vec<u8> {
    let deps_end = HEADER_LEN + key.len() + deps.len() * 24;
    let pad = if pad == Pad::All || payload.len() >= PAD_MIN_LEN {
        deps_end.next_multiple_of(ARCHIVE_ALIGN) - deps_end
    } else {
        0
    };
    let mut out = Vec::with_capacity(deps_end + pad + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0u8; 8]); // checksum, filled below
    out.extend_from_slice(&meta.fingerprint.to_le_bytes());
    out.extend_from_slice(&meta.stored_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.expires_at_ms.to_le_bytes());
    out.extend_from_slice(&meta.entry_id.to_le_bytes());
    out.extend_from_slice(&(deps.len() as u16).to_le_bytes());
    out.push(pad as u8);
    out.extend_from_slice(&[0u8; 5]);
    out.extend_from_slice(key);
    for d in deps {
        out.extend_from_slice(d);
    }
    out.resize(deps_end + pad, 0);
    out.extend_from_slice(payload);
    let sum = checksum(&out);
    out[8..16].copy_from_slice(&sum.to_le_bytes());
    out
}

/// Why stored bytes could not be read as an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Malformed {
    TooShort,
    BadMagic,
    BadPad,
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
        self.deps.chunks_exact(24).map(|c| {
            let mut row = [0u8; 24];
            row.copy_from_slice(c);
            row
        })
    }
}

/// The checksum covers everything but itself: bytes 0..8 seed it, bytes 16.. are hashed.
fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes[16..], u64_at(bytes, 0))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Offset of `expires_at_ms` in the header.
pub(crate) const EXPIRES_AT: usize = 32;
/// Offset of `entry_id` in the header.
pub(crate) const ENTRY_ID: usize = 40;

/// The header fields of an entry that [`decode`]s (zeros past the end of shorter bytes).
pub(crate) fn meta(bytes: &[u8]) -> Meta {
    let field = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    Meta {
        fingerprint: field(16),
        stored_at_ms: field(24),
        expires_at_ms: field(EXPIRES_AT),
        entry_id: field(ENTRY_ID),
    }
}

/// The dependency row count of an entry that [`decode`]s.
pub(crate) fn dep_count(bytes: &[u8]) -> usize {
    u16::from_le_bytes([bytes[48], bytes[49]]) as usize
}

/// Parses an entry, checking structure and (when `verify` is set) the checksum.
pub(crate) fn decode(bytes: &[u8], verify: bool) -> Result<EntryView<'_>, Malformed> {
    if bytes.len() < HEADER_LEN {
        return Err(Malformed::TooShort);
    }
    if &bytes[..4] != MAGIC {
        return Err(Malformed::BadMagic);
    }
    let key_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    let dep_count = dep_count(bytes);
    let deps_end = HEADER_LEN
        .checked_add(key_len)
        .and_then(|k| k.checked_add(dep_count * 24))
        .ok_or(Malformed::TooShort)?;
    let pad = bytes[PAD] as usize;
    if pad >= 16 {
        return Err(Malformed::BadPad);
    }
    if deps_end + pad > bytes.len() {
        return Err(Malformed::TooShort);
    }
    if verify && u64_at(bytes, 8) != checksum(bytes) {
        return Err(Malformed::BadChecksum);
    }
    let key_end = HEADER_LEN + key_len;
    Ok(EntryView {
        meta: meta(bytes),
        key: &bytes[HEADER_LEN..key_end],
        deps: &bytes[key_end..deps_end],
        payload_offset: deps_end + pad,
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
            assert_eq!(small.len(), HEADER_LEN + key_len + 7);
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
}
