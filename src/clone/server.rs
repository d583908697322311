//! The Clone server: its config, its handle ([`CloneServer`]) and its task,
//! which binds ROUTER (snapshots), PUB (updates and HUGZ) and the collector
//! and drives the pure [`Store`].
//!
//! Guide ch. 5, Clone models 3-5 (`clonesrv3` to `clonesrv5`, the reactor
//! server), speaking CHP. The collector at `P+2` takes both CHP's PUB
//! peers (model 6 clients) and the PUSH peers of models 3-5 on the same
//! endpoint (see [`CollectorLimits`]). Each snapshot streams from its own
//! task over a clone of the ROUTER's send half, so a large or slow snapshot
//! never holds up updates, heartbeats or other clients.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSendHalf, RouterSocket};

use super::collector::{Collector, CollectorCounts, CollectorLimits};
use super::error::CloneError;
use super::kvmsg::KvMsg;
use super::pair::ClonePairStats;
use super::proto::KTHXBAI;
use super::snapshot::SnapshotCursor;
use super::store::{Store, StoreAction, StoreConfig, StoreStats};
use crate::endpoint::{Attach, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::task::{PatternTask, TaskPanicked};

/// Where a [`CloneServer`] listens and how it behaves: endpoints from
/// [`new`](Self::new), [`on_port`](Self::on_port) or
/// [`loopback`](Self::loopback), then chained setters (each doc gives its
/// default).
#[derive(Debug, Clone)]
pub struct CloneServerConfig {
    pub(super) snapshot: EndpointSpec,
    pub(super) publisher: EndpointSpec,
    pub(super) collector: EndpointSpec,
    pub(super) store: StoreConfig,
    pub(super) collector_limits: CollectorLimits,
    pub(super) snapshot_chunk: usize,
    pub(super) snapshot_stall_timeout: Duration,
}

impl CloneServerConfig {
    /// Binds `tcp://HOST:P`, `P+1` and `P+2` (`host` may be `*`).
    pub fn on_port(host: &str, port: u16) -> Result<Self, CloneError> {
        let ep = |p: u32| -> Result<EndpointSpec, CloneError> {
            let p = u16::try_from(p).map_err(|_| {
                crate::endpoint::EndpointError::Malformed(format!("port {p} out of range"))
            })?;
            Ok(EndpointSpec::bind(&format!("tcp://{host}:{p}"))?)
        };
        let p = u32::from(port);
        Ok(Self::new(ep(p)?, ep(p + 1)?, ep(p + 2)?))
    }

    /// Three ephemeral loopback ports (tests): read them back from
    /// [`CloneServer::endpoints`].
    pub fn loopback() -> Self {
        let l = EndpointSpec::loopback;
        Self::new(l(), l(), l())
    }

    /// Explicit endpoints: snapshot ROUTER (CHP port `P`), update PUB
    /// (`P+1`), collector (`P+2`, taking PUB and PUSH peers).
    pub fn new(snapshot: EndpointSpec, publisher: EndpointSpec, collector: EndpointSpec) -> Self {
        Self {
            snapshot,
            publisher,
            collector,
            store: StoreConfig::default(),
            collector_limits: CollectorLimits::default(),
            snapshot_chunk: 256,
            snapshot_stall_timeout: Duration::from_secs(30),
        }
    }

    /// The state machine's limits and timers. Default [`StoreConfig::new`].
    pub fn store(mut self, store: StoreConfig) -> Self {
        self.store = store;
        self
    }

    /// What a collector peer can make the server hold (message size,
    /// frames, connections, handshake time). Default [`CollectorLimits::new`].
    pub fn collector_limits(mut self, limits: CollectorLimits) -> Self {
        self.collector_limits = limits;
        self
    }

    /// KVSYNC messages a snapshot task sends before yielding. Default 256.
    pub fn snapshot_chunk(mut self, n: usize) -> Self {
        self.snapshot_chunk = n;
        self
    }

    /// A snapshot whose peer accepts nothing for this long is abandoned.
    /// Default 30 s.
    pub fn snapshot_stall_timeout(mut self, timeout: Duration) -> Self {
        self.snapshot_stall_timeout = timeout;
        self
    }
}

/// The resolved endpoints of a running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneServerEndpoints {
    /// Snapshot ROUTER.
    pub snapshot: String,
    /// Update PUB.
    pub publisher: String,
    /// Collector (PUB and PUSH peers).
    pub collector: String,
    /// Binary Star state PUB, for one server of a pair
    /// ([`start_pair`](CloneServer::start_pair)); `None` for a single server.
    pub state: Option<String>,
}

