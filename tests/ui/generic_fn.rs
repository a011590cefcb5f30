use fresco_memoize::memoize;

#[memoize]
fn f<T: Into<u64>>(n: T) -> u64 {
    n.into()
}

fn main() {}
