//! Replays the fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets' own logic,
//! on stable, in every `cargo test`, plus a few hundred inputs from a fixed-seed generator.
//!
//! Guards every finding of the fuzzers (each crash input is kept in the corpus) and the
//! properties the targets check: against a reference model, no stale, damaged, foreign or
//! expired value is served under any sequence of operations, faults and reopens, and the
//! file's invariants hold after every step; arbitrary bytes stored as an entry never
//! panic and never read as a value they do not checksum to.

#[path = "../fuzz/src/decode.rs"]
mod decode;
#[path = "../fuzz/src/model.rs"]
mod model;

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    inputs.sort();
    assert!(!inputs.is_empty(), "empty corpus in {}", dir.display());
    inputs
}

/// Inputs from a fixed-seed xorshift generator, so CI covers more than the corpus.
fn generated(n: usize, max_len: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = (next() as usize) % max_len;
            (0..len).map(|_| next() as u8).collect()
        })
        .collect()
}

fn replay(target: &str, run: fn(&[u8]), extra: Vec<Vec<u8>>) {
    for (name, input) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&input));
        assert!(outcome.is_ok(), "{target} corpus input {name} failed");
    }
    for (i, input) in extra.into_iter().enumerate() {
        let outcome = std::panic::catch_unwind(|| run(&input));
        assert!(
            outcome.is_ok(),
            "{target} generated input {i} failed: {input:02x?}"
        );
    }
}

#[test]
fn model_corpus_replays() {
    replay("model", model::run, generated(60, 160, 0x5eed_0001));
}

#[test]
fn decode_corpus_replays() {
    replay("decode", decode::run, generated(150, 200, 0x5eed_0002));
}
