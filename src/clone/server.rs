//! The Clone server task: binds ROUTER (snapshots), PUB (updates and HUGZ)
//! and SUB (collector) and drives the pure [`Store`].
//!
//! Guide pattern: Clone models 3-5 (`clonesrv5`, the reactor server),
//! speaking CHP: collector SUB at `P+2` (as CHP and model 6 specify, not
//! the PULL of models 3-5). Each snapshot streams from its own task over a
//! clone of the ROUTER's send half, so a large or slow snapshot never holds
//! up updates, heartbeats or other clients.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSendHalf, RouterSocket, SubSocket};

use super::error::CloneError;
use super::proto::{decode_kvset, Icanhaz};
use super::snapshot::SnapshotCursor;
use super::store::{Action, Store, StoreConfig, StoreStats};
use crate::endpoint::{Attach, EndpointSpec};

/// Where the server listens and how it behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Snapshot ROUTER (CHP port `P`).
    pub snapshot: EndpointSpec,
    /// Update PUB (CHP port `P+1`).
    pub publisher: EndpointSpec,
    /// Collector SUB (CHP port `P+2`).
    pub collector: EndpointSpec,
    /// The state machine's limits and timers.
    pub store: StoreConfig,
    /// KVSYNC messages a snapshot task sends before yielding.
    pub snapshot_chunk: usize,
    /// A snapshot whose peer accepts nothing for this long is abandoned.
    pub snapshot_stall_timeout: Duration,
}

impl ServerConfig {
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

    /// Explicit endpoints with default limits.
    pub fn new(snapshot: EndpointSpec, publisher: EndpointSpec, collector: EndpointSpec) -> Self {
        Self {
            snapshot,
            publisher,
            collector,
            store: StoreConfig::default(),
            snapshot_chunk: 256,
            snapshot_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// The resolved endpoints of a running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEndpoints {
    /// Snapshot ROUTER.
    pub snapshot: String,
    /// Update PUB.
    pub publisher: String,
    /// Collector SUB.
    pub collector: String,
}

/// Counters of a running server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// The state machine's counters.
    pub store: StoreStats,
    /// Keys currently stored.
    pub keys: usize,
    /// The last sequence number assigned.
    pub sequence: u64,
    /// Collector messages that were not valid KVSETs.
    pub bad_kvsets: u64,
    /// Snapshot-socket messages that were not valid ICANHAZ? requests.
    pub bad_requests: u64,
    /// Snapshots sent to the end (KTHXBAI included).
    pub snapshots_completed: u64,
    /// Snapshots abandoned (peer gone or stalled).
    pub snapshots_abandoned: u64,
    /// KVSYNC messages sent.
    pub kvsyncs_sent: u64,
    /// Connections dropped on a receive error (a peer's protocol error).
    pub recv_errors: u64,
    /// Snapshots streaming now.
    pub snapshots_streaming: usize,
    /// Snapshot requests waiting for a streaming slot.
    pub snapshots_queued: usize,
}

/// A running Clone server; stops when [`stop`](Self::stop) is called or the
/// parent token is cancelled.
#[derive(Debug)]
#[must_use = "the server stops when its handle is stopped or its token is cancelled"]
pub struct CloneServer {
    endpoints: ServerEndpoints,
    stats: Arc<Mutex<ServerStats>>,
    token: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), CloneError>>,
}

impl CloneServer {
    /// Binds the three sockets and starts the server task under a child of
    /// `parent`.
    pub async fn start(
        config: ServerConfig,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        let store = Store::new(config.store.clone(), Instant::now().into_std());
        Self::start_with_store(config, store, parent).await
    }

    /// Like [`start`](Self::start), serving an existing state (e.g. one
    /// restored from elsewhere, or preloaded for a benchmark).
    pub async fn start_with_store(
        config: ServerConfig,
        store: Store,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        let mut router = RouterSocket::new();
        let mut publisher = PubSocket::new();
        let mut collector = SubSocket::new();
        collector.subscribe("").await?;
        let endpoints = ServerEndpoints {
            snapshot: bind(&config.snapshot, &mut router).await?,
            publisher: bind(&config.publisher, &mut publisher).await?,
            collector: bind(&config.collector, &mut collector).await?,
        };
        info!(snapshot = %endpoints.snapshot, publisher = %endpoints.publisher,
              collector = %endpoints.collector, "clone server listening");
        let stats = Arc::new(Mutex::new(ServerStats::default()));
        let token = parent.child_token();
        let sockets = Sockets {
            router,
            publisher,
            collector,
        };
        let run = run(config, store, sockets, stats.clone(), token.clone());
        let span = tracing::info_span!("clone_server", snapshot = %endpoints.snapshot);
        let task = tokio::spawn(run.instrument(span));
        Ok(Self {
            endpoints,
            stats,
            token,
            task,
        })
    }

    /// The bound endpoints (with the real ports).
    pub fn endpoints(&self) -> &ServerEndpoints {
        &self.endpoints
    }

    /// A copy of the counters.
    pub fn stats(&self) -> ServerStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Stops the server and waits for its task.
    pub async fn stop(self) -> Result<(), CloneError> {
        self.token.cancel();
        self.task.await.unwrap_or(Err(CloneError::Stopped))
    }

    /// Waits until the server task ends (on cancellation or a socket error).
    pub async fn join(self) -> Result<(), CloneError> {
        self.task.await.unwrap_or(Err(CloneError::Stopped))
    }
}

async fn bind<S: Socket>(spec: &EndpointSpec, socket: &mut S) -> Result<String, CloneError> {
    if spec.attach() != Attach::Bind {
        warn!(endpoint = %spec, "clone server sockets bind; connecting as asked");
    }
    Ok(spec.attach_to(socket).await?)
}

