//! The Redis store on the servers a deployment has (issue 15, points 1 and 6), each
//! started by `.ci/redis-tests`: TLS with a private CA (`FRESCO_REDISS_URL`,
//! `FRESCO_REDIS_CA`), an ACL user with a password (`FRESCO_REDIS_ACL_URL`), and a 3-node
//! Redis Cluster (`FRESCO_REDIS_CLUSTER_URLS`). Memoizers, zones, `invalidate_all` and
//! `max_hits` work on each; credentials never reach errors, logs or `Debug` output. The
//! tests fail, never skip, without those servers.

mod redis_common;

use std::sync::{Arc, Mutex};

use fresco_memoize::{Cache, CacheBuilder, Error, Memoizer, Store};
use redis_common::{Calls, ci_env, eventually, namespace};

/// Errors a cache reported through its hook, rendered.
#[derive(Default, Clone)]
struct Reports(Arc<Mutex<Vec<String>>>);

impl Reports {
    fn hook(&self, builder: CacheBuilder) -> CacheBuilder {
        let seen = self.0.clone();
        builder.on_error(move |e: &Error| {
            seen.lock().unwrap().push(format!("{e} / {e:?}"));
        })
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Two machines' worth of the same work: a value computed on one is a hit on the other,
/// a zone invalidation on one reaches the other, `invalidate_all` clears both, and
/// `max_hits` counts across both.
fn shared_work(a: &Cache, b: &Cache, store: Store) {
    let calls = Calls::default();
    let authors = [a, b].map(|c| c.zone("authors").unwrap());
    let by_author: Vec<Memoizer<(u64, u64), String>> = [a, b]
        .iter()
        .zip(&authors)
        .map(|(c, z)| {
            c.memoizer("by_author")
                .store(store)
                .zone_key(z, |k: &(u64, u64)| k.0)
                .build()
                .unwrap()
        })
        .collect();
    let compute = |k: &(u64, u64)| calls.count(format!("book {} by {}", k.1, k.0));
    for k in [(1, 10), (1, 11), (2, 20)] {
        assert_eq!(by_author[0].get_or_compute(&k, compute), compute(&k));
    }
    let after_fill = calls.get();
    for k in [(1, 10), (1, 11), (2, 20)] {
        assert_eq!(by_author[1].get_or_compute(&k, compute), compute(&k));
    }
    // The second machine computed nothing of its own (each `compute(&k)` above counts).
    assert_eq!(calls.get(), after_fill + 3, "b was served a's values");

    // One author's books go, on both machines; the other's stay. (Only local copies
    // are counted: b's local tier holds author 1's two books once its listener is up.)
    let local = if matches!(store, Store::Tiered(_)) {
        2
    } else {
        0
    };
    assert!(authors[1].invalidate(&1u64).unwrap() <= local);
    let before = calls.get();
    let served_elsewhere = |m: &Memoizer<(u64, u64), String>, k: (u64, u64)| {
        let n = calls.get();
        m.get_or_compute(&k, compute);
        calls.get() == n
    };
    eventually("the zone invalidation reaches a", || {
        !served_elsewhere(&by_author[0], (1, 10))
    });
    assert!(served_elsewhere(&by_author[1], (1, 10)), "recomputed by a");
    assert!(
        served_elsewhere(&by_author[0], (2, 20)),
        "author 2 untouched"
    );
    assert!(calls.get() > before);

    // invalidate_all on a: b recomputes everything.
    by_author[0].invalidate_all().unwrap();
    eventually("invalidate_all reaches b", || {
        !served_elsewhere(&by_author[1], (2, 20))
    });

    // max_hits = 2 over both machines: every third call computes.
    let counted: Vec<Memoizer<u64, u64>> = [a, b]
        .iter()
        .map(|c| {
            c.memoizer("counted")
                .store(store)
                .max_hits(2)
                .build()
                .unwrap()
        })
        .collect();
    let n = Calls::default();
    for i in 0..9 {
        counted[i % 2].get_or_compute(&7, |k| n.count(*k));
    }
    assert_eq!(n.get(), 3, "9 calls, each value served twice");
}

fn tls_builder(ns: &str) -> CacheBuilder {
    let ca = std::fs::read(ci_env("FRESCO_REDIS_CA")).expect("the CA certificate");
    Cache::builder().namespace(ns).server_ca_certificates(ca)
}

#[test]
fn tls_with_a_private_ca_serves_the_same_api() {
    let url = ci_env("FRESCO_REDISS_URL");
    assert!(url.starts_with("rediss://"), "{url}");
    let ns = namespace("tls");
    for store in [Store::Persistent, Store::Tiered(64)] {
        let ns = format!("{ns}-{}", matches!(store, Store::Tiered(_)));
        let [a, b] = [0, 1].map(|_| tls_builder(&ns).connect(&url).unwrap());
        shared_work(&a, &b, store);
        assert_eq!(a.health().errors, 0, "{:?}", a.health().last_error);
        assert_eq!(b.health().errors, 0, "{:?}", b.health().last_error);
    }
}

#[test]
fn tls_refuses_a_server_its_roots_do_not_vouch_for() {
    // Without the private CA, the system's roots do not vouch for the test server: the
    // handshake fails, which is reported, and calls still return computed values.
    let reports = Reports::default();
    let cache = reports
        .hook(Cache::builder().namespace(&namespace("tls-untrusted")))
        .connect(&ci_env("FRESCO_REDISS_URL"))
        .unwrap();
    let m: Memoizer<u64, u64> = cache.memoizer("m").build().unwrap();
    let calls = Calls::default();
    assert_eq!(m.get_or_compute(&1, |k| calls.count(k + 1)), 2);
    assert_eq!(m.get_or_compute(&1, |k| calls.count(k + 1)), 2);
    assert_eq!(calls.get(), 2, "nothing was stored on an untrusted server");
    assert!(cache.health().errors > 0);
    let seen = reports.all();
    assert!(
        seen.iter()
            .any(|r| r.to_lowercase().contains("certificate")),
        "{seen:?}"
    );
}

/// Collects every log record of the process (the library's reports go to `log`).
struct Logs(Mutex<Vec<String>>);

impl log::Log for Logs {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        let line = format!("{} {}: {}", record.level(), record.target(), record.args());
        self.0.lock().unwrap().push(line);
    }
    fn flush(&self) {}
}

static LOGS: Logs = Logs(Mutex::new(Vec::new()));

#[test]
fn an_acl_user_works_and_its_password_never_prints() {
    let _ = log::set_logger(&LOGS);
    log::set_max_level(log::LevelFilter::Trace);
    let url = ci_env("FRESCO_REDIS_ACL_URL");
    let (user, password) = url["redis://".len()..]
        .split_once('@')
        .and_then(|(info, _)| info.split_once(':'))
        .map(|(u, p)| (u.to_string(), p.to_string()))
        .expect("redis://user:password@host:port/db");
    let ns = namespace("acl");

    // The right user and password: the same API as anywhere.
    let [a, b] = [0, 1].map(|_| Cache::builder().namespace(&ns).connect(&url).unwrap());
    shared_work(&a, &b, Store::Tiered(64));
    assert_eq!(a.health().errors, 0, "{:?}", a.health().last_error);

    // A wrong password: calls still return computed values; the error says what to do.
    let wrong_password = "wrong-Secret-4711";
    let wrong = url.replace(&format!(":{password}@"), &format!(":{wrong_password}@"));
    let reports = Reports::default();
    let builder = reports.hook(Cache::builder().namespace(&ns));
    let refused = builder.connect(&wrong).unwrap();
    let m: Memoizer<u64, u64> = refused
        .memoizer("m")
        .store(Store::Tiered(8))
        .build()
        .unwrap();
    let calls = Calls::default();
    assert_eq!(m.get_or_compute(&5, |k| calls.count(k * 2)), 10);
    assert_eq!(m.get_or_compute(&5, |k| calls.count(k * 2)), 10);
    let health = refused.health();
    assert!(health.errors > 0);
    let last = health.last_error.clone().unwrap_or_default();
    assert!(
        last.contains("refused the user name and password"),
        "says what went wrong: {last}"
    );
    assert!(last.contains("ACL"), "says what to do: {last}");

    // No password, right or wrong, nor the user name, in anything printed.
    let logs = LOGS.0.lock().unwrap().clone();
    assert!(
        logs.iter().any(|l| l.contains("refused")),
        "the failure was logged: {logs:?}"
    );
    let mut printed = vec![
        format!("{a:?}"),
        format!("{refused:?}"),
        format!("{m:?}"),
        format!("{health:?}"),
        format!("{:?}", a.health()),
    ];
    printed.extend(reports.all());
    printed.extend(logs);
    for secret in [password.as_str(), wrong_password, user.as_str()] {
        for shown in &printed {
            assert!(!shown.contains(secret), "{secret:?} printed in {shown}");
        }
    }
}

fn cluster_urls() -> Vec<String> {
    let urls: Vec<String> = ci_env("FRESCO_REDIS_CLUSTER_URLS")
        .split(',')
        .map(str::to_string)
        .collect();
    assert_eq!(urls.len(), 3, "{urls:?}");
    urls
}

/// Whether the node at `url` serves the namespace's hash slot (the others answer a
/// read of one of its keys with `MOVED`).
fn serves(url: &str, ns: &str) -> bool {
    let port = url.rsplit_once(':').unwrap().1.split('/').next().unwrap();
    let out = std::process::Command::new("redis-cli")
        .args(["-p", port, "get", &format!("{{fm:{ns}}}:probe")])
        .output()
        .expect("redis-cli");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    !said.contains("MOVED")
}

#[test]
fn a_cluster_keeps_each_namespace_on_its_node_and_serves_the_same_api() {
    let urls = cluster_urls();
    for store in [Store::Persistent, Store::Tiered(64)] {
        // A namespace the third node serves: both machines, given the other two, have to
        // follow the route to it.
        let ns = (0..)
            .map(|i| namespace(&format!("cluster-{i}")))
            .find(|ns| serves(&urls[2], ns))
            .unwrap();
        assert!(!serves(&urls[0], &ns) && !serves(&urls[1], &ns));
        let a = Cache::builder().namespace(&ns).connect(&urls[0]).unwrap();
        let b = Cache::builder().namespace(&ns).connect(&urls[1]).unwrap();
        shared_work(&a, &b, store);
        assert_eq!(a.health().errors, 0, "{:?}", a.health().last_error);
        assert_eq!(b.health().errors, 0, "{:?}", b.health().last_error);
    }
}
