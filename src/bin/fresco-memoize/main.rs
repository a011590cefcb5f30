//! `fresco-memoize`: look into and maintain a fresco-memoize cache file.
//!
//! Every command opens an existing file only (it never creates one) and fails with a
//! message and exit status 1 when the file is missing, damaged, not a cache, or held
//! open by a running program. `stats` and `check` never write to the file (they read it
//! read-only or check a scratch copy); the commands that change it (`invalidate`,
//! `purge-expired`, `compact`) first check it the way `check` does and refuse a damaged
//! one, which they could only make worse. `--json` prints machine-readable output
//! instead of tables.

mod key;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{ArgGroup, Parser, Subcommand};
use fresco_memoize::{Cache, CacheInfo, Error, OnCorruption};
use serde::Serialize;

use key::Key;

/// Look into and maintain a fresco-memoize cache file.
#[derive(Parser)]
#[command(name = "fresco-memoize", version)]
struct Cli {
    /// Print JSON instead of human-readable text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Memoizers (entries, bytes, expired entries, zones) and zones of a cache file.
    Stats {
        /// The cache file.
        file: PathBuf,
    },
    /// Remove the entries of one memoizer or one zone, or one key of them.
    #[command(group(ArgGroup::new("target").required(true).args(["memoizer", "zone"])))]
    Invalidate {
        /// The cache file.
        file: PathBuf,
        /// The memoizer to clear (all its entries, or the one under --key).
        #[arg(long)]
        memoizer: Option<String>,
        /// The zone to clear (all its members, or the entries depending on --key).
        #[arg(long)]
        zone: Option<String>,
        /// A key as JSON: the memoizer's stored key (after its keyfunc), or a zone's
        /// dependency key. `42`, `"text"`, `[1, "en"]`; `{"$i64": 5}` and other `$` tags
        /// for what plain JSON cannot tell apart (see the README).
        #[arg(long, allow_hyphen_values = true)]
        key: Option<String>,
    },
    /// Remove every entry past its deadline.
    PurgeExpired {
        /// The cache file.
        file: PathBuf,
    },
    /// Give the file's free pages back to the file system.
    Compact {
        /// The cache file.
        file: PathBuf,
    },
    /// Verify redb's checksums and the cache's index invariants.
    Check {
        /// The cache file.
        file: PathBuf,
    },
}

