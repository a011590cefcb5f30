//! Type fingerprints: what makes a changed value type read as a miss, never a misread.
//!
//! rkyv's validation proves memory safety, not schema identity: `{a: u64, b: u64}` bytes
//! validate fine as `{a: u64, b: f64}`. So every stored entry carries a fingerprint that
//! mixes the value type's [`Fingerprint::SCHEMA`] (derived from its definition), the rkyv
//! format in force, the archived size and alignment, the storage format version and the
//! memoizer's own `version`. An entry whose fingerprint differs is never decoded.

mod std_types;
pub(crate) mod third_party;

/// A hash of a type's definition, used to tell apart values written by another version
/// of the program.
///
/// Derive it with `#[derive(Fingerprint)]` (feature `macros`, on by default): the derive
/// hashes the type's name, its field names and field types, its `#[rkyv(...)]`
/// attributes, and mixes in the `SCHEMA` of every field type, so editing a nested type
/// changes the outer fingerprint too.
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
///
/// # Implemented for
///
/// Every std type that rkyv 0.8 archives:
///
/// - primitives, `NonZero*`, `String`, `str`, `CString`, `CStr`, `Duration`, the
///   `std::net` addresses, `()`, tuples of up to 13 elements, arrays `[T; N]`, slices `[T]`;
/// - `Option`, `Result`, `Box<T>` (also `Box<str>`, `Box<[T]>`), `Arc<T>` and `Rc<T>`
///   (also `Arc<str>`, `Arc<[u8]>`), `Vec`, `VecDeque`, `BTreeMap`, `BTreeSet`, `HashMap`
///   and `HashSet` (any hasher), `Range`, `RangeInclusive`, `RangeFrom`, `RangeTo`,
///   `RangeToInclusive`, `RangeFull`, `Bound`, `PhantomData`, `PhantomPinned`,
///   `ManuallyDrop`.
///
/// (`Rc` is covered too, though a memoized value must be `Send`, which a type holding an
/// `Rc` is not.)
///
/// Some std types are archived by rkyv only through a wrapper named in
/// `#[rkyv(with = ...)]`; they implement `Fingerprint` so that a field using the wrapper
/// derives (the wrapper itself is part of the derived schema):
///
/// | Field type | rkyv attribute |
/// |---|---|
/// | `SystemTime` | `#[rkyv(with = rkyv::with::AsUnixTime)]` |
/// | `PathBuf`, `OsString` | `#[rkyv(with = rkyv::with::AsString)]` (fails to archive a path that is not UTF-8) |
/// | `Cow<'static, T>` (`str`, `[T]`, `T: Clone`) | `#[rkyv(with = rkyv::with::AsOwned)]` |
///
/// ```
/// use fresco_memoize::Fingerprint;
/// use std::{path::PathBuf, time::SystemTime};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
/// struct Build {
///     #[rkyv(with = rkyv::with::AsUnixTime)]
///     finished: SystemTime,
///     #[rkyv(with = rkyv::with::AsString)]
///     artifact: PathBuf,
/// }
/// ```
///
/// rkyv's optional third-party types are covered behind this crate's features of the same
/// names as rkyv's: `arrayvec-0_7`, `bytes-1`, `hashbrown-0_14` to `hashbrown-0_17`,
/// `indexmap-2`, `smallvec-1`, `smol_str-0_2`, `smol_str-0_3`, `thin-vec-0_2`,
/// `tinyvec-1`, `triomphe-0_1`, `uuid-1`. Each enables rkyv's feature too.
///
/// # Fields of other types
///
/// A field whose type has no `Fingerprint` (a type of another crate that rkyv archives
/// through your own `#[rkyv(with = ...)]` wrapper, say) takes a name or version in its
/// place: `#[fingerprint(with = "geo::Point v1")]`. The string stands for the type's
/// definition, so change it whenever that definition changes: the old entries then read
/// as misses. A value type that has only serde impls is memoized as
/// [`Serde<T>`](crate::Serde).
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no `Fingerprint`, so it cannot be (part of) a memoized value",
    label = "no `Fingerprint` for `{Self}`",
    note = "derive it on your type: `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, fresco_memoize::Fingerprint)]`",
    note = "a field of another crate's type: `#[fingerprint(with = \"its name and version\")]`; a serde-only value: `fresco_memoize::Serde<T>`"
)]
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
