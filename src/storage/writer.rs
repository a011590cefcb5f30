//! The single background writer: applies jobs in batches to one redb transaction, and
//! makes everything durable every `durable_interval`, on flush and on shutdown.
//!
//! Commits: a batch with a job to answer (`Run`, `Flush`) commits its transaction; a
//! batch of puts alone leaves it open for the next batch ([`Open`]) in an exclusive,
//! unbudgeted file, up to [`OPEN_PUTS`] puts or [`OPEN_BYTES`] bytes. Their readers
//! find them in the overlay meanwhile.
//!
//! Durability rules:
//! - A batch that carries a synchronous job (`Run`: an invalidation, a registration, a
//!   purge) commits durably: once an invalidation has returned, no crash and no rollback
//!   can bring the old entry back. Only stored values (`Put`) ride on non-durable commits,
//!   and losing one of those costs a recomputation, never a wrong value. They are made
//!   durable when the writes pause for `IDLE_DURABLE`, and at least every
//!   `durable_interval` while they do not.
//! - A failed batch is reported (every `Run` in it gets the error, its puts are dropped),
//!   and the database is reopened before the next batch ([`Storage::recover`]): redb
//!   refuses writes after a failed commit until then, and its recovery rolls the file back
//!   to the last durable commit. Damage (`Corrupted`, or a panic inside redb) instead
//!   moves the file aside under `OnCorruption::Recreate`.
//! - In a shared cache (`CacheBuilder::shared`) every commit is durable (redb refuses
//!   others there), so puts are gathered for `Multi::commit_interval` after the first one
//!   before they commit; synchronous jobs commit at once. Invalidations append to the
//!   log, and each put is checked against it ([`multi::Refusals`]).

use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{self as channel, Receiver, RecvTimeoutError, Sender};
use redb::{Durability, WriteTransaction};

use super::{PendingKey, Storage, budget, guarded, multi, ops};
use crate::error::{Error, Result};
use crate::key::KeyHash;

/// How often an idle writer of a shared cache makes its process's next read catch up
/// with the file even though the board did not move: a process killed between a commit
/// and its bump of the board leaves a commit the board does not count (issue 14's
/// visibility bound holds then too, at this interval).
const LOOK_AGAIN: Duration = Duration::from_millis(100);

/// How long the writer waits for more writes before making the ones it has durable.
const IDLE_DURABLE: Duration = Duration::from_millis(50);

/// Most jobs taken from the queue at once; bounds the latency of a synchronous job
/// behind a burst.
const MAX_BATCH: usize = 4096;

/// Most puts, and most bytes of them, that one transaction carries across batches (see
/// [`Open`]) before it commits.
const OPEN_PUTS: usize = 64 * 1024;
const OPEN_BYTES: usize = 64 << 20;

/// A synchronous job: runs inside a batch's transaction, and is answered once the batch
/// has committed (or failed). Typed end to end: each job sends its own result type.
trait Task: Send {
    /// Applies the job; its result is kept until the commit.
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error>;
    /// Answers the caller: the kept result if the batch committed, else `failure`.
    fn answer(self: Box<Self>, failure: Option<Error>);
}

/// A [`Task`] running `f` and answering with its result.
struct Typed<T, F> {
    f: Option<F>,
    value: Option<T>,
    reply: ReplyTx<T>,
}

impl<T, F> Task for Typed<T, F>
where
    T: Send,
    F: FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send,
{
    fn apply(&mut self, txn: &WriteTransaction) -> Result<(), redb::Error> {
        if let Some(f) = self.f.take() {
            self.value = Some(f(txn)?);
        }
        Ok(())
    }

    fn answer(self: Box<Self>, failure: Option<Error>) {
        let answer = match (failure, self.value) {
            (None, Some(value)) => Ok(value),
            (Some(e), _) => Err(e),
            // Committed without reaching the job: only a batch that failed does that.
            (None, None) => Err(Error::WriterStopped),
        };
        // Each reply channel holds one answer and gets one: `try_send` never waits.
        let _ = self.reply.try_send(answer);
    }
}

enum Job {
    Put {
        key: PendingKey,
        bytes: Arc<[u8]>,
        seq: u64,
    },
    Run {
        task: Box<dyn Task>,
        /// Whether its batch must commit durably (everything but read-only queries).
        durable: bool,
    },
    Flush(ReplyTx<()>),
    /// A reader met damage: look at `Storage::suspect` now.
    Wake,
    Shutdown,
}