/// Counters of a server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloneServerStats {
    /// The state machine's counters (updates, refusals, bad input). Its
    /// `oversized_kvsets` and `bad_kvsets` include the collector messages
    /// skipped unread for exceeding [`CollectorLimits`]' `max_message` and
    /// `max_frames` (also counted below on their own).
    pub store: StoreStats,
    /// Keys currently stored.
    pub keys: usize,
    /// What the store counts against its `max_store_bytes` now.
    pub bytes: usize,
    /// The last sequence number assigned.
    pub sequence: u64,
    /// Snapshots sent to the end (KTHXBAI included).
    pub snapshots_completed: u64,
    /// Snapshots abandoned (peer gone or stalled).
    pub snapshots_abandoned: u64,
    /// KVSYNC messages sent (counted as they are sent).
    pub kvsyncs_sent: u64,
    /// Connections dropped on a receive error (a peer's protocol error).
    pub recv_errors: u64,
    /// Snapshots streaming now.
    pub snapshots_streaming: usize,
    /// Snapshot requests waiting for a streaming slot.
    pub snapshots_queued: usize,
    /// Collector peers connected now.
    pub collector_peers: usize,
    /// Collector peers that joined as PUB or XPUB (CHP clients), in total.
    pub collector_pub_peers: u64,
    /// Collector peers that joined as PUSH (Clone models 3-5 clients), in
    /// total.
    pub collector_push_peers: u64,
    /// Collector connections refused at the handshake: another socket type
    /// than PUB, XPUB or PUSH, a bad greeting, another mechanism than NULL,
    /// or `handshake_timeout`.
    pub collector_refused: u64,
    /// Of `collector_refused`, those refused for their socket type.
    pub collector_wrong_socket_type: u64,
    /// Collector connections over `max_connections`, closed at once.
    pub collector_connections_refused: u64,
    /// Collector messages skipped unread for exceeding `max_message`.
    pub collector_oversized: u64,
    /// Collector messages skipped unread for exceeding `max_frames`.
    pub collector_too_many_frames: u64,
    /// For one server of a Binary Star pair
    /// ([`start_pair`](CloneServer::start_pair)): its state, epoch, votes
    /// and peer counters; `None` for a single server.
    pub pair: Option<ClonePairStats>,
    /// Updates on the passive's pending list now (a pair server; bounded
    /// by `StoreConfig::max_pending`).
    pub pending: usize,
    /// Bytes those pending updates hold (bounded by
    /// `StoreConfig::max_pending_bytes`).
    pub pending_bytes: usize,
}

/// A running Clone server.
///
/// Stop it with [`shutdown`](Self::shutdown), which waits and returns the
/// final counters. Dropping the handle stops the server too, without
/// waiting: its task cancels its own token (a child of the one given to
/// [`start`](Self::start)) and closes its sockets in the background.
/// Cancelling the parent token stops it as well.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct CloneServer {
    pub(super) endpoints: CloneServerEndpoints,
    pub(super) stats: Arc<Mutex<CloneServerStats>>,
    pub(super) kvsyncs: Arc<AtomicU64>,
    pub(super) task: PatternTask<Result<(), CloneError>>,
}

impl CloneServer {
    /// Binds the three sockets and starts an empty server under a child of
    /// `parent` (inside a tokio runtime).
    pub async fn start(
        config: CloneServerConfig,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        Self::start_preloaded(config, std::iter::empty(), parent).await
    }

    /// Like [`start`](Self::start), serving `entries` from the outset (e.g.
    /// a state restored from elsewhere, or a benchmark's preload). Each is
    /// applied as a KVSET would be (sequence 1, 2, ...; the store's limits
    /// apply).
    pub async fn start_preloaded(
        config: CloneServerConfig,
        entries: impl IntoIterator<Item = KvMsg>,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        let now = Instant::now().into_std();
        let mut store = Store::new(config.store.clone(), now);
        for entry in entries {
            store.handle_kvset(entry, now);
        }
        let mut router = RouterSocket::new();
        let mut publisher = PubSocket::new();
        let snapshot = bind(&config.snapshot, &mut router).await?;
        let updates = bind(&config.publisher, &mut publisher).await?;
        let (collector, collector_ep) =
            Collector::bind(&config.collector, &config.collector_limits).await?;
        let endpoints = CloneServerEndpoints {
            snapshot,
            publisher: updates,
            collector: collector_ep,
            state: None,
        };
        info!(snapshot = %endpoints.snapshot, publisher = %endpoints.publisher,
              collector = %endpoints.collector, "clone server listening");
        let stats = Arc::new(Mutex::new(CloneServerStats {
            keys: store.len(),
            bytes: store.bytes(),
            sequence: store.sequence(),
            store: store.stats().clone(),
            ..CloneServerStats::default()
        }));
        let sockets = Sockets {
            router,
            publisher,
            collector,
        };
        let span = tracing::info_span!("clone_server", snapshot = %endpoints.snapshot);
        let kvsyncs = Arc::new(AtomicU64::new(0));
        let shared = (stats.clone(), kvsyncs.clone());
        let task = PatternTask::spawn(parent, move |token| {
            run(config, store, sockets, shared, token).instrument(span)
        });
        Ok(Self {
            endpoints,
            stats,
            kvsyncs,
            task,
        })
    }

