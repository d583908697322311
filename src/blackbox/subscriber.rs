//! The running Black Box: one I/O task per SUB socket reads messages and
//! hands each to one of N workers over bounded channels, chosen by the
//! sharding key; the workers run the user's handler.
//!
//! Black Box (Guide ch. 5): SUB (TCP) → I/O task → bounded tokio mpsc per
//! worker (in place of the Guide's PUSH→PULL over inproc, which the
//! `zeromq` crate lacks, and which would round-robin and so break per-key
//! order) → worker threads.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zeromq::{Socket, SocketRecv, SubSocket, ZmqMessage};

use super::config::{BlackBoxConfig, DropHook, Overflow, WorkerThreads};
use super::error::BlackBoxError;
use super::shard::Sharder;
use super::stats::{BlackBoxStats, Counters};

/// The largest batch an I/O task hands to a worker at once.
const MAX_BATCH: usize = 64;

/// The user's per-message work, one instance per worker.
pub trait Worker: Send + 'static {
    /// Handles one message. Messages of one key arrive in order, always at
    /// the same worker.
    fn handle(&mut self, msg: ZmqMessage);
}

impl<F: FnMut(ZmqMessage) + Send + 'static> Worker for F {
    fn handle(&mut self, msg: ZmqMessage) {
        self(msg)
    }
}

/// Starts Black Box sharded subscribers.
#[derive(Debug)]
pub struct BlackBox;

impl BlackBox {
    /// Connects (or binds) every subscriber socket, subscribes, starts the
    /// workers (`make_worker(i)` builds worker `i`) and the I/O tasks.
    ///
    /// The I/O tasks are spawned on the current tokio runtime. Returns once
    /// every socket is attached; connects wait for their peer (bounded by
    /// the `zeromq` crate's connect timeout).
    pub async fn start<W, F>(
        config: BlackBoxConfig,
        mut make_worker: F,
    ) -> Result<BlackBoxHandle, BlackBoxError>
    where
        W: Worker,
        F: FnMut(usize) -> W,
    {
        let workers = NonZeroUsize::new(config.workers).ok_or(BlackBoxError::ZeroWorkers)?;
        if config.queue_depth == 0 {
            return Err(BlackBoxError::ZeroQueueDepth);
        }
        if config.sockets.is_empty() {
            return Err(BlackBoxError::NoSockets);
        }
        let mut subs = Vec::with_capacity(config.sockets.len());
        let mut endpoints = Vec::with_capacity(config.sockets.len());
        for (i, spec) in config.sockets.iter().enumerate() {
            if spec.endpoints.is_empty() {
                return Err(BlackBoxError::NoEndpoint(i));
            }
            let mut sub = SubSocket::new();
            for t in &spec.topics {
                sub.subscribe(t).await?;
            }
            let mut resolved = Vec::new();
            for ep in &spec.endpoints {
                resolved.push(ep.attach_to(&mut sub).await?);
            }
            subs.push(sub);
            endpoints.push(resolved);
        }
        let counters = Arc::new(Counters::new(subs.len(), workers.get()));
        let cancel = CancellationToken::new();
        let batch_max = config.queue_depth.min(MAX_BATCH);
        let mut senders = Vec::with_capacity(workers.get());
        let mut joins = Vec::with_capacity(workers.get());
        for i in 0..workers.get() {
            let (tx, rx) = mpsc::channel(config.queue_depth.div_ceil(batch_max));
            senders.push(tx);
            joins.push(spawn_worker(
                i,
                make_worker(i),
                rx,
                &counters,
                config.threads,
            )?);
        }
        let ctx = Arc::new(IoCtx {
            sharder: Sharder::new(config.key.clone(), workers),
            senders,
            batch_max,
            overflow: config.overflow,
            on_drop: config.on_drop.clone(),
            counters: counters.clone(),
        });
        let io = subs
            .into_iter()
            .enumerate()
            .map(|(i, sub)| {
                let span = tracing::info_span!("blackbox_io", socket = i);
                tokio::spawn(io_task(i, sub, ctx.clone(), cancel.child_token()).instrument(span))
            })
            .collect();
        tracing::debug!(
            workers = workers.get(),
            sockets = endpoints.len(),
            "black box started"
        );
        Ok(BlackBoxHandle {
            cancel,
            io,
            workers: joins,
            counters,
            endpoints,
        })
    }
}

enum WorkerJoin {
    Thread(std::thread::JoinHandle<()>),
    Task(JoinHandle<()>),
}

/// A running Black Box: counters, endpoints, and shutdown.
#[must_use = "dropping the handle stops the Black Box; call shutdown() to drain it"]
pub struct BlackBoxHandle {
    cancel: CancellationToken,
    io: Vec<JoinHandle<()>>,
    workers: Vec<WorkerJoin>,
    counters: Arc<Counters>,
    endpoints: Vec<Vec<String>>,
}

