//! Two `Cache`s opening one damaged file at the same moment (issue #11, D6).
//!
//! Both find the file damaged; under `OnCorruption::Recreate` each wants to move it aside
//! and start afresh. The move used to rename whatever was at the path by then, with no
//! identity check, so the second could move the first one's fresh file aside: both
//! opened, one kept writing into `<file>.corrupt-*`, and a flushed value was lost (1 trial
//! in 40). Guards: only the file found damaged is moved aside, never overwriting a name;
//! so at most one of the two opens the path, and every value it flushed is in the file
//! found at the path afterwards.

use std::path::Path;
use std::sync::{Arc, Barrier};

use fresco_memoize::{Cache, Error};

const TRIALS: usize = 60;

fn damaged_template(dir: &Path) -> Vec<u8> {
    let path = dir.join("template.memo");
    {
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u64, String>("m").build().unwrap();
        for k in 0..300 {
            m.get_or_compute(&k, |k| format!("{k:>40}"));
        }
        cache.flush().unwrap();
    }
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.truncate(bytes.len() / 2);
    bytes
}

#[test]
fn two_caches_opening_one_damaged_file_never_both_win() {
    let dir = tempfile::tempdir().unwrap();
    let template = damaged_template(dir.path());
    for trial in 0..TRIALS {
        let path = dir.path().join(format!("race-{trial}.memo"));
        std::fs::write(&path, &template).unwrap();
        let barrier = Arc::new(Barrier::new(2));
        let racers: Vec<_> = (0..2u64)
            .map(|who| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let cache = match Cache::builder().sweep_interval(None).open(&path) {
                        Ok(cache) => cache,
                        Err(Error::AlreadyOpen { .. }) => return None,
                        Err(e) => panic!("trial {trial}: {e}"),
                    };
                    let m = cache.memoizer::<u64, String>("m").build().unwrap();
                    let value = format!("stored by racer {who}");
                    m.get_or_compute(&(1_000 + who), |_| value.clone());
                    cache.flush().unwrap();
                    // Kept open until both racers are done.
                    Some((who, value, cache, m))
                })
            })
            .collect();
        let won: Vec<_> = racers
            .into_iter()
            .filter_map(|r| r.join().unwrap())
            .collect();
        assert!(won.len() <= 1, "trial {trial}: both caches opened the path");
        let stored: Vec<_> = won
            .into_iter()
            .map(|(who, value, ..)| (who, value))
            .collect();
        let cache = Cache::open(&path).unwrap();
        let m = cache.memoizer::<u64, String>("m").build().unwrap();
        for (who, value) in stored {
            assert_eq!(
                m.get_archived(&(1_000 + who))
                    .unwrap()
                    .as_deref()
                    .map(|s| s.as_str()),
                Some(value.as_str()),
                "trial {trial}: a flushed value is not in the file at the path"
            );
        }
    }
}