/// The writer's answer to one synchronous job. A channel that a thread can block on and
/// a future can await alike (async-channel), so async invalidations wait for their
/// commit without blocking an executor's thread.
type ReplyTx<T> = async_channel::Sender<Result<T>>;

/// A synchronous job's future result.
pub(crate) struct Ticket<T> {
    rx: async_channel::Receiver<Result<T>>,
}

/// How a caller waits for a [`Ticket`]: blocking its thread, or as a future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    Block,
    Await,
}

impl<T> Ticket<T> {
    fn new() -> (ReplyTx<T>, Self) {
        let (tx, rx) = async_channel::bounded(1);
        (tx, Ticket { rx })
    }

    /// Waits until the job's transaction has committed (or failed).
    pub(crate) fn wait(self) -> Result<T> {
        Self::open(self.rx.recv_blocking())
    }

    /// Waits as `how` says. With [`Wait::Block`] the future never returns `Pending`:
    /// the synchronous API runs such futures with [`now`]. Borrows the ticket, so that a
    /// caller whose future is dropped mid-wait can still [`wait`](Self::wait) for the
    /// reply.
    pub(crate) async fn wait_as(&self, how: Wait) -> Result<T> {
        match how {
            Wait::Block => Self::open(self.rx.recv_blocking()),
            Wait::Await => Self::open(self.rx.recv().await),
        }
    }

    fn open(reply: Result<Result<T>, async_channel::RecvError>) -> Result<T> {
        reply.map_err(|_| Error::WriterStopped)?
    }
}

/// Runs `future` to completion on this thread. The code that carries out an
/// invalidation is written once, as a future whose only waits are tickets; the
/// synchronous API passes [`Wait::Block`], so the first poll finishes it.
pub(crate) fn now<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: Sender<Job>,
    handle: Mutex<Option<JoinHandle<()>>>,
    /// In a shared cache: this process's token in the invalidation log, and the file.
    shared: Option<(u64, std::path::PathBuf)>,
    storage: Arc<Storage>,
}

impl Writer {
    pub(crate) fn spawn(storage: Arc<Storage>, durable_interval: Duration) -> Result<Writer> {
        let (tx, rx) = channel::unbounded();
        let wake = tx.clone();
        storage.set_wake(move || {
            let _ = wake.send(Job::Wake);
        });
        let shared = storage.multi().map(|m| {
            (
                m.token,
                storage.path().map(Path::to_path_buf).unwrap_or_default(),
            )
        });
        let thread_storage = storage.clone();
        let handle = std::thread::Builder::new()
            .name("fresco-memoize-writer".into())
            .spawn(move || run(&thread_storage, &rx, durable_interval))
            .map_err(|source| Error::Io {
                path: "<writer thread>".into(),
                source,
            })?;
        Ok(Writer {
            tx,
            handle: Mutex::new(Some(handle)),
            shared,
            storage,
        })
    }

    /// In a child forked after a shared cache was opened: the error every job gets (the
    /// writer thread is the parent's; the child has none).
    fn forked(&self) -> Option<Error> {
        let multi = self.storage.multi()?;
        let (_, path) = self.shared.as_ref()?;
        multi.check_pid(path).err()
    }

    /// Queues an entry. Returns false if the writer has stopped.
    pub(crate) fn put(&self, memo_id: u64, hash: KeyHash, bytes: Arc<[u8]>, seq: u64) -> bool {
        if self.shared.is_some() && self.forked().is_some() {
            return false;
        }
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
        self.send_run(f, true)
    }

    /// Queues an invalidation's removal from the file (see [`ops::remove_what`]); in a
    /// shared cache it is logged in the same transaction, for the other processes.
    pub(crate) fn remove(&self, removal: ops::Removal) -> Ticket<ops::Removed> {
        let token = self.log_token();
        self.submit(move |txn| {
            let removed = ops::remove_what(txn, &removal)?;
            multi::log(txn, token, multi::Logged::of(&removal))?;
            Ok(removed)
        })
    }

    /// In a shared cache, the token under which this process logs its invalidations
    /// (for jobs that remove entries outside [`remove`](Self::remove)).
    pub(crate) fn log_token(&self) -> Option<u64> {
        self.shared.as_ref().map(|(token, _)| *token)
    }

