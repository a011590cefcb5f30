//! Memoizes a deliberately slow function into a redb file under the system temp dir.
//!
//! Run it twice: the first run computes (slow), the second is served from the file.
//!
//! ```sh
//! cargo run --release --example quickstart
//! cargo run --release --example quickstart   # again: served from the file
//! ```

use std::process::ExitCode;
use std::time::{Duration, Instant};

use fresco_memoize::{Cache, Fingerprint};

/// What the slow function returns.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Fingerprint, Debug)]
struct Report {
    number: u64,
    divisors: Vec<u64>,
}

/// Pretends to be expensive: 200 ms per call.
fn slow_report(number: u64) -> Report {
    std::thread::sleep(Duration::from_millis(200));
    Report {
        number,
        divisors: (1..=number).filter(|d| number.is_multiple_of(*d)).collect(),
    }
}

/// Errors are printed with `Display`, which says what to do (`fn main() -> Result`
/// would print their `Debug` form).
fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), fresco_memoize::Error> {
    let path = std::env::temp_dir().join("fresco-memoize-quickstart.memo");
    let cache = Cache::open(&path)?;
    let reports = cache
        .memoizer::<u64, Report>("quickstart.reports")
        .build()?;

    let start = Instant::now();
    let mut computed = 0;
    for number in [12, 30, 97, 360, 1024] {
        let report = reports.get_or_compute(&number, |n| {
            computed += 1;
            slow_report(*n)
        });
        println!(
            "{:>5} has {:>2} divisors",
            report.number,
            report.divisors.len()
        );
    }
    let elapsed = start.elapsed();

    // Zero-copy: read a stored value in place, without deserializing it.
    if let Some(hit) = reports.get_archived(&360)? {
        println!(
            "archived hit: 360's largest proper divisor is {}",
            hit.divisors[hit.divisors.len() - 2]
        );
    }

    println!();
    println!("cache file: {}", path.display());
    if computed == 0 {
        println!("all 5 served from the file in {elapsed:.2?} (no computation ran)");
    } else {
        println!("computed {computed} of 5 in {elapsed:.2?}; run again to be served from the file");
    }
    println!("stats: {:?}", reports.stats());
    Ok(())
}
