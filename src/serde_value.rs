//! [`Serde<T>`]: memoizing a value type that has serde impls but no rkyv ones.
//!
//! The value is encoded with postcard (the crate's key format) into the bytes of an rkyv
//! `ArchivedVec<u8>`, so it travels through every store, checksum and fingerprint check
//! like any other value; only the last step differs: a hit decodes the postcard bytes
//! instead of reading an archive in place.

use std::fmt;

use rkyv::rancor::{Fallible, Source};
use rkyv::ser::{Allocator, Writer};
use rkyv::vec::{ArchivedVec, VecResolver};
use rkyv::{Archive, Place};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Fingerprint;
use crate::fingerprint::{mix, name_hash};

/// A value memoized through serde instead of rkyv: for types that implement
/// `serde::Serialize` and `serde::Deserialize` but not rkyv's traits.
///
/// `Serde<T>` is a [`Value`](crate::Value) whenever `T` is serde-serializable,
/// deserializable (owned), `Send + 'static`, and has a [`Fingerprint`]:
/// `#[derive(Fingerprint)]` needs no rkyv derives, and a field of another crate's type takes
/// `#[fingerprint(with = "name version")]`. The fingerprint is what makes a changed `T`
/// read as a miss: postcard is not self-describing, so without it `{ a: u32 }` bytes
/// would decode as `{ b: u32 }`.
///
/// ```
/// use fresco_memoize::{Cache, Fingerprint, Serde};
///
/// #[derive(serde::Serialize, serde::Deserialize, Fingerprint, Debug, PartialEq)]
/// struct Report { title: String, scores: Vec<f32> }
///
/// let cache = Cache::in_memory()?;
/// let reports = cache.memoizer::<u64, Serde<Report>>("reports").build()?;
/// let r = reports.get_or_compute(&7, |id| Serde(Report { title: format!("#{id}"), scores: vec![0.5] }));
/// assert_eq!(r.title, "#7"); // Serde<T> derefs to T
/// let again: Report = reports.get_or_compute(&7, |_| unreachable!()).into_inner();
/// assert_eq!(again.scores, [0.5]);
/// # Ok::<(), fresco_memoize::Error>(())
/// ```
///
/// # Costs and limits
///
/// - **Slower than rkyv.** Storing encodes with postcard into a temporary buffer, then
///   copies it into the archive; every hit decodes the postcard bytes, varint by varint,
///   where rkyv copies its archive out. Measured (callgrind, release build) for a struct
///   of a `String` and 100 `u32`s: about 3,700 instructions per hit against 1,700 with
///   rkyv's derives in `Store::Memory`, 4,800 against 3,100 from the file. Derive rkyv's
///   traits where you can.
/// - **Owned hits only.** [`get_archived`](crate::Memoizer::get_archived) hands back the
///   raw postcard bytes (an `ArchivedVec<u8>`), not a readable `T`; use
///   [`get_or_compute`](crate::Memoizer::get_or_compute) and friends, or
///   [`ArchivedHit::deserialize`](crate::ArchivedHit::deserialize).
/// - Bytes that do not decode as a `T` (or leave bytes over) are a miss: the value is
///   computed again and replaces them, as for a damaged rkyv archive.
/// - A `T` that postcard cannot encode (a sequence of unknown length, say) is computed and
///   returned, never stored; the failure is reported as
///   [`Error::ValueEncoding`](crate::Error::ValueEncoding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Serde<T>(pub T);

impl<T> Serde<T> {
    /// The wrapped value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> From<T> for Serde<T> {
    fn from(value: T) -> Self {
        Serde(value)
    }
}

impl<T> std::ops::Deref for Serde<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> std::ops::DerefMut for Serde<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.0
    }
}

impl<T: Fingerprint> Fingerprint for Serde<T> {
    // The encoding is part of the meaning: the same `T` archived by rkyv differs.
    const SCHEMA: u64 = mix(name_hash("Serde/postcard-1"), &[T::SCHEMA]);
}

/// Where [`Serde<T>`]'s postcard bytes were written, and how many there are (rkyv's
/// resolver for the archived byte vector).
pub struct SerdeResolver {
    bytes: VecResolver,
    len: usize,
}

impl<T> Archive for Serde<T> {
    type Archived = ArchivedVec<u8>;
    type Resolver = SerdeResolver;

    fn resolve(&self, resolver: SerdeResolver, out: Place<ArchivedVec<u8>>) {
        ArchivedVec::<u8>::resolve_from_len(resolver.len, resolver.bytes, out);
    }
}

impl<T, S> rkyv::Serialize<S> for Serde<T>
where
    T: Serialize,
    S: Fallible + Allocator + Writer + ?Sized,
    S::Error: Source,
{
    fn serialize(&self, serializer: &mut S) -> Result<SerdeResolver, S::Error> {
        let encoded = postcard::to_allocvec(&self.0).map_err(S::Error::new)?;
        Ok(SerdeResolver {
            bytes: ArchivedVec::<u8>::serialize_from_slice(&encoded, serializer)?,
            len: encoded.len(),
        })
    }
}

impl<T, D> rkyv::Deserialize<Serde<T>, D> for ArchivedVec<u8>
where
    T: DeserializeOwned,
    D: Fallible + ?Sized,
    D::Error: Source,
{
    fn deserialize(&self, _: &mut D) -> Result<Serde<T>, D::Error> {
        let (value, rest) = postcard::take_from_bytes(self.as_slice()).map_err(D::Error::new)?;
        // Bytes left over mean these were not a `T`'s encoding, though a prefix decoded.
        if !rest.is_empty() {
            return Err(D::Error::new(LeftOver(rest.len())));
        }
        Ok(Serde(value))
    }
}

/// A stored `Serde<T>` whose bytes decoded as a `T` with bytes to spare.
#[derive(Debug)]
struct LeftOver(usize);

impl fmt::Display for LeftOver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes left over after decoding the value", self.0)
    }
}

impl std::error::Error for LeftOver {}
