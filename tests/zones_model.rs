//! Guards the exactness of the dependency indexes (issue 3, point 6): random sequences
//! of computes (which overwrite expired entries, with other dependency keys), clock
//! moves, expiry purges, LRU evictions, `invalidate_key`, `invalidate_all` and zone
//! invalidations run against six zoned memoizers (persistent, tiered, memory, LRU, keyed
//! by the book id through a keyfunc; and persistent and tiered keyed by the whole book,
//! whose entries the file keeps filed under their author) and a plain model of what each
//! must hold. After every step the invariant checker must
//! find the file and the in-memory stores sound, every count returned must match the
//! model, and every hit must return the model's value.

use std::collections::HashMap;
use std::time::Duration;

use fresco_memoize::{Cache, ManualClock, Memoizer, Store, Zone};
use serde::Serialize;

#[derive(Serialize, Clone, Copy, Debug)]
struct Book {
    id: u64,
    author: u64,
    publisher: u64,
}

#[derive(Clone, Debug)]
struct Entry {
    author: u64,
    publisher: u64,
    expires_at: Option<u64>,
    value: String,
}

/// What one memoizer must hold.
struct Model {
    memo: Memoizer<Book, String>,
    persistent: bool,
    /// Keyed by the whole book rather than by its id.
    whole_key: bool,
    ttl_ms: Option<u64>,
    in_publishers: bool,
    entries: HashMap<u64, Entry>,
    /// LRU capacity and recency order (most recent last).
    lru: Option<(usize, Vec<u64>)>,
}

impl Model {
    /// The model's key of a book.
    fn key_of(&self, b: &Book) -> u64 {
        if self.whole_key {
            b.id * 100 + b.author * 10 + b.publisher
        } else {
            b.id
        }
    }

