//! Model-based fuzzing: an arbitrary sequence of cache operations, with I/O faults
//! injected, checked step by step against a reference model.
//!
//! The model tracks, per memoizer and key, which *versions* of a value may still be
//! served. A value is `(key, version, text(key, version))`; the version of a key is bumped
//! by every invalidation that touches it, so serving a value computed before an
//! invalidation that returned `Ok` - a stale value - is caught, as is any value whose
//! bytes were damaged (`text` would not match), any value of another key, and any value
//! past its deadline. Faults make stores and invalidations fail; the model then only
//! widens what may be served (an invalidation that returned `Err` may or may not have
//! happened) and forgets which keys must hit.
//!
//! After every step the file's invariants are checked (`Cache::check_integrity`); with no
//! fault armed the check must run and find nothing - also while cleared tables are
//! reclaimed, a few entries per step, under faults and reopens.
//!
//! Three inputs in four also run under small byte budgets ([`Budgets::of`], chosen by
//! the input's length so that every input's operations stay what they were): the
//! file's (`CacheBuilder::max_bytes`), some memoizers' own (`MemoizerBuilder::max_bytes`),
//! or both. A memoizer a budget may evict from never has to hit (an evicted entry is a
//! miss), but everything it serves must still be allowed by the model.
//!
//! Compiled by the fuzz crate and, by path, by the main crate's `tests/fuzz_corpus.rs`;
//! it uses nothing but `fresco_memoize` and std.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use fresco_memoize::__faults::{FaultKind, FaultyBackend};
use fresco_memoize::{Cache, Clock, ManualClock, Memoizer, Store, Zone};

/// The value every memoizer stores: (key, version, text derived from both).
type V = (u64, u64, String);

const KEYS: u64 = 12;
const TTL_MS: u64 = 1_000;
const START_MS: u64 = 1_700_000_000_000;
const MEMOIZERS: usize = 4;
const TIERED: usize = 1;
const LRU: usize = 3;

fn text(key: u64, version: u64) -> String {
    let mut s = format!("{key}:{version}:");
    // Lengths vary so values land in differently sized pages.
    for i in 0..(key % 5) * 40 {
        s.push(char::from(b'a' + ((key + version + i) % 26) as u8));
    }
    s
}

/// The dependency keys of memoizer `m`'s entry for `key` in zone "Z".
fn deps(m: usize, key: u64) -> Vec<u64> {
    match m {
        1 | 3 => vec![key % 4],
        2 => vec![key % 4, 10 + key % 3],
        _ => vec![],
    }
}

/// Reads the fuzz input: every read past the end yields zero, so any input is a program.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
}

/// The byte budgets of one run: the file's, and the own budget of [`OWN_BUDGET`]'s
/// memoizers. Small: one to a few of this target's entries (charged 300-600 bytes each).
#[derive(Clone, Copy)]
struct Budgets {
    file: Option<u64>,
    own: Option<u64>,
}

/// The memoizers given their own budget (plain and zoned).
const OWN_BUDGET: [usize; 2] = [0, 2];

impl Budgets {
    /// Chosen by the input's length, which no operation reads.
    fn of(len: usize) -> Budgets {
        let size = 600 + (len as u64 * 97) % 1_200;
        let (file, own) = match len % 4 {
            0 => (false, false),
            1 => (true, false),
            2 => (false, true),
            _ => (true, true),
        };
        Budgets {
            file: file.then_some(size * 2),
            own: own.then_some(size),
        }
    }

    /// Whether memoizer `m`'s entries in the file may be evicted.
    fn evicts(&self, m: usize) -> bool {
        (self.file.is_some() && m != LRU) || (self.own.is_some() && OWN_BUDGET.contains(&m))
    }
}

struct Handles {
    cache: Cache,
    zone: Zone,
    memos: Vec<Memoizer<u64, V>>,
}

fn open(
    disk: &FaultyBackend,
    clock: &ManualClock,
    budgets: Budgets,
) -> fresco_memoize::Result<Handles> {
    let cache = Cache::builder()
        .clock(clock.clone())
        .max_bytes(budgets.file)
        .durable_interval(Duration::from_millis(5))
        .page_cache_bytes(1 << 20)
        .on_error(|_| {})
        // Reclamation runs only when the input says (op 8), not on a thread.
        .sweep_interval(None)
        .__open_backend(disk.clone())?;
    let zone = cache.zone("Z")?.key(|k: &u64| k % 4);
    let memos = vec![
        cache
            .memoizer::<u64, V>("plain")
            .max_bytes(budgets.own)
            .build()?,
        cache
            .memoizer::<u64, V>("tiered")
            .store(Store::Tiered(3))
            .expires(Duration::from_millis(TTL_MS))
            .zone(&zone)
            .build()?,
        cache
            .memoizer::<u64, V>("zoned")
            .zone_keys(&zone, |k: &u64| [k % 4, 10 + k % 3])
            .max_bytes(budgets.own)
            .build()?,
        cache
            .memoizer::<u64, V>("lru")
            .store(Store::Lru(4))
            .zone(&zone)
            .build()?,
    ];
    Ok(Handles { cache, zone, memos })
}

