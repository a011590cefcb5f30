//! Single-flight across the processes of a shared cache: which process computes which
//! key, in the board's flight table ([`Board::flights`]), with a kernel lock per process
//! so that a dead holder is known dead at once.
//!
//! - **Owners**: each open claims an owner id (1..=255) by taking the `flock` of its
//!   file `<cache file>-flights/owner-NN`, held for the cache's life, and writes its
//!   process id into it. The kernel releases the lock when the process dies, however it
//!   dies; a lock that can be taken again means its owner is gone. A child the owner
//!   forked inherits the lock and may outlive it: a held lock whose process no longer
//!   runs (`/proc`, on Linux) means gone too. A fresh owner first clears the words its
//!   id left behind (a dead predecessor's flights).
//! - **Words**: a flight is one word of the table, `owner << 56 | tag`, the tag 56 bits
//!   of the memoizer's table id and the key's hash; zero is a free word. The table is
//!   set-associative: a key may sit in any of the 8 words (one cache line) of its bucket.
//! - **Lead**: a caller whose key's tag is in no word of its bucket puts it into the
//!   bucket's first free word with a compare-and-swap, and holds it until its value has
//!   committed (`Multi::settled`); then it clears it. A caller that finds its tag held
//!   by a live owner waits, looking for the value between pauses; held by a dead owner,
//!   it takes the word over with a compare-and-swap (one taker wins).
//! - **One leader**: two callers may take two words for one tag at once (each found the
//!   other's word still free); after taking one, a caller looks at its bucket again and
//!   gives its word back if the tag also sits at a lower index. With sequentially
//!   consistent operations at least one of the two sees the other, and only the higher
//!   index gives way, so exactly one leads.
//!
//! Why not a kernel lock per key: redb's `MultiWriter` mode holds a lead until the
//! value commits, so a process storing distinct keys holds hundreds of flights at once,
//! and a POSIX byte-range lock costs time linear in the locks held on the file (measured
//! here: 1 us per lock and unlock with none held, 23 us with 2500 held). Striped lock
//! files made distinct keys wait for each other's commits (4 processes storing distinct
//! keys: 32 % of one process's throughput, against 58 % with no single-flight at all).
//! A word per flight costs a compare-and-swap to take and one to give back.
//!
//! Nothing here can yield a wrong value: a flight only decides who computes. A full
//! bucket, an owner id that cannot be claimed or a wait that passed its bound makes the
//! caller compute without one (a duplicate computation at worst).

use std::cell::Cell;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::time::{Duration, Instant};

use crate::key::KeyHash;
use crate::shm::Peers;

/// Longest a caller waits for another process's computation of its key before it
/// computes itself (uncoordinated, never wrong): a bound, not a lease.
const FLIGHT_WAIT: Duration = Duration::from_secs(30);
/// First and longest pause between two looks of a waiting caller.
const POLL_FIRST: Duration = Duration::from_millis(1);
const POLL_MAX: Duration = Duration::from_millis(20);
/// Words of a bucket: 64 bytes, one cache line.
const WAYS: usize = 8;
/// Owner ids are 1..=`OWNERS` (zero marks a free word).
const OWNERS: u64 = 255;
const TAG_BITS: u32 = 56;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

thread_local! {
    /// How many computations of shared persistent memoizers this thread is inside.
    static NESTED: Cell<usize> = const { Cell::new(0) };
}

/// Marks this thread as computing for a shared memoizer until dropped (see
/// [`FlightTable::lead`]: nested computations do not wait for other processes).
pub(crate) struct Computing(());

impl Computing {
    pub(crate) fn enter() -> Computing {
        NESTED.with(|n| n.set(n.get() + 1));
        Computing(())
    }
}

