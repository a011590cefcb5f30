//! Shared by the redis test binaries: the CI server's URL, unique namespaces, and
//! throwaway servers of a test's own (for the fault tests, which stop and restart them).

#![allow(dead_code)] // each test binary uses part of it

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The server `.ci/redis-tests` started. Panics (the test fails) without one.
pub fn url() -> String {
    std::env::var("FRESCO_REDIS_URL").expect(
        "FRESCO_REDIS_URL is not set: run the redis tests through `bash .ci/redis-tests`, \
         which starts a throwaway redis-server and sets it",
    )
}

/// A namespace no other test (or earlier run) uses.
pub fn namespace(test: &str) -> String {
    use std::hash::BuildHasher;
    let salt = std::collections::hash_map::RandomState::new().hash_one(test);
    format!("t-{test}-{}-{salt:x}", std::process::id())
}

/// A redis-server of one test's own, on a free port, with no persistence. Stopped when
/// dropped.
pub struct Server {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
}

/// A free port never handed out before in this process (a stopped server's port is
/// free too, and must not go to another test's server while its own may restart),
/// below Linux's ephemeral range: connecting over and over to a port of that range
/// where nothing listens can connect the socket to itself, and then hold the port the
/// server is about to bind.
fn free_port() -> u16 {
    use std::hash::BuildHasher;
    static GIVEN: Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0u32.. {
        let port = 20_000 + (random.hash_one(attempt) % 12_000) as u16;
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    unreachable!()
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let mut server = Server {
            port: free_port(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Starts the server (again) on its port, empty.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(std::env::temp_dir())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (.ci/redis-tests installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server at once (SIGKILL: connections drop mid-command).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("running");
        let ok = Command::new("kill")
            .args([sig, &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig}");
    }

    /// Runs a command through redis-cli.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.resume_quietly();
        self.stop();
    }
}

impl Server {
    fn resume_quietly(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
    }
}

/// A variable `.ci/redis-tests` sets (the test fails without it).
pub fn ci_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the redis tests through `bash .ci/redis-tests`, which \
             starts the throwaway servers (TLS, ACL, cluster) and sets it"
        )
    })
}

/// A TCP proxy in front of a server that can drop a connection in the middle of a
/// command: the connection that next sends bytes containing the armed pattern has them
/// forwarded - so the server runs the command - and is then shut, both ways, before the
/// answer reaches the client.
pub struct Proxy {
    pub port: u16,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
    slow: Slow,
}

/// Bytes whose sending is held back, and for how long.
type Slow = Arc<Mutex<Option<(Vec<u8>, Duration)>>>;

fn contains(bytes: &[u8], pattern: &[u8]) -> bool {
    bytes.windows(pattern.len()).any(|w| w == pattern)
}

impl Proxy {
    pub fn start(upstream: u16) -> Proxy {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("proxy port");
        let proxy = Proxy {
            port,
            armed: Arc::new(Mutex::new(None)),
            cuts: Arc::new(AtomicUsize::new(0)),
            slow: Arc::new(Mutex::new(None)),
        };
        let (armed, cuts, slow) = (proxy.armed.clone(), proxy.cuts.clone(), proxy.slow.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) {
                    relay(client, server, armed.clone(), cuts.clone(), slow.clone());
                }
            }
        });
        proxy
    }

    /// Holds every command that contains `pattern` back for `delay` before the server
    /// gets it (a slow network for those commands only).
    pub fn slow_down(&self, pattern: &[u8], delay: Duration) {
        *self.slow.lock().unwrap() = Some((pattern.to_vec(), delay));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Drops the connection that next sends `pattern`, after the server got it.
    pub fn cut_after(&self, pattern: &[u8]) {
        *self.armed.lock().unwrap() = Some(pattern.to_vec());
    }

    /// How many connections were cut.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }
}

fn relay(
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    armed: Arc<Mutex<Option<Vec<u8>>>>,
    cuts: Arc<AtomicUsize>,
    slow: Slow,
) {
    use std::io::{Read, Write};
    use std::net::Shutdown;
    use std::sync::atomic::AtomicBool;
    let doomed = Arc::new(AtomicBool::new(false));
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let up_doomed = doomed.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = c_in.read(&mut buf) {
            let sent = &buf[..n];
            {
                let mut armed = armed.lock().unwrap();
                if armed.as_ref().is_some_and(|p| contains(sent, p)) {
                    *armed = None;
                    up_doomed.store(true, Ordering::SeqCst);
                }
            }
            let delay = slow
                .lock()
                .unwrap()
                .as_ref()
                .filter(|(p, _)| contains(sent, p))
                .map(|(_, d)| *d);
            if let Some(delay) = delay {
                std::thread::sleep(delay);
            }
            if s_out.write_all(sent).is_err() {
                break;
            }
        }
        let _ = s_out.shutdown(Shutdown::Both);
    });
    std::thread::spawn(move || {
        let (mut s_in, mut c_out) = (server, client);
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n @ 1..) = s_in.read(&mut buf) {
            if doomed.load(Ordering::SeqCst) {
                cuts.fetch_add(1, Ordering::SeqCst);
                break;
            }
            if c_out.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = c_out.shutdown(Shutdown::Both);
        let _ = s_in.shutdown(Shutdown::Both);
    });
}

/// Counts computations.
#[derive(Default, Clone)]
pub struct Calls(Arc<AtomicUsize>);

impl Calls {
    pub fn count<T>(&self, value: T) -> T {
        self.0.fetch_add(1, Ordering::SeqCst);
        value
    }
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Waits (up to 5 s, else the test fails) until `ok`.
pub fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
