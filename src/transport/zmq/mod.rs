//! `ZmqTransport`: the [`Transport`] over ZeroMQ (ZMTP 3) on TCP (this
//! file: configuration, handle, inbound accounting; `router.rs`: the
//! ROUTER; `peer.rs`: the per-peer DEALER link; `unsent.rs`: the byte
//! bound on what the node has sent and a peer has not read yet).
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
//! codec; Paxos's is versioned). The ROUTER drops, counts and logs
//! (rate-limited) any message that is not exactly `[identity][payload]`
//! with a valid `n<id>` identity. A new connection with the identity of a
//! live one takes it over (the old one is closed), so a restarted client is
//! answered at once.
//!
//! Both sockets are this crate's own ZMTP connections
//! ([`zmtp`](crate::zmtp)), not the `zeromq` crate's: that crate reserves
//! the length a frame header announces before reading the body (one header
//! announcing 1 TiB aborts the process with "memory allocation failed"),
//! queues 100,000 messages of any size per peer before `send` waits, and
//! limits neither connections nor what a peer that never reads makes it
//! hold. Here a frame over [`ZmqConfig::max_message`] is seen from its
//! header and skipped unread, each connection's writer queue is bounded,
//! and everything the node sent and a peer has not read yet is bounded in
//! bytes. The DEALER links connect in the background with a bounded
//! timeout and backoff and reconnect whenever the connection ends.
//! [`Transport::send`] never waits: it queues into the peer's bounded
//! queue and drops (and counts) when full, so a dead or deaf peer never
//! blocks the node.
//!
//! # Limits
//!
//! | Limit | Default | A peer that exceeds it |
//! |---|---|---|
//! | [`ZmqConfig::max_message`]: largest payload accepted | 16 MiB | seen from the frame header; the message is skipped unread, counted in [`TransportStats::oversized`]; the connection stays up |
//! | [`ZmqConfig::inbound_bytes`]: payload bytes received and not yet taken by the node | 64 MiB | the message is dropped, counted in [`TransportStats::dropped`] |
//! | one peer's share of `inbound_bytes` | half of it | the message is dropped, counted in [`TransportStats::dropped`]: one flooding peer cannot take the whole budget from the others |
//! | [`ZmqConfig::inbound`]: messages received and not yet taken | 65,536 | the message is dropped, counted in [`TransportStats::dropped`] |
//! | [`ZmqConfig::queue`]: messages queued for one peer or client | 4096 | (our own sends) dropped, counted in [`TransportStats::dropped`] |
//! | [`ZmqConfig::unsent_bytes`]: bytes sent by the node and not yet written, per destination and in total | 16 MiB, 64 MiB | (our own sends) dropped, counted in [`TransportStats::dropped`]: a client that never reads holds at most its share |
//! | [`ZmqConfig::max_connections`]: connections at the ROUTER | 256 | the new connection is closed at once, counted in [`TransportStats::refused`] |
//! | frames in one message | 8 | the rest of the message is skipped unread, counted in [`TransportStats::garbage`] (2 to 8 frames are read and counted there too) |
//! | ZMTP handshake at the ROUTER | 10 s | the connection is closed |
//!
//! What a connection holds while it reads is its read buffer (64 KiB) and
//! at most one partial message under `max_message`; with the batch it
//! hands over, a hostile client therefore costs at most about
//! `max_message` + 128 KiB, and all of them together `max_connections`
//! times that. Consensus protocols tolerate loss, so every drop is silent
//! to the sender; every other peer keeps being served.
//!
//! # Handle
//!
//! [`ZmqTransport::start`] runs the transport's tasks under a child of the
//! caller's token; [`ZmqTransport::shutdown`] cancels that child only,
//! waits for the tasks (the ROUTER's port is free afterwards) and returns
//! the final counters. Dropping a `ZmqTransport` cancels its tasks without
//! waiting.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

mod peer;
mod router;
mod unsent;