    /// Runs `f` in the next transaction and waits for its commit, without forcing a
    /// durable one: for work a crash may undo (reclaiming graves).
    pub(crate) fn run_lazy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T> {
        self.send_run(f, false).wait()
    }

    /// Runs a read-only `f` after every job queued so far, without forcing a durable
    /// commit (it changes nothing that a crash could lose).
    pub(crate) fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
    ) -> Result<T> {
        self.send_run(f, false).wait()
    }

    fn send_run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&WriteTransaction) -> Result<T, redb::Error> + Send + 'static,
        durable: bool,
    ) -> Ticket<T> {
        let (reply, ticket) = Ticket::new();
        if let Some(e) = self.shared.as_ref().and_then(|_| self.forked()) {
            let _ = reply.try_send(Err(e));
            return ticket;
        }
        let task = Box::new(Typed {
            f: Some(f),
            value: None,
            reply,
        });
        // If the writer is gone the task (and its reply sender) is dropped and `wait`
        // reports it.
        let _ = self.tx.send(Job::Run { task, durable });
        ticket
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
        self.flush_ticket().wait()
    }

    /// Queues a durable commit of everything queued so far; the ticket is answered once
    /// it is done (or with [`Error::WriterStopped`] if the writer is gone).
    pub(crate) fn flush_ticket(&self) -> Ticket<()> {
        let (reply, ticket) = Ticket::new();
        if let Some(e) = self.shared.as_ref().and_then(|_| self.forked()) {
            let _ = reply.try_send(Err(e));
            return ticket;
        }
        let _ = self.tx.send(Job::Flush(reply));
        ticket
    }

    /// Makes everything durable and stops the thread.
    pub(crate) fn shutdown(&self) {
        // A forked child has no writer thread to stop (nor to wait for).
        if self.shared.is_some() && self.forked().is_some() {
            return;
        }
        let _ = self.tx.send(Job::Shutdown);
        if let Some(handle) = self.handle.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = handle.join();
        }
    }
}

fn run(storage: &Storage, rx: &Receiver<Job>, durable_interval: Duration) {
    // Written since the last durable commit: committed non-durably, or still in `open`.
    let mut dirty = false;
    let mut open: Option<Open<'_>> = None;
    let mut last_durable = Instant::now();
    loop {
        // While non-durable commits are outstanding, wait at most until the interval ends
        // or the writes pause for `IDLE_DURABLE`: a program that computes a burst and then
        // exits without dropping its cache (a `static`) keeps that burst.
        let mut idle = false;
        let first = if dirty {
            let wait = durable_interval
                .saturating_sub(last_durable.elapsed())
                .min(IDLE_DURABLE);
            match rx.recv_timeout(wait) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => {
                    idle = true;
                    None
                }
                Err(RecvTimeoutError::Disconnected) => Some(Job::Shutdown),
            }
        } else if let Some(multi) = storage.multi() {
            match rx.recv_timeout(LOOK_AGAIN) {
                Ok(job) => Some(job),
                Err(RecvTimeoutError::Timeout) => {
                    multi.peers.look_again();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => Some(Job::Shutdown),
            }
        } else {
            Some(rx.recv().unwrap_or(Job::Shutdown))
        };
        let mut batch = Vec::new();
        let mut shutdown = false;
        let mut next = first;
        // A shared cache's commits are durable: its puts wait to share one.
        let gather = storage.multi().map(|m| Instant::now() + m.commit_interval);
        // A file with a byte budget takes batches of a sixteenth of it at most: redb
        // reuses the pages a batch frees only after a durable commit.
        let mut room = storage.budget().map_or(u64::MAX, |b| b.max_bytes() / 16);
        while let Some(job) = next {
            match job {
                Job::Shutdown => shutdown = true,
                Job::Wake => {}
                job => {
                    if let Job::Put { bytes, .. } = &job {
                        room = room.saturating_sub(bytes.len() as u64);
                    }
                    batch.push(job);
                }
            }
            let synchronous = matches!(batch.last(), Some(Job::Flush(_) | Job::Run { .. }));
            next = if shutdown || batch.len() >= MAX_BATCH || room == 0 {
                None
            } else {
                match gather {
                    Some(until) if !synchronous && !batch.is_empty() => {
                        rx.recv_deadline(until).ok()
                    }
                    _ => rx.try_recv().ok(),
                }
            };
        }
        if storage.suspected() {
            abandon(storage, &mut open);
            storage.recover(false);
        } else if storage.take_reopen_request() {
            abandon(storage, &mut open);
            storage.ensure_open();
        }
        let synchronous = batch
            .iter()
            .any(|j| matches!(j, Job::Flush(_) | Job::Run { durable: true, .. }));
        // A full batch of a budgeted file commits durably, so the next one can reuse the
        // pages it freed; a shared cache's commits are always durable.
        let durable = shutdown
            || synchronous
            || idle
            || room == 0
            || last_durable.elapsed() >= durable_interval
            || storage.multi().is_some();
        // Puts alone need no commit yet: their readers are served from the overlay, and
        // a later commit (durable once the writes pause, or within the interval) takes
        // them. A shared cache's batches are all durable (above); a budgeted file's
        // rounds count what each commit frees (`commit_batch` asks them).
        let answered = batch
            .iter()
            .any(|j| matches!(j, Job::Flush(_) | Job::Run { .. }));
        let end = if durable {
            End::Durable
        } else if answered {
            End::Commit
        } else {
            End::MayKeep
        };
        if !batch.is_empty() || (durable && dirty) {
            match commit_batch(storage, &mut open, batch, end) {
                Ok(Ended::Kept) => dirty = true,
                Ok(Ended::Committed) if durable => {
                    dirty = false;
                    last_durable = Instant::now();
                    storage.reporter.durable_commit();
                    storage.check_file();
                    // The writes paused: give back what their copy-on-write left behind
                    // (after a flush `commit_batch` did). A file with a byte budget is
                    // looked at after every durable commit.
                    if idle || storage.budget().is_some() {
                        storage.compact_if_grown();
                    }
                }
                Ok(Ended::Committed) => dirty = true,
                // The reopened database holds only what was durable.
                Err(()) => dirty = false,
            }
        }
        if shutdown {
            return;
        }
    }
}

