//! Connections to the server: a small pool of blocking connections with connect and
//! response timeouts, dropped on any error and opened again on the next call.
//!
//! A connection that failed or timed out is never reused: its stream may still carry the
//! late answer to the command that timed out, which the next command would take for its
//! own. After a failed connect the pool refuses calls for [`RETRY_AFTER`] instead of
//! waiting for another connect timeout on every call while the server is down.
//!
//! **Redis Cluster.** A namespace lives in one hash slot (layout.rs), so it lives on one
//! node: the pool asks the node it was given (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`, one
//! round trip) which node serves the namespace's slot and talks to that node only - with
//! the same credentials and TLS settings. A server without cluster support answers with
//! an error, and the pool talks to it directly from then on. In a cluster the route is
//! looked up again after any failed call: a resharding or failover that moved the slot
//! costs one failed call (a `MOVED` reply, reported like any failure), then the pool
//! follows the slot.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::url::ServerUrl;
use crate::error::Error;

/// How long a failed connect makes later calls fail at once.
const RETRY_AFTER: Duration = Duration::from_millis(100);
/// Idle connections kept for reuse.
const MAX_IDLE: usize = 16;

/// Timeouts of every exchange with the server.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub connect: Duration,
    pub response: Duration,
}

/// TLS settings of a `rediss://` server beyond the URL: the certificate authorities to
/// trust instead of the system's, and a client certificate for servers that ask for one.
/// All PEM. `Debug` shows only which are set: a private key never prints.
#[derive(Clone, Default)]
pub(crate) struct Tls {
    pub ca: Option<Vec<u8>>,
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("ca", &self.ca.as_ref().map(|_| "<set>"))
            .field("client", &self.client.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The node a pool talks to: a client in RESP2 for commands, one in RESP3 for pushes.
struct Node {
    client: redis::Client,
    resp3: redis::Client,
}

/// What the pool knows of the server's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Unknown,
    Single,
    Cluster,
}

pub(crate) struct Pool {
    /// The server as given (TLS settings applied): the node itself, or in a cluster the
    /// node asked where the namespace lives.
    seed: redis::ConnectionInfo,
    /// A key of the namespace's hash slot (the hash tag).
    slot_key: String,
    kind: Mutex<Kind>,
    /// The node that holds the namespace, once known.
    route: Mutex<Option<Arc<Node>>>,
    pub(crate) url: ServerUrl,
    pub(crate) timeouts: Timeouts,
    idle: Mutex<Vec<redis::Connection>>,
    /// When the last connect failed, and why (calls before `RETRY_AFTER` fail with it).
    down: Mutex<Option<(Instant, String)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Clients for `info`: as given, and the same in RESP3.
fn node(info: redis::ConnectionInfo) -> redis::RedisResult<Node> {
    let resp3 = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    Ok(Node {
        client: redis::Client::open(info.clone())?,
        resp3: redis::Client::open(info.set_redis_settings(resp3))?,
    })
}

impl Pool {
    /// Parses the URL and the TLS settings (nothing is sent yet). `slot_key`: a key
    /// whose hash slot holds the whole namespace.
    pub(crate) fn new(
        url: ServerUrl,
        timeouts: Timeouts,
        tls: &Tls,
        slot_key: String,
    ) -> Result<Self, Error> {
        let seed = seed_info(&url, tls).map_err(|e| remote_error(&url, &e))?;
        Ok(Pool {
            seed,
            slot_key,
            kind: Mutex::new(Kind::Unknown),
            route: Mutex::new(None),
            url,
            timeouts,
            idle: Mutex::new(Vec::new()),
            down: Mutex::new(None),
        })
    }

    /// Opens a fresh connection to the namespace's node with this pool's timeouts.
    pub(crate) fn connect(&self) -> Result<redis::Connection, Error> {
        let node = self.route()?;
        self.open(&node.client)
    }

    /// Opens a fresh RESP3 connection (for pushes) to the namespace's node.
    pub(crate) fn connect_resp3(&self) -> Result<redis::Connection, Error> {
        let node = self.route()?;
        self.open(&node.resp3)
    }

    /// The node that holds the namespace, looked up if not known.
    fn route(&self) -> Result<Arc<Node>, Error> {
        if let Some(node) = lock(&self.route).clone() {
            return Ok(node);
        }
        let seed = Arc::new(node(self.seed.clone()).map_err(|e| self.error(&e))?);
        let kind = *lock(&self.kind);
        let node = match kind {
            Kind::Single => seed,
            Kind::Unknown | Kind::Cluster => self.look_up(seed)?,
        };
        *lock(&self.route) = Some(node.clone());
        Ok(node)
    }

