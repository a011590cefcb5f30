//! Several processes on one cache file (`CacheBuilder::shared(true)`): this program
//! starts 4 copies of itself as workers, which memoize a slow function into one shared
//! file. Every key is computed once in all (the others wait for it, or find it in the
//! file), then one worker invalidates half the keys through a zone and the others -
//! which hold them in their memory tiers - recompute exactly those.
//!
//! ```sh
//! cargo run --example processes
//! ```

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::time::Duration;

use fresco_memoize::{Cache, Store};

const KEYS: u64 = 40;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("worker") => worker(&args[2]),
        _ => parent(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("processes: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A worker: answers `fill` (memoize every key, in its own order; answers how many it
/// computed), `invalidate D` (the zone's dependency D) and `quit`, one per line.
fn worker(file: &str) -> Result<(), Box<dyn std::error::Error>> {
    let cache = Cache::builder().shared(true).open(file)?;
    // Keys depend on their parity: invalidating 0 removes every even key.
    let parity = cache.zone("parity")?.key(|k: &u64| k % 2);
    let slow_square = cache
        .memoizer::<u64, u64>("slow_square")
        .store(Store::Tiered(100))
        .zone(&parity)
        .build()?;
    let me = std::process::id() as u64;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["fill"] => {
                let mut computed = 0;
                for i in 0..KEYS {
                    let k = (i + me) % KEYS;
                    slow_square.get_or_compute(&k, |k| {
                        computed += 1;
                        std::thread::sleep(Duration::from_millis(20));
                        k * k
                    });
                }
                println!("{computed}");
            }
            ["invalidate", d] => println!("{}", parity.invalidate(&d.parse::<u64>()?)?),
            _ => break,
        }
    }
    Ok(())
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Worker {
    fn send(&mut self, line: &str) -> std::io::Result<()> {
        writeln!(self.stdin, "{line}")?;
        self.stdin.flush()
    }

    fn answer(&mut self) -> Result<u64, Box<dyn std::error::Error>> {
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        Ok(line.trim().parse()?)
    }
}

fn parent() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("fresco-memoize-processes-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("shared.memo");
    let exe = std::env::current_exe()?;
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut child = Command::new(&exe)
            .arg("worker")
            .arg(&file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdin = child.stdin.take().ok_or("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        workers.push(Worker {
            child,
            stdin,
            stdout,
        });
    }
    // All four ask for every key at once.
    for w in &mut workers {
        w.send("fill")?;
    }
    let mut total = 0;
    for (i, w) in workers.iter_mut().enumerate() {
        let n = w.answer()?;
        println!("worker {i} computed {n:2} of {KEYS} keys");
        total += n;
    }
    println!("computations in all 4 processes: {total} (each of the {KEYS} keys once)");

    workers[0].send("invalidate 0")?;
    let removed = workers[0].answer()?;
    println!("worker 0 invalidated the even keys: {removed} entries removed");
    for w in &mut workers[1..] {
        w.send("fill")?;
    }
    let mut again = 0;
    for (i, w) in workers.iter_mut().enumerate().skip(1) {
        let n = w.answer()?;
        println!("worker {i} recomputed {n:2} keys (found the rest in memory or the file)");
        again += n;
    }
    println!(
        "recomputed by workers 1-3 together: {again} (the {} even keys, once)",
        KEYS / 2
    );
    for mut w in workers {
        w.send("quit")?;
        w.child.wait()?;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
