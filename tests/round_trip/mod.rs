//! The round trip the value-type tests put each type through (a module of theirs, not a
//! test of its own).

use std::fmt::Debug;

use fresco_memoize::{Cache, Value};

/// Stores `value` under key 1 in a fresh file, reads it back as a hit in the same cache
/// and, after reopening the file, both owned and in place (deserialized from the guard).
pub fn round_trip<V: Value + Clone + PartialEq + Debug>(value: V) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("types.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u64, V>("types").build().unwrap();
        let stored = value.clone();
        assert_eq!(m.get_or_compute(&1, move |_| stored), value);
        assert_eq!(
            m.get_or_compute(&1, |_| panic!("a hit was expected")),
            value
        );
        assert_eq!(m.stats().hits, 1);
    }
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<u64, V>("types").build().unwrap();
    assert_eq!(
        m.get_or_compute(&1, |_| panic!("the file's value was expected")),
        value
    );
    let hit = m.get_archived(&1).unwrap().expect("stored in the file");
    assert_eq!(hit.deserialize().unwrap(), value);
}
