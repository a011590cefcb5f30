//! rkyv's format controls are Cargo features, unified across the whole program (issue 17).
//!
//! - With default features this crate enables none of them: a program that adds us keeps
//!   the rkyv format it had, and archives it wrote before still read back as the same
//!   values. These tests are built with the crate's default features (plus the test
//!   hooks `fault-injection` and `cli` from the crate's dev-dependency on itself, which
//!   touch no rkyv feature), so if any of those turned a format control on, rkyv's format
//!   here would change and `default_features_leave_rkyv_s_format_alone` would fail.
//! - The opt-in `unaligned` feature does switch the whole program to rkyv's unaligned
//!   format, as its documentation says. `.ci/run` runs this file a second time with
//!   `--features unaligned`, where the same tests check that instead.
//! - A cache file written by a build with one format and opened by a build with the other
//!   reads every entry as a miss, never a wrong value; both directions are covered by the
//!   two runs: each build opens the fixture the other one wrote
//!   (`tests/fixtures/format-{aligned,unaligned}.memo`), and the one it wrote itself as a
//!   control (all hits). Regenerate a fixture with
//!   `FRESCO_WRITE_FORMAT_FIXTURE=1 cargo test --test rkyv_format [--features unaligned]`
//!   (needed only when the on-disk format version changes).

use fresco_memoize::{Cache, Fingerprint, Store};

/// `true` in the build with our `unaligned` feature (integration tests see the crate's
/// features as `cfg`s).
const UNALIGNED: bool = cfg!(feature = "unaligned");

/// A type of the application's own, archived with plain rkyv (no fresco-memoize).
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
struct Plain {
    id: u64,
    ratio: f64,
    name: String,
    samples: Vec<u32>,
    flag: Option<u16>,
}

fn plain() -> Plain {
    Plain {
        id: 0x0102_0304_0506_0708,
        ratio: 2.5,
        name: "written by plain rkyv".into(),
        samples: vec![1, 2, 3, 500_000],
        flag: Some(7),
    }
}

/// `rkyv::to_bytes(&plain())` from a program depending on rkyv 0.8 alone, with its
/// default features.
const PLAIN_ARCHIVE: [u8; 80] = [
    0x77, 0x72, 0x69, 0x74, 0x74, 0x65, 0x6e, 0x20, 0x62, 0x79, 0x20, 0x70, 0x6c, 0x61, 0x69, 0x6e,
    0x20, 0x72, 0x6b, 0x79, 0x76, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00,
    0x03, 0x00, 0x00, 0x00, 0x20, 0xa1, 0x07, 0x00, 0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x40, 0x95, 0x00, 0x00, 0x00, 0xc8, 0xff, 0xff, 0xff,
    0xd8, 0xff, 0xff, 0xff, 0x04, 0x00, 0x00, 0x00, 0x01, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00,
];

fn read_plain_archive() -> Result<Plain, rkyv::rancor::Error> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(&PLAIN_ARCHIVE);
    rkyv::from_bytes::<Plain, rkyv::rancor::Error>(&aligned)
}

#[test]
fn default_features_leave_rkyv_s_format_alone() {
    let written_here = rkyv::to_bytes::<rkyv::rancor::Error>(&plain()).unwrap();
    if UNALIGNED {
        // The documented cost of the opt-in feature: the whole program's format changes.
        assert_eq!(std::mem::align_of::<rkyv::Archived<u64>>(), 1);
        assert_ne!(&written_here[..], &PLAIN_ARCHIVE[..]);
        assert_ne!(read_plain_archive().ok(), Some(plain()));
    } else {
        // rkyv's defaults: aligned primitives, 32-bit relative pointers, little endian.
        assert_eq!(std::mem::align_of::<rkyv::Archived<u64>>(), 8);
        assert_eq!(std::mem::size_of::<rkyv::Archived<usize>>(), 4);
        assert_eq!(read_plain_archive().unwrap(), plain());
        assert_eq!(
            &written_here[..],
            &PLAIN_ARCHIVE[..],
            "byte for byte what plain rkyv writes"
        );
    }
}

/// The value type the fixtures hold: its archive differs between the formats (field
/// alignment and padding), so a misread would show.
#[derive(
    rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug, Clone, PartialEq,
)]
struct Sample {
    id: u64,
    ratio: f64,
    label: String,
    parts: Vec<u32>,
    small: u16,
}

const ENTRIES: u64 = 40;

fn sample(id: u64) -> Sample {
    Sample {
        id,
        ratio: id as f64 / 4.0,
        label: format!("sample {id}"),
        parts: (0..id as u32 % 7).collect(),
        small: id as u16 * 3,
    }
}

fn fixture(unaligned: bool) -> std::path::PathBuf {
    let name = if unaligned {
        "format-unaligned.memo"
    } else {
        "format-aligned.memo"
    };
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture to open (opening may rewrite it), and how many entries it holds.
fn open_copy(unaligned: bool) -> (tempfile::TempDir, Cache, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.memo");
    std::fs::copy(fixture(unaligned), &path).unwrap();
    let cache = Cache::open(&path).unwrap();
    let info = cache.inspect().unwrap();
    let stored = info.entries();
    (dir, cache, stored)
}

fn samples(cache: &Cache) -> fresco_memoize::Memoizer<u64, Sample> {
    cache
        .memoizer::<u64, Sample>("samples")
        .store(Store::Persistent)
        .build()
        .unwrap()
}

fn write_fixture() {
    let path = fixture(UNALIGNED);
    let _ = std::fs::remove_file(&path);
    let cache = Cache::open(&path).unwrap();
    let m = samples(&cache);
    for id in 0..ENTRIES {
        m.get_or_compute(&id, |id| sample(*id));
    }
    cache.flush().unwrap();
}

#[test]
fn a_file_of_this_build_s_format_is_served() {
    if std::env::var_os("FRESCO_WRITE_FORMAT_FIXTURE").is_some() {
        write_fixture();
    }
    let (_dir, cache, stored) = open_copy(UNALIGNED);
    assert_eq!(
        stored, ENTRIES,
        "fixture holds its entries (regenerate it if this fails)"
    );
    let m = samples(&cache);
    for id in 0..ENTRIES {
        let hit = m
            .get_archived(&id)
            .unwrap()
            .expect("written by this format: a hit");
        assert_eq!(hit.deserialize().unwrap(), sample(id));
    }
    assert_eq!(m.stats().hits, ENTRIES);
}

#[test]
fn a_file_of_the_other_format_reads_as_misses_never_wrong_values() {
    let (_dir, cache, stored) = open_copy(!UNALIGNED);
    // The entries are there (the file was not dropped as an old format version) ...
    assert_eq!(
        stored, ENTRIES,
        "fixture holds its entries (regenerate it if this fails)"
    );
    let m = samples(&cache);
    // ... but their fingerprint names another format: building the memoizer dropped them,
    assert_eq!(cache.inspect().unwrap().entries(), 0);
    // and none of them is decoded: every one is a miss and is recomputed.
    for id in 0..ENTRIES {
        assert!(
            m.get_archived(&id).unwrap().is_none(),
            "entry {id} served across formats"
        );
    }
    let mut computed = 0;
    for id in 0..ENTRIES {
        let value = m.get_or_compute(&id, |id| {
            computed += 1;
            sample(*id)
        });
        assert_eq!(value, sample(id));
    }
    assert_eq!(computed, ENTRIES);
    assert_eq!(m.stats().hits, 0);
    let report = cache.check_integrity().unwrap();
    assert!(report.is_ok(), "{:#?}", report.problems);
}
