use fresco_memoize::memoize;

static CACHE: u32 = 7;

#[memoize(cache = CACHE)]
fn f(n: u64) -> u64 {
    n
}

fn main() {}
