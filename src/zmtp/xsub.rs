//! An XSUB socket written for proxies: it binds (accepting many publishers)
//! or connects (reconnecting with backoff), fair-queues the publishers'
//! messages, sends its subscription frames to every publisher and replays
//! the current set to each one that connects or reconnects, and bounds what
//! a publisher can make it hold.
//!
//! It speaks ZMTP 3.0 with the NULL mechanism, so libzmq PUB/XPUB sockets
//! (any 4.x) and the `zeromq` crate's PUB connect to it unchanged, and it
//! answers ZMTP 3.1 PINGs.
//!
//! With [`XSubOptions::accept_push`] it is also a PULL on the same
//! endpoint: each peer is answered according to the `Socket-Type` of its
//! READY, a PUB or XPUB as XSUB (it is sent the subscriptions), a PUSH as
//! PULL (it is sent nothing); any other type is refused at the handshake
//! ([`XSubEvent::Rejected`]). This is the Clone server's collector, which
//! takes KVSETs both from CHP clients (PUB, Guide ch. 5 `clonecli6`'s
//! agent) and from the clients of Clone models 3-5 (PUSH, `clonecli3` to
//! `clonecli5`).
//!
//! # Limits
//!
//! | limit | default | what the peer gets |
//! |---|---|---|
//! | [`XSubOptions::max_message`] (all frames of one message) | 1 MiB | disconnected as soon as a frame header announces more, before the body is read ([`CloseCause::TooLarge`]); a libzmq publisher reconnects, and the message is lost. With [`XSubOptions::skip_oversized`]: the message is skipped unread and counted ([`XSubEvent::Skipped`]), the connection stays |
//! | [`XSubOptions::max_frames`] (frames of one message) | 1024 | as for `max_message` |
//! | [`XSubOptions::max_connections`] (live, when binding) | 1024 | accepted and closed at once ([`XSubEvent::ConnectionRefused`]) |
//! | [`XSubOptions::send_queue`] (subscription frames queued for it) | 100,000 | disconnected ([`CloseCause::Overflow`]); it gets the whole set on reconnect |
//! | [`XSubOptions::handshake_timeout`] | 10 s | closed ([`XSubEvent::Rejected`]) |
//!
//! Memory: each connection holds at most one partial message (up to
//! `max_message`) and one decoded batch (64 KiB plus one message) waiting
//! for the server, and at most 16 batches wait in the server's queue. A
//! publisher that sends faster than the proxy forwards is slowed by TCP
//! backpressure, not buffered. A skipped message costs nothing but the
//! read buffer (64 KiB): its bytes are dropped as they arrive.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

use super::conn::{CloseCause, Limits, Out, PeerSocketType, Role, Shared, Up};
use super::net;
use super::xpub::PeerId;
use crate::endpoint::{EndpointError, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::subscription::{Registry, SubEvent, Upstream};

/// Batches of messages waiting between the connections and the server.
const QUEUED_BATCHES: usize = 16;

/// Tunables of an [`XSubServer`]. Every field bounds something a remote
/// publisher could otherwise grow (see the module docs' table).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct XSubOptions {
    /// Largest message (all frame bodies together) accepted from a
    /// publisher; a frame or message over it disconnects the publisher
    /// (or, with `skip_oversized`, is skipped unread).
    pub max_message: usize,
    /// Most frames in one message from a publisher (as `max_message`).
    pub max_frames: usize,
    /// Live publisher connections of a binding server; one more is
    /// accepted and closed at once ([`XSubEvent::ConnectionRefused`]).
    pub max_connections: usize,
    /// Subscription frames queued per publisher; a publisher that lets its
    /// queue fill is disconnected (it gets every subscription again when it
    /// reconnects, so none is lost).
    pub send_queue: usize,
    /// Time allowed for a new connection's ZMTP handshake.
    pub handshake_timeout: Duration,
    /// Delay before reconnecting (connecting server), doubled after each
    /// failed attempt up to `reconnect_max`.
    pub reconnect: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// Also accept PUSH peers, answering them as a PULL (they are sent no
    /// subscriptions). Default false: only PUB and XPUB peers.
    pub accept_push: bool,
    /// Skip a message over `max_message` or `max_frames` without reading
    /// it into memory, report it ([`XSubEvent::Skipped`]) and keep the
    /// connection, instead of disconnecting the peer. Default false.
    pub skip_oversized: bool,
}

