//! `Fingerprint` for the third-party types rkyv 0.8 archives behind its optional features
//! (`rkyv/src/impls/ext`). Each of this crate's features of the same name enables rkyv's
//! and the crate it covers.
//!
//! Schemas name the crate, not its version: every version rkyv supports is archived alike
//! (one macro for all of hashbrown's, `ArchivedString` for both smol_str's), so moving
//! from one to the next keeps the stored values.

#[allow(unused_imports)] // none of the features may be on
use super::{Fingerprint, mix, name_hash};

/// Types without parameters, named by crate and type.
macro_rules! leaf_fingerprint {
    ($($feature:literal => $name:literal, $t:ty);* $(;)?) => {$(
        #[cfg(feature = $feature)]
        impl Fingerprint for $t {
            const SCHEMA: u64 = name_hash($name);
        }
    )*};
}

leaf_fingerprint!(
    "uuid-1" => "uuid::Uuid", uuid_1::Uuid;
    "bytes-1" => "bytes::Bytes", bytes_1::Bytes;
    "smol_str-0_2" => "smol_str::SmolStr", smol_str_0_2::SmolStr;
    "smol_str-0_3" => "smol_str::SmolStr", smol_str_0_3::SmolStr;
);

// Capacity does not reach the archive (a vector of the items), but deserializing more
// items than the capacity holds would panic inside the arrayvec crate: a changed capacity
// must be a miss, so it is part of the schema. Spilling vectors (SmallVec, TinyVec) take
// any length and leave it out.
#[cfg(feature = "arrayvec-0_7")]
impl<T: Fingerprint, const CAP: usize> Fingerprint for arrayvec_0_7::ArrayVec<T, CAP> {
    const SCHEMA: u64 = mix(name_hash("arrayvec::ArrayVec"), &[T::SCHEMA, CAP as u64]);
}

#[cfg(feature = "tinyvec-1")]
impl<A: tinyvec_1::Array> Fingerprint for tinyvec_1::ArrayVec<A>
where
    A::Item: Fingerprint,
{
    const SCHEMA: u64 = mix(
        name_hash("tinyvec::ArrayVec"),
        &[<A::Item as Fingerprint>::SCHEMA, A::CAPACITY as u64],
    );
}

/// Vectors generic over an inline array type `A` that spill to the heap.
macro_rules! spilling_fingerprint {
    ($($feature:literal => $name:literal, $t:ident < $array:path >),* $(,)?) => {$(
        #[cfg(feature = $feature)]
        impl<A: $array> Fingerprint for $t<A>
        where
            A::Item: Fingerprint,
        {
            const SCHEMA: u64 = mix(name_hash($name), &[<A::Item as Fingerprint>::SCHEMA]);
        }
    )*};
}

#[cfg(feature = "smallvec-1")]
use smallvec_1::SmallVec;
#[cfg(feature = "tinyvec-1")]
use tinyvec_1::TinyVec;

spilling_fingerprint!(
    "tinyvec-1" => "tinyvec::TinyVec", TinyVec<tinyvec_1::Array>,
    "smallvec-1" => "smallvec::SmallVec", SmallVec<smallvec_1::Array>,
);

#[cfg(feature = "thin-vec-0_2")]
impl<T: Fingerprint> Fingerprint for thin_vec_0_2::ThinVec<T> {
    const SCHEMA: u64 = mix(name_hash("thin_vec::ThinVec"), &[T::SCHEMA]);
}

#[cfg(feature = "triomphe-0_1")]
impl<T: Fingerprint + ?Sized> Fingerprint for triomphe_0_1::Arc<T> {
    const SCHEMA: u64 = mix(name_hash("triomphe::Arc"), &[T::SCHEMA]);
}

#[cfg(feature = "indexmap-2")]
impl<K: Fingerprint, V: Fingerprint, S> Fingerprint for indexmap_2::IndexMap<K, V, S> {
    const SCHEMA: u64 = mix(name_hash("indexmap::IndexMap"), &[K::SCHEMA, V::SCHEMA]);
}

#[cfg(feature = "indexmap-2")]
impl<T: Fingerprint, S> Fingerprint for indexmap_2::IndexSet<T, S> {
    const SCHEMA: u64 = mix(name_hash("indexmap::IndexSet"), &[T::SCHEMA]);
}

/// hashbrown's maps and sets, one version per feature; the hasher does not reach the
/// archive (rkyv builds its own table), as for std's.
macro_rules! hashbrown_fingerprint {
    ($($feature:literal => $krate:ident),* $(,)?) => {$(
        #[cfg(feature = $feature)]
        impl<K: Fingerprint, V: Fingerprint, S> Fingerprint for $krate::HashMap<K, V, S> {
            const SCHEMA: u64 = mix(name_hash("hashbrown::HashMap"), &[K::SCHEMA, V::SCHEMA]);
        }

        #[cfg(feature = $feature)]
        impl<T: Fingerprint, S> Fingerprint for $krate::HashSet<T, S> {
            const SCHEMA: u64 = mix(name_hash("hashbrown::HashSet"), &[T::SCHEMA]);
        }
    )*};
}

hashbrown_fingerprint!(
    "hashbrown-0_14" => hashbrown_0_14,
    "hashbrown-0_15" => hashbrown_0_15,
    "hashbrown-0_16" => hashbrown_0_16,
    "hashbrown-0_17" => hashbrown_0_17,
);

/// The covered crates as this crate depends on them, for its own tests (a test crate has
/// no optional dependencies); hidden, not part of the API.
pub mod crates {
    #[cfg(feature = "arrayvec-0_7")]
    pub use arrayvec_0_7 as arrayvec;
    #[cfg(feature = "bytes-1")]
    pub use bytes_1 as bytes;
    #[cfg(feature = "hashbrown-0_14")]
    pub use hashbrown_0_14;
    #[cfg(feature = "hashbrown-0_15")]
    pub use hashbrown_0_15;
    #[cfg(feature = "hashbrown-0_16")]
    pub use hashbrown_0_16;
    #[cfg(feature = "hashbrown-0_17")]
    pub use hashbrown_0_17;
    #[cfg(feature = "indexmap-2")]
    pub use indexmap_2 as indexmap;
    #[cfg(feature = "smallvec-1")]
    pub use smallvec_1 as smallvec;
    #[cfg(feature = "smol_str-0_2")]
    pub use smol_str_0_2;
    #[cfg(feature = "smol_str-0_3")]
    pub use smol_str_0_3;
    #[cfg(feature = "thin-vec-0_2")]
    pub use thin_vec_0_2 as thin_vec;
    #[cfg(feature = "tinyvec-1")]
    pub use tinyvec_1 as tinyvec;
    #[cfg(feature = "triomphe-0_1")]
    pub use triomphe_0_1 as triomphe;
    #[cfg(feature = "uuid-1")]
    pub use uuid_1 as uuid;
}