    /// Asks the seed which node serves the namespace's slot.
    fn look_up(&self, seed: Arc<Node>) -> Result<Arc<Node>, Error> {
        let mut con = self.open(&seed.client)?;
        let reply: redis::RedisResult<(u16, redis::Value)> = redis::pipe()
            .cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&self.slot_key)
            .cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut con);
        let (slot, slots) = match reply {
            Ok(found) => found,
            // The server answered with an error: cluster support is off (or the user may
            // not ask), so the seed holds everything.
            Err(e) if e.code().is_some() => {
                *lock(&self.kind) = Kind::Single;
                self.keep(con);
                return Ok(seed);
            }
            Err(e) => return Err(self.error(&e)),
        };
        *lock(&self.kind) = Kind::Cluster;
        let Some((host, port)) = owner(&slots, slot) else {
            return Err(Error::Remote {
                server: self.url.to_string(),
                detail: format!("no cluster node serves hash slot {slot} of the namespace"),
            });
        };
        let host = if host.is_empty() {
            // "unknown endpoint": the node answers on the address it was reached by.
            self.seed
                .addr()
                .to_string()
                .rsplit_once(':')
                .map_or(host, |(h, _)| h.to_string())
        } else {
            host
        };
        let addr = match self.seed.addr().clone() {
            redis::ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => redis::ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params,
            },
            _ => redis::ConnectionAddr::Tcp(host, port),
        };
        if &addr == self.seed.addr() {
            self.keep(con);
            return Ok(seed);
        }
        let node = node(self.seed.clone().set_addr(addr)).map_err(|e| self.error(&e))?;
        Ok(Arc::new(node))
    }

    fn open(&self, client: &redis::Client) -> Result<redis::Connection, Error> {
        if let Some((at, why)) = &*lock(&self.down)
            && at.elapsed() < RETRY_AFTER
        {
            return Err(Error::Remote {
                server: self.url.to_string(),
                detail: format!("{why} (retrying shortly)"),
            });
        }
        let opened = client
            .get_connection_with_timeout(self.timeouts.connect)
            .and_then(|con| {
                con.set_read_timeout(Some(self.timeouts.response))?;
                con.set_write_timeout(Some(self.timeouts.response))?;
                Ok(con)
            });
        let mut down = lock(&self.down);
        match opened {
            Ok(con) => {
                *down = None;
                Ok(con)
            }
            Err(e) => {
                let error = self.error(&e);
                if let Error::Remote { detail, .. } = &error {
                    *down = Some((Instant::now(), detail.clone()));
                }
                Err(error)
            }
        }
    }

    /// Runs `f` on a pooled connection. The connection goes back to the pool only if `f`
    /// succeeded.
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<R>,
    ) -> Result<R, Error> {
        let pooled = lock(&self.idle).pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect()?,
        };
        match f(&mut con) {
            Ok(r) => {
                self.keep(con);
                Ok(r)
            }
            Err(e) => Err(self.error(&e)),
        }
    }

    fn keep(&self, con: redis::Connection) {
        let mut idle = lock(&self.idle);
        if idle.len() < MAX_IDLE {
            idle.push(con);
        }
    }

    /// Drops every idle connection (after a failed call: the server may have restarted,
    /// or in a cluster the namespace's slot may have moved, so its node is looked up
    /// again).
    pub(crate) fn reset(&self) {
        lock(&self.idle).clear();
        if *lock(&self.kind) != Kind::Single {
            *lock(&self.route) = None;
        }
    }

    fn error(&self, e: &redis::RedisError) -> Error {
        remote_error(&self.url, e)
    }
}

/// The connection settings of the URL, with `tls` applied to a `rediss://` one.
fn seed_info(url: &ServerUrl, tls: &Tls) -> redis::RedisResult<redis::ConnectionInfo> {
    use redis::IntoConnectionInfo;
    let info = url.secret().into_connection_info()?;
    if matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
        // rustls picks its crypto from the process default, or from its enabled
        // features - and panics if an application enabled a second provider without
        // choosing one. Ours (ring) becomes the default unless one was chosen already.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    if tls.ca.is_none() && tls.client.is_none() {
        return Ok(info);
    }
    let certificates = redis::TlsCertificates {
        client_tls: tls
            .client
            .as_ref()
            .map(|(cert, key)| redis::ClientTlsConfig {
                client_cert: cert.clone(),
                client_key: key.clone(),
            }),
        root_cert: tls.ca.clone(),
    };
    Ok(redis::Client::build_with_tls(info, certificates)?
        .get_connection_info()
        .clone())
}

/// The master of `slot` in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, ..],
/// replicas..], ..]`.
fn owner(slots: &redis::Value, slot: u16) -> Option<(String, u16)> {
    use redis::Value::{Array, BulkString, Int, SimpleString};
    let Array(ranges) = slots else { return None };
    ranges.iter().find_map(|range| {
        let Array(range) = range else { return None };
        let (Some(Int(start)), Some(Int(end)), Some(Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&i64::from(slot)) {
            return None;
        }
        let host = match master.first()? {
            BulkString(b) => String::from_utf8(b.clone()).ok()?,
            SimpleString(s) => s.clone(),
            _ => return None,
        };
        let Some(Int(port)) = master.get(1) else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

/// A client-library error as ours, with the credentials scrubbed from its text. A server
/// that refused the credentials says so, and what to do.
pub(crate) fn remote_error(url: &ServerUrl, e: &redis::RedisError) -> Error {
    let refused = e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("WRONGPASS" | "NOAUTH"));
    let detail = if refused {
        format!(
            "the server refused the user name and password of the URL ({}): correct them \
             in the URL given to `connect`, or the user's entry in the server's ACL",
            url.scrub(&e.to_string())
        )
    } else {
        url.scrub(&e.to_string())
    };
    Error::Remote {
        server: url.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_settings_never_print_their_key() {
        let tls = Tls {
            ca: Some(b"-----BEGIN CERTIFICATE----- ca-bytes".to_vec()),
            client: Some((b"cert-bytes".to_vec(), b"private-key-bytes".to_vec())),
        };
        let shown = format!("{tls:?}");
        for secret in ["ca-bytes", "cert-bytes", "private-key-bytes"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn the_master_of_a_slot_is_read_from_cluster_slots() {
        use redis::Value::{Array, BulkString, Int};
        let node = |host: &str, port| Array(vec![BulkString(host.into()), Int(port)]);
        let slots = Array(vec![
            Array(vec![
                Int(0),
                Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Array(vec![Int(5461), Int(10922), node("10.0.0.2", 7001)]),
            Array(vec![Int(10923), Int(16383), node("", 7002)]),
        ]);
        assert_eq!(owner(&slots, 0), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(owner(&slots, 5461), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(owner(&slots, 16383), Some(("".into(), 7002)));
        assert_eq!(owner(&Array(vec![]), 1), None);
    }
}
