//! rkyv's optional third-party types (issue #16, item 3): behind this crate's features of
//! rkyv's names, each is a `Fingerprint`, so it is a field of a derived value or a whole
//! value, and round-trips through a cache file. Needs every third-party feature (see the
//! `[[test]]` entry in Cargo.toml); `.ci/run` runs it with them.

use std::collections::hash_map::RandomState;

use fresco_memoize::__third_party::{
    arrayvec, bytes, hashbrown_0_14, hashbrown_0_15, hashbrown_0_16, hashbrown_0_17, indexmap,
    smallvec, smol_str_0_2, smol_str_0_3, thin_vec, tinyvec, triomphe, uuid,
};
use fresco_memoize::Fingerprint;

mod round_trip;
use round_trip::round_trip;

#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Clone, Debug, PartialEq,
)]
struct Everything {
    id: uuid::Uuid,
    body: bytes::Bytes,
    name2: smol_str_0_2::SmolStr,
    name3: smol_str_0_3::SmolStr,
    few: smallvec::SmallVec<[u16; 4]>,
    bounded: arrayvec::ArrayVec<u32, 8>,
    tiny_bounded: tinyvec::ArrayVec<[u8; 4]>,
    tiny: tinyvec::TinyVec<[i32; 2]>,
    thin: thin_vec::ThinVec<String>,
    shared: triomphe::Arc<String>,
    ordered: indexmap::IndexMap<String, u32, RandomState>,
    ordered_set: indexmap::IndexSet<u64, RandomState>,
    map14: hashbrown_0_14::HashMap<u8, String, RandomState>,
    map15: hashbrown_0_15::HashMap<u8, String, RandomState>,
    map16: hashbrown_0_16::HashMap<u8, String, RandomState>,
    map17: hashbrown_0_17::HashMap<u8, String, RandomState>,
    set17: hashbrown_0_17::HashSet<u16, RandomState>,
}

fn everything() -> Everything {
    let mut ordered = indexmap::IndexMap::with_hasher(RandomState::new());
    ordered.insert("z".to_string(), 1);
    ordered.insert("a".to_string(), 2);
    let mut ordered_set = indexmap::IndexSet::with_hasher(RandomState::new());
    ordered_set.extend([9, 3, 6]);
    macro_rules! map {
        ($krate:ident) => {{
            let mut m = $krate::HashMap::with_hasher(RandomState::new());
            m.insert(1, stringify!($krate).to_string());
            m.insert(2, "two".to_string());
            m
        }};
    }
    let mut set17 = hashbrown_0_17::HashSet::with_hasher(RandomState::new());
    set17.extend([10, 20]);
    Everything {
        id: uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        body: bytes::Bytes::from_static(b"\x00raw bytes\xff"),
        name2: smol_str_0_2::SmolStr::new("inline"),
        name3: smol_str_0_3::SmolStr::new("a string long enough to live on the heap"),
        few: smallvec::SmallVec::from_slice(&[1, 2, 3, 4, 5, 6]),
        bounded: [7, 8, 9].into_iter().collect(),
        tiny_bounded: tinyvec::ArrayVec::from_array_len([1, 2, 3, 0], 3),
        tiny: tinyvec::TinyVec::from(&[-1, -2, -3][..]),
        thin: thin_vec::ThinVec::from(vec!["thin".to_string()]),
        shared: triomphe::Arc::new("counted".to_string()),
        ordered,
        ordered_set,
        map14: map!(hashbrown_0_14),
        map15: map!(hashbrown_0_15),
        map16: map!(hashbrown_0_16),
        map17: map!(hashbrown_0_17),
        set17,
    }
}

#[test]
fn third_party_types_as_fields_round_trip_through_a_file() {
    let value = everything();
    // Insertion order is what an IndexMap is for: it must come back as stored.
    assert_eq!(value.ordered.keys().collect::<Vec<_>>(), ["z", "a"]);
    round_trip(value);
}

#[test]
fn third_party_types_as_whole_values_round_trip() {
    round_trip(uuid::Uuid::from_u128(42));
    round_trip(bytes::Bytes::from(vec![1u8, 2, 3]));
    round_trip(smol_str_0_3::SmolStr::new("whole"));
    round_trip(thin_vec::ThinVec::from(vec![1u64, 2]));
    round_trip(triomphe::Arc::new(vec![0.5f32]));
}

#[test]
fn schemas_follow_what_the_archive_and_its_decoding_depend_on() {
    // A bounded vector's capacity is in its schema: decoding more items than it holds
    // would panic in arrayvec/tinyvec, so a changed capacity must be a miss.
    assert_ne!(
        <arrayvec::ArrayVec<u8, 4>>::SCHEMA,
        <arrayvec::ArrayVec<u8, 8>>::SCHEMA
    );
    assert_ne!(
        <tinyvec::ArrayVec<[u8; 4]>>::SCHEMA,
        <tinyvec::ArrayVec<[u8; 8]>>::SCHEMA
    );
    // Spilling vectors take any length: their inline size is not.
    assert_eq!(
        <smallvec::SmallVec<[u8; 4]>>::SCHEMA,
        <smallvec::SmallVec<[u8; 8]>>::SCHEMA
    );
    assert_ne!(
        <smallvec::SmallVec<[u8; 4]>>::SCHEMA,
        <smallvec::SmallVec<[u16; 4]>>::SCHEMA
    );
    // Every hashbrown version archives alike, as do both smol_str versions.
    assert_eq!(
        <hashbrown_0_14::HashMap<u8, u8, RandomState>>::SCHEMA,
        <hashbrown_0_17::HashMap<u8, u8, RandomState>>::SCHEMA
    );
    assert_eq!(smol_str_0_2::SmolStr::SCHEMA, smol_str_0_3::SmolStr::SCHEMA);
    assert_ne!(smol_str_0_3::SmolStr::SCHEMA, String::SCHEMA);
    assert_ne!(<triomphe::Arc<u8>>::SCHEMA, <std::sync::Arc<u8>>::SCHEMA);
    assert_ne!(bytes::Bytes::SCHEMA, <Vec<u8>>::SCHEMA);
}
