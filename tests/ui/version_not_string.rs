use fresco_memoize::memoize;

#[memoize(version = 2)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
