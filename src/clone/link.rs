//! The client's sockets to one server: a "link" (SUB to `P+1`, then DEALER
//! to `P` with `ICANHAZ?`) per synchronisation attempt, and a supervised
//! publisher to `P+2` per server for KVSETs: a PUB (CHP, the clone agent's)
//! or a PUSH (for the PULL collector of Clone models 3-5), as
//! [`CollectorSocket`] says.
//!
//! Guide ch. 5: the clone agent's per-server sockets (`clone.c`). The `zeromq`
//! crate's DEALER, PUB and PUSH never reconnect once their peer restarts, so
//! a link lives for one attempt only (the agent opens a new one on failover
//! or resync) and each publisher recreates its socket when it disconnects.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, Instrument};
use zeromq::prelude::*;
use zeromq::{DealerSocket, PubSocket, PushSocket, SocketEvent, SubSocket};

use super::error::{CloneError, KvMsgError};
use super::kvmsg::KvMsg;
use super::proto::{Icanhaz, SnapshotReply, Update};
use super::server::CloneServerEndpoints;
use crate::endpoint::{EndpointError, EndpointSpec};

/// The three endpoints of one CHP server, as a client connects to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerAddr {
    snapshot: String,
    updates: String,
    collector: String,
}

impl ServerAddr {
    /// Explicit endpoints: snapshot ROUTER, update PUB, collector (SUB or
    /// PULL).
    pub fn new(snapshot: &str, updates: &str, collector: &str) -> Result<Self, EndpointError> {
        let c = |s: &str| EndpointSpec::connect(s).map(|e| e.endpoint().to_owned());
        Ok(Self {
            snapshot: c(snapshot)?,
            updates: c(updates)?,
            collector: c(collector)?,
        })
    }

    /// The CHP convention: `tcp://HOST:P` means ports `P`, `P+1`, `P+2`.
    pub fn from_port(host: &str, port: u16) -> Result<Self, EndpointError> {
        let at = |p: u16| format!("tcp://{host}:{p}");
        let bad = || EndpointError::Malformed(format!("tcp://{host}:{port}: P+2 exceeds 65535"));
        let p1 = port.checked_add(1).ok_or_else(bad)?;
        let p2 = port.checked_add(2).ok_or_else(bad)?;
        Self::new(&at(port), &at(p1), &at(p2))
    }

    /// Where a local [`CloneServer`](super::CloneServer) listens
    /// (with `0.0.0.0` binds reached over loopback).
    pub fn from_endpoints(ep: &CloneServerEndpoints) -> Result<Self, EndpointError> {
        let local = |s: &str| s.replace("0.0.0.0", "127.0.0.1");
        Self::new(
            &local(&ep.snapshot),
            &local(&ep.publisher),
            &local(&ep.collector),
        )
    }

    /// The snapshot endpoint (`P`).
    pub fn snapshot(&self) -> &str {
        &self.snapshot
    }
    /// The update endpoint (`P+1`).
    pub fn updates(&self) -> &str {
        &self.updates
    }
    /// The collector endpoint (`P+2`).
    pub fn collector(&self) -> &str {
        &self.collector
    }
}

/// Parses `tcp://HOST:P` (an optional `>` prefix is accepted).
impl FromStr for ServerAddr {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let spec = EndpointSpec::connect(s.trim().trim_start_matches('>'))?;
        let malformed = || EndpointError::Malformed(s.to_owned());
        let addr = spec
            .endpoint()
            .strip_prefix("tcp://")
            .ok_or_else(malformed)?;
        let (host, port) = addr.rsplit_once(':').ok_or_else(malformed)?;
        Self::from_port(host, port.parse().map_err(|_| malformed())?)
    }
}

