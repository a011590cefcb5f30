use fresco_memoize::{Cache, Store};

#[test]
fn persistent_round_trip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u64, String>("m").build().unwrap();
        for i in 0..100 {
            assert_eq!(m.get_or_compute(&i, |i| format!("v{i}")), format!("v{i}"));
        }
        for i in 0..100 {
            assert_eq!(m.get_or_compute(&i, |_| unreachable!()), format!("v{i}"));
        }
        cache.flush().unwrap();
        assert_eq!(m.stats().entries, Some(100));
        let report = cache.check_integrity().unwrap();
        assert!(report.is_ok(), "{report:?}");
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache
        .memoizer::<u64, String>("m")
        .store(Store::Persistent)
        .build()
        .unwrap();
    for i in 0..100 {
        assert_eq!(m.get_or_compute(&i, |_| unreachable!()), format!("v{i}"));
    }
    assert_eq!(&*m.get_archived(&5).unwrap().unwrap(), "v5");
    assert!(m.invalidate_key(&5).unwrap());
    assert!(m.get_archived(&5).unwrap().is_none());
    assert_eq!(m.invalidate_all().unwrap(), 99);
    assert_eq!(m.stats().entries, Some(0));
}