use super::{NodeId, Transport, TransportError, TransportStats};
use crate::endpoint::{Attach, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::zmtp::conn::{Deliver, Direct, Limits, Role, Shared, Skipped};
use crate::zmtp::net;
use peer::{supervise, PeerLink};
use unsent::Ledger;

/// Connection events queued between a connection and its ROUTER or peer
/// task (connected and closed; messages go straight to the node).
const UP_QUEUE: usize = 64;
/// Frames per message read before the rest of it is skipped unread (the
/// contract is one frame; a few more are read and counted as garbage).
const MAX_FRAMES: usize = 8;
/// Time a client connecting to the ROUTER has for the ZMTP handshake.
const ROUTER_HANDSHAKE: Duration = Duration::from_secs(10);

/// `spec`, if it is a `tcp://` endpoint.
fn tcp_only(spec: EndpointSpec) -> Result<EndpointSpec, TransportError> {
    if spec.endpoint().starts_with("tcp://") {
        Ok(spec)
    } else {
        Err(TransportError::TcpOnly(spec.endpoint().to_owned()))
    }
}

/// The limits of one of the transport's ZMTP connections.
fn connection_limits(cfg: &ZmqConfig, handshake: Duration) -> Limits {
    Limits {
        direct: None,
        role: Role::Router,
        identity: Bytes::new(),
        hwm: cfg.queue,
        max_message: cfg.max_message,
        max_frames: MAX_FRAMES,
        handshake_timeout: handshake,
        read_chunk: 64 * 1024,
        accept_push: false,
        skip_oversized: true,
    }
}

/// Configuration of a [`ZmqTransport`].
#[derive(Clone, Debug)]
pub struct ZmqConfig {
    id: NodeId,
    bind: Option<EndpointSpec>,
    peers: BTreeMap<NodeId, String>,
    pub(crate) queue: usize,
    inbound: usize,
    pub(crate) inbound_bytes: usize,
    pub(crate) max_message: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    max_connections: usize,
    unsent_total: usize,
    unsent_per_destination: usize,
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
            inbound_bytes: 64 << 20,
            max_message: 16 << 20,
            connect_timeout: Duration::from_secs(1),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            max_connections: 256,
            unsent_total: 64 << 20,
            unsent_per_destination: 16 << 20,
        }
    }

    /// Where the ROUTER binds (`tcp://*:5670`, `@tcp://127.0.0.1:0`), or
    /// `None` for a node that only connects (a client).
    pub fn bind(mut self, endpoint: Option<&str>) -> Result<Self, TransportError> {
        self.bind = endpoint
            .map(|e| EndpointSpec::parse(e, Attach::Bind))
            .transpose()?
            .map(tcp_only)
            .transpose()?;
        Ok(self)
    }

    /// Adds a peer reachable at `endpoint` (its ROUTER).
    pub fn peer(mut self, id: NodeId, endpoint: &str) -> Result<Self, TransportError> {
        let spec = tcp_only(EndpointSpec::parse(endpoint, Attach::Connect)?)?;
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

    /// Messages received and not yet taken by the node (by
    /// [`Transport::poll_recv`]) before further ones are dropped (default
    /// 65,536).
    pub fn inbound(mut self, messages: usize) -> Self {
        self.inbound = messages.max(1);
        self
    }

    /// Payload bytes received and not yet taken by the node before further
    /// messages are dropped (default 64 MiB). One peer may hold at most half
    /// of it, so a peer that floods the node leaves room for the others.
    /// One message larger than the budget still passes when nothing else
    /// is queued.
    pub fn inbound_bytes(mut self, bytes: usize) -> Self {
        self.inbound_bytes = bytes.max(1);
        self
    }

    /// Largest payload accepted from any peer, in bytes (default 16 MiB).
    /// A larger message is seen from its frame header and skipped unread
    /// (never buffered), counted in [`TransportStats::oversized`]; the
    /// connection stays up. It also bounds the partial message each
    /// connection may hold while reading (see the module docs). Set it at
    /// least as large as the biggest message the protocol sends.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(1);
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

    /// Connections the ROUTER keeps at once (default 256); one more is
    /// accepted and closed at once, counted in
    /// [`TransportStats::refused`].
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n.max(1);
        self
    }

    /// Payload bytes sent by the node and not yet written to a connection,
    /// in total and per destination (default 64 MiB and 16 MiB). A send
    /// that would go over either is dropped and counted in
    /// [`TransportStats::dropped`]: a client or peer that does not read
    /// holds at most `per_destination` bytes of this process, and all of
    /// them together at most `total`. One message larger than a limit is
    /// still sent when nothing else is waiting.
    pub fn unsent_bytes(mut self, total: usize, per_destination: usize) -> Self {
        self.unsent_total = total.max(1);
        self.unsent_per_destination = per_destination.max(1);
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
    pub(crate) oversized: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) refused: AtomicU64,
    /// Payload bytes in the inbound queue.
    pub(crate) queued_bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self, unsent: &Ledger) -> TransportStats {
        TransportStats {
            refused: self.refused.load(Ordering::Relaxed),
            unsent_bytes: unsent.total(),
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            garbage: self.garbage.load(Ordering::Relaxed),
            oversized: self.oversized.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            queued_bytes: self.queued_bytes.load(Ordering::Relaxed),
        }
    }
}

