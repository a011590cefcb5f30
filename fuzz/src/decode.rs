//! Decode fuzzing: arbitrary bytes stored as a memoizer's entry, read back through the
//! public API.
//!
//! The input's first byte picks how the stored bytes are made from the rest:
//! 0. the bytes as they are;
//! 1. a genuine entry with the input's (position, xor) pairs applied - checksum not fixed;
//! 2. a genuine header and key around the input as the rkyv archive, checksum fixed;
//! 3. like 1, then re-sealed with a valid checksum when the result still parses.
//!
//! The bytes are written into the memoizer's table with redb directly, then the cache is
//! opened over the same (in-memory) storage and asked for the key. Checked: no panic; in
//! modes 0 and 1 (no valid checksum) only a miss or the genuine value; in every mode a
//! hit deserializes, `get_or_compute` agrees with `get_archived`, a different key that
//! shares the row never reads it, and the cache keeps working afterwards.
//!
//! Compiled by the fuzz crate and, by path, by the main crate's `tests/fuzz_corpus.rs`;
//! it uses nothing but `fresco_memoize`, `redb` and std.

use std::sync::OnceLock;

use fresco_memoize::__entry;
use fresco_memoize::__faults::FaultyBackend;
use fresco_memoize::{Cache, Memoizer};
use redb::{ReadableDatabase, StorageBackend, TableDefinition};

/// A value with strings, vectors and options, so validation has much to check.
type G = (u64, String, Vec<u32>, Option<u64>);

const ROW: [u8; 16] = [7; 16];
const MEMOIZERS: TableDefinition<&str, &[u8]> = TableDefinition::new("fresco/memoizers");

fn genuine() -> G {
    (
        42,
        "the genuine value".to_string(),
        vec![1, 2, 3, 5, 8],
        Some(13),
    )
}

fn fallback(k: u64) -> G {
    (k, format!("computed for {k}"), vec![], None)
}

/// Every key lands on one row, so key 2 would see key 1's entry if keys were not compared.
fn same_row(_: &[u8]) -> [u8; 16] {
    ROW
}

fn memoizer(cache: &Cache) -> Memoizer<u64, G> {
    cache
        .memoizer::<u64, G>("d")
        .__key_hasher(same_row)
        .build()
        .expect("the memoizer builds")
}

struct Template {
    image: Vec<u8>,
    table: String,
    genuine: Vec<u8>,
}

/// A database holding one genuine entry under key 1, built once.
fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let disk = FaultyBackend::in_memory();
        {
            let cache = Cache::builder().__open_backend(disk.clone()).unwrap();
            memoizer(&cache).get_or_compute(&1, |_| genuine());
            cache.flush().unwrap();
        }
        let (table, bytes) = {
            let db = redb::Builder::new()
                .create_with_backend(disk.clone())
                .unwrap();
            let txn = db.begin_read().unwrap();
            let record = txn.open_table(MEMOIZERS).unwrap();
            let record = record.get("d").unwrap().unwrap();
            let mut id = [0u8; 8];
            id.copy_from_slice(&record.value()[..8]);
            let table = format!("fresco/entries/{}", u64::from_le_bytes(id));
            let entries = txn
                .open_table(TableDefinition::<&[u8; 16], &[u8]>::new(&table))
                .unwrap();
            let bytes = entries.get(&ROW).unwrap().unwrap().value().to_vec();
            (table, bytes)
        };
        let mut image = vec![0u8; disk.len().unwrap() as usize];
        disk.read(0, &mut image).unwrap();
        Template {
            image,
            table,
            genuine: bytes,
        }
    })
}

/// Applies (position, xor) pairs from `edits` to a copy of `bytes`.
fn mutate(bytes: &[u8], edits: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for edit in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
        if out.is_empty() {
            break;
        }
        let at = at % out.len();
        out[at] ^= edit[2].max(1);
    }
    // An odd trailing byte truncates, so lengths vary too.
    if edits.len() % 3 == 1 {
        out.truncate(usize::from(edits[edits.len() - 1]) % (out.len() + 1));
    }
    out
}

/// Runs one fuzz input.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let t = template();
    let sealed = mode % 4 >= 2;
    let stored = match mode % 4 {
        0 => rest.to_vec(),
        1 => mutate(&t.genuine, rest),
        2 => {
            let mut parts = __entry::decode(&t.genuine, true).expect("the template parses");
            parts.payload = rest.to_vec();
            __entry::encode(&parts)
        }
        _ => {
            let mutated = mutate(&t.genuine, rest);
            match __entry::decode(&mutated, false) {
                Some(parts) => __entry::encode(&parts),
                None => mutated,
            }
        }
    };

    let disk = FaultyBackend::in_memory();
    disk.set_len(t.image.len() as u64).unwrap();
    disk.write(0, &t.image).unwrap();
    {
        let db = redb::Builder::new()
            .create_with_backend(disk.clone())
            .unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&[u8; 16], &[u8]>::new(&t.table))
            .unwrap()
            .insert(&ROW, stored.as_slice())
            .unwrap();
        txn.commit().unwrap();
    }

    let cache = Cache::builder()
        .page_cache_bytes(1 << 20)
        .on_error(|_| {})
        .__open_backend(disk.clone())
        .expect("the cache opens");
    let m = memoizer(&cache);
    let archived = m.get_archived(&1).expect("a read never errors here");
    let read = archived.map(|hit| hit.deserialize().expect("a validated hit deserializes"));
    if !sealed {
        assert!(
            read.is_none() || read == Some(genuine()),
            "damaged bytes read as {read:?}"
        );
    }
    let served = m.get_or_compute(&1, |_| fallback(1));
    match &read {
        Some(v) => assert_eq!(&served, v, "get_or_compute disagrees with get_archived"),
        None => assert_eq!(served, fallback(1)),
    }
    // The row now holds key 1's entry (the stored one, or the fallback that replaced
    // it): key 2 shares the row and must never read it.
    assert_eq!(m.get_or_compute(&2, |_| fallback(2)), fallback(2));
    let _ = cache.check_integrity().expect("the check runs");
    // The cache keeps working.
    m.invalidate_key(&1).expect("invalidation works");
    m.invalidate_key(&2).expect("invalidation works");
    assert_eq!(m.get_or_compute(&1, |_| fallback(1)), fallback(1));
    assert_eq!(m.get_or_compute(&1, |_| unreachable!()), fallback(1));
}
