//! The Black Box's driver: one I/O task per SUB socket reads messages and
//! feeds them to its [`Dispatcher`] (the pure core), then does what it
//! answers: hand a batch to a worker over a bounded channel, wait for room,
//! or count a drop; the workers run the user's handler.
//!
//! Black Box (Guide ch. 5): SUB (TCP) → I/O task → bounded tokio mpsc per
//! worker (in place of the Guide's PUSH→PULL over inproc, which the
//! `zeromq` crate lacks, and which would round-robin and so break per-key
//! order) → worker threads.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use zeromq::{Socket, SocketRecv, SubSocket, ZmqMessage};

use super::config::{BlackBoxConfig, DropHook, WorkerThreads};
use super::dispatch::{Dispatched, Dispatcher, Handoff, WorkerBatch};
use super::error::BlackBoxError;
use super::shard::Sharder;
use super::stats::{BlackBoxStats, Counters};
use crate::ratelog::LogLimiter;
use crate::task::PatternTask;

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

enum WorkerJoin {
    Thread(std::thread::JoinHandle<()>),
    Task(JoinHandle<()>),
}

/// A running Black Box: counters, endpoints, and shutdown.
///
/// Dropping it cancels its child token without waiting: the I/O tasks stop
/// reading, and the workers finish what is queued in the background.
#[must_use = "dropping the handle stops the Black Box; call shutdown() to drain it"]
pub struct BlackBox {
    task: PatternTask<Result<BlackBoxStats, BlackBoxError>>,
    counters: Arc<Counters>,
    endpoints: Vec<Vec<String>>,
}

impl std::fmt::Debug for BlackBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlackBox")
            .field("endpoints", &self.endpoints)
            .field("stats", &self.counters.snapshot())
            .finish_non_exhaustive()
    }
}

impl BlackBox {
    /// Connects (or binds) every subscriber socket, subscribes, starts the
    /// workers (`make_worker(i)` builds worker `i`) and the I/O tasks,
    /// under a child of `parent`.
    ///
    /// The I/O tasks are spawned on the current tokio runtime. Returns once
    /// every socket is attached; connects wait for their peer (bounded by
    /// the `zeromq` crate's connect timeout).
    pub async fn start<W, F>(
        config: BlackBoxConfig,
        mut make_worker: F,
        parent: &CancellationToken,
    ) -> Result<Self, BlackBoxError>
    where
        W: Worker,
        F: FnMut(usize) -> W,
    {
        let workers = NonZeroUsize::new(config.workers).ok_or(BlackBoxError::ZeroWorkers)?;
        let batch_max = NonZeroUsize::new(config.queue_depth.min(MAX_BATCH))
            .ok_or(BlackBoxError::ZeroQueueDepth)?;
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
        let mut senders = Vec::with_capacity(workers.get());
        let mut joins = Vec::with_capacity(workers.get());
        for i in 0..workers.get() {
            let (tx, rx) = mpsc::channel(config.queue_depth.div_ceil(batch_max.get()));
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
            senders,
            on_drop: config.on_drop.clone(),
            counters: counters.clone(),
        });
        let token = parent.child_token();
        let sharder = Sharder::new(config.key.clone(), workers);
        let io = subs
            .into_iter()
            .enumerate()
            .map(|(i, sub)| {
                let span = tracing::info_span!("blackbox_io", socket = i);
                let dispatcher = Dispatcher::new(
                    sharder.clone(),
                    batch_max,
                    config.max_message_bytes,
                    config.overflow,
                );
                let io = io_task(i, sub, dispatcher, ctx.clone(), token.clone());
                tokio::spawn(io.instrument(span))
            })
            .collect();
        drop(ctx); // the I/O tasks hold the senders: workers end after them
        tracing::debug!(
            workers = workers.get(),
            sockets = endpoints.len(),
            "black box started"
        );
        let join = tokio::spawn(supervise(io, joins, counters.clone()));
        Ok(Self {
            task: PatternTask::from_parts(token, join),
            counters,
            endpoints,
        })
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> BlackBoxStats {
        self.counters.snapshot()
    }

    /// The resolved endpoints, per socket (real ports for binds on port 0).
    pub fn endpoints(&self) -> &[Vec<String>] {
        &self.endpoints
    }

    /// Cancels the child token (the I/O tasks stop reading and hand over
    /// what they read), lets every worker finish its queue, waits for all
    /// of them, and returns the final counters (then `received ==
    /// oversized + delivered + dropped`). Fails with
    /// [`BlackBoxError::WorkerPanicked`] if a handler panicked and
    /// [`BlackBoxError::Panicked`] if an I/O task did.
    pub async fn shutdown(self) -> Result<BlackBoxStats, BlackBoxError> {
        match self.task.shutdown().await {
            Ok(result) => result,
            Err(_) => Err(BlackBoxError::Panicked),
        }
    }
}