    /// The bound endpoints (with the real ports).
    pub fn endpoints(&self) -> &CloneServerEndpoints {
        &self.endpoints
    }

    /// A copy of the counters.
    pub fn stats(&self) -> CloneServerStats {
        let mut stats = self.stats.lock().expect("stats lock").clone();
        stats.kvsyncs_sent = self.kvsyncs.load(Ordering::Relaxed);
        stats
    }

    /// Waits until the server's task has ended by itself (a single server
    /// only on a socket error; a pair server also on a fatal Binary Star
    /// error). [`shutdown`](Self::shutdown) then returns how it ended at
    /// once ([`CloneError::Fatal`] for the fatal case). Cancel-safe.
    pub async fn stopped(&mut self) {
        self.task.finished().await;
    }

    /// Stops this server only (its child token; the parent and other
    /// patterns under it keep running), waits for its task, and returns the
    /// final counters, or the socket error that had ended the task
    /// ([`CloneError::Panicked`] if it panicked).
    pub async fn shutdown(self) -> Result<CloneServerStats, CloneError> {
        let (stats, kvsyncs) = (self.stats.clone(), self.kvsyncs.clone());
        match self.task.shutdown().await {
            Ok(Ok(())) => {
                let mut stats = stats.lock().expect("stats lock").clone();
                stats.kvsyncs_sent = kvsyncs.load(Ordering::Relaxed);
                Ok(stats)
            }
            Ok(Err(e)) => Err(e),
            Err(TaskPanicked) => Err(CloneError::Panicked),
        }
    }
}

pub(super) async fn bind<S: Socket>(
    spec: &EndpointSpec,
    socket: &mut S,
) -> Result<String, CloneError> {
    if spec.attach() != Attach::Bind {
        warn!(endpoint = %spec, "clone server sockets bind; connecting as asked");
    }
    Ok(spec.attach_to(socket).await?)
}

struct Sockets {
    router: RouterSocket,
    publisher: PubSocket,
    collector: Collector,
}

/// How a snapshot stream ended.
pub(super) struct Finished {
    pub(super) peer: Bytes,
    pub(super) complete: bool,
}

async fn run(
    config: CloneServerConfig,
    mut store: Store,
    sockets: Sockets,
    (stats, kvsyncs): (Arc<Mutex<CloneServerStats>>, Arc<AtomicU64>),
    token: CancellationToken,
) -> Result<(), CloneError> {
    let Sockets {
        router,
        mut publisher,
        mut collector,
    } = sockets;
    let (router_tx, mut router_rx) = router.split();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut io = CloneServerStats::default();
    let mut recv_log = LogLimiter::default();
    let mut published: u64 = 0;
    let streams = SnapshotStreams {
        router: router_tx,
        done: done_tx,
        chunk: config.snapshot_chunk.max(1),
        stall: config.snapshot_stall_timeout,
        sent: kvsyncs,
        token: token.clone(),
    };
    loop {
        let deadline = Instant::from_std(store.poll_timeout());
        let actions = tokio::select! {
            () = token.cancelled() => break,
            frames = collector.recv() => match frames {
                Some(frames) => store.handle_collector(&frames, now()),
                // Only the collector's counters changed.
                None => Vec::new(),
            },
            msg = router_rx.recv() => {
                let Some(frames) = received(msg, &mut io, &mut recv_log, "snapshot") else { continue };
                store.handle_request(frames, now())
            }
            Some(done) = done_rx.recv() => {
                if done.complete { io.snapshots_completed += 1 } else { io.snapshots_abandoned += 1 }
                store.handle_snapshot_done(&done.peer, now())
            }
            () = tokio::time::sleep_until(deadline) => store.handle_timeout(now()),
        };
        for action in actions {
            match action {
                StoreAction::Publish(frames) => {
                    publish(&mut publisher, frames, &mut published).await?;
                }
                StoreAction::StartSnapshot(cursor) => streams.spawn(cursor),
                // A single server's store is active: it never asks.
                StoreAction::FetchSnapshot => {}
            }
        }
        let (streaming, queued) = store.snapshot_load();
        let mut shared = stats.lock().expect("stats lock");
        *shared = with_collector(
            CloneServerStats {
                snapshots_streaming: streaming,
                snapshots_queued: queued,
                store: store.stats().clone(),
                keys: store.len(),
                bytes: store.bytes(),
                sequence: store.sequence(),
                ..io.clone()
            },
            collector.counts(),
        );
    }
    // Release the ports now (a restart may bind them again at once).
    drop(streams);
    drop(router_rx);
    publisher.close().await;
    drop(collector);
    info!("clone server stopped");
    Ok(())
}

