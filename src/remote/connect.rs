//! `CacheBuilder::connect` and its server settings (feature `redis`).

use std::sync::Arc;
use std::time::Duration;

use super::service::Service;
use super::store::Settings;
use crate::cache::{Cache, CacheBuilder};
use crate::error::Result;
use crate::storage::faults::FaultyBackend;

/// Server settings collected by the builder.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    namespace: String,
    settings: Settings,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespace: "default".to_string(),
            settings: Settings::default(),
        }
    }
}

/// A memoizer's or zone's id on the server: a hash of its name, so that every machine
/// names the same keys.
pub(crate) fn name_id(name: &str) -> u64 {
    crate::fingerprint::name_hash(name)
}

impl Cache {
    /// A cache whose memoizers keep their entries on a Redis or Valkey server (feature
    /// `redis`), in the namespace `"default"`: shorthand for
    /// `Cache::builder().connect(url)`. See [`CacheBuilder::connect`].
    pub fn connect(url: &str) -> Result<Cache> {
        CacheBuilder::new().connect(url)
    }
}

impl CacheBuilder {
    /// The namespace of a connected cache: every key it writes on the server starts with
    /// `{fm:<namespace>}`. Caches on several machines share entries, zones and
    /// invalidations exactly when they connect to the same server and namespace.
    /// Printable, without braces or spaces; default `"default"`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.remote.namespace = namespace.to_string();
        self
    }

    /// How long a connected cache waits to connect to its server and for each answer
    /// before it gives up on that call (the call then computes its value and reports the
    /// error). Default: 250 ms each.
    pub fn server_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.remote.settings.timeouts.connect = connect.max(Duration::from_millis(1));
        self.remote.settings.timeouts.response = response.max(Duration::from_millis(1));
        self
    }

    /// How long a single-flight lease on the server lasts: while one machine computes a
    /// value, the others wait for it; the lease is renewed every third of this while the
    /// computation runs, so it lapses this long after its holder died. Default: 5 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.remote.settings.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// Every entry of a connected cache expires on the server at most this long after it
    /// was stored (an invalidated entry is unreachable at once but keeps its memory until
    /// then, or until the server evicts it). `None`: only `expires` deadlines and the
    /// server's eviction policy remove entries. Default: 24 hours.
    pub fn ttl_ceiling(mut self, ceiling: Option<Duration>) -> Self {
        self.remote.settings.ttl_ceiling = ceiling;
        self
    }

    /// The certificate authorities (PEM) a `rediss://` server's certificate must chain to,
    /// instead of the system's trusted roots: for a server with a private CA.
    pub fn server_ca_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.remote.settings.tls.ca = Some(pem.into());
        self
    }

    /// A client certificate and its private key (PEM) presented to a `rediss://` server
    /// that authenticates clients by certificate (`tls-auth-clients yes`). The key never
    /// appears in `Debug` output or errors.
    pub fn server_client_certificate(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.remote.settings.tls.client = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// A cache whose memoizers keep their entries on the Redis or Valkey server at `url`
    /// (feature `redis`): `redis://[user:password@]host:port/db`, or `rediss://` for TLS
    /// (the server's certificate is checked against the system's roots, or against
    /// [`server_ca_certificates`](Self::server_ca_certificates)). Any node of a Redis
    /// Cluster will do: the namespace lives in one hash slot, and the cache talks to the
    /// node that serves it. Memoizers default to [`Store::Persistent`], which
    /// here means the server; [`Store::Tiered`] puts a local LRU in front of it, kept
    /// up to date by the server's invalidation pushes (README, "Redis").
    ///
    /// Fails only for a URL or namespace that cannot be used. A server that is down is
    /// not an error here: calls then compute their values, report the failure
    /// ([`Cache::health`]) and reconnect by themselves.
    ///
    /// ```no_run
    /// use fresco_memoize::Cache;
    ///
    /// let cache = Cache::builder().namespace("books").connect("redis://127.0.0.1:6379/0")?;
    /// let words = cache.memoizer::<str, usize>("words").build()?;
    /// assert_eq!(words.get_or_compute("war and peace", |s| s.split(' ').count()), 3);
    /// # Ok::<(), fresco_memoize::Error>(())
    /// ```
    ///
    /// [`Store::Persistent`]: crate::Store::Persistent
    /// [`Store::Tiered`]: crate::Store::Tiered
    pub fn connect(self, url: &str) -> Result<Cache> {
        let service = Arc::new(Service::new(
            url,
            &self.remote.namespace,
            self.remote.settings.clone(),
        )?);
        let cache = self.over_backend(FaultyBackend::in_memory(), true, Some(service.clone()))?;
        if let Err(e) = service.ping() {
            cache.inner.shared.storage.reporter.report(&e);
        }
        Ok(cache)
    }
}