/// The receiving side shared by the ROUTER reader and every peer's DEALER:
/// applies the size limits, then queues for the node.
#[derive(Debug, Clone)]
pub(crate) struct Inbound {
    tx: mpsc::Sender<(NodeId, Bytes)>,
    counters: Arc<Counters>,
    max_message: usize,
    max_bytes: u64,
    /// Payload bytes queued per sending peer (entries removed at zero, so
    /// at most one per queued message).
    per_peer: Arc<Mutex<HashMap<NodeId, u64>>>,
}

impl Inbound {
    /// Releases the accounting of a message of `len` bytes from `from` that
    /// left the queue (taken by the node, or never queued).
    pub(crate) fn taken(&self, from: NodeId, len: usize) {
        self.counters
            .queued_bytes
            .fetch_sub(len as u64, Ordering::Relaxed);
        let mut per_peer = self.per_peer.lock().expect("inbound accounting lock");
        if let Some(mine) = per_peer.get_mut(&from) {
            *mine = mine.saturating_sub(len as u64);
            if *mine == 0 {
                per_peer.remove(&from);
            }
        }
    }

    /// Queues `payload` from `from`, or drops and counts it. `log` limits
    /// the caller's warnings.
    pub(crate) fn offer(&self, from: NodeId, payload: Bytes, log: &mut LogLimiter) {
        let len = payload.len();
        if len > self.max_message {
            Counters::bump(&self.counters.oversized);
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                warn!(peer = %from, bytes = len, limit = self.max_message, suppressed, "oversized message dropped");
            }
            return;
        }
        let mut per_peer = self.per_peer.lock().expect("inbound accounting lock");
        let queued = self.counters.queued_bytes.load(Ordering::Relaxed);
        let mine = per_peer.get(&from).copied().unwrap_or(0);
        let over_total = queued > 0 && queued.saturating_add(len as u64) > self.max_bytes;
        let over_share = mine > 0 && mine.saturating_add(len as u64) > self.max_bytes / 2;
        if over_total || over_share {
            Counters::bump(&self.counters.dropped);
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                warn!(peer = %from, queued, limit = self.max_bytes, suppressed, "inbound byte budget full; message dropped");
            }
            return;
        }
        self.counters
            .queued_bytes
            .fetch_add(len as u64, Ordering::Relaxed);
        *per_peer.entry(from).or_insert(0) += len as u64;
        drop(per_peer);
        if self.tx.try_send((from, payload)).is_err() {
            self.taken(from, len);
            Counters::bump(&self.counters.dropped);
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                debug!(peer = %from, suppressed, "inbound queue full; message dropped");
            }
        }
    }
}

/// Takes a connection's messages from its reader task straight into the
/// node's inbound queue: `[payload]` from a valid `n<id>` (the peer of a
/// DEALER link, or the `Identity` of a ROUTER client), everything else
/// counted as garbage.
#[derive(Debug)]
pub(crate) struct ToNode {
    inbound: Inbound,
    counters: Arc<Counters>,
    /// The sender of everything on this connection (a DEALER link's peer);
    /// `None` at the ROUTER, where the identity names it.
    from: Option<NodeId>,
    log: Mutex<LogLimiter>,
}

