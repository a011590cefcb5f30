//! Fuzz targets for fresco-memoize. The logic lives in `model.rs` and `decode.rs`, which
//! the main crate's `tests/fuzz_corpus.rs` also compiles (by path) to replay the checked-in
//! corpus on stable in every `cargo test`.

pub mod decode;
pub mod model;
