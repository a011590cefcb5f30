//! Keys: canonical bytes (postcard) and the fixed-width hash tables are keyed by.
//!
//! Tables are keyed by `xxh3_128(encoded key)`; the encoded key itself is kept inside each
//! entry and compared on every hit, so a hash collision costs a miss, never a wrong value.
//! An entry with dependency keys is *filed* under its primary dependency instead (see
//! [`place`]), so that the entries one invalidation removes sit side by side in the file.

use serde::Serialize;

/// The 16-byte hash a table row is keyed by.
pub(crate) type KeyHash = [u8; 16];

/// One dependency row: the zone's id (big-endian so a zone's rows are contiguous) and the
/// hash of the dependency key. Defined here, beside the row hash it places
/// ([`place`]); entries store them ([`crate::entry`]).
pub(crate) type DepRow = [u8; 24];

/// Where the key `hash` of the memoizer with table id `memo` goes in a set-associative
/// table of `buckets` buckets (the shared board's flight and count tables): 64 bits to
/// tag it with, from one half of the hash, and its bucket, from the other. The table id
/// is mixed into both, so one key of two memoizers is two keys there.
pub(crate) fn board_place(memo: u64, hash: &KeyHash, buckets: usize) -> (u64, usize) {
    let (lo, hi) = hash.split_at(8);
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().unwrap_or_default());
    let tag = word(lo) ^ memo.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let bucket = (word(hi) ^ memo.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)) % buckets as u64;
    (tag, bucket as usize)
}

/// Builds a [`DepRow`].
pub(crate) fn dep_row(zone_id: u64, dep_hash: KeyHash) -> DepRow {
    let mut row = [0u8; 24];
    row[..8].copy_from_slice(&zone_id.to_be_bytes());
    row[8..].copy_from_slice(&dep_hash);
    row
}

/// Room for typical keys without touching the allocator on the hit path.
const INLINE: usize = 96;

/// Encoded key bytes: inline when short, on the heap otherwise.
pub(crate) enum KeyBytes {
    Inline { buf: [u8; INLINE], len: u8 },
    Heap(Vec<u8>),
}

impl KeyBytes {
    /// No bytes yet: room for [`set`](Self::set) to encode a key in place.
    pub(crate) fn empty() -> KeyBytes {
        KeyBytes::Inline {
            buf: [0u8; INLINE],
            len: 0,
        }
    }

    /// Encodes `key` with postcard.
    pub(crate) fn encode<T: Serialize + ?Sized>(key: &T) -> Result<KeyBytes, postcard::Error> {
        let mut bytes = KeyBytes::empty();
        bytes.set(key)?;
        Ok(bytes)
    }

    /// Encodes `key` with postcard into `self`, replacing what it held. The hit path
    /// encodes into the key it then looks up, so the inline buffer is written once and
    /// never copied (what the copies cost: ARCHITECTURE.md, "Fast paths").
    pub(crate) fn set<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), postcard::Error> {
        if let KeyBytes::Inline { buf, len } = self {
            match postcard::serialize_with_flavor(key, Inline { buf, len: 0 }) {
                Ok(used) => {
                    *len = used as u8;
                    return Ok(());
                }
                Err(postcard::Error::SerializeBufferFull) => {}
                Err(e) => return Err(e),
            }
        }
        *self = KeyBytes::Heap(postcard::to_allocvec(key)?);
        Ok(())
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            KeyBytes::Inline { buf, len } => &buf[..*len as usize],
            KeyBytes::Heap(v) => v,
        }
    }
}

/// A postcard output into [`KeyBytes`]' inline buffer. It is postcard's own slice
/// output but for how it copies: a key is mostly a few bytes at a time (a varint, a short
/// string), and postcard's slice output calls the library's `memcpy` for each, which
/// cost ~5 % of a memory hit. The bytes written are the same.
struct Inline<'a> {
    buf: &'a mut [u8; INLINE],
    len: usize,
}

impl postcard::ser_flavors::Flavor for Inline<'_> {
    type Output = usize;

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        let slot = self.buf.get_mut(self.len);
        *slot.ok_or(postcard::Error::SerializeBufferFull)? = byte;
        self.len += 1;
        Ok(())
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        let end = self.len + data.len();
        let dst = self.buf.get_mut(self.len..end);
        copy_short(dst.ok_or(postcard::Error::SerializeBufferFull)?, data);
        self.len = end;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.len)
    }
}

/// `dst.copy_from_slice(src)` (equal lengths) without a call for up to 32 bytes: two
/// fixed-width moves that overlap in the middle, as `memcpy` itself copies short runs.
#[inline]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    fn both<const W: usize>(dst: &mut [u8], src: &[u8]) {
        let n = src.len();
        let (head, tail) = (word::<W>(src, 0), word::<W>(src, n - W));
        dst[..W].copy_from_slice(&head);
        dst[n - W..].copy_from_slice(&tail);
    }
    fn word<const W: usize>(src: &[u8], at: usize) -> [u8; W] {
        let mut w = [0u8; W];
        w.copy_from_slice(&src[at..at + W]);
        w
    }
    match src.len() {
        0 => {}
        n @ 1..=3 => {
            dst[0] = src[0];
            dst[n / 2] = src[n / 2];
            dst[n - 1] = src[n - 1];
        }
        4..=7 => both::<4>(dst, src),
        8..=15 => both::<8>(dst, src),
        16..=32 => both::<16>(dst, src),
        _ => dst.copy_from_slice(src),
    }
}

