//! Message transports for the consensus protocol cores, and the sans-IO
//! contract that they implement so one core runs over any of them.
//!
//! A protocol core (a Paxos replica, a client) is a [`Process`]: it
//! takes messages and `now` in and puts messages into an [`Outbox`]; it
//! asks for a timer with [`Process::poll_timeout`]. It contains no networking
//! code and reads no clock. Three things can drive it:
//!
//! - [`crate::sim::Sim`]: a single-threaded, seeded, virtual-time network
//!   that delays, reorders, drops, duplicates, partitions and crashes on
//!   purpose (the test battery);
//! - [`driver::run`] over a [`Transport`]: [`zmq::ZmqTransport`] (a ROUTER per
//!   node on TCP, one reconnecting DEALER per peer, on this crate's own ZMTP
//!   connections) or [`mem::MemNet`] (tokio
//!   channels, for benchmarks and tests without sockets).
//!
//! Messages are opaque [`Bytes`] addressed by [`NodeId`]: the cores own
//! their wire codecs, so the simulator exercises exactly the bytes that
//! travel over ZeroMQ.

pub mod driver;
pub mod mem;
mod time;
pub mod zmq;

use std::fmt;
use std::task::{Context, Poll};

use bytes::Bytes;

pub use time::Time;

/// The identity of a node (replica or client) in a cluster.
///
/// On ZeroMQ it travels as the routing identity `n<id>` (e.g. `n3`), which a
/// libzmq peer sets with `ZMQ_ROUTING_ID`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct NodeId(pub u32);

impl NodeId {
    /// The ZeroMQ routing identity of this node: `n<id>` in ASCII.
    pub fn identity(self) -> Bytes {
        Bytes::from(format!("n{}", self.0))
    }

    /// Parses a routing identity made by [`NodeId::identity`].
    pub fn from_identity(id: &[u8]) -> Option<Self> {
        let digits = id.strip_prefix(b"n")?;
        if digits.is_empty() || digits.len() > 10 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok().map(NodeId)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// The messages a [`Process`] wants sent, collected during one `handle_*`
/// call.
///
/// A driver releases them only after [`Process::persist`] succeeded, which
/// is how "fsync before replying" holds for every core without each core
/// knowing when its driver batches.
#[derive(Debug, Default)]
pub struct Outbox {
    sends: Vec<(NodeId, Bytes)>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `msg` for `to`.
    pub fn send(&mut self, to: NodeId, msg: Bytes) {
        self.sends.push((to, msg));
    }

    /// Number of queued messages.
    pub fn len(&self) -> usize {
        self.sends.len()
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.sends.is_empty()
    }

    /// Takes the queued messages, leaving the outbox empty.
    pub fn drain(&mut self) -> std::vec::Drain<'_, (NodeId, Bytes)> {
        self.sends.drain(..)
    }

    /// Forgets the queued messages (a crash before they were released).
    pub fn clear(&mut self) {
        self.sends.clear();
    }
}

/// A sans-IO protocol core: messages and `now` in, messages and timers out.
///
/// The contract every driver (the simulator, the tokio driver) follows:
///
/// 1. call [`handle_message`](Process::handle_message) or
///    [`handle_timeout`](Process::handle_timeout) (possibly several times);
/// 2. call [`persist`](Process::persist); if it fails, the outbox is
///    discarded (nothing the core wanted to say was made durable);
/// 3. send what the outbox holds;
/// 4. arm a timer for [`poll_timeout`](Process::poll_timeout) and call
///    `handle_timeout` once `now` reaches it.
pub trait Process {
    /// Handles one message from `from`. Garbage must be counted and
    /// ignored, never panicked on.
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox);

    /// Handles the passage of time up to `now` (called at or after the
    /// instant [`poll_timeout`](Process::poll_timeout) returned).
    fn handle_timeout(&mut self, now: Time, out: &mut Outbox);

    /// The next instant at which the core wants `handle_timeout`.
    fn poll_timeout(&self) -> Option<Time>;

    /// Makes every state change so far durable (fsync). Called by the
    /// driver before the outbox leaves.
    fn persist(&mut self) -> Result<(), crate::durable::DurableError> {
        Ok(())
    }
}

/// Either of two processes, so that one simulation can hold replicas and
/// clients of different types.
#[derive(Debug)]
pub enum Either<A, B> {
    /// The first kind (e.g. a replica).
    Left(A),
    /// The second kind (e.g. a client).
    Right(B),
}

impl<A, B> Either<A, B> {
    /// The left value, if this is one.
    pub fn left(&self) -> Option<&A> {
        match self {
            Either::Left(a) => Some(a),
            Either::Right(_) => None,
        }
    }