struct Sockets {
    router: RouterSocket,
    publisher: PubSocket,
    collector: SubSocket,
}

/// How a snapshot stream ended.
struct Finished {
    peer: Bytes,
    sent: u64,
    complete: bool,
}

async fn run(
    config: ServerConfig,
    mut store: Store,
    sockets: Sockets,
    stats: Arc<Mutex<ServerStats>>,
    token: CancellationToken,
) -> Result<(), CloneError> {
    let Sockets {
        router,
        mut publisher,
        mut collector,
    } = sockets;
    let (router_tx, mut router_rx) = router.split();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let mut io = ServerStats::default();
    let mut published: u64 = 0;
    let streams = SnapshotStreams {
        router: router_tx,
        done: done_tx,
        chunk: config.snapshot_chunk.max(1),
        stall: config.snapshot_stall_timeout,
        token: token.clone(),
    };
    loop {
        let deadline = Instant::from_std(store.poll_timeout());
        let actions = tokio::select! {
            () = token.cancelled() => break,
            msg = collector.recv() => {
                let Some(frames) = received(msg, &mut io, "collector") else { continue };
                match decode_kvset(&frames) {
                    Ok(kv) => store.handle_kvset(kv, now()),
                    Err(e) => {
                        io.bad_kvsets += 1;
                        warn!(cause = %e, frames = frames.len(), "bad KVSET dropped");
                        Vec::new()
                    }
                }
            }
            msg = router_rx.recv() => {
                let Some(mut frames) = received(msg, &mut io, "snapshot") else { continue };
                let peer = frames.remove(0);
                match Icanhaz::decode(&frames) {
                    Ok(req) => store.handle_icanhaz(peer, req.subtree, now()),
                    Err(e) => {
                        io.bad_requests += 1;
                        warn!(peer = ?peer, cause = %e, "bad snapshot request dropped");
                        Vec::new()
                    }
                }
            }
            Some(done) = done_rx.recv() => {
                io.kvsyncs_sent += done.sent;
                if done.complete { io.snapshots_completed += 1 } else { io.snapshots_abandoned += 1 }
                store.handle_snapshot_done(&done.peer, now())
            }
            () = tokio::time::sleep_until(deadline) => store.handle_timeout(now()),
        };
        for action in actions {
            match action {
                Action::Publish(frames) => {
                    let msg = crate::frames::message(frames).expect("five frames");
                    publisher.send(msg).await?;
                    published += 1;
                    // The zeromq PUB's fan-out task must get to run.
                    if published.is_multiple_of(256) {
                        tokio::task::yield_now().await;
                    }
                }
                Action::StartSnapshot(cursor) => streams.spawn(cursor),
            }
        }
        let (streaming, queued) = store.snapshot_load();
        let mut shared = stats.lock().expect("stats lock");
        *shared = ServerStats {
            snapshots_streaming: streaming,
            snapshots_queued: queued,
            store: store.stats().clone(),
            keys: store.len(),
            sequence: store.sequence(),
            ..io.clone()
        };
    }
    // Release the ports now (a restart may bind them again at once).
    drop(streams);
    drop(router_rx);
    publisher.close().await;
    collector.close().await;
    info!("clone server stopped");
    Ok(())
}

/// A received message's frames; a peer's protocol error (which the
/// `zeromq` crate reports from `recv` and then drops that peer) is counted
/// and logged, never fatal.
fn received(
    msg: Result<zeromq::ZmqMessage, zeromq::ZmqError>,
    io: &mut ServerStats,
    socket: &'static str,
) -> Option<Vec<Bytes>> {
    match msg {
        Ok(m) => Some(m.into_vec()),
        Err(e) => {
            io.recv_errors += 1;
            warn!(socket, cause = %e, "peer connection failed; dropped");
            None
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

struct SnapshotStreams {
    router: RouterSendHalf,
    done: mpsc::UnboundedSender<Finished>,
    chunk: usize,
    stall: Duration,
    token: CancellationToken,
}

impl SnapshotStreams {
    fn spawn(&self, cursor: SnapshotCursor) {
        let span =
            tracing::info_span!("snapshot", peer = ?cursor.peer(), subtree = ?cursor.subtree());
        let task = stream(
            cursor,
            self.router.clone(),
            self.chunk,
            self.stall,
            self.done.clone(),
            self.token.clone(),
        );
        tokio::spawn(task.instrument(span));
    }
}

async fn stream(
    mut cursor: SnapshotCursor,
    mut router: RouterSendHalf,
    chunk: usize,
    stall: Duration,
    done: mpsc::UnboundedSender<Finished>,
    token: CancellationToken,
) {
    let peer = cursor.peer().clone();
    let mut buf = Vec::with_capacity(chunk + 1);
    let complete = 'outer: loop {
        let finished = cursor.next_chunk(now(), chunk, &mut buf);
        for frames in buf.drain(..) {
            let msg = crate::frames::message(std::iter::once(peer.clone()).chain(frames))
                .expect("six frames");
            let sent = tokio::select! {
                () = token.cancelled() => break 'outer false,
                r = tokio::time::timeout(stall, router.send(msg)) => r,
            };
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    warn!(cause = %e, sent = cursor.sent(), "snapshot abandoned: peer gone");
                    break 'outer false;
                }
                Err(_) => {
                    warn!(stall = ?stall, sent = cursor.sent(), "snapshot abandoned: peer stalled");
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
        info!(seq = cursor.seq(), entries = cursor.sent(), "sent snapshot");
    } else {
        debug!(entries = cursor.sent(), "snapshot ended early");
    }
    let _ = done.send(Finished {
        peer,
        sent: cursor.sent(),
        complete,
    });
}