enum Reply {
    Run(Box<dyn Task>),
    Flush(ReplyTx<()>),
}

/// How [`commit_batch`] ends the transaction it applied a batch to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// Commit it durably.
    Durable,
    /// Commit it.
    Commit,
    /// Keep it open for the next batch, unless it is full or a budget counts its pages.
    MayKeep,
}

/// What [`commit_batch`] did.
enum Ended {
    Committed,
    Kept,
}

/// A write transaction kept open across batches of puts. A burst of puts into a file
/// whose rows land at random places dirties most of its leaf pages in every batch; one
/// commit per batch wrote each page (copy-on-write) once per batch, and the durable
/// commit at the end of the burst had to sync all of those copies. Kept open, a page is
/// written once per commit. The puts stay in the overlay meanwhile, where reads find
/// them.
struct Open<'s> {
    txn: WriteTransaction,
    rounds: budget::Rounds<'s>,
    /// The puts applied, with their overlay sequence: they leave the overlay when the
    /// transaction commits or fails.
    settled: Vec<(PendingKey, u64)>,
    bytes: usize,
}

/// Drops the open transaction, if any, and its puts with it (counted as lost writes: a
/// later call recomputes them): before the database is recovered or reopened.
fn abandon(storage: &Storage, open: &mut Option<Open<'_>>) {
    if let Some(open) = open.take() {
        drop(open.txn);
        storage.count_lost_writes(&open.settled);
        storage.settle_pending(&open.settled);
    }
}