    /// The right value, if this is one.
    pub fn right(&self) -> Option<&B> {
        match self {
            Either::Left(_) => None,
            Either::Right(b) => Some(b),
        }
    }

    /// The left value, mutably.
    pub fn left_mut(&mut self) -> Option<&mut A> {
        match self {
            Either::Left(a) => Some(a),
            Either::Right(_) => None,
        }
    }

    /// The right value, mutably.
    pub fn right_mut(&mut self) -> Option<&mut B> {
        match self {
            Either::Left(_) => None,
            Either::Right(b) => Some(b),
        }
    }
}

impl<A: Process, B: Process> Process for Either<A, B> {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        match self {
            Either::Left(a) => a.handle_message(now, from, msg, out),
            Either::Right(b) => b.handle_message(now, from, msg, out),
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        match self {
            Either::Left(a) => a.handle_timeout(now, out),
            Either::Right(b) => b.handle_timeout(now, out),
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        match self {
            Either::Left(a) => a.poll_timeout(),
            Either::Right(b) => b.poll_timeout(),
        }
    }

    fn persist(&mut self) -> Result<(), crate::durable::DurableError> {
        match self {
            Either::Left(a) => a.persist(),
            Either::Right(b) => b.persist(),
        }
    }
}

/// Counters every transport keeps (all monotonic, except the
/// `queued_bytes` gauge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages received and passed to the node.
    pub received: u64,
    /// Messages dropped on the way out (queue full, peer unknown or down).
    pub dropped: u64,
    /// Inbound messages refused as malformed (bad frame count, unknown
    /// identity).
    pub garbage: u64,
    /// Inbound messages refused as larger than the transport's limit
    /// ([`zmq::ZmqConfig::max_message`]).
    pub oversized: u64,
    /// Times an outgoing connection was (re)established.
    pub connects: u64,
    /// Connections refused at the ROUTER for being over
    /// [`zmq::ZmqConfig::max_connections`].
    pub refused: u64,
    /// Payload bytes sent by the node and not yet written to a connection
    /// (a gauge; bounded by [`zmq::ZmqConfig::unsent_bytes`]).
    pub unsent_bytes: u64,
    /// Payload bytes received and not yet taken by the node (a gauge, not a
    /// counter; bounded by [`zmq::ZmqConfig::inbound_bytes`]).
    pub queued_bytes: u64,
}

/// A message-oriented transport: send bytes to a node, receive
/// `(from, bytes)`.
///
/// `send` never blocks and never fails loudly: consensus protocols tolerate
/// loss, so a message that cannot be queued (peer down, queue full) is
/// dropped and counted in [`TransportStats::dropped`]. `poll_recv` is
/// cancel-safe (it is a channel poll), so drivers can `select!` on it.
pub trait Transport: Send + fmt::Debug {
    /// This node's identity.
    fn id(&self) -> NodeId;

    /// Queues `msg` for `to` without waiting.
    fn send(&mut self, to: NodeId, msg: Bytes);

    /// Polls for the next inbound message; `Ready(None)` once the transport
    /// is closed.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(NodeId, Bytes)>>;

    /// A snapshot of the counters.
    fn stats(&self) -> TransportStats;
}

/// Awaits the next inbound message of `t` (cancel-safe).
pub async fn recv<T: Transport + ?Sized>(t: &mut T) -> Option<(NodeId, Bytes)> {
    std::future::poll_fn(|cx| t.poll_recv(cx)).await
}

/// Errors of the transports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// A ZeroMQ socket operation failed.
    #[error("zeromq: {0}")]
    Zmq(#[from] zeromq::ZmqError),
    /// An endpoint string could not be used.
    #[error("endpoint: {0}")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    /// An endpoint of another transport than `tcp://` given to the ZeroMQ
    /// transport (its ROUTER and DEALERs are this crate's ZMTP over TCP).
    #[error("the ZeroMQ message transport speaks tcp:// only, not {0:?}")]
    TcpOnly(String),
    /// The same node id was given two endpoints, or a node was given its own.
    #[error("peer {0} configured twice or equal to this node")]
    DuplicatePeer(NodeId),
    /// One of the transport's tasks panicked (reported by
    /// [`zmq::ZmqTransport::shutdown`]).
    #[error("a transport task panicked")]
    TaskPanicked,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_and_reject_garbage() {
        for n in [0, 7, 42, u32::MAX] {
            assert_eq!(
                NodeId::from_identity(&NodeId(n).identity()),
                Some(NodeId(n))
            );
        }
        for bad in [
            &b""[..],
            b"n",
            b"x1",
            b"n01",
            b"n-1",
            b"n99999999999",
            b"n1a",
        ] {
            assert_eq!(NodeId::from_identity(bad), None, "{bad:?}");
        }
    }
}
