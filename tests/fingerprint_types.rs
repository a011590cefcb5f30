//! Value types a user has (issue #16, item 3): every std type rkyv 0.8 archives is a
//! `Fingerprint`, so it can be a memoized value or a field of one, and round-trips
//! through a cache file; the types rkyv archives only with a `with` wrapper derive with
//! that wrapper; `#[fingerprint(with = "...")]` stands in for a field type without an
//! impl, and changing its string turns stored entries into misses. The first two tests
//! guard the two reported failures: a `Duration` field ("the trait bound `Duration:
//! Fingerprint` is not satisfied") and an `Arc<[u8]>` value (two errors).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ffi::CString;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::num::{NonZeroI64, NonZeroU8, NonZeroU32, NonZeroUsize};
use std::ops::{Bound, Range, RangeInclusive};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fresco_memoize::{Cache, Fingerprint};

mod round_trip;
use round_trip::round_trip;

#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Clone, Debug, PartialEq,
)]
struct Timed {
    label: String,
    took: Duration,
}

#[test]
fn a_duration_field_derives_and_round_trips() {
    round_trip(Timed {
        label: "parse".into(),
        took: Duration::new(3, 141_592_653),
    });
    round_trip(Duration::from_millis(1500));
}

#[test]
fn an_arc_of_bytes_is_a_value() {
    let bytes: Arc<[u8]> = Arc::from(&b"\x00\x01binary\xff"[..]);
    round_trip(bytes);
    round_trip(Arc::<str>::from("shared text"));
    round_trip(Arc::new(vec![1u32, 2, 3]));
}

#[test]
fn boxed_slices_and_strings_are_values() {
    round_trip(Box::<str>::from("boxed"));
    round_trip(Box::<[u64]>::from(vec![7, 8, 9]));
    round_trip(Box::new((1u8, 'x')));
}

#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Clone, Debug, PartialEq,
)]
struct Everything {
    ids: [u32; 4],
    tags: BTreeSet<String>,
    seen: HashSet<u64>,
    index: HashMap<String, Vec<u16>>,
    order: BTreeMap<i32, bool>,
    queue: VecDeque<char>,
    small: NonZeroU8,
    count: NonZeroU32,
    offset: NonZeroI64,
    size: NonZeroUsize,
    pages: Range<u32>,
    chapters: RangeInclusive<u16>,
    lower: Bound<u64>,
    outcome: Result<u8, String>,
    maybe: Option<Box<str>>,
    raw: Box<[u8]>,
    shared: Arc<[u8]>,
    c_name: CString,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
    ip: IpAddr,
    sock: SocketAddr,
    sock4: SocketAddrV4,
    sock6: SocketAddrV6,
    wide: (u8, u16, u32, u64, u128, i8, i16, i32, i64, i128, f32, f64),
    marker: PhantomData<fn() -> String>,
    // The types rkyv archives only through a wrapper.
    #[rkyv(with = rkyv::with::AsUnixTime)]
    finished: SystemTime,
    #[rkyv(with = rkyv::with::AsString)]
    artifact: PathBuf,
    #[rkyv(with = rkyv::with::AsOwned)]
    note: Cow<'static, str>,
}

fn everything() -> Everything {
    Everything {
        ids: [1, 2, 3, 4],
        tags: ["b", "a"].into_iter().map(String::from).collect(),
        seen: [5, 6, 7].into_iter().collect(),
        index: [("x".to_string(), vec![1, 2])].into_iter().collect(),
        order: [(-1, true), (2, false)].into_iter().collect(),
        queue: "abc".chars().collect(),
        small: NonZeroU8::new(9).unwrap(),
        count: NonZeroU32::new(70_000).unwrap(),
        offset: NonZeroI64::new(-5).unwrap(),
        size: NonZeroUsize::new(4096).unwrap(),
        pages: 10..20,
        chapters: 1..=12,
        lower: Bound::Excluded(3),
        outcome: Err("bad input".into()),
        maybe: Some("present".into()),
        raw: vec![0xde, 0xad].into_boxed_slice(),
        shared: Arc::from(&[1u8, 2, 3][..]),
        c_name: CString::new("c string").unwrap(),
        v4: Ipv4Addr::new(127, 0, 0, 1),
        v6: Ipv6Addr::LOCALHOST,
        ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        sock: "127.0.0.1:8080".parse().unwrap(),
        sock4: SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 53),
        sock6: SocketAddrV6::new(Ipv6Addr::LOCALHOST, 443, 0, 0),
        wide: (1, 2, 3, 4, 5, -1, -2, -3, -4, -5, 0.5, 0.25),
        marker: PhantomData,
        finished: SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789),
        artifact: Path::new("target").join("release").join("app"),
        note: Cow::Borrowed("borrowed when stored, owned when read"),
    }
}

