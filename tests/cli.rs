//! The `fresco-memoize` command on real cache files written by the library: stats as an
//! aligned table and as JSON, invalidation by memoizer, zone and JSON key (every key
//! shape the README documents, checked against the Rust key it must encode like),
//! purge-expired, compact, check, and a clear message with exit status 1 for a missing,
//! foreign, damaged or busy file - which the command never creates, moves or rewrites.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fresco_memoize::{Cache, ManualClock};
use serde::Serialize;

fn fm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fresco-memoize"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = fm(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok(&all)).unwrap()
}

fn fails(args: &[&str], message: &str) {
    let o = fm(args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", stdout(&o));
    assert!(
        stderr(&o).contains(message),
        "{args:?}: expected {message:?} in {:?}",
        stderr(&o)
    );
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A cache file with three memoizers and two zones. `books.price` entries were written
/// an hour ago with a 10 s lifetime: expired for the command's (real) clock.
fn library(dir: &Path) -> PathBuf {
    let path = dir.join("library.memo");
    let cache = Cache::builder()
        .clock(ManualClock::new(unix_ms() - 3_600_000))
        .open(&path)
        .unwrap();
    let authors = cache.zone("Authors").unwrap();
    let books = cache.zone("Books").unwrap();
    let synopsis = cache
        .memoizer::<u64, String>("books.synopsis")
        .zone(&books)
        .zone_key(&authors, |book: &u64| book / 10)
        .build()
        .unwrap();
    let price = cache
        .memoizer::<u64, u64>("books.price")
        .expires(Duration::from_secs(10))
        .zone(&books)
        .build()
        .unwrap();
    let bio = cache
        .memoizer::<(u64, String), String>("authors.bio")
        .zone_key(&authors, |(author, _lang): &(u64, String)| *author)
        .build()
        .unwrap();
    for book in 0..30u64 {
        synopsis.get_or_compute(&book, |b| format!("synopsis of book {b}"));
    }
    for book in 0..5u64 {
        price.get_or_compute(&book, |b| b * 100);
    }
    for author in 0..3u64 {
        for lang in ["en", "fr"] {
            bio.get_or_compute(&(author, lang.to_string()), |(a, l)| format!("{a} {l}"));
        }
    }
    path
}

/// Entries of `memoizer` in the file, read through the library.
fn entries(path: &Path, memoizer: &str) -> u64 {
    let cache = Cache::builder().open_existing(path).unwrap();
    let info = cache.inspect().unwrap();
    info.memoizers
        .iter()
        .find(|m| m.name == memoizer)
        .map_or(0, |m| m.entries)
}

#[test]
fn stats_prints_an_aligned_table_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    let text = ok(&["stats", s(&path)]);
    assert!(text.contains("entries    41 (5 expired)"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.starts_with("MEMOIZER"))
        .unwrap();
    let rows = &lines[header..header + 4];
    // Right-aligned numbers end under their header; names start in column 0.
    let end_of = |l: &str, h: &str| lines[header].find(h).unwrap() + h.len() <= l.len();
    for row in rows {
        assert!(end_of(row, "EXPIRED"), "{row}");
    }
    let synopsis = rows
        .iter()
        .find(|r| r.starts_with("books.synopsis"))
        .unwrap();
    let entries_end = lines[header].find("ENTRIES").unwrap() + "ENTRIES".len();
    assert_eq!(&synopsis[entries_end - 2..entries_end], "30", "{text}");
    assert!(synopsis.ends_with("Authors, Books"), "{synopsis}");
    assert!(text.contains("ZONE"), "{text}");

    let j = json(&["stats", s(&path)]);
    assert_eq!(j["entries"], 41);
    assert_eq!(j["expired"], 5);
    let memoizers = j["memoizers"].as_array().unwrap();
    let price = memoizers
        .iter()
        .find(|m| m["name"] == "books.price")
        .unwrap();
    assert_eq!(price["entries"], 5);
    assert_eq!(price["expired"], 5);
    assert!(price["stored_bytes"].as_u64().unwrap() > 0);
    let authors = j["zones"]
        .as_array()
        .unwrap()
        .iter()
        .find(|z| z["name"] == "Authors")
        .unwrap();
    assert_eq!(authors["dependency_rows"], 36, "30 synopses + 6 bios");
    assert_eq!(
        authors["members"],
        serde_json::json!(["authors.bio", "books.synopsis"])
    );
}

#[test]
fn invalidate_by_memoizer_zone_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    let p = s(&path);
    assert_eq!(
        ok(&[
            "invalidate",
            p,
            "--memoizer",
            "books.synopsis",
            "--key",
            "7"
        ])
        .trim(),
        "removed 1 entry from memoizer \"books.synopsis\""
    );
    assert_eq!(
        json(&[
            "invalidate",
            p,
            "--memoizer",
            "books.synopsis",
            "--key",
            "7"
        ])["removed"],
        0
    );
    assert_eq!(entries(&path, "books.synopsis"), 29);
    // Author 1: books 10..20 (one already gone? no: book 7 is author 0) and two bios.
    assert_eq!(
        json(&["invalidate", p, "--zone", "Authors", "--key", "1"])["removed"],
        12
    );
    assert_eq!(entries(&path, "books.synopsis"), 19);
    assert_eq!(entries(&path, "authors.bio"), 4);
    assert_eq!(
        json(&[
            "invalidate",
            p,
            "--memoizer",
            "authors.bio",
            "--key",
            r#"[2, "fr"]"#
        ])["removed"],
        1
    );
    assert_eq!(
        json(&["invalidate", p, "--zone", "Books"])["removed"],
        24,
        "19 synopses and 5 prices"
    );
    assert_eq!(
        json(&["invalidate", p, "--memoizer", "authors.bio"])["removed"],
        3
    );
    assert_eq!(json(&["stats", p])["entries"], 0);
    assert!(ok(&["check", p]).contains("index invariants ok"));

    fails(
        &["invalidate", p, "--memoizer", "nope"],
        "no memoizer named \"nope\"",
    );
    fails(
        &["invalidate", p, "--zone", "Nope"],
        "(zones: Authors, Books",
    );
    fails(
        &["invalidate", p, "--memoizer", "authors.bio", "--key", "[1,"],
        "--key is not JSON",
    );
    fails(
        &[
            "invalidate",
            p,
            "--memoizer",
            "authors.bio",
            "--key",
            r#"{"$u9": 1}"#,
        ],
        "unknown key tag `$u9`",
    );
    // Neither --memoizer nor --zone: a usage error (clap's status 2).
    assert_eq!(fm(&["invalidate", p]).status.code(), Some(2));
}

/// Writes entries under `a` and `b` in a memoizer keyed by `K`, closes the file, removes
/// `a` through the command with `json`, and checks only `a` went.
fn key_shape<K: Serialize + 'static>(dir: &Path, a: K, b: K, json_key: &str) {
    let path = dir.join(format!("key-{}.memo", std::any::type_name::<K>().len()));
    let _ = std::fs::remove_file(&path);
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<K, u32>("m").build().unwrap();
        m.get_or_compute(&a, |_| 1);
        m.get_or_compute(&b, |_| 2);
    }
    let out = json(&["invalidate", s(&path), "--memoizer", "m", "--key", json_key]);
    assert_eq!(
        out["removed"],
        1,
        "{json_key} did not find its {}",
        std::any::type_name::<K>()
    );
    let cache = Cache::open(&path).unwrap();
    let m = cache.memoizer::<K, u32>("m").build().unwrap();
    assert!(m.get_archived(&a).unwrap().is_none());
    assert_eq!(
        m.get_or_compute(&b, |_| 0),
        2,
        "{json_key} removed too much"
    );
}