/// How a memoizer turns encoded key bytes into a row key. Replaceable (hidden builder
/// option) so tests can force collisions.
pub(crate) type KeyHasher = fn(&[u8]) -> KeyHash;

/// The default row-key hash.
pub(crate) fn xxh3_key_hash(bytes: &[u8]) -> KeyHash {
    xxhash_rust::xxh3::xxh3_128(bytes).to_le_bytes()
}

/// The row hash of an entry filed under dependency row `primary`: the first eight bytes
/// of the dependency's hash, then the first eight of the key's own hash.
///
/// Rows sort by their bytes, so every entry whose primary dependency is the same key lies
/// in one run of the entries table: invalidating that key deletes from a few adjacent
/// B-tree pages instead of one page per entry, so its cost does not grow with the table
/// (`benches/zones.rs`). Half of the key hash still separates the entries of one
/// dependency; a collision costs a miss as before.
pub(crate) fn place(key_hash: &KeyHash, primary: &DepRow) -> KeyHash {
    let mut placed = [0u8; 16];
    placed[..8].copy_from_slice(&primary[8..16]);
    placed[8..].copy_from_slice(&key_hash[..8]);
    placed
}

/// Whether `hash` is where [`place`] files an entry whose primary row is `primary`.
pub(crate) fn filed_under(hash: &KeyHash, primary: &DepRow) -> bool {
    hash[..8] == primary[8..16]
}

/// An encoded key and its row hash.
pub(crate) struct EncodedKey {
    pub(crate) bytes: KeyBytes,
    pub(crate) hash: KeyHash,
    /// The entry's dependency rows, if they were derived already (a miss stores them).
    pub(crate) deps: Option<crate::Result<Vec<DepRow>>>,
}

impl EncodedKey {
    /// A key with no bytes and no hash yet: a memoizer encodes into it in place and then
    /// files it (`Memoizer::file_key`), so the inline buffer is never copied.
    pub(crate) fn empty() -> Self {
        EncodedKey {
            bytes: KeyBytes::empty(),
            hash: [0; 16],
            deps: None,
        }
    }

    /// Files this key under `primary`, the entry's primary dependency row (`None`: no
    /// rows, or rows that could not be derived, in which case nothing is ever stored and
    /// the lookup misses). See [`place`].
    pub(crate) fn place(&mut self, primary: Option<&DepRow>) {
        if let Some(primary) = primary {
            self.hash = place(&self.hash, primary);
        }
    }
}

/// A `BuildHasher` for maps keyed by [`KeyHash`]: the key is already a good hash, so the
/// map takes its first eight bytes instead of hashing it again.
#[derive(Clone, Copy, Default)]
pub(crate) struct PrehashedBuild;

#[derive(Default)]
pub(crate) struct Prehashed(u64);

impl std::hash::Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only keys made of uniform hashes reach here ([u8; 16] row hashes, [u8; 24]
        // dependency rows, after a length prefix, and ids); fold everything.
        let mut words = bytes.chunks_exact(8);
        for word in words.by_ref() {
            let mut w = [0u8; 8];
            w.copy_from_slice(word);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(w));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = self.0.rotate_left(5) ^ word;
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

impl std::hash::BuildHasher for PrehashedBuild {
    type Hasher = Prehashed;
    fn build_hasher(&self) -> Prehashed {
        Prehashed(0)
    }
}

/// A `HashMap` keyed by row hash.
pub(crate) type HashMapByKey<V> = std::collections::HashMap<KeyHash, V, PrehashedBuild>;

#[cfg(test)]
mod tests {
    use super::*;

    /// The inline output writes exactly postcard's bytes, for every length its short
    /// copies distinguish (a wrong overlap would change stored keys' hashes).
    #[test]
    fn inline_output_matches_postcard() {
        for n in 0..=INLINE {
            let s: String = (0..n)
                .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
                .collect();
            for key in [s.clone(), format!("{s}\u{e9}")] {
                let want = postcard::to_allocvec(&key).unwrap();
                assert_eq!(KeyBytes::encode(&key).unwrap().as_slice(), want, "{n}");
            }
            let bytes: Vec<u8> = (0..n as u8).map(|b| b.wrapping_mul(37)).collect();
            let key = (n as u64 * 0x0123_4567_89ab, bytes, -(n as i64));
            let want = postcard::to_allocvec(&key).unwrap();
            assert_eq!(KeyBytes::encode(&key).unwrap().as_slice(), want, "{n}");
        }
    }

    #[test]
    fn long_keys_spill_to_heap_with_same_bytes() {
        let long = "x".repeat(500);
        let k = KeyBytes::encode(&long).unwrap();
        assert!(matches!(k, KeyBytes::Heap(_)));
        assert_eq!(
            k.as_slice(),
            postcard::to_allocvec(&long).unwrap().as_slice()
        );
        let short = KeyBytes::encode(&(1u64, "a")).unwrap();
        assert!(matches!(short, KeyBytes::Inline { .. }));
        assert_eq!(
            short.as_slice(),
            postcard::to_allocvec(&(1u64, "a")).unwrap().as_slice()
        );
    }
}
