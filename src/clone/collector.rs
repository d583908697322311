//! The Clone server's collector (port `P+2`): one endpoint that takes
//! KVSETs from PUB peers (CHP, Guide ch. 5 `clonecli6`'s agent, this
//! crate's client) and from PUSH peers (the clients of Clone models 3-5,
//! `clonecli3` to `clonecli5`, written for the PULL of `clonesrv3` to
//! `clonesrv5`), answering each according to the socket type in its READY.
//!
//! A thin wrapper over this crate's own ZMTP XSUB server
//! ([`XSubServer`] with [`XSubOptions::accept_push`]): a PUB or XPUB peer
//! is answered as XSUB and sent a subscribe-all (`\x01`) frame, a PUSH peer
//! is answered as PULL, any other type is refused at the handshake. The
//! limits ([`CollectorLimits`]) are checked from each frame's header: an
//! over-limit message is skipped unread (its peer stays connected), so a
//! hostile peer costs at most one read buffer. The counters go into
//! [`CloneServerStats`](super::CloneServerStats).

use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::error::CloneError;
use crate::endpoint::{Attach, EndpointSpec};
use crate::subscription::SubEvent;
use crate::zmtp::{CloseCause, PeerSocketType, XSubEvent, XSubOptions, XSubServer};

/// The default [`CollectorLimits::max_message`]: a 16 MiB value plus the
/// largest properties frame and 1 KiB for the rest of a KVSET, as the
/// default `StoreConfig::max_kvset_size`.
pub const COLLECTOR_MAX_MESSAGE: usize = (16 << 20) + super::kvmsg::PROPS_MAX + 1024;

/// What a peer of the Clone server's collector (port `P+2`) can make it
/// hold, with safe defaults. Each limit is counted in
/// [`CloneServerStats`](super::CloneServerStats) when hit and logged at most
/// once a second; every other peer is still served.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CollectorLimits {
    max_message: usize,
    max_frames: usize,
    max_connections: usize,
    handshake_timeout: Duration,
}

impl Default for CollectorLimits {
    fn default() -> Self {
        Self {
            max_message: COLLECTOR_MAX_MESSAGE,
            max_frames: 8,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl CollectorLimits {
    /// The defaults (see each setter).
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest message (the sum of its frames) read from a peer. A larger
    /// one is seen from its frame headers and skipped unread; the peer stays
    /// connected. Counted in `collector_oversized` (and in
    /// `store.oversized_kvsets`). Default [`COLLECTOR_MAX_MESSAGE`] (16 MiB +
    /// 65 KiB), as `StoreConfig::max_kvset_size`, which is checked after it
    /// on what was read: the smaller of the two is the effective limit, and
    /// this one also bounds the memory a message takes while it arrives
    /// (lower both together).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes;
        self
    }

    /// Most frames in one message (a KVSET has 5). A message with more is
    /// skipped unread; counted in `collector_too_many_frames` (and in
    /// `store.bad_kvsets`). Default 8.
    pub fn max_frames(mut self, n: usize) -> Self {
        self.max_frames = n.max(1);
        self
    }

    /// Peers connected at once; one more is accepted and closed at once,
    /// counted in `collector_connections_refused`. Memory held for partial
    /// messages is at most `max_connections` x `max_message`. Default 1024.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Time a new connection has to complete its ZMTP handshake; one that
    /// takes longer is closed and counted in `collector_refused`. Default
    /// 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }
}

/// What the collector counts (copied into `CloneServerStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CollectorCounts {
    /// Peers connected now.
    pub(crate) peers: usize,
    /// PUB and XPUB peers that completed their handshake, in total.
    pub(crate) pub_peers: u64,
    /// PUSH peers that completed their handshake, in total.
    pub(crate) push_peers: u64,
    /// Connections refused at the handshake (another socket type, a bad
    /// greeting, a timeout).
    pub(crate) refused: u64,
    /// Of those, refused for their socket type.
    pub(crate) wrong_socket_type: u64,
    /// Connections over `max_connections`, closed at once.
    pub(crate) connections_refused: u64,
    /// Messages skipped unread for exceeding `max_message`.
    pub(crate) oversized: u64,
    /// Messages skipped unread for exceeding `max_frames`.
    pub(crate) too_many_frames: u64,
    /// Peers disconnected on a protocol or I/O error.
    pub(crate) errors: u64,
}

/// The collector: bind with [`bind`](Self::bind), then
/// [`recv`](Self::recv) in a loop. Dropping it closes the port and every
/// connection.
#[derive(Debug)]
pub(crate) struct Collector {
    server: XSubServer,
    counts: CollectorCounts,
}

impl Collector {
    /// Binds `spec` (a `>` endpoint connects instead, with a warning: the
    /// collector is meant to bind) and starts accepting peers. Returns the
    /// collector and its endpoint with the real port.
    pub(crate) async fn bind(
        spec: &EndpointSpec,
        limits: &CollectorLimits,
    ) -> Result<(Self, String), CloneError> {
        if spec.attach() != Attach::Bind {
            warn!(endpoint = %spec, "the clone collector binds; connecting as asked");
        }
        let options = XSubOptions {
            max_message: limits.max_message,
            max_frames: limits.max_frames,
            max_connections: limits.max_connections,
            handshake_timeout: limits.handshake_timeout,
            accept_push: true,
            skip_oversized: true,
            ..XSubOptions::default()
        };
        let mut server = XSubServer::attach(spec, options).await?;
        // Subscribe to everything: each PUB peer is sent `\x01` as it joins.
        server.send(&SubEvent::Subscribe(Bytes::new()));
        let endpoint = server.endpoint().to_owned();
        Ok((
            Self {
                server,
                counts: CollectorCounts::default(),
            },
            endpoint,
        ))
    }

    /// The next event: `Some(frames)` for a message, `None` when only the
    /// counters changed (a peer came, went, was refused or had messages
    /// skipped). Cancel-safe: nothing is lost if the future is dropped.
    pub(crate) async fn recv(&mut self) -> Option<Vec<Bytes>> {
        let event = self.server.recv().await;
        let c = &mut self.counts;
        match event {
            XSubEvent::Message(msg) => return Some(msg.to_vec()),
            XSubEvent::Connected { socket_type, .. } => {
                if socket_type == PeerSocketType::Push {
                    c.push_peers += 1;
                } else {
                    c.pub_peers += 1;
                }
            }
            XSubEvent::Disconnected { cause, .. } => {
                if matches!(cause, CloseCause::Error | CloseCause::TooLarge) {
                    c.errors += 1;
                }
            }
            XSubEvent::ConnectionRefused { .. } => c.connections_refused += 1,
            XSubEvent::Rejected { cause, .. } => {
                c.refused += 1;
                if cause == CloseCause::SocketType {
                    c.wrong_socket_type += 1;
                }
            }
            XSubEvent::Skipped {
                oversized,
                too_many_frames,
                ..
            } => {
                c.oversized += oversized;
                c.too_many_frames += too_many_frames;
            }
        }
        c.peers = self.server.peer_count();
        None
    }

    /// The counters so far.
    pub(crate) fn counts(&self) -> CollectorCounts {
        self.counts
    }
}
