// A memoizer of a type with rkyv's derives but no `Fingerprint`.
use fresco_memoize::Cache;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Synopsis {
    title: String,
}

fn main() {
    let cache = Cache::in_memory().unwrap();
    let _m = cache.memoizer::<u64, Synopsis>("synopsis");
}