impl Default for XSubOptions {
    fn default() -> Self {
        Self {
            max_message: 1 << 20,
            max_frames: 1024,
            max_connections: 1024,
            send_queue: 100_000,
            handshake_timeout: Duration::from_secs(10),
            reconnect: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            accept_push: false,
            skip_oversized: false,
        }
    }
}

/// What [`XSubServer::recv`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum XSubEvent {
    /// A message from a publisher.
    Message(Shared),
    /// A peer finished its handshake (a publisher was sent the current
    /// subscriptions).
    #[non_exhaustive]
    Connected {
        /// The peer.
        peer: PeerId,
        /// Its address.
        remote: SocketAddr,
        /// Its socket type (PUB or XPUB; PUSH with
        /// [`XSubOptions::accept_push`]).
        socket_type: PeerSocketType,
    },
    /// A publisher went away (or was disconnected for breaking a limit).
    Disconnected {
        /// The publisher.
        peer: PeerId,
        /// Why the connection ended.
        reason: String,
        /// The same, as a kind (e.g. [`CloseCause::TooLarge`]).
        cause: CloseCause,
    },
    /// A connection over [`XSubOptions::max_connections`] was accepted and
    /// closed at once.
    ConnectionRefused {
        /// Its address.
        remote: SocketAddr,
    },
    /// A connection failed its handshake and was closed: a socket type
    /// this server does not talk to ([`CloseCause::SocketType`], e.g. a
    /// DEALER), or a bad greeting, another mechanism than NULL, a timeout
    /// ([`CloseCause::Error`]).
    Rejected {
        /// Its address.
        remote: SocketAddr,
        /// What went wrong.
        reason: String,
        /// The same, as a kind.
        cause: CloseCause,
    },
    /// Messages of a peer skipped unread for breaking a limit (only with
    /// [`XSubOptions::skip_oversized`]); the peer stays connected.
    Skipped {
        /// The peer.
        peer: PeerId,
        /// Messages over [`XSubOptions::max_message`].
        oversized: u64,
        /// Messages over [`XSubOptions::max_frames`].
        too_many_frames: u64,
    },
}

#[derive(Debug)]
struct Publisher {
    kind: PeerSocketType,
    /// `None` once dropped for overflowing (its connection is closing).
    tx: Option<mpsc::Sender<Out>>,
    remote: SocketAddr,
}

/// The server side of XSUB. Owned by one task; `recv` is cancel-safe.
#[derive(Debug)]
pub struct XSubServer {
    endpoint: String,
    peers: HashMap<PeerId, Publisher>,
    /// The subscriptions sent so far (counted), replayed to new publishers.
    subs: Registry,
    up: mpsc::Receiver<Up>,
    /// The batch being handed out by `recv`.
    batch: std::vec::IntoIter<Shared>,
    closed_log: LogLimiter,
    overflow_log: LogLimiter,
    rejected_log: LogLimiter,
    skipped_log: LogLimiter,
    _stop: DropGuard,
}

impl XSubServer {
    /// Binds (or, with a `>` endpoint, connects and keeps reconnecting).
    pub async fn attach(spec: &EndpointSpec, options: XSubOptions) -> Result<Self, EndpointError> {
        let cancel = CancellationToken::new();
        let (up_tx, up) = mpsc::channel(QUEUED_BATCHES);
        let limits = Limits {
            direct: None,
            identity: bytes::Bytes::new(),
            role: Role::XSub,
            hwm: options.send_queue,
            max_message: options.max_message,
            max_frames: options.max_frames.max(1),
            handshake_timeout: options.handshake_timeout,
            read_chunk: 64 * 1024,
            accept_push: options.accept_push,
            skip_oversized: options.skip_oversized,
        };
        let reach = net::Reach {
            max_connections: options.max_connections,
            reconnect: options.reconnect,
            reconnect_max: options.reconnect_max,
        };
        let endpoint = net::attach(spec, limits, reach, up_tx, &cancel).await?;
        Ok(Self {
            endpoint,
            peers: HashMap::new(),
            subs: Registry::new(),
            up,
            batch: Vec::new().into_iter(),
            closed_log: LogLimiter::default(),
            overflow_log: LogLimiter::default(),
            rejected_log: LogLimiter::default(),
            skipped_log: LogLimiter::default(),
            _stop: cancel.drop_guard(),
        })
    }

