//! Misuse of `#[memoize]` is a compile error pointing at the offending tokens. Each case
//! in tests/ui/ is compiled and its diagnostics compared with the `.stderr` beside it
//! (regenerate with `TRYBUILD=overwrite cargo test --test macro_ui` after a deliberate
//! change, and read the diff).

#[test]
fn misuse_is_a_compile_error_at_the_offending_span() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
