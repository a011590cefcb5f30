use fresco_memoize::memoize;

#[memoize(zonekey = |n: &u64| *n)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