    /// The bound endpoint with its real port (or the connect endpoint).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Number of connected peers (publishers, and pushers with
    /// [`XSubOptions::accept_push`]).
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The subscriptions in effect (what a new publisher is sent).
    pub fn subscriptions(&self) -> &Registry {
        &self.subs
    }

    /// The next message of the batch being handed out, if any, without
    /// waiting (a caller that got [`XSubEvent::Message`] from
    /// [`recv`](Self::recv) may take the rest of that read this way).
    pub fn next_buffered(&mut self) -> Option<Shared> {
        self.batch.next()
    }

    /// Waits for the next message or connection event. Cancel-safe.
    pub async fn recv(&mut self) -> XSubEvent {
        loop {
            if let Some(msg) = self.batch.next() {
                return XSubEvent::Message(msg);
            }
            // The accept (or connect) task holds a sender for as long as this
            // server lives, so the channel cannot close under us.
            let Some(up) = self.up.recv().await else {
                return std::future::pending().await;
            };
            if let Some(ev) = self.apply(up) {
                return ev;
            }
        }
    }

    fn apply(&mut self, up: Up) -> Option<XSubEvent> {
        match up {
            Up::Batch {
                peer,
                msgs,
                skipped,
            } => {
                self.batch = msgs.into_iter();
                if skipped.oversized + skipped.too_many_frames == 0 {
                    return None;
                }
                if let Some(suppressed) = self.skipped_log.check(Instant::now()) {
                    let remote = self.peers.get(&peer).map(|p| p.remote);
                    warn!(
                        peer,
                        ?remote,
                        oversized = skipped.oversized,
                        too_many_frames = skipped.too_many_frames,
                        suppressed,
                        "messages over the limits skipped unread"
                    );
                }
                Some(XSubEvent::Skipped {
                    peer,
                    oversized: skipped.oversized,
                    too_many_frames: skipped.too_many_frames,
                })
            }
            Up::Connected {
                peer,
                remote,
                kind,
                tx,
                ..
            } => {
                debug!(peer, %remote, socket_type = %kind, "peer connected");
                // A PUSH peer is sent no subscriptions; its sender is kept
                // all the same (dropping it would end the connection).
                if kind.needs_subscriptions() && !self.subs.is_empty() {
                    let replay = self
                        .subs
                        .replay()
                        .map(|e| Shared::from(vec![e.encode()]))
                        .collect();
                    // A fresh queue always has room for its first entry.
                    let _ = tx.try_send(Out::Bulk(replay));
                }
                self.peers.insert(
                    peer,
                    Publisher {
                        kind,
                        tx: Some(tx),
                        remote,
                    },
                );
                Some(XSubEvent::Connected {
                    peer,
                    remote,
                    socket_type: kind,
                })
            }
            Up::Closed {
                peer,
                reason,
                cause,
            } => {
                let p = self.peers.remove(&peer)?;
                if matches!(cause, CloseCause::TooLarge | CloseCause::Error) {
                    if let Some(suppressed) = self.closed_log.check(Instant::now()) {
                        warn!(peer, remote = %p.remote, %reason, suppressed, "publisher disconnected");
                    }
                } else {
                    debug!(peer, remote = %p.remote, %reason, "publisher gone");
                }
                Some(XSubEvent::Disconnected {
                    peer,
                    reason,
                    cause,
                })
            }
            Up::Refused { remote } => Some(XSubEvent::ConnectionRefused { remote }),
            Up::Rejected {
                remote,
                reason,
                cause,
            } => {
                if let Some(suppressed) = self.rejected_log.check(Instant::now()) {
                    warn!(%remote, %reason, suppressed, "peer refused at the handshake");
                }
                Some(XSubEvent::Rejected {
                    remote,
                    reason,
                    cause,
                })
            }
        }
    }