impl ToNode {
    pub(crate) fn new(inbound: Inbound, counters: Arc<Counters>, from: Option<NodeId>) -> Self {
        ToNode {
            inbound,
            counters,
            from,
            log: Mutex::default(),
        }
    }

    /// `self` as connection limits' direct delivery.
    pub(crate) fn direct(self: &Arc<Self>) -> Option<Direct> {
        Some(Direct(self.clone()))
    }
}

impl Deliver for ToNode {
    fn deliver(&self, identity: &Bytes, msgs: Vec<Shared>, skipped: Skipped) {
        let c = &self.counters;
        c.oversized.fetch_add(skipped.oversized, Ordering::Relaxed);
        c.garbage
            .fetch_add(skipped.too_many_frames, Ordering::Relaxed);
        let mut log = self.log.lock().expect("delivery log lock");
        if skipped.oversized > 0 {
            if let Some(suppressed) = log.check(std::time::Instant::now()) {
                warn!(
                    skipped = skipped.oversized,
                    limit = self.inbound.max_message,
                    suppressed,
                    "oversized messages skipped unread"
                );
            }
        }
        let from = self.from.or_else(|| NodeId::from_identity(identity));
        for msg in msgs {
            match (from, &msg[..]) {
                (Some(from), [payload]) => self.inbound.offer(from, payload.clone(), &mut log),
                _ => {
                    Counters::bump(&c.garbage);
                    if let Some(suppressed) = log.check(std::time::Instant::now()) {
                        warn!(
                            identity = %crate::frames::render(identity),
                            frames = msg.len(),
                            suppressed,
                            "malformed message dropped (want [payload] from identity n<id>)"
                        );
                    }
                }
            }
        }
    }
}

