//! Property tests (proptest) of keys and entries.
//!
//! Guards: distinct keys never share an entry (also when every key hashes to one row),
//! keys a keyfunc maps to one key always share one, entries encode and decode losslessly
//! (and any truncation or flipped byte is refused), and values round-trip through a
//! persistent store, owned and archived.

use std::collections::{BTreeMap, BTreeSet};

use fresco_memoize::__entry::{self, Parts};
use fresco_memoize::{Cache, Memoizer, Store};
use proptest::prelude::*;

type Key = (String, u32);

fn derive(k: &Key) -> String {
    format!("{}#{}", k.0, k.1)
}

fn colliding(_: &[u8]) -> [u8; 16] {
    [0xab; 16]
}

fn memoizers(cache: &Cache) -> Vec<Memoizer<Key, String>> {
    vec![
        cache
            .memoizer::<Key, String>("persistent")
            .store(Store::Persistent)
            .build()
            .unwrap(),
        cache
            .memoizer::<Key, String>("tiered")
            .store(Store::Tiered(4))
            .build()
            .unwrap(),
        cache
            .memoizer::<Key, String>("memory")
            .store(Store::Memory)
            .build()
            .unwrap(),
        cache
            .memoizer::<Key, String>("colliding")
            .store(Store::Persistent)
            .__key_hasher(colliding)
            .build()
            .unwrap(),
        cache
            .memoizer::<Key, String>("colliding-memory")
            .store(Store::Lru(8))
            .__key_hasher(colliding)
            .build()
            .unwrap(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn distinct_keys_never_share_an_entry(
        keys in prop::collection::btree_set((".{0,12}", 0u32..4), 1..24),
        order in prop::collection::vec(any::<prop::sample::Index>(), 0..48),
    ) {
        let keys: Vec<Key> = keys.into_iter().collect();
        let cache = Cache::in_memory().unwrap();
        for m in memoizers(&cache) {
            // Each key's value is derived from it; a shared entry would hand one key
            // another's value.
            for k in &keys {
                prop_assert_eq!(m.get_or_compute(k, derive), derive(k));
            }
            for i in &order {
                let k = i.get(&keys);
                prop_assert_eq!(m.get_or_compute(k, derive), derive(k), "{}", m.name());
                if let Some(hit) = m.get_archived(k).unwrap() {
                    prop_assert_eq!(hit.as_str(), derive(k));
                }
            }
        }
    }

    #[test]
    fn keyfunc_equal_keys_always_share_an_entry(
        words in prop::collection::vec("[a-zA-Z]{1,8}", 1..16),
        flips in prop::collection::vec(any::<u64>(), 1..16),
    ) {
        let cache = Cache::in_memory().unwrap();
        for store in [Store::Persistent, Store::Memory, Store::Tiered(2)] {
            let m = cache
                .memoizer::<String, String>(&format!("ci-{store:?}"))
                .store(store)
                .keyfunc(|s: &String| s.to_lowercase())
                .build()
                .unwrap();
            let mut first: BTreeMap<String, String> = BTreeMap::new();
            for (word, flip) in words.iter().zip(flips.iter().cycle()) {
                // The same word in another mix of cases.
                let variant: String = word
                    .chars()
                    .enumerate()
                    .map(|(i, c)| if flip >> (i % 64) & 1 == 1 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() })
                    .collect();
                let lower = word.to_lowercase();
                let expected = first.entry(lower).or_insert_with(|| word.clone()).clone();
                let mut computed = false;
                let got = m.get_or_compute(word, |w| { computed = true; w.clone() });
                prop_assert_eq!(&got, &expected);
                let again = m.get_or_compute(&variant, |_| unreachable!("{variant} must share {word}'s entry"));
                prop_assert_eq!(again, expected);
            }
            let distinct: BTreeSet<_> = words.iter().map(|w| w.to_lowercase()).collect();
            prop_assert_eq!(m.stats().misses, distinct.len() as u64);
        }
    }
}

fn parts() -> impl Strategy<Value = Parts> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<[u8; 24]>(), 0..5),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(
            |(fingerprint, stored_at_ms, expires_at_ms, entry_id, key, deps, payload)| Parts {
                fingerprint,
                stored_at_ms,
                expires_at_ms,
                entry_id,
                key,
                deps,
                payload,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn entries_round_trip(parts in parts()) {
        let bytes = __entry::encode(&parts);
        prop_assert_eq!(__entry::decode(&bytes, true), Some(parts.clone()));
        prop_assert_eq!(__entry::decode(&bytes, false), Some(parts));
    }

    #[test]
    fn a_damaged_entry_is_refused(parts in parts(), at in any::<prop::sample::Index>(), bit in 0u8..8, cut in any::<prop::sample::Index>()) {
        let bytes = __entry::encode(&parts);
        let mut flipped = bytes.clone();
        flipped[at.index(bytes.len())] ^= 1 << bit;
        prop_assert_eq!(__entry::decode(&flipped, true), None);
        let cut = cut.index(bytes.len());
        prop_assert_eq!(__entry::decode(&bytes[..cut], true), None);
    }
}

proptest! {
    // Each case opens a file twice (fsyncs included): fewer cases.
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn values_round_trip_through_a_persistent_store(
        values in prop::collection::vec(
            (any::<u64>(), ".{0,40}", prop::collection::vec(any::<i32>(), 0..20), any::<Option<bool>>()),
            1..12,
        ),
    ) {
        type V = (u64, String, Vec<i32>, Option<bool>);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("props.memo");
        {
            let cache = Cache::open(&path).unwrap();
            let m = cache.memoizer::<usize, V>("values").build().unwrap();
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(&m.get_or_compute(&i, |_| v.clone()), v);
            }
        }
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<usize, V>("values").build().unwrap();
        for (i, v) in values.iter().enumerate() {
            let hit = m.get_archived(&i).unwrap().expect("stored before the reopen");
            prop_assert_eq!(&hit.deserialize().unwrap(), v);
            prop_assert_eq!(hit.1.as_str(), v.1.as_str());
            prop_assert_eq!(&m.get_or_compute(&i, |_| unreachable!()), v);
        }
    }
}
