// A memoized value must be `Send`: an `Rc` has a `Fingerprint` and rkyv impls, but no.
use fresco_memoize::Cache;
use std::rc::Rc;

fn main() {
    let cache = Cache::in_memory().unwrap();
    let _m = cache.memoizer::<u64, Rc<str>>("shared");
}
