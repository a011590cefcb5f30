//! Guards the exactness of the dependency indexes (issue 3, point 6): random sequences
//! of computes (which overwrite expired entries, with other dependency keys), clock
//! moves, expiry purges, LRU evictions, `invalidate_key`, `invalidate_all` and zone
//! invalidations run against six zoned memoizers (persistent, tiered, memory, LRU, keyed
//! by the book id through a keyfunc; and persistent and tiered keyed by the whole book,
//! whose entries the file keeps filed under their author) and a plain model of what each
//! must hold. After every step the invariant checker must
//! find the file and the in-memory stores sound, every count returned must match the
//! model, and every hit must return the model's value.
//!
//! A second run gives the file and some persistent memoizers small random byte budgets
//! (`CacheBuilder::max_bytes`, `MemoizerBuilder::max_bytes`): the models of the
//! persistent memoizers then hold what *may* be stored - an entry may be missing after
//! an eviction (a miss, recomputed), but a hit must still return the model's value,
//! never a wrong, stale or invalidated one, counts may only fall short of the model's,
//! and the invariant checker must still find everything sound after every step.

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
    /// A byte budget may evict its entries: `entries` holds what may be stored.
    evicts: bool,
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
    (authors, publishers): (&Zone, Option<&Zone>),
    max_bytes: Option<u64>,
) -> Memoizer<Book, String> {
    let mut b = cache
        .memoizer::<Book, String>(name)
        .store(store)
        .max_bytes(max_bytes);
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

/// Budgets of a run: the file's, and each persistent memoizer's own (by its index in
/// the specs), from `rng`. A small one holds two or three entries (an entry of this
/// test is charged about 300 bytes).
struct Budgets {
    file: Option<u64>,
    memoizers: [Option<u64>; 6],
}

impl Budgets {
    fn none() -> Self {
        Budgets {
            file: None,
            memoizers: [None; 6],
        }
    }

    fn random(rng: &mut Rng) -> Self {
        let small = |rng: &mut Rng| (rng.below(3) != 0).then(|| 400 + rng.below(800));
        let memoizers = std::array::from_fn(|_| small(rng));
        Budgets {
            file: Some(2_000 + rng.below(3_000)),
            memoizers,
        }
    }

    fn any(&self) -> bool {
        self.file.is_some() || self.memoizers.iter().any(Option::is_some)
    }
}

fn run(seed: u64, steps: u64, budgets: Budgets) {
    let clock = ManualClock::new(1_000_000);
    // redb's in-memory backend: the same tables and indexes as a file, without an fsync
    // per invalidation and per integrity check.
    let cache = Cache::builder()
        .clock(clock.clone())
        .max_bytes(budgets.file)
        .in_memory()
        .unwrap();
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
        .enumerate()
        .map(|(i, &(name, store, ttl, in_publishers, whole_key))| {
            let persistent = matches!(store, Store::Persistent | Store::Tiered(_));
            let own = budgets.memoizers[i].filter(|_| persistent);
            Model {
                memo: build(
                    &cache,
                    name,
                    store,
                    ttl,
                    whole_key,
                    (&authors, in_publishers.then_some(&publishers)),
                    own,
                ),
                persistent,
                whole_key,
                ttl_ms: ttl,
                in_publishers,
                evicts: persistent && (budgets.file.is_some() || own.is_some()),
                entries: HashMap::new(),
                lru: match store {
                    Store::Lru(n) => Some((n, Vec::new())),
                    _ => None,
                },
            }
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
                // An evicted entry is a miss, recomputed, like an absent one.
                if live.is_some() && model.evicts && got == fresh {
                    coverage.evicted_misses += 1;
                }
                let live = live.filter(|_| !(model.evicts && got == fresh));
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
                let got = cache.purge_expired().unwrap();
                assert!(got <= want, "step {step}: purge: {got} > {want}");
                if !budgets.any() {
                    assert_eq!(got, want, "step {step}: purge");
                }
                coverage.purged += got;
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
                let got = model.memo.invalidate_key(&probe).unwrap();
                if model.evicts {
                    assert!(
                        want || !got,
                        "step {step}: invalidate_key removed an absent entry"
                    );
                } else {
                    assert_eq!(got, want, "step {step}: invalidate_key");
                }
                format!("invalidate_key {} {id}", model.memo.name())
            }
            31 => {
                let model = &mut models[m];
                let (want, evicts) = (model.retain(|_| false), model.evicts);
                let got = model.memo.invalidate_all().unwrap();
                assert_counts(got, want, evicts, &format!("step {step}: invalidate_all"));
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
                assert_counts(
                    got,
                    want,
                    budgets.any(),
                    &format!("step {step}: author {dep}"),
                );
                coverage.dependents += got;
                format!("authors.invalidate {dep}")
            }
            36 | 37 => {
                let dep = rng.below(3);
                let mut want = 0;
                for model in models.iter_mut().filter(|m| m.in_publishers) {
                    want += model.retain(|e| e.publisher != dep);
                }
                let got = publishers.invalidate(&dep).unwrap();
                assert_counts(
                    got,
                    want,
                    budgets.any(),
                    &format!("step {step}: publisher {dep}"),
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
                let got = zone.invalidate_all().unwrap();
                assert_counts(got, want, budgets.any(), &format!("step {step}"));
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
        let context = format!("seed {seed} step {step} ({what})");
        assert_counts(report.entries, on_disk as u64, budgets.any(), &context);
        for model in &models {
            let held = model.memo.stats().entries.unwrap();
            let context = format!("{context}: {}", model.memo.name());
            assert_counts(held, model.entries.len() as u64, model.evicts, &context);
        }
    }
    if budgets.any() {
        coverage.budget_evictions = models.iter().map(|m| m.memo.stats().budget_evictions).sum();
    }
    assert!(
        coverage.overwrites >= 10
            && coverage.evictions >= 5
            && coverage.purged >= 5
            && coverage.dependents >= 20
            && coverage.filed_dependents >= 10
            && (!budgets.any() || coverage.budget_evictions >= 20 && coverage.evicted_misses >= 1),
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
    /// Entries evicted for a byte budget (budgeted runs).
    budget_evictions: u64,
    /// Misses on entries the model held, which a budget had evicted.
    evicted_misses: u64,
}

/// A count the cache returned against the model's: equal, or - where a byte budget may
/// have evicted entries the model still holds - at most the model's.
fn assert_counts(got: u64, want: u64, evicts: bool, context: &str) {
    if evicts {
        assert!(
            got <= want,
            "{context}: {got} where the model allows {want}"
        );
    } else {
        assert_eq!(got, want, "{context}");
    }
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
        run(seed, 900, Budgets::none());
    }
}

#[test]
fn evictions_for_small_random_budgets_never_serve_a_wrong_value() {
    for seed in [0x00B0_D6E7, 7] {
        let budgets = Budgets::random(&mut Rng(seed ^ 0x9E37_79B9));
        run(seed, 700, budgets);
    }
}
