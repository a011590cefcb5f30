use fresco_memoize::memoize;

#[memoize]
fn log(line: &str) {
    println!("{line}");
}

fn main() {}