/// Waits for the I/O tasks (they end when the token is cancelled), then
/// for the workers, which end once their queue is drained and closed.
async fn supervise(
    io: Vec<JoinHandle<()>>,
    workers: Vec<WorkerJoin>,
    counters: Arc<Counters>,
) -> Result<BlackBoxStats, BlackBoxError> {
    let mut io_panicked = false;
    for h in io {
        if let Err(e) = h.await {
            tracing::error!(cause = %e, "black box I/O task failed");
            io_panicked = true;
        }
    }
    let mut panicked = None;
    for (i, w) in workers.into_iter().enumerate() {
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
    if let Some(i) = panicked {
        tracing::error!(worker = i, "black box worker panicked");
        return Err(BlackBoxError::WorkerPanicked(i));
    }
    if io_panicked {
        return Err(BlackBoxError::Panicked);
    }
    Ok(counters.snapshot())
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
    senders: Vec<mpsc::Sender<Vec<ZmqMessage>>>,
    on_drop: Option<DropHook>,
    counters: Arc<Counters>,
}

/// Reads one socket. Messages are collected per worker and handed over in
/// batches: a batch goes when it is full or when the socket has nothing
/// more ready, so a busy stream costs one channel operation and at most
/// one thread wake-up per batch, and a quiet one adds no delay.
async fn io_task(
    idx: usize,
    mut sub: SubSocket,
    mut dispatcher: Dispatcher,
    ctx: Arc<IoCtx>,
    cancel: CancellationToken,
) {
    let mut n = 0u32;
    let mut oversized_log = LogLimiter::default();
    let mut error_log = LogLimiter::default();
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
                for batch in dispatcher.flush() {
                    hand_over(&ctx, &dispatcher, batch).await;
                }
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
                match dispatcher.on_message(msg) {
                    Dispatched::Held => {}
                    Dispatched::Full(batch) => hand_over(&ctx, &dispatcher, batch).await,
                    Dispatched::Oversized { bytes } => {
                        ctx.counters.oversized[idx].add_single_writer(1);
                        if let Some(more) = oversized_log.check(Instant::now()) {
                            let total = ctx.counters.oversized[idx].get();
                            tracing::warn!(
                                bytes,
                                oversized = total,
                                suppressed = more,
                                "message over max_message_bytes, dropped"
                            );
                        }
                    }
                }
            }
            Err(e) => {
                ctx.counters.socket_errors[idx].add(1);
                if let Some(more) = error_log.check(Instant::now()) {
                    let total = ctx.counters.socket_errors[idx].get();
                    tracing::warn!(cause = %e, errors = total, suppressed = more, "receive error, carrying on");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    // Shutting down: hand over what was read; the workers drain it.
    for batch in dispatcher.flush() {
        hand_over(&ctx, &dispatcher, batch).await;
    }
    tracing::debug!("black box I/O task stopped");
}

/// Hands a batch over as the dispatcher routes it. Messages that cannot be
/// queued (full queue with `DropNewest`, or the worker is gone) are counted
/// as dropped, so every received message is accounted for.
async fn hand_over(ctx: &IoCtx, dispatcher: &Dispatcher, batch: WorkerBatch) {
    let w = batch.worker;
    let tx = &ctx.senders[w];
    let refused = match dispatcher.route(batch, tx.capacity()) {
        Handoff::Send(b) => match tx.try_send(b.messages) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Closed(m)) => m,
            // Another I/O task took the room meanwhile: route again, with none.
            Err(mpsc::error::TrySendError::Full(m)) => {
                match dispatcher.route(
                    WorkerBatch {
                        worker: w,
                        messages: m,
                    },
                    0,
                ) {
                    Handoff::Wait(b) => wait_send(tx, b).await,
                    Handoff::Drop(b) | Handoff::Send(b) => b.messages,
                }
            }
        },
        Handoff::Wait(b) => wait_send(tx, b).await,
        Handoff::Drop(b) => b.messages,
    };
    if refused.is_empty() {
        return;
    }
    ctx.counters.dropped[w].add(refused.len() as u64);
    if let Some(hook) = &ctx.on_drop {
        for msg in &refused {
            hook(w, msg);
        }
    }
}

/// Waits for room (even while shutting down: the workers are draining);
/// returns the messages if the worker is gone.
async fn wait_send(tx: &mpsc::Sender<Vec<ZmqMessage>>, batch: WorkerBatch) -> Vec<ZmqMessage> {
    match tx.send(batch.messages).await {
        Ok(()) => Vec::new(),
        Err(mpsc::error::SendError(m)) => m,
    }
}
