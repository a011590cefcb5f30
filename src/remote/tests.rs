//! The scripts against a real server: `FRESCO_REDIS_URL` (set by `.ci/redis-tests`).
//! Without it these tests fail, never skip.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::layout::Invalidated;
use super::store::{Found, Lease, Led, Remote, Settings, Stamps};
use super::tracking::{Event, Tracker};
use crate::key::dep_row;

fn url() -> String {
    std::env::var("FRESCO_REDIS_URL").expect(
        "FRESCO_REDIS_URL is not set: run the redis tests through `bash .ci/redis-tests`, \
         which starts a throwaway redis-server and sets it",
    )
}

/// A store on a namespace of its own, so tests running at once do not meet.
fn remote(test: &str) -> Remote {
    remote_with(test, Settings::default())
}

fn remote_with(test: &str, settings: Settings) -> Remote {
    let ns = format!("unit-{test}-{}-{:x}", std::process::id(), rand_tag());
    Remote::new(&url(), &ns, settings).expect("server URL")
}

fn rand_tag() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(0u8)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

const MEMO: u64 = 1;
const ZONE: u64 = 7;
const ROW: [u8; 16] = [3; 16];

fn stamps_for(r: &Remote, deps: &[crate::key::DepRow]) -> (Vec<String>, Stamps) {
    let mut keys = r.fixed_stamp_keys(MEMO, &[ZONE], &ROW);
    keys.extend(deps.iter().map(|d| r.layout.stamp(d)));
    let st = r.read_stamps(&keys, 2).unwrap();
    (keys, st)
}

/// The lease of `row`, if free (taken without reading stamps).
fn try_lease(r: &Remote, row: &[u8; 16]) -> Option<Lease> {
    let lease = r.new_lease(MEMO, row);
    match r.lead(&lease, MEMO, row, &[], 0).unwrap() {
        Led::Taken { .. } => Some(lease),
        Led::Busy => None,
    }
}

#[test]
fn a_stored_entry_is_served_until_a_stamp_moves() {
    let r = remote("served");
    let author = dep_row(ZONE, [42; 16]);
    let (keys, st) = stamps_for(&r, &[author]);
    // Reading again returns the same values: stamps are created once.
    assert_eq!(r.read_stamps(&keys, 2).unwrap(), st);
    assert!(r.put(MEMO, &ROW, b"value", &st, 0, None).unwrap());
    assert_eq!(
        r.hit(MEMO, &ROW, 0).unwrap(),
        Found::Served(b"value".to_vec())
    );
    assert_eq!(
        r.hit(MEMO, &ROW, 0).unwrap(),
        Found::Served(b"value".to_vec())
    );

    assert!(r.drop_stamp(&author).unwrap());
    assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Stale);
    assert_eq!(
        r.hit(MEMO, &ROW, 0).unwrap(),
        Found::Absent,
        "a stale entry is removed"
    );
}

#[test]
fn generations_invalidate_a_memoizer_and_a_zone() {
    let r = remote("generations");
    let (_, st) = stamps_for(&r, &[]);
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    r.bump_memoizer(MEMO).unwrap();
    assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Stale);

    let (_, st) = stamps_for(&r, &[]);
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    r.bump_zone(ZONE).unwrap();
    assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Stale);
}

#[test]
fn a_store_whose_stamps_moved_while_computing_is_refused() {
    let r = remote("refused");
    let author = dep_row(ZONE, [42; 16]);
    let invalidations: [&dyn Fn(&Remote); 3] = [
        &|r| assert!(r.drop_stamp(&author).unwrap()),
        &|r| r.bump_memoizer(MEMO).unwrap(),
        &|r| r.bump_zone(ZONE).unwrap(),
    ];
    for invalidate in invalidations {
        let (_, st) = stamps_for(&r, &[author]);
        invalidate(&r); // while computing
        assert!(!r.put(MEMO, &ROW, b"stale", &st, 0, None).unwrap());
        assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Absent);
    }
    // A stamp that vanished and came back (recreated with a fresh value) refuses too.
    let (keys, st) = stamps_for(&r, &[author]);
    r.drop_stamp(&author).unwrap();
    r.read_stamps(&keys, 2).unwrap();
    assert!(!r.put(MEMO, &ROW, b"stale", &st, 0, None).unwrap());
}

