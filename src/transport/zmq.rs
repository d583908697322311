//! `ZmqTransport`: the [`Transport`] over this crate's ZeroMQ sockets on TCP.
//!
//! Topology: every node binds one ROUTER. To each configured peer it keeps
//! one DEALER whose routing identity is its own node identity (`n<id>`),
//! connected to the peer's ROUTER; the peer's ROUTER therefore sees every
//! message as `[n<id>][payload]` and knows who sent it. A node that is not
//! a configured peer (a client, or a libzmq program) may connect its own
//! DEALER, with routing id `n<id>`, to a node's ROUTER: the node answers it
//! through that ROUTER. A node that binds nothing (a pure client) receives
//! answers on its DEALERs.
//!
//! Wire contract, per message: one frame of opaque payload (the protocol's
//! codec; Paxos's is versioned). The ROUTER drops, counts and logs any
//! message that is not exactly `[identity][payload]` with a valid `n<id>`
//! identity.
//!
//! The `zeromq` crate's DEALER neither reconnects nor connects in the
//! background, so each peer has a supervisor task that connects with a
//! bounded timeout and backoff, watches for the connection's end (receive
//! EOF, `Disconnected`, send errors) and recreates the DEALER when the peer
//! restarts. [`Transport::send`] never waits: it queues into the peer's
//! bounded queue and drops (and counts) when full, so a dead peer never
//! blocks the node.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn, Instrument};
use zeromq::prelude::*;
use zeromq::RouterSocket;

use super::zmq_peer::{supervise, PeerLink};
use super::{NodeId, Transport, TransportError, TransportStats};
use crate::endpoint::{Attach, EndpointSpec};

/// Configuration of a [`ZmqTransport`].
#[derive(Clone, Debug)]
pub struct ZmqConfig {
    id: NodeId,
    bind: Option<EndpointSpec>,
    peers: BTreeMap<NodeId, String>,
    pub(crate) queue: usize,
    inbound: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

impl ZmqConfig {
    /// Node `id`, binding its ROUTER on `127.0.0.1` on an ephemeral port.
    pub fn new(id: NodeId) -> Self {
        ZmqConfig {
            id,
            bind: Some(EndpointSpec::loopback()),
            peers: BTreeMap::new(),
            queue: 4096,
            inbound: 65_536,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
        }
    }

    /// Where the ROUTER binds (`tcp://*:5670`, `@tcp://127.0.0.1:0`), or
    /// `None` for a node that only connects (a client).
    pub fn bind(mut self, endpoint: Option<&str>) -> Result<Self, TransportError> {
        self.bind = endpoint
            .map(|e| EndpointSpec::parse(e, Attach::Bind))
            .transpose()?;
        Ok(self)
    }

    /// Adds a peer reachable at `endpoint` (its ROUTER).
    pub fn peer(mut self, id: NodeId, endpoint: &str) -> Result<Self, TransportError> {
        let spec = EndpointSpec::parse(endpoint, Attach::Connect)?;
        if id == self.id || self.peers.insert(id, spec.endpoint().to_owned()).is_some() {
            return Err(TransportError::DuplicatePeer(id));
        }
        Ok(self)
    }

    /// Messages queued per peer before sends are dropped (default 4096).
    pub fn queue(mut self, messages: usize) -> Self {
        self.queue = messages.max(1);
        self
    }

    /// Timeout of one connection attempt (default 1 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Reconnection backoff, doubling from `min` to `max` (default
    /// 50 ms to 1 s).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff_min = min;
        self.backoff_max = max.max(min);
        self
    }
}

/// Counters shared by the transport's tasks.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) garbage: AtomicU64,
    pub(crate) connects: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// A node's ZeroMQ transport. Dropping it stops its tasks.
