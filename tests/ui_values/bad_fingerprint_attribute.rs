// Malformed `#[fingerprint(...)]` attributes.
use fresco_memoize::Fingerprint;

struct Foreign;

#[derive(Fingerprint)]
struct NotAString {
    #[fingerprint(with = 2)]
    a: Foreign,
}

#[derive(Fingerprint)]
struct UnknownOption {
    #[fingerprint(version = "1")]
    a: Foreign,
}

#[derive(Fingerprint)]
struct Empty {
    #[fingerprint(with = " ")]
    a: Foreign,
}

#[derive(Fingerprint)]
#[fingerprint(with = "x")]
struct OnTheType {
    a: u8,
}

fn main() {}