/// The socket a [`CloneClient`](super::CloneClient) sends its KVSETs with to
/// a server's collector (`P+2`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum CollectorSocket {
    /// PUB, as CHP and the Guide's clone agent (`clonecli6`) do, for a SUB
    /// collector (`clonesrv6`) or this crate's server. KVSETs sent
    /// before the collector's subscription arrives are dropped by PUB
    /// semantics, hence the client's `publish_settle` pause after each
    /// connect.
    #[default]
    Pub,
    /// PUSH, as the Guide's `clonecli3` to `clonecli5` do: for the PULL
    /// collector of `clonesrv3` to `clonesrv5` (this crate's server takes
    /// both). No settle pause. The `zeromq` crate's PUSH notices a dead
    /// server only when a write fails, so the one or two KVSETs written
    /// just after the server died are lost (a model 3-5 server loses its
    /// whole state when it restarts anyway).
    Push,
}

/// What a link reports to the agent.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    Snapshot(SnapshotReply),
    Update(Update),
    Malformed(KvMsgError),
    /// A message of this many bytes, over the client's `max_message_size`,
    /// dropped unread.
    Oversized(usize),
}

/// Tagged link events.
pub(crate) type LinkTx = mpsc::Sender<(u64, LinkEvent)>;

/// Starts a link for `attempt`; it runs until `token` is cancelled or a
/// socket fails (the agent's silence timer then moves on). `limits` are the
/// subscribe settle time and the largest message accepted.
pub(crate) fn spawn_link(
    addr: ServerAddr,
    attempt: u64,
    subtree: String,
    limits: (Duration, usize),
    tx: LinkTx,
    token: CancellationToken,
) {
    let span = tracing::info_span!("clone_link", server = %addr.snapshot, attempt);
    spawn_until_cancelled(span, token, async move {
        let link = Link {
            attempt,
            max: limits.1,
            tx: &tx,
        };
        run_link(&addr, &subtree, limits.0, link).await
    });
}

/// What a link needs to report what it receives.
#[derive(Clone, Copy)]
struct Link<'a> {
    attempt: u64,
    max: usize,
    tx: &'a LinkTx,
}

impl Link<'_> {
    /// Checks the size of `msg`, decodes it with `decode`, and reports it.
    async fn forward(
        self,
        msg: zeromq::ZmqMessage,
        decode: impl FnOnce(&[bytes::Bytes]) -> LinkEvent,
    ) -> Result<(), CloneError> {
        let frames = msg.into_vec();
        let size: usize = frames.iter().map(bytes::Bytes::len).sum();
        let ev = if size > self.max {
            LinkEvent::Oversized(size)
        } else {
            decode(&frames)
        };
        self.tx
            .send((self.attempt, ev))
            .await
            .map_err(|_| CloneError::Stopped)
    }
}

fn snapshot_event(frames: &[bytes::Bytes]) -> LinkEvent {
    SnapshotReply::decode(frames).map_or_else(LinkEvent::Malformed, LinkEvent::Snapshot)
}

fn update_event(frames: &[bytes::Bytes]) -> LinkEvent {
    Update::decode(frames).map_or_else(LinkEvent::Malformed, LinkEvent::Update)
}

/// Spawns `task` in `span`, dropping it when `token` is cancelled; an error
/// ending it early is logged (the agent's timers take it from there).
fn spawn_until_cancelled<F>(span: tracing::Span, token: CancellationToken, task: F)
where
    F: std::future::Future<Output = Result<(), CloneError>> + Send + 'static,
{
    let run = async move {
        tokio::select! {
            () = token.cancelled() => {}
            r = task => {
                if let Err(e) = r {
                    debug!(cause = %e, "task ended");
                }
            }
        }
    };
    tokio::spawn(run.instrument(span));
}

async fn run_link(
    addr: &ServerAddr,
    subtree: &str,
    settle: Duration,
    link: Link<'_>,
) -> Result<(), CloneError> {
    // Subscribe first (CHP), so no update after the snapshot is missed.
    let mut sub = SubSocket::new();
    connect_patiently(&mut sub, &addr.updates).await?;
    if subtree.is_empty() {
        sub.subscribe("").await?;
    } else {
        sub.subscribe(subtree).await?;
        sub.subscribe("HUGZ").await?;
    }
    // Subscriptions reach the server asynchronously: wait for the first
    // message (proof that it is in place) before asking, bounded by
    // `settle` (HUGZ come only once a second, and models 3-5 send none).
    if let Ok(first) = tokio::time::timeout(settle, sub.recv()).await {
        link.forward(first?, update_event).await?;
    }
    let mut dealer = DealerSocket::new();
    connect_patiently(&mut dealer, &addr.snapshot).await?;
    let subtree_frame = bytes::Bytes::copy_from_slice(subtree.as_bytes());
    let request = crate::frames::message(Icanhaz::encode(&subtree_frame)).expect("two frames");
    dealer.send(request).await?;
    info!(subtree, "waiting for server");
    loop {
        tokio::select! {
            m = dealer.recv() => link.forward(m?, snapshot_event).await?,
            m = sub.recv() => link.forward(m?, update_event).await?,
        }
    }
}

