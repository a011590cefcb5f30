//! Type fingerprints: what makes a changed value type read as a miss, never a misread.
//!
//! rkyv's validation proves memory safety, not schema identity: `{a: u64, b: u64}` bytes
//! validate fine as `{a: u64, b: f64}`. So every stored entry carries a fingerprint that
//! mixes the value type's [`Fingerprint::SCHEMA`] (derived from its definition), the rkyv
//! format in force, the archived size and alignment, the storage format version and the
//! memoizer's own `version`. An entry whose fingerprint differs is never decoded.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A hash of a type's definition, used to tell apart values written by another version
/// of the program.
///
/// Derive it with `#[derive(Fingerprint)]` (feature `macros`, on by default): the derive
/// hashes the type's name, its field names and field types, and mixes in the `SCHEMA` of
/// every field type, so editing a nested type changes the outer fingerprint too.
///
/// ```
/// use fresco_memoize::Fingerprint;
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
/// struct Synopsis { title: String, pages: u32 }
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
/// struct SynopsisV2 { title: String, pages: u64 }
///
/// assert_ne!(Synopsis::SCHEMA, SynopsisV2::SCHEMA);
/// ```
pub trait Fingerprint {
    /// The schema hash. Implementations must change it whenever the archived meaning of
    /// the type changes.
    const SCHEMA: u64;
}

/// Mixes a seed with part hashes. `const` so derived `SCHEMA`s are computed at compile time.
#[doc(hidden)]
pub const fn mix(seed: u64, parts: &[u64]) -> u64 {
    let mut h = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut i = 0;
    while i < parts.len() {
        h ^= parts[i]
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h ^= h >> 31;
        i += 1;
    }
    h
}

/// Hash of a name, for hand-written `SCHEMA`s.
#[doc(hidden)]
pub const fn name_hash(name: &str) -> u64 {
    xxhash_rust::const_xxh3::xxh3_64(name.as_bytes())
}

macro_rules! leaf_fingerprint {
    ($($t:ty),* $(,)?) => {$(
        impl Fingerprint for $t {
            const SCHEMA: u64 = name_hash(stringify!($t));
        }
    )*};
}

leaf_fingerprint!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    String
);

macro_rules! wrapper_fingerprint {
    ($($name:literal => $t:ident <$($p:ident),*>),* $(,)?) => {$(
        impl<$($p: Fingerprint),*> Fingerprint for $t<$($p),*> {
            const SCHEMA: u64 = mix(name_hash($name), &[$(<$p as Fingerprint>::SCHEMA),*]);
        }
    )*};
}

wrapper_fingerprint!(
    "Option" => Option<T>,
    "Vec" => Vec<T>,
    "Box" => Box<T>,
    "HashMap" => HashMap<K, V>,
    "BTreeMap" => BTreeMap<K, V>,
    "HashSet" => HashSet<T>,
    "BTreeSet" => BTreeSet<T>,
);

impl<T: Fingerprint, const N: usize> Fingerprint for [T; N] {
    const SCHEMA: u64 = mix(name_hash("array"), &[T::SCHEMA, N as u64]);
}

macro_rules! tuple_fingerprint {
    ($($t:ident),+) => {
        impl<$($t: Fingerprint),+> Fingerprint for ($($t,)+) {
            const SCHEMA: u64 = mix(name_hash("tuple"), &[$($t::SCHEMA),+]);
        }
    };
}

tuple_fingerprint!(A);
tuple_fingerprint!(A, B);
tuple_fingerprint!(A, B, C);
tuple_fingerprint!(A, B, C, D);
tuple_fingerprint!(A, B, C, D, E);
tuple_fingerprint!(A, B, C, D, E, F);

/// Describes the rkyv format this build writes: alignment mode, pointer width and
/// endianness. Flipping rkyv's `unaligned` feature between builds changes it, so old
/// entries become misses.
fn rkyv_format() -> [u64; 3] {
    let aligned = std::mem::align_of::<rkyv::Archived<u64>>() as u64;
    let pointer_width = std::mem::size_of::<rkyv::Archived<usize>>() as u64;
    let little_endian = rkyv::to_bytes::<rkyv::rancor::Error>(&1u32)
        .map(|b| b.first() == Some(&1))
        .unwrap_or(true) as u64;
    [aligned, pointer_width, little_endian]
}

/// The fingerprint stored in every entry of a memoizer whose values are `V`.
pub(crate) fn value_fingerprint<V>(version: &str) -> u64
where
    V: Fingerprint + rkyv::Archive,
{
    let [aligned, pointer_width, little_endian] = rkyv_format();
    mix(
        crate::entry::FORMAT_VERSION as u64,
        &[
            name_hash("rkyv-0.8"),
            name_hash(crate::entry::PAD_RULE),
            aligned,
            pointer_width,
            little_endian,
            std::mem::size_of::<rkyv::Archived<V>>() as u64,
            std::mem::align_of::<rkyv::Archived<V>>() as u64,
            V::SCHEMA,
            xxhash_rust::xxh3::xxh3_64(version.as_bytes()),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_leaves_and_wrappers_differ() {
        assert_ne!(u64::SCHEMA, f64::SCHEMA);
        assert_ne!(Vec::<u64>::SCHEMA, Vec::<f64>::SCHEMA);
        assert_ne!(Option::<u8>::SCHEMA, Vec::<u8>::SCHEMA);
        assert_ne!(<(u64, f64)>::SCHEMA, <(f64, u64)>::SCHEMA);
    }

    #[test]
    fn version_changes_fingerprint() {
        assert_ne!(value_fingerprint::<u64>(""), value_fingerprint::<u64>("2"));
        assert_eq!(value_fingerprint::<u64>("a"), value_fingerprint::<u64>("a"));
    }
}