/// Applies `batch` to the open transaction (begun if there is none), then commits it
/// unless `end` allows keeping it open. On failure, reports it, answers every job with
/// the error, drops the transaction's puts and reopens the database for the next batch.
fn commit_batch<'s>(
    storage: &'s Storage,
    open: &mut Option<Open<'s>>,
    batch: Vec<Job>,
    end: End,
) -> Result<Ended, ()> {
    let mut replies: Vec<Reply> = Vec::new();
    let db_open = storage.ensure_open();
    let mut jobs = batch.into_iter();
    let applied = guarded(|| {
        if open.is_none() {
            *open = Some(Open {
                txn: storage.db()?.begin_write()?,
                rounds: budget::Rounds::new(storage),
                settled: Vec::new(),
                bytes: 0,
            });
        }
        let Some(Open {
            txn,
            rounds,
            settled,
            bytes: open_bytes,
        }) = open.as_mut()
        else {
            unreachable!("begun above")
        };
        let mut puts = ops::Puts::new(txn);
        let mut refusals = storage.multi().map(multi::Refusals::new);
        for job in jobs.by_ref() {
            match job {
                Job::Put { key, bytes, seq } => {
                    settled.push((key, seq));
                    *open_bytes += bytes.len();
                    if let Some(refusals) = &mut refusals
                        && refusals.refuses(txn, &key, seq, &bytes)?
                    {
                        continue;
                    }
                    puts.put(key.0, &key.1, &bytes)?;
                    if rounds.put(key.0, &key.1, bytes.len()) {
                        puts.close()?;
                        rounds.run(txn)?;
                    }
                }
                Job::Run { mut task, .. } => {
                    puts.close()?;
                    let applied = task.apply(txn);
                    replies.push(Reply::Run(task));
                    applied?;
                }
                Job::Flush(reply) => replies.push(Reply::Flush(reply)),
                Job::Wake | Job::Shutdown => {}
            }
        }
        puts.close()?;
        drop(puts);
        rounds.run(txn)?;
        Ok(())
    });
    let keep = applied.is_ok()
        && end == End::MayKeep
        && open.as_ref().is_some_and(|o| {
            !o.rounds.bounded() && o.settled.len() < OPEN_PUTS && o.bytes < OPEN_BYTES
        });
    if keep {
        debug_assert!(replies.is_empty(), "a batch with answers commits");
        return Ok(Ended::Kept);
    }
    let durable = end == End::Durable;
    let (mut settled, outcome) = match (applied, open.take()) {
        (
            Ok(()),
            Some(Open {
                mut txn,
                rounds,
                settled,
                ..
            }),
        ) => {
            let outcome = guarded(|| {
                let level = if durable {
                    Durability::Immediate
                } else {
                    Durability::None
                };
                txn.set_durability(level)
                    .map_err(|e| redb::Error::Io(std::io::Error::other(e)))?;
                super::faults::before_commit();
                txn.commit()?;
                Ok(rounds.evicted)
            });
            (settled, outcome)
        }
        // The transaction is dropped: nothing of it reaches the file.
        (applied, open) => (
            open.map(|o| o.settled).unwrap_or_default(),
            applied.and(Err(redb::Error::DatabaseClosed)),
        ),
    };
    // Jobs the failed transaction never reached still get their answer, and their puts
    // still leave the overlay (a put left there would be served even after an
    // invalidation).
    for job in jobs {
        match job {
            Job::Put { key, seq, .. } => settled.push((key, seq)),
            Job::Run { task, .. } => replies.push(Reply::Run(task)),
            Job::Flush(reply) => replies.push(Reply::Flush(reply)),
            Job::Wake | Job::Shutdown => {}
        }
    }
    let committed = outcome.is_ok();
    if let Ok(evicted) = &outcome {
        storage.committed();
        storage.count_evicted(evicted);
    } else {
        storage.count_lost_writes(&settled);
    }
    // Committed puts are now in the snapshot; failed ones are dropped (a later call
    // recomputes). Either way they leave the overlay.
    storage.settle_pending(&settled);
    let flushed = committed && durable && replies.iter().any(|r| matches!(r, Reply::Flush(_)));
    let failure = outcome.err().map(|e| {
        let damaged = super::is_corruption(&e);
        let error = Arc::new(storage.error(e));
        // A closed database (not reopened after a failure) was reported when it closed.
        if db_open {
            storage.reporter.report(&error);
            storage.recover(damaged);
        }
        error
    });
    for reply in replies {
        let err = || {
            Error::WriteFailed(
                failure
                    .clone()
                    .unwrap_or_else(|| Arc::new(Error::WriterStopped)),
            )
        };
        match reply {
            Reply::Run(task) => task.answer((!committed).then(err)),
            // Each reply channel holds one answer and gets one: `try_send` never waits.
            Reply::Flush(tx) => {
                let _ = tx.try_send(if committed { Ok(()) } else { Err(err()) });
            }
        }
    }
    // A flush ended a burst: give back what its copy-on-write left behind, after the
    // flush is answered (the next job waits for the compaction, the flush does not).
    if flushed {
        storage.compact_if_grown();
    }
    if committed {
        Ok(Ended::Committed)
    } else {
        Err(())
    }
}