#[test]
fn std_types_as_fields_round_trip_through_a_file() {
    round_trip(everything());
}

#[test]
fn std_types_as_whole_values_round_trip() {
    round_trip(NonZeroU32::new(12).unwrap());
    round_trip(5u64..9);
    round_trip(['a', 'b', 'c']);
    round_trip(BTreeSet::from([3i8, 1, 2]));
    round_trip(HashSet::from(["one".to_string()]));
    round_trip(Ipv6Addr::UNSPECIFIED);
    round_trip(Ok::<_, String>(vec![Some(1u16), None]));
}

#[test]
fn schemas_tell_apart_types_that_archive_alike_or_differently() {
    // Distinct archived forms of "some text" or "some bytes": each its own schema.
    let texts = [
        String::SCHEMA,
        <Box<str>>::SCHEMA,
        <Arc<str>>::SCHEMA,
        Cow::<str>::SCHEMA,
    ];
    let bytes = [
        <Vec<u8>>::SCHEMA,
        <Box<[u8]>>::SCHEMA,
        <Arc<[u8]>>::SCHEMA,
        <[u8; 4]>::SCHEMA,
        <[u8; 5]>::SCHEMA,
        <VecDeque<u8>>::SCHEMA,
    ];
    for set in [&texts[..], &bytes[..]] {
        for (i, a) in set.iter().enumerate() {
            for b in &set[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }
    assert_ne!(<Range<u32>>::SCHEMA, <RangeInclusive<u32>>::SCHEMA);
    assert_ne!(<Range<u32>>::SCHEMA, <(u32, u32)>::SCHEMA);
    assert_ne!(Duration::SCHEMA, <(u64, u32)>::SCHEMA);
    assert_ne!(NonZeroU32::SCHEMA, u32::SCHEMA);
    // rkyv archives tuples of up to 13 (std's Debug and PartialEq stop at 12).
    type T12 = (u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8);
    type T13 = (u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8, u8);
    assert_ne!(T12::SCHEMA, T13::SCHEMA);
    // Only the hasher differs: rkyv archives both maps alike.
    type Other = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
    assert_eq!(<HashMap<u8, u8, Other>>::SCHEMA, <HashMap<u8, u8>>::SCHEMA);
}

#[test]
fn schemas_that_existed_before_are_unchanged() {
    // Upgrading the crate alone must not turn stored entries of these types into misses:
    // the formulas they had before this change.
    use fresco_memoize::{__mix as mix, __name_hash as name};
    assert_eq!(u64::SCHEMA, name("u64"));
    assert_eq!(String::SCHEMA, name("String"));
    assert_eq!(<Vec<u64>>::SCHEMA, mix(name("Vec"), &[name("u64")]));
    assert_eq!(<Box<u8>>::SCHEMA, mix(name("Box"), &[name("u8")]));
    assert_eq!(
        <HashMap<u8, String>>::SCHEMA,
        mix(name("HashMap"), &[name("u8"), name("String")])
    );
    assert_eq!(<HashSet<u8>>::SCHEMA, mix(name("HashSet"), &[name("u8")]));
    assert_eq!(<[u8; 3]>::SCHEMA, mix(name("array"), &[name("u8"), 3]));
    assert_eq!(
        <(u8, bool)>::SCHEMA,
        mix(name("tuple"), &[name("u8"), name("bool")])
    );
}

/// A type of "another crate": rkyv traits, no `Fingerprint`.
mod geo {
    #[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq)]
    pub struct Point {
        pub x: f64,
        pub y: f64,
    }
}

// The same struct three times, as three builds of a program would have it: `v1` and
// `v1_again` name the field type alike, `v2` has bumped the name.
macro_rules! route_build {
    ($build:ident, $with:literal) => {
        mod $build {
            #[derive(
                rkyv::Archive,
                rkyv::Serialize,
                rkyv::Deserialize,
                fresco_memoize::Fingerprint,
                Clone,
                Debug,
                PartialEq,
            )]
            pub struct Route {
                pub name: String,
                #[fingerprint(with = $with)]
                pub start: super::geo::Point,
            }
        }
    };
}

