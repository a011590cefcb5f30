#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| fresco_memoize_fuzz::model::run(data));