/// What went wrong, as printed: a clear sentence per case.
struct Failure(String);

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure(match &e {
            Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                format!("no cache file at {}", path.display())
            }
            Error::Corrupted { path, detail } => {
                format!("cache file {} is damaged: {detail}", path.display())
            }
            Error::NotACache { path, reason } => {
                format!(
                    "{} is not a fresco-memoize cache ({reason})",
                    path.display()
                )
            }
            Error::NewerFormat {
                path,
                found,
                supported,
            } => format!(
                "{} has format version {found}; this fresco-memoize reads up to {supported}",
                path.display()
            ),
            Error::AlreadyOpen { path } => format!(
                "cache file {} is open in a running program; close it first",
                path.display()
            ),
            _ => e.to_string(),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(Failure(message)) => {
            if cli.json {
                let out = serde_json::json!({ "error": message });
                println!("{out}");
            }
            eprintln!("fresco-memoize: error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses to change a file that `check` would find damaged.
fn refuse_damaged(file: &Path) -> Result<(), Failure> {
    let check = Cache::verify_file(file)?;
    if check.is_ok() {
        return Ok(());
    }
    let what = if check.redb_repaired {
        "redb's checksums fail".to_string()
    } else {
        format!("{} index problems", check.invariants.problems.len())
    };
    Err(Failure(format!(
        "cache file {} is damaged ({what}); it was not changed - `fresco-memoize check` \
         lists the damage; the program that owns the file moves it aside when it meets \
         it, or delete it",
        file.display()
    )))
}

/// Whether running programs share the file (`CacheBuilder::shared(true)`): the command
/// then joins them in that mode instead of refusing a busy file.
fn shared_by_programs(file: &Path) -> bool {
    matches!(
        Cache::inspect_file(file),
        Err(Error::ModeMismatch { shared: false, .. })
    )
}

/// Opens a file for a command that changes it, after checking it is sound - or, if
/// running programs share it, as one more process of theirs (they check the file
/// themselves; a copy of a file being written could not be checked anyway).
fn open(file: &Path) -> Result<Cache, Failure> {
    let builder = Cache::builder()
        .on_corruption(OnCorruption::Fail)
        .sweep_interval(None);
    if shared_by_programs(file) {
        return Ok(builder.shared(true).open_existing(file)?);
    }
    refuse_damaged(file)?;
    Ok(builder.open_existing(file)?)
}

fn run(cli: &Cli) -> Result<ExitCode, Failure> {
    match &cli.command {
        Command::Stats { file } => {
            let info = match shared_by_programs(file) {
                true => open(file)?.inspect()?,
                false => Cache::inspect_file(file)?,
            };
            if cli.json {
                print_json(&StatsJson::from(&info));
            } else {
                print_stats(&info);
            }
        }
        Command::Invalidate {
            file,
            memoizer,
            zone,
            key,
        } => {
            let key = key
                .as_deref()
                .map(Key::parse)
                .transpose()
                .map_err(Failure)?;
            let cache = open(file)?;
            let removed = match (memoizer, zone) {
                (Some(name), _) => invalidate_memoizer(&cache, file, name, key.as_ref())?,
                (_, Some(name)) => invalidate_zone(&cache, file, name, key.as_ref())?,
                (None, None) => unreachable!("clap requires --memoizer or --zone"),
            };
            cache.flush()?;
            let what = match (memoizer, zone) {
                (Some(m), _) => format!("memoizer {m:?}"),
                (_, z) => format!("zone {:?}", z.as_deref().unwrap_or_default()),
            };
            report(cli.json, removed, &format!("from {what}"));
        }
        Command::PurgeExpired { file } => {
            let cache = open(file)?;
            let removed = cache.purge_expired()?;
            cache.flush()?;
            report(cli.json, removed, "past their deadline");
        }
        Command::Compact { file } => {
            refuse_damaged(file)?;
            let r = Cache::compact_file(file)?;
            if cli.json {
                print_json(&serde_json::json!({
                    "bytes_before": r.bytes_before,
                    "bytes_after": r.bytes_after,
                }));
            } else {
                println!(
                    "compacted {}: {} -> {}",
                    file.display(),
                    human_bytes(r.bytes_before),
                    human_bytes(r.bytes_after)
                );
            }
        }
        Command::Check { file } => {
            let check = Cache::verify_file(file)?;
            let inv = &check.invariants;
            if cli.json {
                print_json(&serde_json::json!({
                    "ok": check.is_ok(),
                    "redb_repaired": check.redb_repaired,
                    "memoizers": inv.memoizers,
                    "entries": inv.entries,
                    "dependency_rows": inv.dep_rows,
                    "expiry_rows": inv.expiry_rows,
                    "problems": inv.problems,
                }));
            } else {
                println!(
                    "redb checksums   {}",
                    if check.redb_repaired {
                        "FAILED (repaired: commits that were not yet durable were rolled back)"
                    } else {
                        "ok"
                    }
                );
                println!(
                    "index invariants {}",
                    if inv.is_ok() { "ok" } else { "VIOLATED" }
                );
                println!("memoizers        {}", inv.memoizers);
                println!("entries          {}", inv.entries);
                println!("dependency rows  {}", inv.dep_rows);
                println!("expiry rows      {}", inv.expiry_rows);
                for p in &inv.problems {
                    println!("problem: {p}");
                }
            }
            if !check.is_ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn known<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<_> = names.collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn invalidate_memoizer(
    cache: &Cache,
    file: &Path,
    name: &str,
    key: Option<&Key>,
) -> Result<u64, Failure> {
    let removed = match key {
        None => cache.invalidate_memoizer(name)?,
        Some(key) => cache.invalidate_memoizer_key(name, key)?.map(u64::from),
    };
    removed.ok_or_else(|| {
        let info = cache.inspect().ok();
        let names = info
            .iter()
            .flat_map(|i| i.memoizers.iter().map(|m| m.name.as_str()));
        Failure(format!(
            "no memoizer named {name:?} in {} (memoizers: {})",
            file.display(),
            known(names)
        ))
    })
}

fn invalidate_zone(
    cache: &Cache,
    file: &Path,
    name: &str,
    key: Option<&Key>,
) -> Result<u64, Failure> {
    // `Cache::zone` would create a missing zone; look first.
    let info = cache.inspect()?;
    if !info.zones.iter().any(|z| z.name == name) {
        return Err(Failure(format!(
            "no zone named {name:?} in {} (zones: {})",
            file.display(),
            known(info.zones.iter().map(|z| z.name.as_str()))
        )));
    }
    let zone = cache.zone(name)?;
    Ok(match key {
        None => zone.invalidate_all()?,
        Some(key) => zone.invalidate(key)?,
    })
}

fn report(json: bool, removed: u64, what: &str) {
    if json {
        print_json(&serde_json::json!({ "removed": removed }));
    } else {
        let s = if removed == 1 { "y" } else { "ies" };
        println!("removed {removed} entr{s} {what}");
    }
}

fn print_json(value: &impl Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("fresco-memoize: error: {e}"),
    }
}

#[derive(Serialize)]
struct StatsJson {
    path: Option<String>,
    file_bytes: Option<u64>,
    format_version: u64,
    entries: u64,
    expired: u64,
    stored_bytes: u64,
    max_bytes: Option<u64>,
    charged_bytes: u64,
    budget_evictions: u64,
    memoizers: Vec<MemoizerJson>,
    zones: Vec<ZoneJson>,
}

#[derive(Serialize)]
struct MemoizerJson {
    name: String,
    entries: u64,
    stored_bytes: u64,
    charged_bytes: u64,
    expired: u64,
    budget_evictions: u64,
    /// Its own byte budget at its last eviction for it.
    max_bytes: Option<u64>,
    zones: Vec<String>,
}

#[derive(Serialize)]
struct ZoneJson {
    name: String,
    members: Vec<String>,
    dependency_rows: u64,
}

impl From<&CacheInfo> for StatsJson {
    fn from(info: &CacheInfo) -> Self {
        StatsJson {
            path: info.path.as_ref().map(|p| p.display().to_string()),
            file_bytes: info.file_bytes,
            format_version: info.format_version,
            entries: info.entries(),
            expired: info.expired(),
            stored_bytes: info.stored_bytes(),
            max_bytes: info.max_bytes,
            charged_bytes: info.charged_bytes(),
            budget_evictions: info.budget_evictions(),
            memoizers: info
                .memoizers
                .iter()
                .map(|m| MemoizerJson {
                    name: m.name.clone(),
                    entries: m.entries,
                    stored_bytes: m.stored_bytes,
                    charged_bytes: m.charged_bytes,
                    expired: m.expired,
                    budget_evictions: m.budget_evictions,
                    max_bytes: m.max_bytes,
                    zones: m.zones.clone(),
                })
                .collect(),
            zones: info
                .zones
                .iter()
                .map(|z| ZoneJson {
                    name: z.name.clone(),
                    members: z.members.clone(),
                    dependency_rows: z.dependency_rows,
                })
                .collect(),
        }
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Prints rows under a header, each column as wide as its widest cell; columns listed
/// in `right` are right-aligned (numbers).
fn table(header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let pad = w - cell.chars().count();
            if right.contains(&i) {
                out.push_str(&" ".repeat(pad));
                out.push_str(cell);
            } else {
                out.push_str(cell);
                out.push_str(&" ".repeat(pad));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

fn print_stats(info: &CacheInfo) {
    if let Some(path) = &info.path {
        println!("file       {}", path.display());
    }
    if let Some(bytes) = info.file_bytes {
        println!("size       {} ({bytes} bytes)", human_bytes(bytes));
    }
    println!("format     {}", info.format_version);
    println!(
        "entries    {} ({} expired), {} stored",
        info.entries(),
        info.expired(),
        human_bytes(info.stored_bytes())
    );
    let budget = info
        .max_bytes
        .map_or_else(|| "none recorded".to_string(), human_bytes);
    println!(
        "budget     {budget}: {} charged, {} evicted for the budgets",
        human_bytes(info.charged_bytes()),
        info.budget_evictions()
    );
    println!();
    let rows: Vec<Vec<String>> = info
        .memoizers
        .iter()
        .map(|m| {
            vec![
                m.name.clone(),
                m.entries.to_string(),
                human_bytes(m.stored_bytes),
                human_bytes(m.charged_bytes),
                m.max_bytes.map_or_else(|| "-".to_string(), human_bytes),
                m.expired.to_string(),
                m.budget_evictions.to_string(),
                m.zones.join(", "),
            ]
        })
        .collect();
    table(
        &[
            "MEMOIZER", "ENTRIES", "BYTES", "CHARGED", "BUDGET", "EXPIRED", "EVICTED", "ZONES",
        ],
        &rows,
        &[1, 2, 3, 4, 5, 6],
    );
    println!();
    let rows: Vec<Vec<String>> = info
        .zones
        .iter()
        .map(|z| {
            vec![
                z.name.clone(),
                z.dependency_rows.to_string(),
                z.members.join(", "),
            ]
        })
        .collect();
    table(&["ZONE", "DEPENDENCY ROWS", "MEMBERS"], &rows, &[1]);
}
