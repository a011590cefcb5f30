//! `get_archived_or_compute` (a zero-copy hit with a computing fallback) and borrowed
//! keys (`get_or_compute_with`): the archived form hands back the stored value in place
//! on a hit and the computed one on a miss, through every store; a borrowed key finds
//! and stores the very entry of the owned key, and memoizers with a keyfunc or zone
//! keys take it through the owned key.

use std::sync::atomic::{AtomicU32, Ordering};

use fresco_memoize::{Cache, Store};

const STORES: [Store; 4] = [
    Store::Memory,
    Store::Lru(4),
    Store::Persistent,
    Store::Tiered(4),
];

#[test]
fn archived_or_compute_computes_once_then_reads_in_place() {
    for store in STORES {
        let cache = Cache::in_memory().unwrap();
        let pages = cache
            .memoizer::<u32, Vec<u8>>("pages")
            .store(store)
            .build()
            .unwrap();
        let computed = AtomicU32::new(0);
        let page = |n: &u32| {
            computed.fetch_add(1, Ordering::SeqCst);
            vec![*n as u8; 50 << 10]
        };
        let first = pages.get_archived_or_compute(&3, page).unwrap();
        assert_eq!((first.len(), first[0]), (50 << 10, 3));
        let hit = pages
            .get_archived_or_compute(&3, |_| unreachable!())
            .unwrap();
        assert_eq!(hit.len(), 50 << 10);
        assert!(hit.iter().all(|&b| b == 3));
        assert_eq!(computed.load(Ordering::SeqCst), 1, "{store:?}");
        // The owned forms see the same entry.
        assert_eq!(pages.get_or_compute(&3, |_| unreachable!()).len(), 50 << 10);
        let stats = pages.stats();
        assert_eq!((stats.misses, stats.hits), (1, 2), "{store:?}");
    }
}

#[test]
fn archived_or_compute_keeps_errors_uncached_and_honours_max_hits() {
    #[derive(Debug, PartialEq)]
    enum MyError {
        Down,
        Cache(String),
    }
    impl From<fresco_memoize::Error> for MyError {
        fn from(e: fresco_memoize::Error) -> Self {
            MyError::Cache(e.to_string())
        }
    }
    let cache = Cache::in_memory().unwrap();
    let m = cache
        .memoizer::<u32, String>("m")
        .max_hits(1)
        .build()
        .unwrap();
    let failed = m.try_get_archived_or_compute(&1, |_| Err::<String, _>(MyError::Down));
    assert_eq!(failed.err(), Some(MyError::Down));
    let v = m.try_get_archived_or_compute(&1, |_| Ok::<_, MyError>("a".to_string()));
    assert_eq!(v.unwrap().as_str(), "a");
    assert_eq!(
        m.get_archived_or_compute(&1, |_| unreachable!())
            .unwrap()
            .as_str(),
        "a"
    );
    // Used up: recomputed.
    assert_eq!(
        m.get_archived_or_compute(&1, |_| "b".into())
            .unwrap()
            .as_str(),
        "b"
    );
}

#[test]
fn a_borrowed_key_and_the_owned_key_share_one_entry() {
    for store in STORES {
        let cache = Cache::in_memory().unwrap();
        let thumbs = cache
            .memoizer::<(String, u32), String>("thumbs")
            .store(store)
            .build()
            .unwrap();
        let path = String::from("photos/cat.png");
        // Stored through the borrowed form, found through the owned one...
        let t = thumbs.get_or_compute_with(&(path.as_str(), 256u32), |(p, px)| format!("{p}@{px}"));
        assert_eq!(t, "photos/cat.png@256");
        let owned = (path.clone(), 256u32);
        assert_eq!(
            thumbs.get_or_compute(&owned, |_| unreachable!()),
            t,
            "{store:?}"
        );
        // ...and the other way round.
        thumbs.get_or_compute(&(path.clone(), 512), |_| "big".into());
        let big = thumbs.get_or_compute_with(&(path.as_str(), 512u32), |_| unreachable!());
        assert_eq!(big, "big");
        assert!(thumbs.invalidate_key(&owned).unwrap());
        let after = thumbs.get_or_compute_with(&(path.as_str(), 256u32), |_| "again".into());
        assert_eq!(after, "again");
        let stats = thumbs.stats();
        assert_eq!((stats.misses, stats.hits), (3, 2), "{store:?}");
        if let Some(entries) = stats.entries {
            assert_eq!(entries, 2, "{store:?}");
        }
    }
}

#[test]
fn a_borrowed_key_goes_through_a_keyfunc_and_zone_keys() {
    let cache = Cache::in_memory().unwrap();
    let authors = cache.zone("Authors").unwrap();
    let m = cache
        .memoizer::<(String, u64), String>("ci")
        .keyfunc(|(name, _): &(String, u64)| name.to_lowercase())
        .zone_key(&authors, |&(_, author): &(String, u64)| author)
        .store(Store::Persistent)
        .build()
        .unwrap();
    assert_eq!(
        m.get_or_compute_with(&("Tolstoy", 7u64), |_| "war".into()),
        "war"
    );
    // The keyfunc applied: another case of the name is the same entry.
    assert_eq!(
        m.get_or_compute(&("TOLSTOY".into(), 7), |_| unreachable!()),
        "war"
    );
    // And the entry has its dependency row.
    assert_eq!(authors.invalidate(&7u64).unwrap(), 1);
    assert_eq!(
        m.get_or_compute_with(&("tolstoy", 7u64), |_| "peace".into()),
        "peace"
    );
}

#[test]
fn a_borrowed_key_of_a_placed_memoizer_finds_its_entry() {
    // Zone-keyed persistent memoizers file entries under their dependency: the borrowed
    // form must find the same place.
    let cache = Cache::in_memory().unwrap();
    let authors = cache.zone("Authors").unwrap();
    let m = cache
        .memoizer::<(String, u64), u32>("placed")
        .zone_key(&authors, |&(_, author): &(String, u64)| author)
        .store(Store::Persistent)
        .build()
        .unwrap();
    m.get_or_compute(&("Anna".into(), 3), |_| 1);
    assert_eq!(
        m.get_or_compute_with(&("Anna", 3u64), |_| unreachable!()),
        1
    );
    assert!(cache.check_integrity().unwrap().problems.is_empty());
}
