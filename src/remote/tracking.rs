//! Invalidation pushes for local tiers: a thread per remote store holds one RESP3
//! connection with `CLIENT TRACKING ON BCAST` on the namespace's generation and stamp
//! prefixes, and hands every change of those keys - by any client, on any machine - to
//! the cache as an [`Event`].
//!
//! Pushes are lost while the connection is down, so the listener reports [`Event::Flush`]
//! (drop every local copy) each time it (re)connects, *after* tracking is on again, and
//! [`Tracker::live`] is false from the moment a drop is noticed until then: local tiers
//! are neither served nor filled meanwhile. A drop is noticed by the listener (the server
//! closed the connection) or by any other call to the server that failed
//! ([`Tracker::suspect`]), which makes the listener reconnect - a server that stopped
//! answering leaves no closed socket to notice.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use super::layout::Invalidated;
use super::store::Remote;

/// What the listener tells the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// A generation or stamp changed: drop the local copies it covers.
    Invalidated(Invalidated),
    /// Pushes may have been missed (a reconnect, a `FLUSHDB`): drop every local copy.
    Flush,
}

/// How often the listener looks at its stop and reconnect flags while idle.
const POLL: Duration = Duration::from_millis(50);
/// Wait between reconnect attempts.
const BACKOFF: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Flags {
    live: AtomicBool,
    reconnect: AtomicBool,
    stop: AtomicBool,
}

/// The listener thread of one remote store.
pub(crate) struct Tracker {
    flags: Arc<Flags>,
    thread: Option<JoinHandle<()>>,
}

impl Tracker {
    /// Starts the listener. `on_event` runs on the listener thread.
    pub(crate) fn start(
        remote: &Arc<Remote>,
        on_event: impl Fn(Event) + Send + 'static,
    ) -> std::io::Result<Tracker> {
        let flags = Arc::new(Flags::default());
        let thread = std::thread::Builder::new()
            .name("fresco-memoize-tracking".into())
            .spawn({
                let flags = flags.clone();
                let remote = Arc::downgrade(remote);
                move || listen(&remote, &flags, &on_event)
            })?;
        Ok(Tracker {
            flags,
            thread: Some(thread),
        })
    }

    /// Whether pushes are flowing: local copies may be served and stored.
    pub(crate) fn live(&self) -> bool {
        self.flags.live.load(Ordering::Acquire)
    }

    /// Another call to the server failed: stop trusting local copies until the listener
    /// has reconnected (and flushed them).
    pub(crate) fn suspect(&self) {
        self.flags.live.store(false, Ordering::Release);
        self.flags.reconnect.store(true, Ordering::Release);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.flags.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

fn listen(remote: &Weak<Remote>, flags: &Flags, on_event: &dyn Fn(Event)) {
    while !flags.stop.load(Ordering::Acquire) {
        let Some(r) = remote.upgrade() else { return };
        flags.reconnect.store(false, Ordering::Release);
        let con = r.pool.connect_resp3().and_then(|mut con| {
            let mut cmd = redis::cmd("CLIENT");
            cmd.arg("TRACKING").arg("ON").arg("BCAST");
            for prefix in r.layout.invalidating_prefixes() {
                cmd.arg("PREFIX").arg(prefix);
            }
            redis::cmd("CLIENT")
                .arg("SETNAME")
                .arg(r.layout.tracker_name())
                .query::<()>(&mut con)
                .and_then(|()| cmd.query::<()>(&mut con))
                .and_then(|()| con.set_read_timeout(Some(POLL)))
                .map_err(|e| super::conn::remote_error(&r.pool.url, &e))?;
            Ok(con)
        });
        let Ok(mut con) = con else {
            drop(r);
            std::thread::sleep(BACKOFF);
            continue;
        };
        // Tracking is on: whatever changed before this moment is covered by the flush.
        on_event(Event::Flush);
        if !flags.reconnect.load(Ordering::Acquire) {
            flags.live.store(true, Ordering::Release);
        }
        let layout = r.layout.clone();
        drop(r);
        loop {
            if flags.stop.load(Ordering::Acquire) || flags.reconnect.load(Ordering::Acquire) {
                break;
            }
            match con.recv_response() {
                Ok(redis::Value::Push {
                    kind: redis::PushKind::Invalidate,
                    data,
                }) => {
                    match data.first() {
                        Some(redis::Value::Array(keys)) => {
                            for key in keys {
                                if let redis::Value::BulkString(key) = key
                                    && let Some(what) = layout.parse_invalidation(key)
                                {
                                    on_event(Event::Invalidated(what));
                                }
                            }
                        }
                        // A null key list: the database was flushed.
                        _ => on_event(Event::Flush),
                    }
                }
                Ok(_) => {}
                Err(e) if e.is_timeout() => {}
                Err(_) => break,
            }
        }
        flags.live.store(false, Ordering::Release);
    }
}
