// A memoizer of a type with `Fingerprint` but none of rkyv's derives.
use fresco_memoize::{Cache, Fingerprint};

#[derive(Fingerprint)]
struct Synopsis {
    title: String,
}

fn main() {
    let cache = Cache::in_memory().unwrap();
    let _m = cache.memoizer::<u64, Synopsis>("synopsis");
}
