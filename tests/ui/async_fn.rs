use fresco_memoize::memoize;

#[memoize]
async fn f(n: u64) -> u64 {
    n
}

fn main() {}
