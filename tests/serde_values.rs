//! `Serde<T>` (issue #16, item 3): a value type with serde impls only is memoized through
//! postcard. It round-trips through a file and the memory store; bytes that do not decode
//! as the `T` read (two types sharing a fingerprint, as a wrong hand-written impl would)
//! are a miss and get replaced, never a panic or a misread prefix; a changed `T` is a miss
//! through its derived fingerprint; a `T` postcard cannot encode is returned, not stored.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use fresco_memoize::{Cache, Error, Fingerprint, Serde, Store};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Fingerprint, Clone, Debug, PartialEq)]
enum Cell {
    Empty,
    Text(String),
    Number { value: f64, unit: Option<String> },
}

#[derive(Serialize, Deserialize, Fingerprint, Clone, Debug, PartialEq)]
struct Sheet {
    title: String,
    cells: BTreeMap<(u32, u32), Cell>,
}

fn sheet() -> Sheet {
    let mut cells = BTreeMap::new();
    cells.insert((0, 0), Cell::Text("total".into()));
    cells.insert(
        (0, 1),
        Cell::Number {
            value: 12.5,
            unit: Some("kg".into()),
        },
    );
    cells.insert((3, 7), Cell::Empty);
    Sheet {
        title: "inventory".into(),
        cells,
    }
}

#[test]
fn a_serde_value_round_trips_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("serde.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache
            .memoizer::<str, Serde<Sheet>>("sheets")
            .build()
            .unwrap();
        assert_eq!(
            m.get_or_compute("inv", |_| Serde(sheet())).into_inner(),
            sheet()
        );
        assert_eq!(
            *m.get_or_compute("inv", |_| panic!("a hit was expected")),
            sheet()
        );
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache
        .memoizer::<str, Serde<Sheet>>("sheets")
        .build()
        .unwrap();
    assert_eq!(
        m.get_or_compute("inv", |_| panic!("the file's value was expected"))
            .0,
        sheet()
    );
    // The archived form is the postcard bytes; deserializing it decodes them.
    let hit = m.get_archived("inv").unwrap().expect("stored");
    assert_eq!(hit.as_slice(), postcard::to_allocvec(&sheet()).unwrap());
    assert_eq!(hit.deserialize().unwrap().0, sheet());
    assert_eq!(m.stats().hits, 2);
}

#[test]
fn a_serde_value_round_trips_in_memory() {
    let cache = Cache::in_memory().unwrap();
    for store in [Store::Memory, Store::Lru(4)] {
        let m = cache
            .memoizer::<u8, Serde<Vec<Cell>>>("cells")
            .store(store)
            .build()
            .unwrap();
        let cells = vec![Cell::Empty, Cell::Text("a".into())];
        let c = cells.clone();
        assert_eq!(m.get_or_compute(&1, move |_| Serde(c)).0, cells);
        assert_eq!(
            m.get_or_compute(&1, |_| panic!("a hit was expected")).0,
            cells
        );
        m.invalidate_all().unwrap();
    }
}

// Two pairs of types that share a fingerprint by a hand-written impl, so the bytes one
// stored reach the other's decoder: a prefix that decodes with bytes left over, and bytes
// that are no encoding of the reader's type at all.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Pair(u8, u8);
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Single(u8);
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Word(String);
#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Flag(bool);

const SHARED: u64 = 0x5EED;
impl Fingerprint for Pair {
    const SCHEMA: u64 = SHARED;
}
impl Fingerprint for Single {
    const SCHEMA: u64 = SHARED;
}
impl Fingerprint for Word {
    const SCHEMA: u64 = SHARED + 1;
}
impl Fingerprint for Flag {
    const SCHEMA: u64 = SHARED + 1;
}