/// What may be served, per (memoizer, key): version -> when it was last stored.
#[derive(Default)]
struct Model {
    allowed: HashMap<(usize, u64), HashMap<u64, u64>>,
    /// (memoizer, key) pairs that must hit: stored with no fault around since.
    must_hit: HashSet<(usize, u64)>,
    version: HashMap<(usize, u64), u64>,
    next_version: u64,
    faults_armed: bool,
    budgets: Option<Budgets>,
}

impl Model {
    fn version(&self, m: usize, k: u64) -> u64 {
        self.version.get(&(m, k)).copied().unwrap_or(0)
    }

    /// An invalidation of (m, k) is being attempted: later computes get a new version.
    fn bump(&mut self, m: usize, k: u64) {
        self.next_version += 1;
        self.version.insert((m, k), self.next_version);
    }

    /// The invalidation returned `Ok`: nothing computed before it may be served.
    fn forget(&mut self, m: usize, k: u64) {
        self.allowed.remove(&(m, k));
        self.must_hit.remove(&(m, k));
    }

    fn check_served(&self, m: usize, k: u64, v: &V, now: u64, what: &str) {
        assert_eq!(
            v.0, k,
            "{what}: memoizer {m} served key {}'s value for {k}",
            v.0
        );
        assert_eq!(v.2, text(k, v.1), "{what}: damaged value for {k}");
        let stored = self
            .allowed
            .get(&(m, k))
            .and_then(|versions| versions.get(&v.1));
        let Some(&stored_at) = stored else {
            panic!(
                "{what}: memoizer {m} served stale version {} of key {k}",
                v.1
            );
        };
        if m == TIERED {
            assert!(
                now < stored_at + TTL_MS,
                "{what}: memoizer {m} served key {k} past its deadline"
            );
        }
    }

