use fresco_memoize::memoize;

#[memoize(expiry = 10)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