async fn connect_patiently<S: Socket>(socket: &mut S, endpoint: &str) -> Result<(), CloneError> {
    let spec = EndpointSpec::connect(endpoint)?;
    spec.attach_patiently(socket, Duration::from_millis(200))
        .await?;
    Ok(())
}

/// Starts the publisher of one server: a PUB or PUSH (`kind`) connected to
/// its collector, recreated whenever it disconnects. KVSETs wait in `rx`
/// while it is (re)connecting.
pub(crate) fn spawn_publisher(
    addr: ServerAddr,
    (kind, settle): (CollectorSocket, Duration),
    rx: mpsc::Receiver<KvMsg>,
    sent: Arc<AtomicU64>,
    token: CancellationToken,
) {
    let span = tracing::info_span!("clone_publisher", collector = %addr.collector, ?kind);
    spawn_until_cancelled(span, token, async move {
        match kind {
            CollectorSocket::Pub => run_publisher::<PubSocket>(&addr, settle, rx, &sent).await,
            CollectorSocket::Push => {
                run_publisher::<PushSocket>(&addr, Duration::ZERO, rx, &sent).await
            }
        }
    });
}

async fn run_publisher<S: Socket + SocketSend>(
    addr: &ServerAddr,
    settle: Duration,
    mut rx: mpsc::Receiver<KvMsg>,
    sent: &AtomicU64,
) -> Result<(), CloneError> {
    // A KVSET the socket handed back (no peer): sent first after reconnecting.
    let mut pending: Option<KvMsg> = None;
    loop {
        let mut socket = S::new();
        let mut monitor = socket.monitor();
        connect_patiently(&mut socket, &addr.collector).await?;
        // PUB: the collector's subscription reaches this socket just after
        // the handshake; a KVSET sent before it would be dropped silently.
        if !settle.is_zero() {
            tokio::time::sleep(settle).await;
        }
        info!("publisher connected");
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => tokio::select! {
                    ev = monitor.next() => match ev {
                        Some(SocketEvent::Disconnected(_)) | None => break,
                        Some(_) => continue,
                    },
                    m = rx.recv() => match m {
                        Some(msg) => msg,
                        None => return Ok(()),
                    },
                },
            };
            let out = crate::frames::message(msg.encode()).expect("five frames");
            match socket.send(out).await {
                Ok(()) => {
                    if sent.fetch_add(1, Ordering::Relaxed) % 256 == 255 {
                        tokio::task::yield_now().await;
                    }
                }
                // Not connected (PUSH): keep it for the next socket.
                Err(zeromq::ZmqError::ReturnToSender { .. }) => {
                    pending = Some(msg);
                    break;
                }
                Err(e) => {
                    debug!(cause = %e, "KVSET lost with the connection");
                    break;
                }
            }
        }
        info!("collector disconnected; reconnecting");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_follow_the_chp_port_convention() {
        let a: ServerAddr = "tcp://localhost:5556".parse().unwrap();
        assert_eq!(a.snapshot(), "tcp://localhost:5556");
        assert_eq!(a.updates(), "tcp://localhost:5557");
        assert_eq!(a.collector(), "tcp://localhost:5558");
        assert!("tcp://localhost:65535".parse::<ServerAddr>().is_err());
        assert!("tcp://*:5556".parse::<ServerAddr>().is_err());
        assert!("localhost".parse::<ServerAddr>().is_err());
        assert!("ipc:///tmp/x".parse::<ServerAddr>().is_err());
    }
}
