//! A memoizer's own byte budget (`MemoizerBuilder::max_bytes`) also holds for the stores
//! it queued before it was dropped. The budget used to live only in the memoizer's
//! snapshot slot, which the writer reaches weakly: a program that stored values and then
//! dropped the memoizer and its cache at once (the usual end of a run) committed them in
//! the writer's last batch after the slot was gone, unevicted - 64 values of 20 KiB
//! stayed in a file whose memoizer had a 512 KiB budget (found by `cli.rs`'s
//! `stats_shows_a_memoizer_s_own_budget`). The budget is now kept by the cache's storage
//! for as long as the cache is open.

use fresco_memoize::{Cache, Store};

const OWN: u64 = 512 << 10;

#[test]
fn stores_queued_before_the_memoizer_is_dropped_are_held_to_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let thumbs = cache
            .memoizer::<u64, Vec<u8>>("thumbs")
            .store(Store::Persistent)
            .max_bytes(Some(OWN))
            .build()
            .unwrap();
        for k in 0..64u64 {
            thumbs.get_or_compute(&k, |k| vec![*k as u8; 20 << 10]);
        }
        // No flush: the memoizer goes first, then the cache, whose writer commits what
        // is still queued.
        drop(thumbs);
    }
    let info = Cache::inspect_file(&path).unwrap();
    let thumbs = &info.memoizers[0];
    assert!(
        thumbs.charged_bytes <= OWN,
        "{} bytes charged against a budget of {OWN}",
        thumbs.charged_bytes
    );
    assert_eq!(thumbs.entries + thumbs.budget_evictions, 64);
}

#[test]
fn a_memoizer_built_again_keeps_the_first_budget_and_its_sketch() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("c.memo")).unwrap();
    let build = |max_bytes| {
        cache
            .memoizer::<u64, Vec<u8>>("thumbs")
            .store(Store::Persistent)
            .max_bytes(Some(max_bytes))
            .build()
            .unwrap()
    };
    drop(build(OWN));
    // Built again in the same run with another budget: the first one stays.
    let thumbs = build(4 * OWN);
    for k in 0..64u64 {
        thumbs.get_or_compute(&k, |k| vec![*k as u8; 20 << 10]);
    }
    cache.flush().unwrap();
    assert!(thumbs.stats().bytes.unwrap() <= OWN);
    assert!(cache.check_integrity().unwrap().is_ok());
}