#[derive(Debug)]
pub struct ZmqTransport {
    id: NodeId,
    endpoint: Option<String>,
    inbound: mpsc::Receiver<(NodeId, Bytes)>,
    inbound_tx: mpsc::Sender<(NodeId, Bytes)>,
    peers: BTreeMap<NodeId, mpsc::Sender<Bytes>>,
    router_tx: Option<mpsc::Sender<(NodeId, Bytes)>>,
    counters: Arc<Counters>,
    cfg: ZmqConfig,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl ZmqTransport {
    /// Binds the ROUTER (if configured) and starts a supervisor per peer.
    /// Stops when `shutdown` is cancelled or the transport is dropped.
    pub async fn start(
        cfg: ZmqConfig,
        shutdown: &CancellationToken,
    ) -> Result<Self, TransportError> {
        let cancel = shutdown.child_token();
        let tasks = TaskTracker::new();
        let counters = Arc::new(Counters::default());
        let (inbound_tx, inbound) = mpsc::channel(cfg.inbound);
        let mut endpoint = None;
        let mut router_tx = None;
        if let Some(spec) = &cfg.bind {
            let mut router = RouterSocket::new();
            let ep = spec.attach_to(&mut router).await?;
            let (tx, rx) = mpsc::channel(cfg.queue);
            let (send_half, recv_half) = router.split();
            let span = tracing::info_span!("zmq_router", node = %cfg.id, endpoint = %ep);
            tasks.spawn(
                read_router(
                    recv_half,
                    inbound_tx.clone(),
                    counters.clone(),
                    cancel.clone(),
                )
                .instrument(span.clone()),
            );
            tasks.spawn(
                write_router(send_half, rx, counters.clone(), cancel.clone()).instrument(span),
            );
            endpoint = Some(ep);
            router_tx = Some(tx);
        }
        let mut t = ZmqTransport {
            id: cfg.id,
            endpoint,
            inbound,
            inbound_tx,
            peers: BTreeMap::new(),
            router_tx,
            counters,
            cfg: cfg.clone(),
            cancel,
            tasks,
        };
        for (id, ep) in &cfg.peers {
            t.spawn_peer(*id, ep.clone());
        }
        Ok(t)
    }

    /// Adds a peer after start (e.g. once its ephemeral port is known).
    pub fn add_peer(&mut self, id: NodeId, endpoint: &str) -> Result<(), TransportError> {
        let spec = EndpointSpec::parse(endpoint, Attach::Connect)?;
        if id == self.id || self.peers.contains_key(&id) {
            return Err(TransportError::DuplicatePeer(id));
        }
        self.spawn_peer(id, spec.endpoint().to_owned());
        Ok(())
    }

    fn spawn_peer(&mut self, peer: NodeId, endpoint: String) {
        let (tx, rx) = mpsc::channel(self.cfg.queue);
        self.peers.insert(peer, tx);
        let link = PeerLink {
            me: self.id,
            peer,
            endpoint: endpoint.clone(),
            outgoing: rx,
            inbound: self.inbound_tx.clone(),
            counters: self.counters.clone(),
            cfg: self.cfg.clone(),
            cancel: self.cancel.clone(),
        };
        let span =
            tracing::info_span!("zmq_peer", node = %self.id, peer = %peer, endpoint = %endpoint);
        self.tasks.spawn(supervise(link).instrument(span));
    }

    /// The resolved endpoint of the ROUTER (with the real port), if bound.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// Stops every task and waits for them (the ROUTER's port is released).
    pub async fn close(self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for ZmqTransport {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Transport for ZmqTransport {
    fn id(&self) -> NodeId {
        self.id
    }

    fn send(&mut self, to: NodeId, msg: Bytes) {
        let queued = match self.peers.get(&to) {
            Some(tx) => tx.try_send(msg).is_ok(),
            None => self
                .router_tx
                .as_ref()
                .is_some_and(|tx| tx.try_send((to, msg)).is_ok()),
        };
        if !queued {
            Counters::bump(&self.counters.dropped);
            debug!(node = %self.id, peer = %to, "send dropped: queue full or peer unknown");
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(NodeId, Bytes)>> {
        let r = self.inbound.poll_recv(cx);
        if let Poll::Ready(Some(_)) = r {
            Counters::bump(&self.counters.received);
        }
        r
    }

    fn stats(&self) -> TransportStats {
        let c = &self.counters;
        TransportStats {
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            garbage: c.garbage.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
        }
    }
}

/// Reads `[identity][payload]` from the ROUTER into the inbound queue.
async fn read_router(
    mut router: zeromq::RouterRecvHalf,
    inbound: mpsc::Sender<(NodeId, Bytes)>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return,
            m = router.recv() => m,
        };
        let frames = match msg {
            Ok(m) => m.into_vec(),
            Err(e) => {
                warn!(cause = %e, "ROUTER receive failed");
                continue;
            }
        };
        let from = frames.first().and_then(|id| NodeId::from_identity(id));
        match (from, frames.len()) {
            (Some(from), 2) => {
                let payload = frames.into_iter().nth(1).unwrap_or_default();
                if inbound.try_send((from, payload)).is_err() {
                    Counters::bump(&counters.dropped);
                }
            }
            _ => {
                Counters::bump(&counters.garbage);
                let identity = frames.first().map(|f| crate::frames::render(f));
                warn!(
                    ?identity,
                    frames = frames.len(),
                    "malformed message dropped (want [n<id>][payload])"
                );
            }
        }
    }
}

/// Sends answers to nodes that are not configured peers through the ROUTER.
async fn write_router(
    mut router: zeromq::RouterSendHalf,
    mut queue: mpsc::Receiver<(NodeId, Bytes)>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    loop {
        let (to, payload) = tokio::select! {
            _ = cancel.cancelled() => return,
            m = queue.recv() => match m { Some(m) => m, None => return },
        };
        let Some(msg) = crate::frames::message([to.identity(), payload]) else {
            continue;
        };
        match router.send(msg).await {
            Ok(()) => Counters::bump(&counters.sent),
            Err(e) => {
                Counters::bump(&counters.dropped);
                debug!(peer = %to, cause = %e, "ROUTER send dropped");
            }
        }
    }
}
