use fresco_memoize::{Cache, Zone, memoize};
use std::sync::LazyLock;

static CACHE: LazyLock<Cache> = LazyLock::new(|| Cache::in_memory().unwrap());
static AUTHORS: LazyLock<Zone> = LazyLock::new(|| CACHE.zone("Authors").unwrap());

#[memoize(cache = CACHE, zone = AUTHORS, zonekey = |s: &String| s.len())]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