#[test]
fn max_hits_is_exact_and_the_last_hit_removes_the_entry() {
    let r = remote("max-hits");
    let (_, st) = stamps_for(&r, &[]);
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    for _ in 0..3 {
        assert_eq!(r.hit(MEMO, &ROW, 3).unwrap(), Found::Served(b"v".to_vec()));
    }
    assert_eq!(r.hit(MEMO, &ROW, 3).unwrap(), Found::Absent);
    // An entry whose budget a foreign counter already spent reads as used up.
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    r.pool
        .with(|con| {
            redis::cmd("HSET")
                .arg(r.layout.entry(MEMO, &ROW))
                .arg("h")
                .arg(5)
                .query::<()>(con)
        })
        .unwrap();
    assert_eq!(r.hit(MEMO, &ROW, 3).unwrap(), Found::UsedUp);
}

#[test]
fn max_hits_is_exact_across_eight_connections() {
    let r = std::sync::Arc::new(remote("max-hits-8"));
    let (_, st) = stamps_for(&r, &[]);
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    let served: usize = std::thread::scope(|s| {
        let hitters: Vec<_> = (0..8)
            .map(|_| {
                let r = remote_sharing(&r);
                s.spawn(move || {
                    (0..25)
                        .filter(|_| matches!(r.hit(MEMO, &ROW, 5).unwrap(), Found::Served(_)))
                        .count()
                })
            })
            .collect();
        hitters.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(served, 5);
}

/// Another store (its own connections) on the same namespace.
fn remote_sharing(r: &Remote) -> Remote {
    let ns = r.layout.entry(0, &[0; 16]);
    let ns = ns.strip_prefix("{fm:").unwrap().split('}').next().unwrap();
    Remote::new(&url(), ns, r.settings.clone()).unwrap()
}

#[test]
fn deadlines_are_absolute_and_ttl_ceilings_apply() {
    let r = remote_with(
        "deadline",
        Settings {
            ttl_ceiling: Some(Duration::from_millis(150)),
            ..Settings::default()
        },
    );
    let (_, st) = stamps_for(&r, &[]);
    assert!(r.put(MEMO, &ROW, b"v", &st, now_ms() + 100, None).unwrap());
    let pttl: i64 = r
        .pool
        .with(|con| {
            redis::cmd("PTTL")
                .arg(r.layout.entry(MEMO, &ROW))
                .query(con)
        })
        .unwrap();
    assert!((1..=100).contains(&pttl), "deadline as PEXPIREAT: {pttl}");
    // A deadline already past stores nothing.
    assert!(
        !r.put(MEMO, &[4; 16], b"v", &st, now_ms() - 1, None)
            .unwrap()
    );
    // Without a deadline the ceiling applies.
    assert!(r.put(MEMO, &[5; 16], b"v", &st, 0, None).unwrap());
    let pttl: i64 = r
        .pool
        .with(|con| {
            redis::cmd("PTTL")
                .arg(r.layout.entry(MEMO, &[5; 16]))
                .query(con)
        })
        .unwrap();
    assert!((1..=150).contains(&pttl), "ceiling: {pttl}");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Absent);
    assert_eq!(r.hit(MEMO, &[5; 16], 0).unwrap(), Found::Absent);
}

#[test]
fn a_lease_excludes_others_until_released_or_expired() {
    let r = remote_with(
        "lease",
        Settings {
            lease: Duration::from_millis(100),
            ..Settings::default()
        },
    );
    let other = remote_sharing(&r);
    let mine = try_lease(&r, &ROW).expect("free lease");
    assert!(try_lease(&other, &ROW).is_none());
    assert!(r.renew(&mine).unwrap());
    assert!(r.release(&mine).unwrap());
    let theirs = try_lease(&other, &ROW).expect("released lease");
    // A holder that never releases (it died): the lease expires on its own.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!other.renew(&theirs).unwrap(), "expired");
    let taken_over = try_lease(&r, &ROW).expect("expired lease");
    // The old holder can neither release nor renew the new holder's lease.
    assert!(!other.release(&theirs).unwrap());
    assert!(!other.renew(&theirs).unwrap());
    assert!(r.release(&taken_over).unwrap());
}

#[test]
fn an_evicted_stamp_or_generation_is_a_miss_never_a_stale_hit() {
    let r = remote("evicted");
    let author = dep_row(ZONE, [42; 16]);
    let (keys, st) = stamps_for(&r, &[author]);
    assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    for key in &keys {
        r.pool
            .with(|con| redis::cmd("DEL").arg(key).query::<()>(con))
            .unwrap();
        assert_eq!(r.hit(MEMO, &ROW, 0).unwrap(), Found::Stale, "{key} evicted");
        let (_, st) = stamps_for(&r, &[author]);
        assert!(r.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    }
}

#[test]
fn a_down_server_is_an_error_within_the_timeout() {
    // Port 1 on localhost: nothing listens there.
    let r = Remote::new("redis://127.0.0.1:1/0", "down", Settings::default()).unwrap();
    let started = std::time::Instant::now();
    let err = r.hit(MEMO, &ROW, 0).unwrap_err();
    assert!(matches!(err, crate::Error::Remote { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Within the retry window the next call fails at once, without connecting.
    let err = r.hit(MEMO, &ROW, 0).unwrap_err().to_string();
    assert!(err.contains("retrying shortly"), "{err}");
}

#[test]
fn credentials_stay_out_of_errors_and_debug() {
    let r = Remote::new(
        "redis://someuser:hunter2-secret@127.0.0.1:1/0",
        "creds",
        Settings::default(),
    )
    .unwrap();
    let err = r.hit(MEMO, &ROW, 0).unwrap_err();
    for shown in [err.to_string(), format!("{err:?}"), format!("{r:?}")] {
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(!shown.contains("someuser"), "{shown}");
    }
}

#[test]
fn the_listener_hears_other_clients_invalidations_and_flushes_on_a_drop() {
    use std::sync::mpsc;
    let r = std::sync::Arc::new(remote("tracking"));
    let (tx, rx) = mpsc::channel();
    let tracker = Tracker::start(&r, move |e| {
        let _ = tx.send(e);
    })
    .unwrap();
    let wait = |what: &str| {
        rx.recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("no event: {what}"))
    };
    assert_eq!(wait("first connect"), Event::Flush);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !tracker.live() {
        assert!(std::time::Instant::now() < deadline, "never live");
        std::thread::sleep(Duration::from_millis(5));
    }
    let other = remote_sharing(&r);
    other.bump_memoizer(MEMO).unwrap();
    assert_eq!(
        wait("generation"),
        Event::Invalidated(Invalidated::Memoizer(MEMO))
    );
    other.bump_zone(ZONE).unwrap();
    assert_eq!(
        wait("zone generation"),
        Event::Invalidated(Invalidated::Zone(ZONE))
    );
    let author = dep_row(ZONE, [42; 16]);
    other
        .read_stamps(&[other.layout.stamp(&author)], 0)
        .unwrap();
    assert_eq!(
        wait("stamp created"),
        Event::Invalidated(Invalidated::Dependency(author))
    );
    assert!(other.drop_stamp(&author).unwrap());
    assert_eq!(
        wait("stamp dropped"),
        Event::Invalidated(Invalidated::Dependency(author))
    );
    // Reading existing stamps, storing entries and taking leases push nothing.
    let (_, st) = stamps_for(&other, &[]);
    assert_eq!(
        wait("key stamp created"),
        Event::Invalidated(Invalidated::Key(MEMO, ROW))
    );
    stamps_for(&other, &[]);
    assert!(other.put(MEMO, &ROW, b"v", &st, 0, None).unwrap());
    let lease = try_lease(&other, &ROW).unwrap();
    other.release(&lease).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let quiet: Vec<_> = rx.try_iter().collect();
    assert!(quiet.is_empty(), "{quiet:?}");

    // The listener's connection is killed: it reconnects and says to flush.
    let list: String = r
        .pool
        .with(|con| redis::cmd("CLIENT").arg("LIST").query(con))
        .unwrap();
    let name = r.layout.tracker_name();
    let id = list
        .lines()
        .find(|l| l.contains(&format!(" name={name} ")))
        .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
        .expect("listener connected")
        .to_string();
    r.pool
        .with(|con| {
            redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query::<()>(con)
        })
        .unwrap();
    loop {
        if wait("flush after a dropped connection") == Event::Flush {
            break;
        }
    }
    // A failed call elsewhere makes it distrust local copies until it reconnected.
    tracker.suspect();
    assert!(!tracker.live());
    assert_eq!(wait("flush after suspicion"), Event::Flush);
}
