//! The single background writer: batches jobs into one redb transaction, commits
//! non-durably, and makes everything durable every `durable_interval`, on flush and on
//! shutdown.

use std::any::Any;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender};
use redb::{Durability, WriteTransaction};

use super::{PendingKey, Storage, guarded, ops};
use crate::error::{Error, Result};
use crate::key::KeyHash;

/// Most jobs in one transaction; bounds the latency of a synchronous job behind a burst.
const MAX_BATCH: usize = 4096;

type AnyBox = Box<dyn Any + Send>;
type RunFn = Box<dyn FnOnce(&WriteTransaction) -> Result<AnyBox, redb::Error> + Send>;

enum Job {
    Put {
        key: PendingKey,
        bytes: Arc<[u8]>,
        seq: u64,
    },
    Run {
        f: RunFn,
        reply: Sender<Result<AnyBox>>,
    },
    Flush(Sender<Result<()>>),
    Shutdown,
}

/// A synchronous job's future result.
pub(crate) struct Ticket<T> {
    rx: channel::Receiver<Result<AnyBox>>,
    _t: std::marker::PhantomData<fn() -> T>,
}

impl<T: 'static> Ticket<T> {
    /// Waits until the job's transaction has committed (or failed).
    pub(crate) fn wait(self) -> Result<T> {
        let boxed = self.rx.recv().map_err(|_| Error::WriterStopped)??;
        boxed
            .downcast::<T>()
            .map(|b| *b)
            .map_err(|_| Error::WriterStopped)
    }
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: Sender<Job>,
    handle: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    pub(crate) fn spawn(storage: Arc<Storage>, durable_interval: Duration) -> Result<Writer> {
        let (tx, rx) = channel::unbounded();
        let handle = std::thread::Builder::new()
            .name("fresco-memoize-writer".into())
            .spawn(move || run(&storage, &rx, durable_interval))
            .map_err(|source| Error::Io {
                path: "<writer thread>".into(),
                source,
            })?;
        Ok(Writer {
            tx,
            handle: Mutex::new(Some(handle)),
        })
    }

    /// Queues an entry. Returns false if the writer has stopped.
    pub(crate) fn put(&self, memo_id: u64, hash: KeyHash, bytes: Arc<[u8]>, seq: u64) -> bool {
        self.tx
            .send(Job::Put {
                key: (memo_id, hash),
                bytes,
                seq,
            })
            .is_ok()
    }

    /// Queues a job that runs inside the next transaction; wait on the ticket for its
    /// result once the transaction has committed.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Ticket<T> {
        let (reply, rx) = channel::bounded(1);
        let f: RunFn = Box::new(move |txn| f(txn).map(|t| Box::new(t) as AnyBox));
        // If the writer is gone the reply sender is dropped and `wait` reports it.
        let _ = self.tx.send(Job::Run { f, reply });
        Ticket {
            rx,
            _t: std::marker::PhantomData,
        }
    }

    /// Runs `f` in the next transaction and waits for its commit.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T> {
        self.submit(f).wait()
    }

    /// Commits everything queued so far durably.
    pub(crate) fn flush(&self) -> Result<()> {
        let (reply, rx) = channel::bounded(1);
        self.tx
            .send(Job::Flush(reply))
            .map_err(|_| Error::WriterStopped)?;
        rx.recv().map_err(|_| Error::WriterStopped)?
    }

    /// Makes everything durable and stops the thread.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Job::Shutdown);
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

fn run(storage: &Storage, rx: &Receiver<Job>, durable_interval: Duration) {
    let mut dirty = false;
    let mut last_durable = Instant::now();
    loop {
        let first = if dirty {
            match rx.recv_timeout(durable_interval.saturating_sub(last_durable.elapsed())) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Job::Shutdown),
            }
        } else {
            Some(rx.recv().unwrap_or(Job::Shutdown))
        };
        let mut batch = Vec::new();
        let mut shutdown = false;
        let mut next = first;
        while let Some(job) = next {
            match job {
                Job::Shutdown => shutdown = true,
                job => batch.push(job),
            }
            next = if shutdown || batch.len() >= MAX_BATCH {
                None
            } else {
                rx.try_recv().ok()
            };
        }
        let flush_requested = batch.iter().any(|j| matches!(j, Job::Flush(_)));
        let durable = shutdown || flush_requested || last_durable.elapsed() >= durable_interval;
        let work = !batch.is_empty() || (durable && dirty);
        if work && commit_batch(storage, batch, durable) {
            dirty = !durable;
            if durable {
                last_durable = Instant::now();
            }
        }
        if shutdown {
            return;
        }
    }
}

enum Reply {
    Run(Sender<Result<AnyBox>>, Option<AnyBox>),
    Flush(Sender<Result<()>>),
}

/// Applies `batch` in one transaction. Returns whether it committed.
fn commit_batch(storage: &Storage, batch: Vec<Job>, durable: bool) -> bool {
    let mut settled: Vec<(PendingKey, u64)> = Vec::new();
    let mut replies: Vec<Reply> = Vec::new();
    let outcome = guarded(|| {
        let mut txn = storage.db().begin_write()?;
        let level = if durable {
            Durability::Immediate
        } else {
            Durability::None
        };
        txn.set_durability(level)
            .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
        for job in batch {
            match job {
                Job::Put { key, bytes, seq } => {
                    settled.push((key, seq));
                    ops::put(&txn, key.0, &key.1, &bytes)?;
                }
                Job::Run { f, reply } => {
                    replies.push(Reply::Run(reply, None));
                    let value = f(&txn)?;
                    if let Some(Reply::Run(_, slot)) = replies.last_mut() {
                        *slot = Some(value);
                    }
                }
                Job::Flush(reply) => replies.push(Reply::Flush(reply)),
                Job::Shutdown => {}
            }
        }
        txn.commit()?;
        Ok(())
    });
    let committed = outcome.is_ok();
    if committed {
        storage.committed();
    }
    // Committed puts are now in the snapshot; failed ones are dropped (a later call
    // recomputes). Either way they leave the overlay.
    storage.settle_pending(&settled);
    let failure = outcome.err().map(|e| Arc::new(storage.error(e)));
    if let Some(e) = &failure {
        storage.reporter.report(e);
    }
    for reply in replies {
        let err = || {
            Error::WriteFailed(
                failure
                    .clone()
                    .unwrap_or_else(|| Arc::new(Error::WriterStopped)),
            )
        };
        match reply {
            Reply::Run(tx, Some(value)) if committed => {
                let _ = tx.send(Ok(value));
            }
            Reply::Run(tx, _) => {
                let _ = tx.send(Err(err()));
            }
            Reply::Flush(tx) => {
                let _ = tx.send(if committed { Ok(()) } else { Err(err()) });
            }
        }
    }
    committed
}
