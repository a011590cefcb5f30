//! A desktop program's thumbnail cache under a byte budget: thumbnails of about 50 KiB,
//! rendered by four threads browsing sixteen folders (some far more often than others),
//! 32 MB of thumbnails in all for a file allowed 8 MiB. Every thumbnail depends on its
//! folder (a zone key), so one call drops a folder whose files changed. The file's size
//! is printed after each of two runs, the second one reopening the file: it stays
//! within its budget (ARCHITECTURE.md, "Byte budget", allows 5/4 of it at most).
//!
//! ```sh
//! cargo run --release --example thumbnails
//! cargo run --release --example thumbnails -- --reset # start over
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use fresco_memoize::{Cache, Memoizer, Store, Zone};

const BUDGET: u64 = 8 << 20;
const FOLDERS: u32 = 16;
const FILES: u32 = 40;
const THUMBNAIL: usize = 50 << 10;

/// "Renders" the thumbnail of `file` in `folder`: 50 KiB of pixels.
fn render(folder: u32, file: u32) -> Vec<u8> {
    let mut pixels = vec![0u8; THUMBNAIL];
    let mut x = (folder as u64) << 32 | file as u64;
    for chunk in pixels.chunks_mut(8) {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    pixels
}

/// Thumbnails by (folder, file).
type Thumbnails = Memoizer<(u32, u32), Vec<u8>>;

fn open(path: &Path) -> fresco_memoize::Result<(Cache, Zone, Thumbnails)> {
    let cache = Cache::builder().max_bytes(Some(BUDGET)).open(path)?;
    let folders = cache.zone("folders")?;
    let thumbnails = cache
        .memoizer::<(u32, u32), Vec<u8>>("thumbnails")
        .store(Store::Persistent)
        .zone_key(&folders, |&(folder, _file): &(u32, u32)| folder)
        .build()?;
    Ok((cache, folders, thumbnails))
}

/// Four threads browse: each visit shows a whole folder; folder `f` is visited about
/// twice as often as folder `f + 1`... up to a point (a simple skewed walk).
fn browse(thumbnails: &Thumbnails, run: u64) -> (u64, u64) {
    let rendered = AtomicU64::new(0);
    let shown = AtomicU64::new(0);
    std::thread::scope(|s| {
        for thread in 0..4u64 {
            let (rendered, shown) = (&rendered, &shown);
            s.spawn(move || {
                let mut x = run * 1000 + thread + 1;
                for _ in 0..60 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    // Folder 0 most often, folder 15 rarely.
                    let folder =
                        (x % 0x10000).trailing_zeros().min(FOLDERS - 1) ^ ((x >> 20) % 2) as u32;
                    for file in 0..FILES {
                        let thumb = thumbnails.get_or_compute(&(folder, file), |&(d, f)| {
                            rendered.fetch_add(1, Ordering::Relaxed);
                            render(d, f)
                        });
                        assert_eq!(thumb.len(), THUMBNAIL);
                        shown.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (shown.into_inner(), rendered.into_inner())
}

fn report(cache: &Cache, thumbnails: &Thumbnails, label: &str) {
    let size = std::fs::metadata(cache.path().expect("a file")).map_or(0, |m| m.len());
    let stats = thumbnails.stats();
    println!(
        "{label}: file {:.1} MiB for a budget of {:.1} MiB ({:.0} %); {} thumbnails kept, \
         {:.1} MiB charged; {} evicted for the budget, {} dropped with their folder",
        size as f64 / (1 << 20) as f64,
        BUDGET as f64 / (1 << 20) as f64,
        size as f64 * 100.0 / BUDGET as f64,
        stats.entries.unwrap_or(0),
        stats.bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
        stats.budget_evictions,
        stats.invalidations,
    );
}

fn main() -> fresco_memoize::Result<()> {
    let path = std::env::temp_dir().join("fresco-memoize-thumbnails.memo");
    if std::env::args().any(|a| a == "--reset") {
        let _ = std::fs::remove_file(&path);
        println!("removed {}", path.display());
        return Ok(());
    }
    println!("cache file {}", path.display());
    for run in 1..=2 {
        let (cache, folders, thumbnails) = open(&path)?;
        let (shown, rendered) = browse(&thumbnails, run);
        println!(
            "run {run}: {shown} thumbnails shown, {rendered} rendered ({:.0} % from the cache)",
            (shown - rendered) as f64 * 100.0 / shown as f64
        );
        // Folder 0's files changed: one call drops its thumbnails, and nothing else.
        let dropped = folders.invalidate(&0u32)?;
        println!("run {run}: folder 0 changed, {dropped} thumbnails dropped");
        cache.flush()?;
        cache.flush()?;
        report(&cache, &thumbnails, &format!("run {run}"));
    }
    Ok(())
}