/// Publishes one KVPUB or HUGZ, letting the `zeromq` PUB's fan-out task
/// run every 256 messages.
pub(super) async fn publish(
    publisher: &mut PubSocket,
    frames: [Bytes; 5],
    published: &mut u64,
) -> Result<(), CloneError> {
    let msg = crate::frames::message(frames).expect("five frames");
    publisher.send(msg).await?;
    *published += 1;
    if published.is_multiple_of(256) {
        tokio::task::yield_now().await;
    }
    Ok(())
}

/// Adds the collector's counters (`recv_errors` includes its peers' protocol
/// errors; the store's size and frame refusals include its skipped
/// messages).
pub(super) fn with_collector(mut s: CloneServerStats, c: CollectorCounts) -> CloneServerStats {
    s.recv_errors += c.errors;
    s.store.oversized_kvsets += c.oversized;
    s.store.bad_kvsets += c.too_many_frames;
    s.collector_peers = c.peers;
    s.collector_pub_peers = c.pub_peers;
    s.collector_push_peers = c.push_peers;
    s.collector_refused = c.refused;
    s.collector_wrong_socket_type = c.wrong_socket_type;
    s.collector_connections_refused = c.connections_refused;
    s.collector_oversized = c.oversized;
    s.collector_too_many_frames = c.too_many_frames;
    s
}

/// A received message's frames; a peer's protocol error (which the
/// `zeromq` crate reports from `recv` and then drops that peer) is counted
/// and logged, never fatal.
pub(super) fn received(
    msg: Result<zeromq::ZmqMessage, zeromq::ZmqError>,
    io: &mut CloneServerStats,
    log: &mut LogLimiter,
    socket: &'static str,
) -> Option<Vec<Bytes>> {
    match msg {
        Ok(m) => Some(m.into_vec()),
        Err(e) => {
            io.recv_errors += 1;
            if let Some(suppressed) = log.check(now()) {
                warn!(socket, cause = %e, suppressed, "peer connection failed; dropped");
            }
            None
        }
    }
}

pub(super) fn now() -> std::time::Instant {
    Instant::now().into_std()
}

pub(super) struct SnapshotStreams {
    pub(super) router: RouterSendHalf,
    pub(super) done: mpsc::UnboundedSender<Finished>,
    pub(super) chunk: usize,
    pub(super) stall: Duration,
    pub(super) sent: Arc<AtomicU64>,
    pub(super) token: CancellationToken,
}

impl SnapshotStreams {
    pub(super) fn spawn(&self, cursor: SnapshotCursor) {
        let span =
            tracing::info_span!("snapshot", peer = ?cursor.peer(), subtree = ?cursor.subtree());
        let task = stream(
            cursor,
            self.router.clone(),
            (self.chunk, self.stall),
            self.sent.clone(),
            self.done.clone(),
            self.token.clone(),
        );
        tokio::spawn(task.instrument(span));
    }
}

async fn stream(
    mut cursor: SnapshotCursor,
    mut router: RouterSendHalf,
    (chunk, stall): (usize, Duration),
    counter: Arc<AtomicU64>,
    done: mpsc::UnboundedSender<Finished>,
    token: CancellationToken,
) {
    let peer = cursor.peer().clone();
    let mut buf = Vec::with_capacity(chunk + 1);
    let complete = 'outer: loop {
        let finished = cursor.next_chunk(now(), chunk, &mut buf);
        for frames in buf.drain(..) {
            let kvsync = frames[0] != KTHXBAI;
            let msg = crate::frames::message(std::iter::once(peer.clone()).chain(frames))
                .expect("six frames");
            let sent = tokio::select! {
                () = token.cancelled() => break 'outer false,
                r = tokio::time::timeout(stall, router.send(msg)) => r,
            };
            match sent {
                Ok(Ok(())) => {
                    if kvsync {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(Err(e)) => {
                    debug!(cause = %e, sent = cursor.sent(), "snapshot abandoned: peer gone");
                    break 'outer false;
                }
                Err(_) => {
                    debug!(stall = ?stall, sent = cursor.sent(), "snapshot abandoned: peer stalled");
                    break 'outer false;
                }
            }
        }
        if finished {
            break true;
        }
        tokio::task::yield_now().await;
    };
    if complete {
        debug!(seq = cursor.seq(), entries = cursor.sent(), "sent snapshot");
    } else {
        debug!(entries = cursor.sent(), "snapshot ended early");
    }
    let _ = done.send(Finished { peer, complete });
}
