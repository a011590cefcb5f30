//! The alignment decision (ARCHITECTURE.md, "Values and alignment"): persistent hits with
//! rkyv's `unaligned` format (read in place) versus the aligned format (copied into an
//! aligned buffer first, because redb values sit at arbitrary addresses).
//!
//! ```sh
//! cargo bench --bench alignment                                          # unaligned (default)
//! cargo bench --bench alignment --no-default-features --features macros  # aligned + copy
//! ```

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fresco_memoize::{Cache, Fingerprint, Store};

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Clone)]
struct Small {
    id: u64,
    name: String,
    scores: Vec<u32>,
}

const ENTRIES: u64 = 100_000;

fn small(id: u64) -> Small {
    Small {
        id,
        name: format!("entry-{id:>32}"),
        scores: (0..10).map(|i| i * id as u32).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let mode = if std::mem::align_of::<rkyv::Archived<u64>>() == 1 {
        "unaligned"
    } else {
        "aligned-copy"
    };
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::open(dir.path().join("align.memo")).unwrap();
    let m = cache
        .memoizer::<u64, Small>("small")
        .store(Store::Persistent)
        .build()
        .unwrap();
    for id in 0..ENTRIES {
        m.get_or_compute(&id, |id| small(*id));
    }
    let big = cache
        .memoizer::<u64, Vec<u8>>("big")
        .store(Store::Persistent)
        .build()
        .unwrap();
    for id in 0..64 {
        big.get_or_compute(&id, |id| vec![*id as u8; 64 * 1024]);
    }
    cache.flush().unwrap();

    let mut group = c.benchmark_group(format!("alignment/{mode}"));
    let mut i = 0u64;
    group.bench_function("small/archived", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            let hit = m.get_archived(black_box(&i)).unwrap().unwrap();
            black_box(hit.id.to_native())
        })
    });
    group.bench_function("small/owned", |b| {
        b.iter(|| {
            i = (i + 7919) % ENTRIES;
            black_box(m.get_or_compute(black_box(&i), |id| small(*id)).id)
        })
    });
    group.bench_function("64KiB/archived", |b| {
        b.iter(|| {
            i = (i + 13) % 64;
            let hit = big.get_archived(black_box(&i)).unwrap().unwrap();
            black_box(hit.len())
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