    fn touch(&mut self, id: u64) {
        if let Some((_, order)) = &mut self.lru {
            order.retain(|&k| k != id);
            order.push(id);
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        if let Some((_, order)) = &mut self.lru {
            order.retain(|&k| k != id);
        }
        self.entries.remove(&id).is_some()
    }

    fn insert(&mut self, id: u64, entry: Entry) {
        self.remove(id);
        if let Some((cap, order)) = &mut self.lru
            && order.len() >= *cap
        {
            let victim = order.remove(0);
            self.entries.remove(&victim);
        }
        self.entries.insert(id, entry);
        self.touch(id);
    }

    fn retain(&mut self, keep: impl Fn(&Entry) -> bool) -> u64 {
        let gone: Vec<u64> = self
            .entries
            .iter()
            .filter(|(_, e)| !keep(e))
            .map(|(k, _)| *k)
            .collect();
        for id in &gone {
            self.remove(*id);
        }
        gone.len() as u64
    }
}

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn build(
    cache: &Cache,
    name: &str,
    store: Store,
    ttl_ms: Option<u64>,
    whole_key: bool,
    authors: &Zone,
    publishers: Option<&Zone>,
) -> Memoizer<Book, String> {
    let mut b = cache.memoizer::<Book, String>(name).store(store);
    if !whole_key {
        b = b.keyfunc(|b: &Book| b.id);
    }
    b = b.zone(authors);
    if let Some(p) = publishers {
        b = b.zone_key(p, |b: &Book| b.publisher);
    }
    if let Some(ms) = ttl_ms {
        b = b.expires(Duration::from_millis(ms));
    }
    b.build().unwrap()
}

fn run(seed: u64, steps: u64) {
    let clock = ManualClock::new(1_000_000);
    // redb's in-memory backend: the same tables and indexes as a file, without an fsync
    // per invalidation and per integrity check.
    let cache = Cache::builder().clock(clock.clone()).in_memory().unwrap();
    let authors = cache.zone("Authors").unwrap().key(|b: &Book| b.author);
    let publishers = cache.zone("Publishers").unwrap();
    let specs: [(&str, Store, Option<u64>, bool, bool); 6] = [
        ("persistent", Store::Persistent, Some(40), true, false),
        ("tiered", Store::Tiered(2), Some(30), false, false),
        ("memory", Store::Memory, Some(40), true, false),
        ("lru", Store::Lru(2), None, true, false),
        ("filed", Store::Persistent, Some(40), true, true),
        ("filed_tiered", Store::Tiered(2), None, false, true),
    ];
    let mut models: Vec<Model> = specs
        .iter()
        .map(|&(name, store, ttl, in_publishers, whole_key)| Model {
            memo: build(
                &cache,
                name,
                store,
                ttl,
                whole_key,
                &authors,
                in_publishers.then_some(&publishers),
            ),
            persistent: matches!(store, Store::Persistent | Store::Tiered(_)),
            whole_key,
            ttl_ms: ttl,
            in_publishers,
            entries: HashMap::new(),
            lru: match store {
                Store::Lru(n) => Some((n, Vec::new())),
                _ => None,
            },
        })
        .collect();
    let mut rng = Rng(seed);
    let mut coverage = Coverage::default();
    for step in 0..steps {
        let now = clock.now_ms_for_test();
        let m = rng.below(models.len() as u64) as usize;
        let what = match rng.below(40) {
            0..=21 | 39 => {
                let b = Book {
                    id: rng.below(8),
                    author: rng.below(4),
                    publisher: rng.below(3),
                };
                let model = &mut models[m];
                let key = model.key_of(&b);
                let live = model
                    .entries
                    .get(&key)
                    .filter(|e| e.expires_at.is_none_or(|t| now < t))
                    .cloned();
                let fresh = format!("{}/{}/{}/{step}", b.id, b.author, b.publisher);
                let got = model.memo.get_or_compute(&b, |_| fresh.clone());
                match live {
                    Some(entry) => {
                        assert_eq!(got, entry.value, "step {step}: hit served another value");
                        model.touch(key);
                    }
                    None => {
                        assert_eq!(got, fresh, "step {step}: served a dead entry");
                        if model.entries.contains_key(&key) {
                            coverage.overwrites += 1;
                        } else if model.lru.as_ref().is_some_and(|(cap, o)| o.len() >= *cap) {
                            coverage.evictions += 1;
                        }
                        let expires_at = model.ttl_ms.map(|t| now + t);
                        let entry = Entry {
                            author: b.author,
                            publisher: b.publisher,
                            expires_at,
                            value: fresh,
                        };
                        model.insert(key, entry);
                    }
                }
                format!("get {} {b:?}", model.memo.name())
            }
            22..=26 => {
                let ms = rng.below(60);
                clock.advance(Duration::from_millis(ms));
                format!("advance {ms}")
            }
            27 => {
                let now = clock.now_ms_for_test();
                let mut want = 0;
                for model in &mut models {
                    want += model.retain(|e| e.expires_at.is_none_or(|t| now < t));
                }
                assert_eq!(cache.purge_expired().unwrap(), want, "step {step}: purge");
                coverage.purged += want;
                "purge".into()
            }
            28..=30 => {
                let model = &mut models[m];
                // A whole-key probe names an author and publisher too, often stored ones.
                let probe = Book {
                    id: rng.below(10),
                    author: if model.whole_key { rng.below(4) } else { 0 },
                    publisher: if model.whole_key { rng.below(3) } else { 0 },
                };
                let id = model.key_of(&probe);
                let want = model.remove(id);
                assert_eq!(
                    model.memo.invalidate_key(&probe).unwrap(),
                    want,
                    "step {step}: invalidate_key"
                );
                format!("invalidate_key {} {id}", model.memo.name())
            }
            31 => {
                let model = &mut models[m];
                let want = model.retain(|_| false);
                assert_eq!(
                    model.memo.invalidate_all().unwrap(),
                    want,
                    "step {step}: invalidate_all"
                );
                format!("invalidate_all {}", model.memo.name())
            }
            32..=35 => {
                let dep = rng.below(4);
                let mut want = 0;
                for model in &mut models {
                    let n = model.retain(|e| e.author != dep);
                    if model.whole_key {
                        coverage.filed_dependents += n;
                    }
                    want += n;
                }
                let got = if rng.below(4) == 0 {
                    authors.__invalidate_by_scan(&dep).unwrap()
                } else {
                    authors.invalidate(&dep).unwrap()
                };
                assert_eq!(got, want, "step {step}: author {dep}");
                coverage.dependents += want;
                format!("authors.invalidate {dep}")
            }
            36 | 37 => {
                let dep = rng.below(3);
                let mut want = 0;
                for model in models.iter_mut().filter(|m| m.in_publishers) {
                    want += model.retain(|e| e.publisher != dep);
                }
                assert_eq!(
                    publishers.invalidate(&dep).unwrap(),
                    want,
                    "step {step}: publisher {dep}"
                );
                format!("publishers.invalidate {dep}")
            }
            _ => {
                let (zone, want) = if rng.below(2) == 0 {
                    let want = models.iter_mut().map(|m| m.retain(|_| false)).sum::<u64>();
                    (&authors, want)
                } else {
                    let want = models
                        .iter_mut()
                        .filter(|m| m.in_publishers)
                        .map(|m| m.retain(|_| false))
                        .sum::<u64>();
                    (&publishers, want)
                };
                assert_eq!(zone.invalidate_all().unwrap(), want, "step {step}");
                format!("{}.invalidate_all", zone.name())
            }
        };
        let report = cache.check_integrity().unwrap();
        assert!(
            report.is_ok(),
            "seed {seed} step {step} ({what}): {:#?}",
            report.problems
        );
        let on_disk: usize = models
            .iter()
            .filter(|m| m.persistent)
            .map(|m| m.entries.len())
            .sum();
        assert_eq!(
            report.entries, on_disk as u64,
            "seed {seed} step {step} ({what})"
        );
        for model in &models {
            assert_eq!(
                model.memo.stats().entries,
                Some(model.entries.len() as u64),
                "seed {seed} step {step} ({what}): {}",
                model.memo.name()
            );
        }
    }
    assert!(
        coverage.overwrites >= 10
            && coverage.evictions >= 5
            && coverage.purged >= 5
            && coverage.dependents >= 20
            && coverage.filed_dependents >= 10,
        "seed {seed}: too little exercised: {coverage:?}"
    );
    eprintln!("seed {seed:#x}: {coverage:?}");
}

/// How often the interesting cases happened: a model test that never overwrites or
/// evicts proves nothing about them.
#[derive(Default, Debug)]
struct Coverage {
    overwrites: u64,
    evictions: u64,
    purged: u64,
    dependents: u64,
    /// Entries removed by author from the memoizers that file entries by author.
    filed_dependents: u64,
}

trait NowForTest {
    fn now_ms_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_ms_for_test(&self) -> u64 {
        fresco_memoize::Clock::now_ms(self)
    }
}

#[test]
fn indexes_stay_exact_under_random_operations() {
    for seed in [0x5EED_0001, 0xDEAD_BEEF_CAFE, 42] {
        run(seed, 900);
    }
}
