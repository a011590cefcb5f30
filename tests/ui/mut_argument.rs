use fresco_memoize::memoize;

#[memoize]
fn f(v: &mut Vec<u64>) -> u64 {
    v.pop().unwrap_or(0)
}

fn main() {}
