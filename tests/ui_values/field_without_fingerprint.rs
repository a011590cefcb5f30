// A derived value type whose field type has no `Fingerprint`.
use fresco_memoize::Fingerprint;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct Point {
    x: f64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint)]
struct Route {
    name: String,
    start: Point,
}

fn main() {}