    /// Records a subscription event and queues its frame for every
    /// connected publisher (libzmq's XSUB: every subscribe is sent; an
    /// unsubscribe only for a prefix that was subscribed). Never blocks:
    /// a publisher whose queue is full is disconnected and gets the whole
    /// set when it reconnects. Returns the publishers it was queued for.
    pub fn send(&mut self, event: &SubEvent) -> usize {
        match event {
            SubEvent::Subscribe(t) => {
                self.subs.subscribe(t.clone());
            }
            SubEvent::Unsubscribe(t) => {
                if self.subs.unsubscribe(t) == Upstream::Unmatched {
                    return 0;
                }
            }
        }
        let msg = Shared::from(vec![event.encode()]);
        let mut sent = 0;
        for (id, p) in &mut self.peers {
            if !p.kind.needs_subscriptions() {
                continue;
            }
            let Some(tx) = &p.tx else { continue };
            match tx.try_send(Out::One(msg.clone())) {
                Ok(()) => sent += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if let Some(suppressed) = self.overflow_log.check(Instant::now()) {
                        warn!(peer = id, remote = %p.remote, suppressed, "publisher does not read its subscriptions: disconnecting it");
                    }
                    p.tx = None;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zmtp::codec;
    use bytes::{Bytes, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn collector_options() -> XSubOptions {
        XSubOptions {
            max_message: 1000,
            max_frames: 3,
            accept_push: true,
            skip_oversized: true,
            handshake_timeout: Duration::from_secs(5),
            ..XSubOptions::default()
        }
    }

    async fn server(options: XSubOptions) -> (XSubServer, String) {
        let mut s = XSubServer::attach(&EndpointSpec::loopback(), options)
            .await
            .unwrap();
        s.send(&SubEvent::Subscribe(Bytes::new()));
        let target = s.endpoint().strip_prefix("tcp://").unwrap().to_owned();
        (s, target)
    }

    /// A raw ZMTP peer: greeting and READY as `kind`. Returns the stream.
    async fn peer(target: &str, kind: &str) -> TcpStream {
        let mut s = TcpStream::connect(target).await.unwrap();
        s.write_all(&codec::greeting()).await.unwrap();
        let mut ready = BytesMut::new();
        codec::encode_ready(&[("Socket-Type", kind.as_bytes())], &mut ready);
        s.write_all(&ready).await.unwrap();
        let mut g = [0u8; codec::GREETING_LEN];
        s.read_exact(&mut g).await.unwrap();
        s
    }

    /// Reads until one whole frame is decoded, or `None` if the peer
    /// closes; panics after 10 s.
    async fn read_frame(s: &mut TcpStream, buf: &mut BytesMut) -> Option<codec::Frame> {
        let read = async {
            loop {
                if let Some(f) = codec::decode_frame(buf, 1 << 20).unwrap() {
                    return Some(f);
                }
                if s.read_buf(buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("a frame or a close")
    }

    fn ready_type(f: &codec::Frame) -> Bytes {
        let (name, data) = codec::parse_command(&f.body).unwrap();
        assert_eq!(name, "READY");
        let props = codec::parse_properties(data).unwrap();
        props
            .into_iter()
            .find(|(n, _)| n == "Socket-Type")
            .unwrap()
            .1
    }

    async fn next(s: &mut XSubServer) -> XSubEvent {
        tokio::time::timeout(Duration::from_secs(10), s.recv())
            .await
            .expect("an event")
    }

    fn message(frames: &[&[u8]]) -> BytesMut {
        let frames: Vec<Bytes> = frames.iter().map(|f| Bytes::copy_from_slice(f)).collect();
        let mut out = BytesMut::new();
        codec::encode_message(frames.iter(), &mut out);
        out
    }

    /// Each peer is answered by its type: PUB as XSUB (and sent the
    /// subscription), PUSH as PULL (sent nothing), DEALER refused before
    /// any READY.
    #[tokio::test]
    async fn peers_are_answered_by_their_socket_type() {
        let (mut x, target) = server(collector_options()).await;
        let mut publisher = peer(&target, "PUB").await;
        let mut buf = BytesMut::new();
        let f = read_frame(&mut publisher, &mut buf).await.unwrap();
        assert_eq!(ready_type(&f), "XSUB");
        // The server sends the subscriptions as it takes the connection.
        assert!(matches!(
            next(&mut x).await,
            XSubEvent::Connected {
                socket_type: PeerSocketType::Pub,
                ..
            }
        ));
        let sub = read_frame(&mut publisher, &mut buf).await.unwrap();
        assert_eq!(&sub.body[..], b"\x01", "subscribe-all");
        let mut pusher = peer(&target, "PUSH").await;
        let mut pbuf = BytesMut::new();
        let f = read_frame(&mut pusher, &mut pbuf).await.unwrap();
        assert_eq!(ready_type(&f), "PULL");
        assert!(matches!(
            next(&mut x).await,
            XSubEvent::Connected {
                socket_type: PeerSocketType::Push,
                ..
            }
        ));
        pusher.write_all(&message(&[b"k", b"v"])).await.unwrap();
        let XSubEvent::Message(m) = next(&mut x).await else {
            panic!("a message")
        };
        assert_eq!(&m[..], [Bytes::from("k"), Bytes::from("v")]);
        let mut dealer = peer(&target, "DEALER").await;
        let mut dbuf = BytesMut::new();
        assert!(
            read_frame(&mut dealer, &mut dbuf).await.is_none(),
            "no READY, closed"
        );
        assert!(matches!(
            next(&mut x).await,
            XSubEvent::Rejected {
                cause: CloseCause::SocketType,
                ..
            }
        ));
        assert_eq!(x.peer_count(), 2);
        // The PUSH peer got nothing, not even the subscription.
        x.send(&SubEvent::Subscribe(Bytes::from("A")));
        let more = read_frame(&mut publisher, &mut buf).await.unwrap();
        assert_eq!(&more.body[..], b"\x01A");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pusher.read_buf(&mut pbuf))
                .await
                .is_err()
        );
    }

    /// Without `accept_push` a PUSH is refused, as before.
    #[tokio::test]
    async fn a_plain_xsub_refuses_push_peers() {
        let (mut x, target) = server(XSubOptions::default()).await;
        let mut pusher = peer(&target, "PUSH").await;
        let mut buf = BytesMut::new();
        // The plain XSUB answers first, then closes on the peer's type.
        let f = read_frame(&mut pusher, &mut buf).await.unwrap();
        assert_eq!(ready_type(&f), "XSUB");
        assert!(read_frame(&mut pusher, &mut buf).await.is_none());
        assert!(matches!(
            next(&mut x).await,
            XSubEvent::Rejected {
                cause: CloseCause::SocketType,
                ..
            }
        ));
    }

    /// Over-limit messages are skipped unread, whatever way their bytes
    /// are cut up by the network, and the next message is delivered whole.
    #[tokio::test]
    async fn over_limit_messages_are_skipped_and_the_connection_stays() {
        let (mut x, target) = server(collector_options()).await;
        let mut pusher = peer(&target, "PUSH").await;
        let mut buf = BytesMut::new();
        read_frame(&mut pusher, &mut buf).await.unwrap();
        assert!(matches!(next(&mut x).await, XSubEvent::Connected { .. }));
        let mut stream = BytesMut::new();
        // Over max_message in its second frame (a long frame).
        stream.extend_from_slice(&message(&[b"big", &[7u8; 2000], b"tail"]));
        // Over max_frames (4 > 3).
        stream.extend_from_slice(&message(&[b"a", b"b", b"c", b"d"]));
        // Over max_message only in total (600 + 600), empty last frame.
        stream.extend_from_slice(&message(&[&[1u8; 600], &[2u8; 600], b""]));
        stream.extend_from_slice(&message(&[b"good", b"one"]));
        // Dribble it in small writes so frames and headers are split.
        for chunk in stream.chunks(7) {
            pusher.write_all(chunk).await.unwrap();
        }
        let (mut oversized, mut frames) = (0, 0);
        let good = loop {
            match next(&mut x).await {
                XSubEvent::Skipped {
                    oversized: o,
                    too_many_frames: f,
                    ..
                } => {
                    oversized += o;
                    frames += f;
                }
                XSubEvent::Message(m) => break m,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(&good[..], [Bytes::from("good"), Bytes::from("one")]);
        assert_eq!((oversized, frames), (2, 1));
        assert_eq!(x.peer_count(), 1, "still connected");
    }
}
