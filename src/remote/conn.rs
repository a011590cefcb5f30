//! Connections to the server: a small pool of blocking connections with connect and
//! response timeouts, dropped on any error and opened again on the next call.
//!
//! A connection that failed or timed out is never reused: its stream may still carry the
//! late answer to the command that timed out, which the next command would take for its
//! own. After a failed connect the pool refuses calls for [`RETRY_AFTER`] instead of
//! waiting for another connect timeout on every call while the server is down.

use std::sync::Mutex;
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

pub(crate) struct Pool {
    client: redis::Client,
    /// The same server spoken to in RESP3, for invalidation pushes.
    resp3: redis::Client,
    pub(crate) url: ServerUrl,
    pub(crate) timeouts: Timeouts,
    idle: Mutex<Vec<redis::Connection>>,
    /// When the last connect failed, and why (calls before `RETRY_AFTER` fail with it).
    down: Mutex<Option<(Instant, String)>>,
}

impl Pool {
    /// Parses the URL (nothing is sent yet).
    pub(crate) fn new(url: ServerUrl, timeouts: Timeouts) -> Result<Self, Error> {
        use redis::IntoConnectionInfo;
        let opened = url.secret().into_connection_info().and_then(|info| {
            let resp3 = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            Ok((
                redis::Client::open(info.clone())?,
                redis::Client::open(info.set_redis_settings(resp3))?,
            ))
        });
        let (client, resp3) = opened.map_err(|e| remote_error(&url, &e))?;
        Ok(Pool {
            client,
            resp3,
            url,
            timeouts,
            idle: Mutex::new(Vec::new()),
            down: Mutex::new(None),
        })
    }

    /// Opens a fresh connection with this pool's timeouts.
    pub(crate) fn connect(&self) -> Result<redis::Connection, Error> {
        self.open(&self.client)
    }

    /// Opens a fresh RESP3 connection (for pushes) with this pool's timeouts.
    pub(crate) fn connect_resp3(&self) -> Result<redis::Connection, Error> {
        self.open(&self.resp3)
    }

    fn open(&self, client: &redis::Client) -> Result<redis::Connection, Error> {
        if let Some((at, why)) = &*self.down.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match opened {
            Ok(con) => {
                *down = None;
                Ok(con)
            }
            Err(e) => {
                let error = remote_error(&self.url, &e);
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
        let pooled = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self.connect()?,
        };
        match f(&mut con) {
            Ok(r) => {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(con);
                }
                Ok(r)
            }
            Err(e) => Err(remote_error(&self.url, &e)),
        }
    }

    /// Drops every idle connection (after the server was found restarted, say).
    pub(crate) fn reset(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// A client-library error as ours, with the credentials scrubbed from its text.
pub(crate) fn remote_error(url: &ServerUrl, e: &redis::RedisError) -> Error {
    Error::Remote {
        server: url.to_string(),
        detail: url.scrub(&e.to_string()),
    }
}
