//! Committed values whose inner fields need more alignment than their root are hits.
//!
//! Bug: a hit read the archive in place when its address suited the alignment of the
//! archive's *root* type, and copied it to an aligned buffer otherwise. The root of a
//! `Vec<u64>` (a relative pointer and a length) needs 4 bytes of alignment, its elements
//! 8. A committed entry sits wherever redb's page puts it, so about one in ten
//! `Vec<u64>` values landed 4- but not 8-aligned: bytecheck refused them and every call
//! recomputed them ("stale" in the stats), owned and archived hits alike, in the file
//! and after a reopen. Now archives are tried in place only at the alignment of an
//! archived `u64` or more, and one that fails there is tried again from a copy aligned
//! for anything (128-bit integers need 16), before it is taken for damage.

use fresco_memoize::{Cache, Fingerprint, Memoizer, Store, Value};

#[derive(
    Clone, Debug, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint,
)]
struct Wide {
    tag: u8,
    big: Vec<u128>,
    floats: Option<Vec<f64>>,
}

fn wide(k: u64) -> Wide {
    Wide {
        tag: k as u8,
        big: (0..3).map(|i| (k as u128) << 64 | i).collect(),
        floats: k.is_multiple_of(2).then(|| vec![k as f64; 5]),
    }
}

fn longs(k: u64) -> Vec<u64> {
    (0..12).map(|i| k.wrapping_mul(31) + i).collect()
}

const N: u64 = 400;

/// Fills `m`, flushes, and checks every key is then served, owned and archived.
fn all_hit<V: Value + PartialEq + std::fmt::Debug>(
    cache: &Cache,
    m: &Memoizer<u64, V>,
    make: fn(u64) -> V,
) {
    for k in 0..N {
        m.get_or_compute(&k, |k| make(*k));
    }
    cache.flush().unwrap();
    served_from_file(m, make);
}

fn served_from_file<V: Value + PartialEq + std::fmt::Debug>(
    m: &Memoizer<u64, V>,
    make: fn(u64) -> V,
) {
    for k in 0..N {
        let v = m.get_or_compute(&k, |_| panic!("key {k} was recomputed"));
        assert_eq!(v, make(k));
        assert!(
            m.get_archived(&k).unwrap().is_some(),
            "key {k}: no archived hit"
        );
    }
    assert_eq!(m.stats().stale, 0, "{:?}", m.stats());
}

#[test]
fn vectors_of_wider_elements_are_served_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u64, Vec<u64>>("longs").build().unwrap();
        all_hit(&cache, &m, longs);
        let w = cache.memoizer::<u64, Wide>("wide").build().unwrap();
        all_hit(&cache, &w, wide);
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<u64, Vec<u64>>("longs").build().unwrap();
    served_from_file(&m, longs);
    let w = cache.memoizer::<u64, Wide>("wide").build().unwrap();
    served_from_file(&w, wide);
}

#[test]
fn tiered_and_memory_stores_serve_them_too() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    for store in [Store::Tiered(50), Store::Memory, Store::Lru(1000)] {
        let name = format!("{store:?}");
        let m = cache
            .memoizer::<u64, Wide>(&name)
            .store(store)
            .build()
            .unwrap();
        all_hit(&cache, &m, wide);
    }
}
