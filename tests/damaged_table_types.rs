//! Regression: a flipped byte in redb's table directory - inside the type name recorded
//! for one of the cache's own tables (e.g. `&[u8]` become `&[u8}` for
//! `fresco/memoizers`) - made building a memoizer fail with a plain storage error ("the
//! cache write failed and was rolled back: ... has key type &str and value type
//! &[u8}"), so `OnCorruption::Recreate` never set the file aside and the cache could not
//! be used at all. Found by `damaged_files.rs`'s byte-flip sweep, whose flips land in the
//! directory only in some runs. The cache's tables have types fixed by this crate, so a
//! type mismatch on one of them is damage: the default policy now recreates the file,
//! and `OnCorruption::Fail` reports `Error::Corrupted`.

use std::path::Path;

use fresco_memoize::{Cache, Error, OnCorruption};

const N: u64 = 50;

fn value(k: u64) -> String {
    format!("value {k}")
}

/// Opens the cache at `path` and builds its memoizer; any error on the way.
fn use_cache(path: &Path, policy: OnCorruption) -> Result<(), Error> {
    let cache = Cache::builder().on_corruption(policy).open(path)?;
    let memo = cache.memoizer::<u64, String>("values").build()?;
    for k in 0..N {
        assert_eq!(memo.get_or_compute(&k, |k| value(*k)), value(k));
    }
    cache.flush()
}

/// Every place in `image` where a table's recorded type name `&[u8]` sits.
fn type_names(image: &[u8]) -> Vec<usize> {
    image
        .windows(5)
        .enumerate()
        .filter(|(_, w)| *w == b"&[u8]")
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_damaged_type_name_of_a_cache_table_is_damage_not_a_dead_end() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine.memo");
    use_cache(&pristine, OnCorruption::Fail).unwrap();
    let image = std::fs::read(&pristine).unwrap();
    let places = type_names(&image);
    assert!(
        !places.is_empty(),
        "no recorded type names found: the test tests nothing"
    );
    let mut failed_as_corrupted = 0;
    for (n, at) in places.into_iter().enumerate() {
        let mut bytes = image.clone();
        // `]` becomes `}`: still valid UTF-8, a type name no table of ours has.
        bytes[at + 4] = b'}';
        let path = dir.path().join(format!("flip{n}.memo"));
        std::fs::write(&path, &bytes).unwrap();
        match use_cache(&path, OnCorruption::Fail) {
            Ok(()) => {}
            Err(Error::Corrupted { .. }) => failed_as_corrupted += 1,
            Err(e) => panic!("flip {n} at {at}, Fail: {e}"),
        }
        std::fs::write(&path, &bytes).unwrap();
        if let Err(e) = use_cache(&path, OnCorruption::Recreate) {
            panic!("flip {n} at {at}, Recreate: {e}");
        }
    }
    assert!(
        failed_as_corrupted > 0,
        "no flip was noticed: the test tests nothing"
    );
}
