use fresco_memoize::memoize;

struct Counter(u64);

impl Counter {
    // `async` is memoized like any fn; a receiver must still be `&self`.
    #[memoize]
    async fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn main() {}
