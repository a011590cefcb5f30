//! `Fingerprint` for the std types rkyv 0.8 archives (`rkyv/src/impls/{core,alloc,std}`),
//! and for those it archives only through a `with` wrapper.
//!
//! A leaf's schema is the hash of its name; a generic type mixes its name with its
//! parameters' schemas (and an array its length), so `Vec<u32>` and `Vec<u64>` differ.
//! The names are fixed strings, never `type_name`: a schema must not move when the
//! compiler or a module path does. The schemas that existed before a type was added here
//! are kept as they were, so upgrading this crate alone does not turn entries into misses.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::{CStr, CString, OsString};
use std::marker::{PhantomData, PhantomPinned};
use std::mem::ManuallyDrop;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::{
    NonZeroI8, NonZeroI16, NonZeroI32, NonZeroI64, NonZeroI128, NonZeroIsize, NonZeroU8,
    NonZeroU16, NonZeroU32, NonZeroU64, NonZeroU128, NonZeroUsize,
};
use std::ops::{Bound, Range, RangeFrom, RangeFull, RangeInclusive, RangeTo, RangeToInclusive};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{Fingerprint, mix, name_hash};

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
    String,
    str,
    NonZeroU8,
    NonZeroU16,
    NonZeroU32,
    NonZeroU64,
    NonZeroU128,
    NonZeroUsize,
    NonZeroI8,
    NonZeroI16,
    NonZeroI32,
    NonZeroI64,
    NonZeroI128,
    NonZeroIsize,
    Duration,
    CString,
    CStr,
    Ipv4Addr,
    Ipv6Addr,
    IpAddr,
    SocketAddrV4,
    SocketAddrV6,
    SocketAddr,
    RangeFull,
    PhantomPinned,
    // Archived only through a wrapper: `AsUnixTime`, `AsString`. The wrapper named in
    // `#[rkyv(with = ...)]` is part of the derived schema of the struct holding the field.
    SystemTime,
    PathBuf,
    OsString,
);

/// Generic types whose parameters are all `Sized`, named by a fixed string.
macro_rules! wrapper_fingerprint {
    ($($name:literal => $t:ident <$($p:ident),*>),* $(,)?) => {$(
        impl<$($p: Fingerprint),*> Fingerprint for $t<$($p),*> {
            const SCHEMA: u64 = mix(name_hash($name), &[$(<$p as Fingerprint>::SCHEMA),*]);
        }
    )*};
}

wrapper_fingerprint!(
    "Option" => Option<T>,
    "Result" => Result<T, E>,
    "Vec" => Vec<T>,
    "VecDeque" => VecDeque<T>,
    "BTreeMap" => BTreeMap<K, V>,
    "BTreeSet" => BTreeSet<T>,
    "Range" => Range<T>,
    "RangeInclusive" => RangeInclusive<T>,
    "RangeFrom" => RangeFrom<T>,
    "RangeTo" => RangeTo<T>,
    "RangeToInclusive" => RangeToInclusive<T>,
    "Bound" => Bound<T>,
    "ManuallyDrop" => ManuallyDrop<T>,
);

/// Pointers to a possibly unsized `T` (`Box<str>`, `Arc<[u8]>`): rkyv archives each as a
/// relative pointer to `T`'s unsized archive.
macro_rules! pointer_fingerprint {
    ($($name:literal => $t:ident),* $(,)?) => {$(
        impl<T: Fingerprint + ?Sized> Fingerprint for $t<T> {
            const SCHEMA: u64 = mix(name_hash($name), &[T::SCHEMA]);
        }
    )*};
}

pointer_fingerprint!("Box" => Box, "Arc" => Arc, "Rc" => Rc);

// The hasher does not reach the archive: rkyv builds its own hash table, so a map with
// another `BuildHasher` has the same schema (and the same one as before hashers counted).
impl<K: Fingerprint, V: Fingerprint, S> Fingerprint for HashMap<K, V, S> {
    const SCHEMA: u64 = mix(name_hash("HashMap"), &[K::SCHEMA, V::SCHEMA]);
}

impl<T: Fingerprint, S> Fingerprint for HashSet<T, S> {
    const SCHEMA: u64 = mix(name_hash("HashSet"), &[T::SCHEMA]);
}

impl<T: Fingerprint> Fingerprint for [T] {
    const SCHEMA: u64 = mix(name_hash("slice"), &[T::SCHEMA]);
}

impl<T: Fingerprint, const N: usize> Fingerprint for [T; N] {
    const SCHEMA: u64 = mix(name_hash("array"), &[T::SCHEMA, N as u64]);
}

// Archived with `AsOwned` as the owned form's archive; the borrowed/owned distinction is
// not stored, so the schema is the target's.
impl<T: Fingerprint + ToOwned + ?Sized> Fingerprint for Cow<'_, T> {
    const SCHEMA: u64 = mix(name_hash("Cow"), &[T::SCHEMA]);
}

// `PhantomData<T>` archives nothing, whatever `T` is, so `T` needs no `Fingerprint` (it
// may be a marker like `fn() -> X`).
impl<T: ?Sized> Fingerprint for PhantomData<T> {
    const SCHEMA: u64 = name_hash("PhantomData");
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
tuple_fingerprint!(A, B, C, D, E, F, G);
tuple_fingerprint!(A, B, C, D, E, F, G, H);
tuple_fingerprint!(A, B, C, D, E, F, G, H, I);
tuple_fingerprint!(A, B, C, D, E, F, G, H, I, J);
tuple_fingerprint!(A, B, C, D, E, F, G, H, I, J, K);
tuple_fingerprint!(A, B, C, D, E, F, G, H, I, J, K, L);
tuple_fingerprint!(A, B, C, D, E, F, G, H, I, J, K, L, M);