impl std::fmt::Debug for BlackBoxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlackBoxHandle")
            .field("endpoints", &self.endpoints)
            .field("workers", &self.workers.len())
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl BlackBoxHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> BlackBoxStats {
        self.counters.snapshot()
    }

    /// The resolved endpoints, per socket (real ports for binds on port 0).
    pub fn endpoints(&self) -> &[Vec<String>] {
        &self.endpoints
    }

    /// Cancelling this token stops the I/O tasks (as `shutdown` does).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops reading, lets every worker finish its queue, waits for all of
    /// them, and returns the final counters (then `received == delivered +
    /// dropped`, unless a handler panicked).
    pub async fn shutdown(mut self) -> Result<BlackBoxStats, BlackBoxError> {
        self.cancel.cancel();
        for io in self.io.drain(..) {
            if let Err(e) = io.await {
                tracing::error!(cause = %e, "black box I/O task failed");
            }
        }
        let mut panicked = None;
        for (i, w) in self.workers.drain(..).enumerate() {
            let ok = match w {
                WorkerJoin::Thread(h) => tokio::task::spawn_blocking(move || h.join().is_ok())
                    .await
                    .unwrap_or(false),
                WorkerJoin::Task(h) => h.await.is_ok(),
            };
            if !ok {
                panicked.get_or_insert(i);
            }
        }
        match panicked {
            Some(i) => Err(BlackBoxError::WorkerPanicked(i)),
            None => Ok(self.counters.snapshot()),
        }
    }
}

impl Drop for BlackBoxHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn spawn_worker<W: Worker>(
    i: usize,
    mut worker: W,
    mut rx: mpsc::Receiver<Vec<ZmqMessage>>,
    counters: &Arc<Counters>,
    threads: WorkerThreads,
) -> Result<WorkerJoin, BlackBoxError> {
    let counters = counters.clone();
    let mut run_batch = move |batch: Vec<ZmqMessage>| {
        let n = batch.len() as u64;
        for msg in batch {
            worker.handle(msg);
        }
        counters.delivered[i].add_single_writer(n);
    };
    Ok(match threads {
        WorkerThreads::Dedicated => WorkerJoin::Thread(
            std::thread::Builder::new()
                .name(format!("blackbox-w{i}"))
                .spawn(move || {
                    while let Some(batch) = rx.blocking_recv() {
                        run_batch(batch);
                    }
                })?,
        ),
        WorkerThreads::Runtime => WorkerJoin::Task(tokio::spawn(async move {
            while let Some(batch) = rx.recv().await {
                run_batch(batch);
                tokio::task::yield_now().await;
            }
        })),
    })
}

/// What every I/O task shares.
struct IoCtx {
    sharder: Sharder,
    senders: Vec<mpsc::Sender<Vec<ZmqMessage>>>,
    batch_max: usize,
    overflow: Overflow,
    on_drop: Option<DropHook>,
    counters: Arc<Counters>,
}

/// Reads one socket. Messages are collected per worker and handed over in
/// batches: a batch goes when it is full or when the socket has nothing
/// more ready, so a busy stream costs one channel operation and at most
/// one thread wake-up per batch, and a quiet one adds no delay.
async fn io_task(idx: usize, mut sub: SubSocket, ctx: Arc<IoCtx>, cancel: CancellationToken) {
    let mut pending: Vec<Vec<ZmqMessage>> = ctx.senders.iter().map(|_| Vec::new()).collect();
    let mut n = 0u32;
    loop {
        // `is_cancelled` takes a lock: look every 64 messages on the fast
        // path (the slow path below waits on the token anyway).
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) && cancel.is_cancelled() {
            break;
        }
        let received = match sub.recv().now_or_never() {
            Some(r) => r,
            None => {
                flush_all(&ctx, &mut pending).await;
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => break,
                    r = sub.recv() => r,
                }
            }
        };
        match received {
            Ok(msg) => {
                ctx.counters.received[idx].add_single_writer(1);
                let w = ctx.sharder.worker_for(&msg);
                pending[w].push(msg);
                if pending[w].len() >= ctx.batch_max {
                    flush(&ctx, w, &mut pending[w]).await;
                }
            }
            Err(e) => {
                ctx.counters.socket_errors[idx].add(1);
                let n = ctx.counters.socket_errors[idx].get();
                if n.is_power_of_two() {
                    tracing::warn!(cause = %e, errors = n, "receive error, carrying on");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    // Shutting down: hand over what was read; the workers drain it.
    flush_all(&ctx, &mut pending).await;
    tracing::debug!("black box I/O task stopped");
}

async fn flush_all(ctx: &IoCtx, pending: &mut [Vec<ZmqMessage>]) {
    for (w, batch) in pending.iter_mut().enumerate() {
        if !batch.is_empty() {
            flush(ctx, w, batch).await;
        }
    }
}

/// Hands worker `w`'s pending batch over. Messages that cannot be queued
/// (full queue with `DropNewest`, or the worker is gone) are counted as
/// dropped, so every received message is accounted for.
async fn flush(ctx: &IoCtx, w: usize, pending: &mut Vec<ZmqMessage>) {
    let batch = std::mem::replace(pending, Vec::with_capacity(ctx.batch_max));
    let tx = &ctx.senders[w];
    let refused = match ctx.overflow {
        Overflow::DropNewest => match tx.try_send(batch) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(b) | mpsc::error::TrySendError::Closed(b)) => b,
        },
        // Wait for room even while shutting down: the workers are draining.
        Overflow::Block => match tx.send(batch).await {
            Ok(()) => return,
            Err(mpsc::error::SendError(b)) => b,
        },
    };
    ctx.counters.dropped[w].add(refused.len() as u64);
    if let Some(hook) = &ctx.on_drop {
        for msg in &refused {
            hook(w, msg);
        }
    }
}
