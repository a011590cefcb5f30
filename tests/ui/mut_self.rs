use fresco_memoize::memoize;

#[derive(serde::Serialize)]
struct Counter(u64);

impl Counter {
    #[memoize]
    fn next(&mut self) -> u64 {
        self.0 += 1;
        self.0
    }
}

fn main() {}