    fn live(&self, m: usize, k: u64, now: u64) -> bool {
        if !self.must_hit.contains(&(m, k)) || m == LRU {
            return false;
        }
        if self.budgets.is_some_and(|b| b.evicts(m)) {
            // An evicted entry is a miss.
            return false;
        }
        let latest = self
            .allowed
            .get(&(m, k))
            .and_then(|v| v.get(&self.version(m, k)));
        latest.is_some_and(|&t| m != TIERED || now < t + TTL_MS)
    }
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let mut input = Input { data };
    let disk = FaultyBackend::in_memory();
    let clock = ManualClock::new(START_MS);
    let budgets = Budgets::of(data.len());
    let mut h = open(&disk, &clock, budgets).expect("a fresh cache opens");
    let mut model = Model {
        budgets: Some(budgets),
        ..Model::default()
    };
    let trace = std::env::var_os("FRESCO_MODEL_TRACE").is_some();
    for step in 0..64 {
        if input.data.is_empty() {
            break;
        }
        let op = input.byte() % 12;
        let m = usize::from(input.byte()) % MEMOIZERS;
        let k = u64::from(input.byte()) % KEYS;
        let now = clock.now_ms();
        if trace {
            eprintln!("step {step}: op {op} memoizer {m} key {k} at {now}");
        }
        match op {
            0..=2 => {
                let version = model.version(m, k);
                let mut computed = false;
                let v = h.memos[m].get_or_compute(&k, |k| {
                    computed = true;
                    (*k, version, text(*k, version))
                });
                if trace {
                    eprintln!("  served version {} (computed: {computed})", v.1);
                }
                if computed {
                    assert!(
                        !model.live(m, k, now),
                        "memoizer {m} recomputed live key {k}"
                    );
                    assert_eq!(v, (k, version, text(k, version)));
                    let versions = model.allowed.entry((m, k)).or_default();
                    versions.insert(version, now);
                    if model.faults_armed {
                        model.must_hit.remove(&(m, k));
                    } else {
                        model.must_hit.insert((m, k));
                    }
                } else {
                    model.check_served(m, k, &v, now, "get_or_compute");
                }
            }
            3 => match h.memos[m].get_archived(&k) {
                Ok(Some(hit)) => {
                    let v = hit.deserialize().expect("a validated archive deserializes");
                    model.check_served(m, k, &v, now, "get_archived");
                }
                Ok(None) => assert!(!model.live(m, k, now), "memoizer {m} lost live key {k}"),
                Err(e) => assert!(model.faults_armed, "get_archived failed: {e}"),
            },
            4 => {
                model.bump(m, k);
                let result = h.memos[m].invalidate_key(&k);
                if trace {
                    eprintln!("  invalidate_key -> {result:?}");
                }
                if result.is_ok() {
                    model.forget(m, k);
                }
            }
            5 => {
                for key in 0..KEYS {
                    model.bump(m, key);
                }
                let result = h.memos[m].invalidate_all();
                if trace {
                    eprintln!("  invalidate_all() -> {result:?}");
                }
                if result.is_ok() {
                    for key in 0..KEYS {
                        model.forget(m, key);
                    }
                }
            }
            6 => {
                let dep = u64::from(input.byte()) % 14;
                let hit: Vec<(usize, u64)> = (0..MEMOIZERS)
                    .flat_map(|m| (0..KEYS).map(move |key| (m, key)))
                    .filter(|&(m, key)| deps(m, key).contains(&dep))
                    .collect();
                for &(m, key) in &hit {
                    model.bump(m, key);
                }
                let result = h.zone.invalidate(&dep);
                if trace {
                    eprintln!("  zone.invalidate({dep}) -> {result:?}");
                }
                if result.is_ok() {
                    for (m, key) in hit {
                        model.forget(m, key);
                    }
                }
            }
            7 => {
                let members = [1, 2, 3];
                for m in members {
                    for key in 0..KEYS {
                        model.bump(m, key);
                    }
                }
                let result = h.zone.invalidate_all();
                if trace {
                    eprintln!("  zone.invalidate_all() -> {result:?}");
                }
                if result.is_ok() {
                    for m in members {
                        for key in 0..KEYS {
                            model.forget(m, key);
                        }
                    }
                }
            }
            8 => {
                clock.advance(Duration::from_millis(u64::from(input.byte()) * 20));
                // Reclaims a few entries of cleared tables: the check below must find
                // the indexes exact with a reclamation half done, and nothing cleared
                // may come back.
                let step = h.cache.__reclaim_step(1 + k as usize);
                assert!(
                    step.is_ok() || model.faults_armed,
                    "reclaim failed: {step:?}"
                );
            }
            9 => {
                let n = u64::from(input.byte() % 8);
                let kind = if k.is_multiple_of(2) {
                    FaultKind::DiskFull
                } else {
                    FaultKind::Eio
                };
                if m.is_multiple_of(2) {
                    disk.fail_writes_after(n, kind);
                } else {
                    disk.fail_syncs_after(n, kind);
                }
                model.faults_armed = true;
                model.must_hit.clear();
            }
            10 => {
                disk.clear();
                model.faults_armed = false;
                let flushed = h.cache.flush();
                assert!(
                    flushed.is_ok(),
                    "flush after the fault cleared: {flushed:?}"
                );
            }
            _ => {
                // Reopen: a clean close, then a new Cache over the same disk. In-memory
                // stores start empty; what was durable must still be there.
                drop(h);
                if model.faults_armed {
                    // The closing commit may have failed: nothing is certain to be kept.
                    model.must_hit.clear();
                }
                h = match open(&disk, &clock, budgets) {
                    Ok(h) => h,
                    Err(_) => {
                        assert!(model.faults_armed, "reopen failed with no fault armed");
                        disk.clear();
                        model.faults_armed = false;
                        open(&disk, &clock, budgets).expect("reopen after the fault cleared")
                    }
                };
                model.must_hit.retain(|&(m, _)| m != LRU);
                model.allowed.retain(|&(m, _), _| m != LRU);
            }
        }
        match h.cache.check_integrity() {
            Ok(report) => assert!(report.is_ok(), "{report:?}"),
            Err(e) => assert!(model.faults_armed, "integrity check failed: {e}"),
        }
    }
    disk.clear();
    h.cache.flush().expect("flush at the end");
    let report = h.cache.check_integrity().expect("final integrity check");
    assert!(report.is_ok(), "{report:?}");
    if trace {
        let evicted: u64 = h.memos.iter().map(|m| m.stats().budget_evictions).sum();
        eprintln!("budget evictions since the last open: {evicted}");
    }
}