#[test]
fn bytes_that_do_not_decode_are_a_miss_and_get_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("clash.memo")).unwrap();
    {
        let pairs = cache.memoizer::<u8, Serde<Pair>>("clash").build().unwrap();
        pairs.get_or_compute(&1, |_| Serde(Pair(4, 5)));
        let words = cache.memoizer::<u8, Serde<Word>>("clash2").build().unwrap();
        words.get_or_compute(&1, |_| Serde(Word("xyz".into())));
    }
    let singles = cache
        .memoizer::<u8, Serde<Single>>("clash")
        .build()
        .unwrap();
    // Decoding `Pair(4, 5)` as a `Single` reads 4 and leaves a byte: not a `Single`.
    assert_eq!(
        singles.get_or_compute(&1, |_| Serde(Single(9))).0,
        Single(9)
    );
    assert_eq!(
        singles
            .get_or_compute(&1, |_| panic!("the replacement was expected"))
            .0,
        Single(9)
    );
    assert_eq!(singles.stats().hits, 1);

    let flags = cache.memoizer::<u8, Serde<Flag>>("clash2").build().unwrap();
    // `Word("xyz")` starts with its length, 3, which is no bool.
    assert_eq!(
        flags.get_or_compute(&1, |_| Serde(Flag(true))).0,
        Flag(true)
    );
    assert_eq!(
        flags
            .get_or_compute(&1, |_| panic!("the replacement was expected"))
            .0,
        Flag(true)
    );
    assert_eq!(flags.stats().hits, 1);
}

mod before {
    #[derive(serde::Serialize, serde::Deserialize, fresco_memoize::Fingerprint, Debug)]
    pub struct Reading {
        pub celsius: u32,
    }
}

mod after {
    // Postcard would decode the old bytes as this type (a varint either way), but the
    // derived fingerprint differs, so it never gets to.
    #[derive(serde::Serialize, serde::Deserialize, fresco_memoize::Fingerprint, Debug)]
    pub struct Reading {
        pub celsius: u64,
    }
}

#[test]
fn a_changed_serde_type_is_a_miss() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("readings.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache
            .memoizer::<u8, Serde<before::Reading>>("readings")
            .build()
            .unwrap();
        m.get_or_compute(&1, |_| Serde(before::Reading { celsius: 21 }));
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache
        .memoizer::<u8, Serde<after::Reading>>("readings")
        .build()
        .unwrap();
    assert!(m.get_archived(&1).unwrap().is_none());
    assert_eq!(
        m.get_or_compute(&1, |_| Serde(after::Reading { celsius: 22 }))
            .celsius,
        22
    );
    assert_eq!(m.stats().hits, 0);
}

/// A sequence of unknown length, which postcard cannot encode.
#[derive(Debug, PartialEq, Fingerprint)]
struct Unsized(u8);

impl Serialize for Unsized {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = s.serialize_seq(None)?;
        seq.serialize_element(&self.0)?;
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Unsized {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<u8>::deserialize(d).map(|v| Unsized(v.first().copied().unwrap_or(0)))
    }
}

#[test]
fn a_value_postcard_cannot_encode_is_returned_and_not_stored() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&seen);
    let cache = Cache::builder()
        .on_error(move |e| hook.lock().unwrap().push(e.to_string()))
        .in_memory()
        .unwrap();
    let m = cache
        .memoizer::<u8, Serde<Unsized>>("unsized")
        .build()
        .unwrap();
    assert_eq!(m.get_or_compute(&1, |_| Serde(Unsized(3))).0, Unsized(3));
    assert_eq!(
        m.get_or_compute(&1, |_| Serde(Unsized(4))).0,
        Unsized(4),
        "nothing was stored"
    );
    assert_eq!(m.stats().hits, 0);
    let seen = seen.lock().unwrap();
    let expected = Error::ValueEncoding(String::new()).to_string();
    let prefix = expected.split('(').next().unwrap();
    assert!(
        !seen.is_empty() && seen.iter().all(|e| e.starts_with(prefix)),
        "{seen:?}"
    );
}
