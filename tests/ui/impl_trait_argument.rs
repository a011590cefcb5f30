use fresco_memoize::memoize;

#[memoize]
fn f(n: impl Into<u64>) -> u64 {
    n.into()
}

fn main() {}