impl Drop for Computing {
    fn drop(&mut self) {
        NESTED.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// This process's owner id, and the locked file that proves it alive.
struct Owner {
    id: u64,
    _lock: File,
}

/// The flight table of one shared cache, as this process uses it.
pub(crate) struct FlightTable {
    peers: Arc<Peers>,
    /// Where the owners' lock files live.
    dir: PathBuf,
    /// `None` if no owner id could be claimed: then every caller computes alone.
    owner: Option<Owner>,
}

/// A flight this process leads: its word, cleared when dropped.
pub(crate) struct FlightWord {
    peers: Arc<Peers>,
    index: usize,
    word: u64,
}

impl Drop for FlightWord {
    fn drop(&mut self) {
        // Fails only if the word is no longer this flight's (never while we live).
        let _ =
            self.peers.board.flights()[self.index].compare_exchange(self.word, 0, SeqCst, SeqCst);
    }
}

/// Whether process `pid` runs (a zombie does not). Known on Linux (`/proc`); elsewhere
/// assumed, and a dead owner's flight is then waited for up to [`FLIGHT_WAIT`] when a
/// child it forked outlives it.
fn process_runs(pid: u32) -> bool {
    if !cfg!(target_os = "linux") {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) state ...`: the state follows the last `)`.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| !matches!(state, "Z" | "X" | "x")),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// The flight-table tag and bucket of `hash` in the memoizer whose table id is `memo`.
fn place(memo: u64, hash: &KeyHash) -> (u64, usize) {
    let (tag, bucket) = crate::key::board_place(memo, hash, crate::shm::FLIGHT_WORDS / WAYS);
    (tag & TAG_MASK, bucket * WAYS)
}

fn owner_of(word: u64) -> u64 {
    word >> TAG_BITS
}

impl FlightTable {
    /// Claims an owner id for this process among the processes of the cache at `path`.
    pub(crate) fn new(path: &Path, peers: Arc<Peers>) -> FlightTable {
        let mut dir = path.as_os_str().to_owned();
        dir.push("-flights");
        let mut flights = FlightTable {
            peers,
            dir: PathBuf::from(dir),
            owner: None,
        };
        flights.owner = flights.claim();
        flights
    }

    fn owner_file(&self, id: u64) -> PathBuf {
        self.dir.join(format!("owner-{id:02x}"))
    }

    fn claim(&self) -> Option<Owner> {
        std::fs::create_dir_all(&self.dir).ok()?;
        let owner = (1..=OWNERS).find_map(|id| {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(self.owner_file(id))
                .ok()?;
            file.try_lock().ok()?;
            // Who holds it, for `alive`: a child forked later inherits the lock.
            file.set_len(0).ok()?;
            (&file)
                .write_all(std::process::id().to_string().as_bytes())
                .ok()?;
            Some(Owner { id, _lock: file })
        })?;
        // A dead process that had this id may have left flights: they are ours to clear.
        for word in self.peers.board.flights() {
            let v = word.load(SeqCst);
            if v != 0 && owner_of(v) == owner.id {
                let _ = word.compare_exchange(v, 0, SeqCst, SeqCst);
            }
        }
        Some(owner)
    }

    /// Whether the process that claimed owner id `id` is alive.
    fn alive(&self, id: u64) -> bool {
        let mut file = match File::open(self.owner_file(id)) {
            Ok(file) => file,
            Err(e) => return e.kind() != std::io::ErrorKind::NotFound,
        };
        // Taken: its owner is gone (given back when `file` drops). An error: assume
        // alive, the wait is bounded.
        match file.try_lock() {
            Ok(()) => return false,
            Err(TryLockError::Error(_)) => return true,
            Err(TryLockError::WouldBlock) => {}
        }
        // Held - but a child the owner forked holds it too, and outlives it: the owner
        // process itself must still run.
        let mut pid = String::new();
        match file
            .read_to_string(&mut pid)
            .ok()
            .and(pid.trim().parse::<u32>().ok())
        {
            Some(pid) => process_runs(pid),
            None => true,
        }
    }

    /// Takes the flight of `hash` in the memoizer with table id `memo`, or waits -
    /// looking with `look` between pauses - until another process's value is there
    /// (`Err(found)`). A flight of this process is waited for as well: past the local
    /// single-flight, it is a store awaiting its commit, which the writer gives back
    /// (computing beside it would make a second value, and spend a `max_hits` budget
    /// twice). Returns `Ok(None)` (compute without a flight) if the bucket is full, no
    /// owner id was claimed, or the wait passed [`FLIGHT_WAIT`].
    ///
    /// Waits never form a cycle through this process: a computation running inside
    /// another one of this thread (a nested memoized call) only looks once.
    pub(crate) fn lead<T>(
        &self,
        memo: u64,
        hash: &KeyHash,
        mut look: impl FnMut() -> Option<T>,
    ) -> std::result::Result<Option<FlightWord>, T> {
        let Some(me) = self.owner.as_ref().map(|o| o.id) else {
            return Ok(None);
        };
        let (tag, first) = place(memo, hash);
        let ways = &self.peers.board.flights()[first..first + WAYS];
        let mine = me << TAG_BITS | tag;
        let nested = NESTED.with(Cell::get) > 0;
        // Read once a wait begins: a miss that takes a free word never needs the clock.
        let mut start = None;
        let mut pause = POLL_FIRST;
        loop {
            let held = ways
                .iter()
                .enumerate()
                .map(|(i, w)| (i, w.load(SeqCst)))
                .find(|&(_, v)| v != 0 && v & TAG_MASK == tag);
            let taken = match held {
                // This process's own flight of the key (a store awaiting its commit: the
                // writer gives it back) is waited for like another's.
                Some((i, v)) if owner_of(v) != me && !self.alive(owner_of(v)) => ways[i]
                    .compare_exchange(v, mine, SeqCst, SeqCst)
                    .is_ok()
                    .then_some(i),
                Some(_) => None,
                None => {
                    let Some(i) = ways.iter().position(|w| w.load(SeqCst) == 0) else {
                        return Ok(None);
                    };
                    if ways[i].compare_exchange(0, mine, SeqCst, SeqCst).is_err() {
                        continue;
                    }
                    Some(i)
                }
            };
            if let Some(i) = taken {
                let flight = FlightWord {
                    peers: self.peers.clone(),
                    index: first + i,
                    word: mine,
                };
                let rival = ways[..i].iter().any(|w| {
                    let v = w.load(SeqCst);
                    v != 0 && v & TAG_MASK == tag
                });
                if !rival {
                    // The holder before us may have landed its value just before it let go.
                    return match look() {
                        Some(found) => Err(found),
                        None => Ok(Some(flight)),
                    };
                }
                // A rival took a lower word for this key at the same time: it leads.
                drop(flight);
            }
            if let Some(found) = look() {
                return Err(found);
            }
            if nested || start.get_or_insert_with(Instant::now).elapsed() >= FLIGHT_WAIT {
                return Ok(None);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::Board;

    fn table(path: &Path) -> FlightTable {
        FlightTable::new(path, Arc::new(Peers::new(Board::open(path).unwrap())))
    }

    #[test]
    fn one_leader_per_key_and_a_dead_leaders_flight_is_taken_over_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let (a, b) = (table(&path), table(&path));
        assert_ne!(a.owner.as_ref().unwrap().id, b.owner.as_ref().unwrap().id);
        let key = [7; 16];
        let flight = a.lead(1, &key, || None::<()>).unwrap().unwrap();
        // The same key in this process again (its store awaiting the commit): waited for
        // too, but a nested call only looks once.
        assert_eq!(a.lead(1, &key, || Some("pending")).err(), Some("pending"));
        let nested = Computing::enter();
        assert!(a.lead(1, &key, || None::<()>).unwrap().is_none());
        drop(nested);
        // Another owner waits, and serves what it finds meanwhile.
        let mut looks = 0;
        assert_eq!(
            b.lead(1, &key, || {
                looks += 1;
                (looks == 3).then_some("found")
            })
            .err(),
            Some("found")
        );
        // Another memoizer's key of the same hash is another flight.
        let other = b.lead(2, &key, || None::<()>).unwrap().unwrap();
        drop(other);
        drop(flight);
        let flight = b.lead(1, &key, || None::<()>).unwrap().unwrap();
        // Its owner dies holding it (the flight word stays, the owner's lock goes).
        std::mem::forget(flight);
        drop(b);
        let start = Instant::now();
        let taken = a.lead(1, &key, || None::<()>).unwrap();
        assert!(taken.is_some());
        assert!(start.elapsed() < FLIGHT_WAIT / 2);
    }

    #[test]
    fn a_fresh_owner_clears_its_dead_predecessors_words_and_a_full_bucket_computes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let a = table(&path);
        let id = a.owner.as_ref().unwrap().id;
        std::mem::forget(a.lead(1, &[3; 16], || None::<()>).unwrap().unwrap());
        let words = |t: &FlightTable, id: u64| {
            t.peers
                .board
                .flights()
                .iter()
                .filter(|w| owner_of(w.load(SeqCst)) == id)
                .count()
        };
        assert_eq!(words(&a, id), 1);
        drop(a);
        let b = table(&path);
        assert_eq!(
            b.owner.as_ref().unwrap().id,
            id,
            "the lowest free id is reused"
        );
        assert_eq!(words(&b, id), 0);
        // A bucket full of other keys' words: the caller computes alone at once.
        let (_, first) = place(1, &[5; 16]);
        for w in &b.peers.board.flights()[first..first + WAYS] {
            w.store(u64::MAX, SeqCst);
        }
        assert!(b.lead(1, &[5; 16], || None::<()>).unwrap().is_none());
    }

    #[test]
    fn owners_racing_for_one_key_make_exactly_one_leader() {
        use std::sync::atomic::AtomicBool;
        use std::sync::{Arc, Barrier};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.memo");
        let tables = [Arc::new(table(&path)), Arc::new(table(&path))];
        let (start, end) = (Arc::new(Barrier::new(2)), Arc::new(Barrier::new(2)));
        let rounds = 300u64;
        let stored: Arc<Vec<AtomicBool>> =
            Arc::new((0..rounds).map(|_| AtomicBool::new(false)).collect());
        let runs: Vec<_> = tables
            .iter()
            .enumerate()
            .map(|(n, t)| {
                let (t, start, end, stored) =
                    (t.clone(), start.clone(), end.clone(), stored.clone());
                std::thread::spawn(move || {
                    let mut led = Vec::new();
                    for round in 0..rounds {
                        let key = xxhash_rust::xxh3::xxh3_128(&round.to_le_bytes()).to_le_bytes();
                        // Another key's word in the bucket's first place, given back as
                        // the race starts: one owner may see it still there and take the
                        // second place while the other takes the first.
                        let first = &t.peers.board.flights()[place(1, &key).1];
                        if n == 0 {
                            first.store(u64::MAX, SeqCst);
                        }
                        start.wait();
                        if n == 0 {
                            first.store(0, SeqCst);
                        }
                        let done = &stored[round as usize];
                        let got = t.lead(1, &key, || done.load(SeqCst).then_some(()));
                        if let Ok(Some(_)) = &got {
                            done.store(true, SeqCst);
                        }
                        led.push(matches!(got, Ok(Some(_))));
                        end.wait();
                        drop(got);
                    }
                    led
                })
            })
            .collect();
        let led: Vec<Vec<bool>> = runs.into_iter().map(|r| r.join().unwrap()).collect();
        for (round, (a, b)) in led[0].iter().zip(&led[1]).enumerate() {
            assert!(a ^ b, "round {round}: one leader, the other served");
        }
    }
}