/// A node's ZeroMQ transport: the handle of its ROUTER and peer tasks.
///
/// Dropping it cancels its tasks without waiting (they stop in the
/// background and release the ROUTER's port shortly after); call
/// [`shutdown`](Self::shutdown) to wait for them.
#[derive(Debug)]
#[must_use = "dropping the transport stops it"]
pub struct ZmqTransport {
    id: NodeId,
    endpoint: Option<String>,
    inbound: mpsc::Receiver<(NodeId, Bytes)>,
    inbound_tx: Inbound,
    /// Each peer's queue and the token that stops its link.
    peers: BTreeMap<NodeId, (mpsc::Sender<Bytes>, CancellationToken)>,
    router_tx: Option<mpsc::Sender<(NodeId, Bytes)>>,
    counters: Arc<Counters>,
    unsent: Arc<Ledger>,
    cfg: ZmqConfig,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl ZmqTransport {
    /// Binds the ROUTER (if configured; errors and port 0 surface here) and
    /// starts a DEALER link per configured peer, all under
    /// `parent.child_token()`. Cancelling `parent` stops the transport; the
    /// transport never cancels `parent`. Must be called inside a tokio
    /// runtime.
    pub async fn start(
        config: ZmqConfig,
        parent: &CancellationToken,
    ) -> Result<Self, TransportError> {
        let cfg = config;
        let cancel = parent.child_token();
        let mut tasks = Vec::new();
        let counters = Arc::new(Counters::default());
        let (tx, inbound) = mpsc::channel(cfg.inbound);
        let inbound_tx = Inbound {
            tx,
            counters: counters.clone(),
            max_message: cfg.max_message,
            max_bytes: cfg.inbound_bytes as u64,
            per_peer: Arc::default(),
        };
        let mut endpoint = None;
        let mut router_tx = None;
        if let Some(spec) = &cfg.bind {
            let listener = net::bind(spec).await?;
            let local = listener
                .local_addr()
                .map_err(|e| net::bind_error(spec, e))?;
            let ep = format!("tcp://{local}");
            let (up_tx, up_rx) = mpsc::channel(UP_QUEUE);
            let (tx, rx) = mpsc::channel(cfg.queue);
            let span = tracing::info_span!("zmq_router", node = %cfg.id, endpoint = %ep);
            let to_node = Arc::new(ToNode::new(inbound_tx.clone(), counters.clone(), None));
            let limits = Limits {
                direct: to_node.direct(),
                ..connection_limits(&cfg, ROUTER_HANDSHAKE)
            };
            tasks.push(tokio::spawn(
                net::accept_loop(listener, limits, cfg.max_connections, up_tx, cancel.clone())
                    .instrument(span.clone()),
            ));
            tasks.push(tokio::spawn(
                router::route(up_rx, rx, to_node, counters.clone(), cancel.clone())
                    .instrument(span),
            ));
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
            unsent: Ledger::new(cfg.unsent_total, cfg.unsent_per_destination),
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
        let spec = tcp_only(EndpointSpec::parse(endpoint, Attach::Connect)?)?;
        if id == self.id || self.peers.contains_key(&id) {
            return Err(TransportError::DuplicatePeer(id));
        }
        self.spawn_peer(id, spec.endpoint().to_owned());
        Ok(())
    }

    /// Forgets a peer given by [`ZmqConfig::peer`] or
    /// [`add_peer`](Self::add_peer): its DEALER link stops (what was queued
    /// for it is dropped) and its connection closes. Messages to it go
    /// through the ROUTER from then on, if it is connected there. Returns
    /// whether it was a peer.
    pub fn remove_peer(&mut self, id: NodeId) -> bool {
        match self.peers.remove(&id) {
            Some((_, stop)) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    fn spawn_peer(&mut self, peer: NodeId, endpoint: String) {
        // Handles of links that ended (removed peers) are let go.
        self.tasks.retain(|t| !t.is_finished());
        let (tx, rx) = mpsc::channel(self.cfg.queue);
        let stop = self.cancel.child_token();
        self.peers.insert(peer, (tx, stop.clone()));
        let link = PeerLink {
            me: self.id,
            peer,
            endpoint: endpoint.clone(),
            outgoing: rx,
            inbound: self.inbound_tx.clone(),
            counters: self.counters.clone(),
            cfg: self.cfg.clone(),
            cancel: stop,
        };
        let span =
            tracing::info_span!("zmq_peer", node = %self.id, peer = %peer, endpoint = %endpoint);
        self.tasks
            .push(tokio::spawn(supervise(link).instrument(span)));
    }

    /// The resolved endpoint of the ROUTER (with the real port), if bound.
    pub fn endpoint(&self) -> Option<&str> {
        self.endpoint.as_deref()
    }

    /// A snapshot of the counters (the same as [`Transport::stats`]).
    pub fn stats(&self) -> TransportStats {
        self.counters.snapshot(&self.unsent)
    }

    /// Cancels this transport's tasks (only them: other users of the
    /// parent token keep running), waits for them to end (the ROUTER's
    /// port is released) and returns the final counters, or
    /// [`TransportError::TaskPanicked`] if a task panicked.
    pub async fn shutdown(mut self) -> Result<TransportStats, TransportError> {
        self.cancel.cancel();
        let mut panicked = false;
        for task in std::mem::take(&mut self.tasks) {
            panicked |= task.await.is_err();
        }
        if panicked {
            return Err(TransportError::TaskPanicked);
        }
        Ok(self.stats())
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
        let Some(msg) = self.unsent.charge(to, msg) else {
            Counters::bump(&self.counters.dropped);
            debug!(node = %self.id, peer = %to, "send dropped: unsent-bytes limit reached");
            return;
        };
        let queued = match self.peers.get(&to) {
            Some((tx, _)) => tx.try_send(msg).is_ok(),
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
        if let Poll::Ready(Some((from, m))) = &r {
            Counters::bump(&self.counters.received);
            self.inbound_tx.taken(*from, m.len());
        }
        r
    }

    fn stats(&self) -> TransportStats {
        self.counters.snapshot(&self.unsent)
    }
}