route_build!(v1, "geo::Point 1");
route_build!(v1_again, "geo::Point 1");
route_build!(v2, "geo::Point 2");

#[test]
fn a_field_without_fingerprint_takes_a_with_string() {
    assert_eq!(v1::Route::SCHEMA, v1_again::Route::SCHEMA);
    assert_ne!(v1::Route::SCHEMA, v2::Route::SCHEMA);
    round_trip(v1::Route {
        name: "coast".into(),
        start: geo::Point { x: 1.0, y: -2.5 },
    });
}

#[test]
fn changing_a_with_string_turns_stored_entries_into_misses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.memo");
    let point = geo::Point { x: 3.0, y: 4.0 };
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u32, v1::Route>("routes").build().unwrap();
        let p = point.clone();
        m.get_or_compute(&1, move |_| v1::Route {
            name: "old".into(),
            start: p,
        });
    }
    {
        // The same definition: the stored value is served.
        let cache = Cache::open(&path).unwrap();
        let m = cache
            .memoizer::<u32, v1_again::Route>("routes")
            .build()
            .unwrap();
        let hit = m.get_or_compute(&1, |_| panic!("the stored value was expected"));
        assert_eq!(hit.name, "old");
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<u32, v2::Route>("routes").build().unwrap();
    assert!(
        m.get_archived(&1).unwrap().is_none(),
        "a v1 entry read as a v2 value"
    );
    let fresh = m.get_or_compute(&1, |_| v2::Route {
        name: "new".into(),
        start: point,
    });
    assert_eq!(fresh.name, "new");
    assert_eq!(m.stats().hits, 0);
}

/// A missing `Fingerprint` or `Value` is a compile error that says what to derive (the
/// `#[diagnostic::on_unimplemented]` messages), and a malformed `#[fingerprint(...)]` is
/// refused at its tokens. Each case in tests/ui_values/ is compared with the `.stderr`
/// beside it (regenerate with `TRYBUILD=overwrite cargo test --test fingerprint_types`).
#[test]
fn missing_impls_and_bad_attributes_say_what_to_do() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui_values/*.rs");
}

#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Clone, Debug, PartialEq,
)]
struct Artifact {
    #[rkyv(with = rkyv::with::AsString)]
    path: PathBuf,
}

#[cfg(unix)]
#[test]
fn a_path_rkyv_cannot_archive_is_returned_not_stored_and_reported() {
    use std::os::unix::ffi::OsStrExt;
    let errors = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = Arc::clone(&errors);
    let cache = Cache::builder()
        .on_error(move |_| {
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        })
        .in_memory()
        .unwrap();
    let m = cache.memoizer::<u8, Artifact>("artifacts").build().unwrap();
    // `AsString` archives UTF-8 paths only.
    let odd = Artifact {
        path: PathBuf::from(std::ffi::OsStr::from_bytes(b"out/\xff.bin")),
    };
    let value = odd.clone();
    assert_eq!(m.get_or_compute(&1, move |_| value), odd);
    let again = Artifact {
        path: "out/ok.bin".into(),
    };
    let value = again.clone();
    assert_eq!(
        m.get_or_compute(&1, move |_| value),
        again,
        "nothing was stored"
    );
    assert_eq!(
        m.get_or_compute(&1, |_| panic!("the UTF-8 path was stored")),
        again
    );
    assert_eq!(errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}
