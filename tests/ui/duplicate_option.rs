use fresco_memoize::memoize;

#[memoize(max_hits = 1, max_hits = 2)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
