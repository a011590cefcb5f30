//! The bound every memoized value type satisfies.

use rkyv::api::high::{HighDeserializer, HighSerializer, HighValidator};
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;

use crate::Fingerprint;

/// A type that can be memoized: archived with rkyv, validated with bytecheck on the way
/// back, and fingerprinted so a changed definition reads as a miss.
///
/// Implemented automatically for every type with
/// `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]`, and for
/// the std types rkyv supports (`u64`, `String`, `Vec<T>`, `Option<T>`, tuples...; the
/// list is on [`Fingerprint`]). A type with serde impls only is memoized as
/// [`Serde<T>`](crate::Serde).
///
/// ```
/// use fresco_memoize::{Fingerprint, Value};
///
/// #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug, PartialEq)]
/// struct Synopsis { title: String, pages: u32 }
///
/// fn assert_value<V: Value>() {}
/// assert_value::<Synopsis>();
/// assert_value::<Option<Vec<(u64, String)>>>();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be memoized: it is not a `fresco_memoize::Value`",
    label = "not a memoizable value",
    note = "derive the four traits on your type: `#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, fresco_memoize::Fingerprint)]` (values are also `Send + 'static`)",
    note = "a type with only serde impls is memoized as `fresco_memoize::Serde<T>`"
)]
pub trait Value: Fingerprint + rkyv::Archive + Sized + Send + 'static {
    #[doc(hidden)]
    fn __archive(&self) -> Result<AlignedVec, rancor::Error>;
    #[doc(hidden)]
    fn __access(bytes: &[u8]) -> Result<&Self::Archived, rancor::Error>;
    #[doc(hidden)]
    fn __deserialize(archived: &Self::Archived) -> Result<Self, rancor::Error>;
}

impl<T> Value for T
where
    T: Fingerprint
        + rkyv::Archive
        + for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>
        + Send
        + 'static,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<HighValidator<'a, rancor::Error>>
        + rkyv::Deserialize<T, HighDeserializer<rancor::Error>>,
{
    fn __archive(&self) -> Result<AlignedVec, rancor::Error> {
        // Room for a typical value up front: growing from empty reallocates ~4 times.
        rkyv::api::high::to_bytes_in(self, AlignedVec::with_capacity(256))
    }

    fn __access(bytes: &[u8]) -> Result<&Self::Archived, rancor::Error> {
        rkyv::access::<T::Archived, rancor::Error>(bytes)
    }

    fn __deserialize(archived: &Self::Archived) -> Result<Self, rancor::Error> {
        rkyv::deserialize::<T, rancor::Error>(archived)
    }
}