#[derive(Serialize)]
struct Book {
    id: u64,
    title: String,
}

#[derive(Serialize)]
enum Format {
    #[allow(dead_code)]
    Paper,
    Ebook,
    Audio {
        minutes: u32,
    },
}

#[test]
fn json_keys_encode_like_the_documented_rust_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    key_shape(d, 300u64, 7, "300");
    key_shape(d, 300u32, 7, "300");
    key_shape(d, "Tolstoy".to_string(), "Chekhov".into(), r#""Tolstoy""#);
    key_shape(d, 'x', 'y', r#""x""#);
    key_shape(d, true, false, "true");
    key_shape(
        d,
        (42u64, "en".to_string()),
        (42, "fr".into()),
        r#"[42, "en"]"#,
    );
    key_shape(d, [1u16, 2, 3], [1, 2, 4], "[1, 2, 3]");
    key_shape(
        d,
        Book {
            id: 1,
            title: "War".into(),
        },
        Book {
            id: 1,
            title: "Peace".into(),
        },
        r#"{"id": 1, "title": "War"}"#,
    );
    key_shape(d, -5i64, 5, "-5");
    key_shape(d, 5i64, -5, r#"{"$i64": 5}"#);
    key_shape(d, 200u8, 7, r#"{"$u8": 200}"#);
    key_shape(
        d,
        1u128 << 100,
        7,
        r#"{"$u128": "1267650600228229401496703205376"}"#,
    );
    key_shape(d, 2.5f32, 1.0, r#"{"$f32": 2.5}"#);
    key_shape(d, 2.5f64, 1.0, "2.5");
    key_shape(d, Some(9u64), None, r#"{"$some": 9}"#);
    key_shape(d, None::<u64>, Some(9), r#"{"$none": null}"#);
    key_shape(d, vec![1u32, 2], vec![1], r#"{"$seq": [1, 2]}"#);
    key_shape(d, Format::Ebook, Format::Paper, r#"{"$variant": 1}"#);
    key_shape(
        d,
        Format::Audio { minutes: 90 },
        Format::Audio { minutes: 60 },
        r#"{"$variant": [2, [90]]}"#,
    );
    key_shape(d, ((), 1u8), ((), 2), "[null, 1]");
}

#[test]
fn purge_expired_compact_and_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    let p = s(&path);
    assert_eq!(
        ok(&["purge-expired", p]).trim(),
        "removed 5 entries past their deadline"
    );
    assert_eq!(json(&["stats", p])["expired"], 0);
    assert_eq!(json(&["purge-expired", p])["removed"], 0);

    // Fill and empty a memoizer so the file has free pages to give back.
    {
        let cache = Cache::open(&path).unwrap();
        let big = cache.memoizer::<u64, Vec<u8>>("big").build().unwrap();
        for i in 0..300 {
            big.get_or_compute(&i, |_| vec![7; 16 << 10]);
        }
    }
    ok(&["invalidate", p, "--memoizer", "big"]);
    let c = json(&["compact", p]);
    let (before, after) = (
        c["bytes_before"].as_u64().unwrap(),
        c["bytes_after"].as_u64().unwrap(),
    );
    assert!(after < before, "{before} -> {after}");
    assert!(ok(&["compact", p]).starts_with("compacted"));

    let check = json(&["check", p]);
    assert_eq!(check["ok"], true);
    assert_eq!(check["redb_repaired"], false);
    assert_eq!(check["entries"], 36);
    assert_eq!(check["dependency_rows"], 36);
    let text = ok(&["check", p]);
    assert!(text.contains("redb checksums   ok"), "{text}");
    assert!(text.contains("index invariants ok"), "{text}");
}

#[test]
fn check_reports_a_violated_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    // A dangling expiry row, written behind the library's back.
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&[u8; 40], ()> =
                redb::TableDefinition::new("fresco/expiry");
            let mut t = txn.open_table(def).unwrap();
            t.insert(&[1u8; 40], ()).unwrap();
        }
        txn.commit().unwrap();
    }
    let o = fm(&["check", s(&path)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains("index invariants VIOLATED"),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("problem: expiry row points at missing entry"));
}

#[test]
fn missing_foreign_damaged_and_busy_files_fail_clearly_and_stay_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.memo");
    for cmd in ["stats", "purge-expired", "compact", "check"] {
        fails(&[cmd, s(&missing)], "no cache file at");
        assert!(!missing.exists(), "{cmd} created the file");
    }
    fails(
        &["invalidate", s(&missing), "--memoizer", "m"],
        "no cache file at",
    );
    let o = fm(&["--json", "stats", s(&missing)]);
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(j["error"].as_str().unwrap().contains("no cache file"));
    assert!(!missing.exists());

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a cache").unwrap();
    for cmd in ["stats", "check", "compact"] {
        fails(&[cmd, s(&text)], "is not a fresco-memoize cache");
    }
    assert_eq!(std::fs::read(&text).unwrap(), b"not a cache");

    // A cache file whose pages past the header are zeroed.
    let damaged = library(dir.path());
    let mut bytes = std::fs::read(&damaged).unwrap();
    for b in &mut bytes[4096..] {
        *b = 0;
    }
    std::fs::write(&damaged, &bytes).unwrap();
    for cmd in ["stats", "check"] {
        let o = fm(&[cmd, s(&damaged)]);
        assert_eq!(o.status.code(), Some(1), "{cmd}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("fresco-memoize: error:"),
            "{}",
            stderr(&o)
        );
    }
    let siblings: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !siblings.iter().any(|n| n.contains("corrupt")),
        "moved aside: {siblings:?}"
    );

    let busy_dir = tempfile::tempdir().unwrap();
    let busy = library(busy_dir.path());
    let cache = Cache::open(&busy).unwrap();
    fails(&["stats", s(&busy)], "is open in a running program");
    drop(cache);
    ok(&["stats", s(&busy)]);
}

/// Issue #11, D8: a malformed `--key` is a clear error naming the problem, and nothing is
/// removed. It used to be guessed at: an object with several `$` tags was taken as a
/// struct (`{"$some": 1, "$none": null}` removed author 1's entries), an integer beyond
/// 64 bits became a float, an overflowing `$f32` became infinity.
#[test]
fn malformed_keys_are_refused_and_remove_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    let p = s(&path);
    let before: Vec<u64> = ["books.synopsis", "authors.bio"]
        .iter()
        .map(|m| entries(&path, m))
        .collect();
    for (target, key, message) in [
        (
            ["--zone", "Authors"],
            r#"{"$some": 1, "$none": null}"#,
            "must have that one key only",
        ),
        (
            ["--zone", "Authors"],
            r#"{"$u64": 1, "id": 2}"#,
            "must have that one key only",
        ),
        (
            ["--memoizer", "books.synopsis"],
            "18446744073709551616",
            "does not fit a 64-bit integer",
        ),
        (
            ["--memoizer", "books.synopsis"],
            "-9223372036854775809",
            "does not fit a 64-bit integer",
        ),
        (
            ["--memoizer", "books.synopsis"],
            r#"{"$f32": 1e39}"#,
            "within f32's range",
        ),
    ] {
        let mut args = vec!["invalidate", p];
        args.extend(target);
        args.extend(["--key", key]);
        fails(&args, message);
    }
    let after: Vec<u64> = ["books.synopsis", "authors.bio"]
        .iter()
        .map(|m| entries(&path, m))
        .collect();
    assert_eq!(before, after, "a refused key removed entries");
    // Tagged integers still take their literal exactly, beyond 64 bits too.
    let o = fm(&[
        "invalidate",
        p,
        "--memoizer",
        "books.synopsis",
        "--key",
        r#"{"$u128": 18446744073709551616}"#,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue #11, D5: the commands that only read leave the file byte-identical (`stats` used
/// to open it read-write and rewrite thousands of bytes; `check` ran redb's repairing
/// check on it), and the commands that change a file refuse a damaged one - damaged
/// pages (redb's checksums fail) or a broken index - with a clear message, instead of
/// rewriting it.
#[test]
fn reading_commands_never_write_and_writing_commands_refuse_damage() {
    let dir = tempfile::tempdir().unwrap();
    let path = library(dir.path());
    let p = s(&path);
    let intact = std::fs::read(&path).unwrap();
    for args in [
        &["stats", p][..],
        &["--json", "stats", p],
        &["check", p],
        &["--json", "check", p],
    ] {
        ok(args);
        assert!(
            std::fs::read(&path).unwrap() == intact,
            "{args:?} wrote to an intact file"
        );
    }

    // Damaged pages: a flipped byte inside a stored value (the file still opens). In
    // every copy of it: a page a commit freed may hold an old copy, which nothing reads.
    let flipped = dir.path().join("flipped.memo");
    let mut bytes = intact.clone();
    let needle = b"synopsis of book 17";
    let copies: Vec<usize> = bytes
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| w == needle)
        .map(|(at, _)| at)
        .collect();
    assert!(!copies.is_empty(), "the value is in the file");
    for at in copies {
        bytes[at + 3] ^= 0x01;
    }
    std::fs::write(&flipped, &bytes).unwrap();

    // A broken index: a dangling expiry row, written behind the library's back.
    let dangling = dir.path().join("dangling.memo");
    std::fs::write(&dangling, &intact).unwrap();
    {
        let db = redb::Database::open(&dangling).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&[u8; 40], ()> =
                redb::TableDefinition::new("fresco/expiry");
            txn.open_table(def).unwrap().insert(&[1u8; 40], ()).unwrap();
        }
        txn.commit().unwrap();
    }

    for damaged in [&flipped, &dangling] {
        let d = s(damaged);
        let before = std::fs::read(damaged).unwrap();
        let o = fm(&["check", d]);
        assert_eq!(o.status.code(), Some(1), "check passes {d}: {}", stdout(&o));
        ok(&["stats", d]);
        for args in [
            &["compact", d][..],
            &["purge-expired", d],
            &["invalidate", d, "--memoizer", "books.synopsis"],
            &["invalidate", d, "--zone", "Authors", "--key", "1"],
        ] {
            fails(args, "is damaged");
        }
        assert!(
            std::fs::read(damaged).unwrap() == before,
            "{d} was written to"
        );
    }
}

/// A file that running programs share (`CacheBuilder::shared(true)`): the command joins
/// them instead of refusing a busy file, and its invalidation of a memoizer it does not
/// build reaches the program's memory tier.
#[test]
fn a_shared_file_is_inspected_and_invalidated_while_a_program_uses_it() {
    use fresco_memoize::Store;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.memo");
    let cache = Cache::builder().shared(true).open(&path).unwrap();
    let m = cache
        .memoizer::<u64, u64>("squares")
        .store(Store::Tiered(100))
        .build()
        .unwrap();
    for k in 0..5 {
        m.get_or_compute(&k, |k| k * k);
    }
    cache.flush().unwrap();
    let stats = json(&["stats", s(&path)]);
    assert_eq!(stats["entries"], 5, "{stats}");
    assert_eq!(
        json(&[
            "invalidate",
            s(&path),
            "--memoizer",
            "squares",
            "--key",
            "3"
        ])["removed"],
        1
    );
    let mut computed = false;
    assert_eq!(
        m.get_or_compute(&3, |_| {
            computed = true;
            10
        }),
        10
    );
    assert!(computed, "the memory tier still served the removed entry");
    assert_eq!(m.get_or_compute(&2, |_| 0), 4);
}

#[test]
fn stats_shows_the_byte_budget_its_charges_and_evictions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thumbs.memo");
    {
        let cache = Cache::builder()
            .max_bytes(Some(1 << 20))
            .open(&path)
            .unwrap();
        let thumbs = cache.memoizer::<u64, Vec<u8>>("thumbs").build().unwrap();
        for k in 0..64u64 {
            thumbs.get_or_compute(&k, |k| vec![*k as u8; 20 << 10]);
        }
    }
    let text = ok(&["stats", s(&path)]);
    assert!(text.contains("budget     1.0 MiB: "), "{text}");
    assert!(text.contains("EVICTED"), "{text}");
    let j = json(&["stats", s(&path)]);
    assert_eq!(j["max_bytes"], 1 << 20);
    let evicted = j["budget_evictions"].as_u64().unwrap();
    let charged = j["charged_bytes"].as_u64().unwrap();
    assert!(evicted > 20, "{evicted} evicted");
    assert!(charged > 0 && charged <= 1 << 20, "{charged} charged");
    let thumbs = &j["memoizers"][0];
    assert_eq!(thumbs["budget_evictions"].as_u64(), Some(evicted));
    assert_eq!(thumbs["charged_bytes"].as_u64(), Some(charged));
    assert_eq!(thumbs["entries"].as_u64().unwrap() + evicted, 64);
}

#[test]
fn stats_shows_a_memoizer_s_own_budget() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("own.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let thumbs = cache
            .memoizer::<u64, Vec<u8>>("thumbs")
            .max_bytes(Some(512 << 10))
            .build()
            .unwrap();
        let free = cache.memoizer::<u64, Vec<u8>>("free").build().unwrap();
        for k in 0..32u64 {
            thumbs.get_or_compute(&k, |k| vec![*k as u8; 20 << 10]);
            free.get_or_compute(&k, |k| vec![*k as u8; 100]);
        }
    }
    let text = ok(&["stats", s(&path)]);
    assert!(text.contains("BUDGET"), "{text}");
    let row = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .to_string()
    };
    assert!(row("thumbs").contains("512.0 KiB"), "{text}");
    assert!(row("free ").contains(" - "), "{text}");
    let j = json(&["stats", s(&path)]);
    // No file budget; the memoizer's own holds its charge.
    assert!(j["max_bytes"].is_null());
    let memoizers = j["memoizers"].as_array().unwrap();
    let thumbs = memoizers.iter().find(|m| m["name"] == "thumbs").unwrap();
    assert_eq!(thumbs["max_bytes"], 512 << 10);
    assert!(thumbs["charged_bytes"].as_u64().unwrap() <= 512 << 10);
    assert!(thumbs["budget_evictions"].as_u64().unwrap() > 0);
    let free = memoizers.iter().find(|m| m["name"] == "free").unwrap();
    assert!(free["max_bytes"].is_null());
    assert_eq!(free["budget_evictions"], 0);
}
