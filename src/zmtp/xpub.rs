//! An XPUB socket written for proxies: per-subscriber bounded queues (a slow
//! subscriber loses its own messages, libzmq's HWM semantics, and blocks no
//! one), subscriber identities on every event, a synthetic unsubscribe when a
//! subscriber disconnects, and targeted sends to one subscriber.
//!
//! It speaks ZMTP 3.0 with the NULL mechanism, so libzmq SUB/XSUB sockets
//! (any 4.x) and the `zeromq` crate's SUB/XSUB connect to it unchanged. It
//! also answers ZMTP 3.1 PINGs, so libzmq peers with heartbeats enabled work.
//!
//! Subscriptions take effect when [`XPubServer::recv`] returns them, never
//! earlier, so a caller can send a subscriber what it must see first (a Last
//! Value Cache replay) before any later message reaches it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use super::conn::{self, Limits, Out, Shared, Up};
use crate::endpoint::{Attach, EndpointError, EndpointSpec};
use crate::pubsub::{Registry, SubEvent, SubscriptionError, Upstream};

/// A subscriber's id, unique within one server.
pub type PeerId = u64;

/// Tunables of an [`XPubServer`].
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct XPubOptions {
    /// Messages queued per subscriber before its new messages are dropped
    /// (libzmq's SNDHWM; its default is 1000).
    pub hwm: usize,
    /// Largest message (all frames together) accepted from a subscriber;
    /// larger ones end the connection. Subscriptions are small: this bounds
    /// what a misbehaving peer can make the server hold.
    pub max_frame: usize,
    /// Time allowed for a new connection's ZMTP handshake.
    pub handshake_timeout: Duration,
    /// Delay between reconnect attempts of a connecting server.
    pub reconnect: Duration,
}

impl Default for XPubOptions {
    fn default() -> Self {
        Self {
            hwm: 10_000,
            max_frame: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            reconnect: Duration::from_millis(200),
        }
    }
}

/// What happened upstream, as returned by [`XPubServer::recv`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum XPubEvent {
    /// A subscriber finished its handshake.
    Connected {
        /// The new subscriber.
        peer: PeerId,
        /// Its address.
        remote: SocketAddr,
    },
    /// A subscribe or unsubscribe, now in effect for `peer`.
    Subscription {
        /// Who sent it.
        peer: PeerId,
        /// The event.
        event: SubEvent,
    },
    /// An unsubscribe for a prefix this subscriber never subscribed.
    UnmatchedUnsubscribe {
        /// Who sent it.
        peer: PeerId,
        /// The prefix.
        topic: Bytes,
    },
    /// A message from a subscriber that is not a subscription.
    Malformed {
        /// Who sent it.
        peer: PeerId,
        /// Its frames.
        frames: Vec<Bytes>,
        /// Why it is not a subscription.
        error: SubscriptionError,
    },
    /// A subscriber went away; `subscriptions` are the prefixes it still
    /// held (one entry per subscribe, in byte order), now cancelled.
    Disconnected {
        /// The subscriber.
        peer: PeerId,
        /// What it was subscribed to.
        subscriptions: Vec<Bytes>,
        /// Why the connection ended.
        reason: String,
    },
}

/// The outcome of one [`XPubServer::publish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Subscribers whose queue took the message.
    pub queued: usize,
    /// Subscribers whose queue was full (message dropped for them).
    pub dropped: usize,
}

#[derive(Debug)]
struct Peer {
    tx: mpsc::Sender<Out>,
    /// Its prefixes, counted: matching costs a lookup per distinct prefix
    /// length, not a scan of every subscription.
    subs: Registry,
    remote: SocketAddr,
    dropping: u64,
}

/// The server side of XPUB. Owned by one task; `recv` is cancel-safe.
#[derive(Debug)]
pub struct XPubServer {
    endpoint: String,
    peers: HashMap<PeerId, Peer>,
    up: mpsc::Receiver<Up>,
    drops: Arc<AtomicU64>,
    _stop: DropGuard,
}

impl XPubServer {
    /// Binds (or, with a `>` endpoint, connects and keeps reconnecting).
    pub async fn attach(spec: &EndpointSpec, options: XPubOptions) -> Result<Self, EndpointError> {
        let cancel = CancellationToken::new();
        let (up_tx, up) = mpsc::channel(1024);
        let limits = Limits {
            hwm: options.hwm,
            max_frame: options.max_frame,
            max_frames: 16,
            handshake_timeout: options.handshake_timeout,
        };
        let endpoint = match spec.attach() {
            Attach::Bind => {
                let listener = bind(spec).await?;
                let local = listener.local_addr().map_err(|e| bind_error(spec, e))?;
                tokio::spawn(accept_loop(listener, limits, up_tx, cancel.clone()));
                format!("tcp://{local}")
            }
            Attach::Connect => {
                let target = tcp_target(spec)?;
                tokio::spawn(connect_loop(
                    target,
                    options.reconnect,
                    limits,
                    up_tx,
                    cancel.clone(),
                ));
                spec.endpoint().to_owned()
            }
        };
        Ok(Self {
            endpoint,
            peers: HashMap::new(),
            up,
            drops: Arc::new(AtomicU64::new(0)),
            _stop: cancel.drop_guard(),
        })
    }

    /// The bound endpoint with its real port (or the connect endpoint).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Number of connected subscribers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// Messages dropped so far because a subscriber's queue was full.
    pub fn dropped(&self) -> u64 {
        self.drops.load(Ordering::Relaxed)
    }

    /// Waits for the next upstream event. Cancel-safe.
    pub async fn recv(&mut self) -> XPubEvent {
        loop {
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

    fn apply(&mut self, up: Up) -> Option<XPubEvent> {
        match up {
            Up::Connected { peer, remote, tx } => {
                debug!(peer, %remote, "subscriber connected");
                let p = Peer {
                    tx,
                    subs: Registry::new(),
                    remote,
                    dropping: 0,
                };
                self.peers.insert(peer, p);
                Some(XPubEvent::Connected { peer, remote })
            }
            Up::Closed { peer, reason } => {
                let p = self.peers.remove(&peer)?;
                debug!(peer, remote = %p.remote, %reason, "subscriber gone");
                Some(XPubEvent::Disconnected {
                    peer,
                    subscriptions: p
                        .subs
                        .counts()
                        .flat_map(|(t, n)| std::iter::repeat_n(t.clone(), n as usize))
                        .collect(),
                    reason,
                })
            }
            Up::Message { peer, frames } => {
                let p = self.peers.get_mut(&peer)?;
                Some(match SubEvent::decode(&frames) {
                    Err(error) => XPubEvent::Malformed {
                        peer,
                        frames,
                        error,
                    },
                    Ok(SubEvent::Subscribe(t)) => {
                        p.subs.subscribe(t.clone());
                        XPubEvent::Subscription {
                            peer,
                            event: SubEvent::Subscribe(t),
                        }
                    }
                    Ok(SubEvent::Unsubscribe(t)) => match p.subs.unsubscribe(&t) {
                        Upstream::Unmatched => XPubEvent::UnmatchedUnsubscribe { peer, topic: t },
                        Upstream::Forward(_) | Upstream::Absorbed => XPubEvent::Subscription {
                            peer,
                            event: SubEvent::Unsubscribe(t),
                        },
                    },
                })
            }
        }
    }

    /// Queues `msg` for every subscriber whose subscriptions match its first
    /// frame. Never blocks: a full queue drops the message for that
    /// subscriber only.
    pub fn publish(&mut self, msg: &Shared) -> Delivery {
        let topic: &[u8] = msg.first().map(|b| &b[..]).unwrap_or(&[]);
        let mut d = Delivery::default();
        for (id, p) in &mut self.peers {
            if !p.subs.matches(topic) {
                continue;
            }
            if offer(*id, p, Out::One(msg.clone()), &self.drops) {
                d.queued += 1;
            } else {
                d.dropped += 1;
            }
        }
        d
    }

    /// Sends `msgs`, in order, to one subscriber only, ahead of anything
    /// published later. The batch is not subject to the queue limit (it is
    /// one queue entry). Returns false if the peer is gone or its queue is
    /// full.
    pub fn send_to(&mut self, peer: PeerId, msgs: Vec<Shared>) -> bool {
        match self.peers.get_mut(&peer) {
            Some(p) if !msgs.is_empty() => offer(peer, p, Out::Bulk(msgs), &self.drops),
            Some(_) => true,
            None => false,
        }
    }
}

fn offer(id: PeerId, p: &mut Peer, out: Out, drops: &AtomicU64) -> bool {
    match p.tx.try_send(out) {
        Ok(()) => {
            if p.dropping > 0 {
                info!(peer = id, remote = %p.remote, dropped = p.dropping, "slow subscriber caught up");
                p.dropping = 0;
            }
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            if p.dropping == 0 {
                warn!(peer = id, remote = %p.remote, "subscriber too slow: its queue is full, dropping its messages");
            }
            p.dropping += 1;
            drops.fetch_add(1, Ordering::Relaxed);
            false
        }
        // The connection is closing; its Disconnected event is on the way.
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

fn bind_error(spec: &EndpointSpec, e: std::io::Error) -> EndpointError {
    EndpointError::Bind {
        endpoint: spec.endpoint().to_owned(),
        source: zeromq::ZmqError::Network(e),
    }
}

fn tcp_target(spec: &EndpointSpec) -> Result<String, EndpointError> {
    // `host:port`, `[v6]:port` and `name:port` are what tokio resolves.
    spec.endpoint()
        .strip_prefix("tcp://")
        .map(str::to_owned)
        .ok_or_else(|| EndpointError::UnsupportedTransport(spec.endpoint().to_owned()))
}

async fn bind(spec: &EndpointSpec) -> Result<TcpListener, EndpointError> {
    let target = tcp_target(spec)?;
    TcpListener::bind(&target)
        .await
        .map_err(|e| bind_error(spec, e))
}

static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                let peer = NEXT_PEER.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(conn::serve(
                    stream,
                    remote,
                    peer,
                    limits,
                    up.clone(),
                    cancel.clone(),
                ));
            }
            Err(e) => {
                warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connect_loop(
    target: String,
    every: Duration,
    limits: Limits,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) {
    while !cancel.is_cancelled() {
        match TcpStream::connect(&target).await {
            Ok(stream) => {
                let remote = stream
                    .peer_addr()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                let peer = NEXT_PEER.fetch_add(1, Ordering::Relaxed);
                conn::serve(stream, remote, peer, limits, up.clone(), cancel.clone()).await;
            }
            Err(e) => debug!(%target, error = %e, "connect failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u8, topic: &str) -> Vec<Bytes> {
        let mut v = vec![cmd];
        v.extend_from_slice(topic.as_bytes());
        vec![Bytes::from(v)]
    }

    /// Subscriptions of one subscriber are a multiset: a duplicate needs
    /// its own unsubscribe, and a disconnect cancels every one still held.
    #[tokio::test]
    async fn subscriptions_are_counted_per_subscriber() {
        let mut x = XPubServer::attach(&EndpointSpec::loopback(), XPubOptions::default())
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let remote = ([127, 0, 0, 1], 1).into();
        x.apply(Up::Connected {
            peer: 1,
            remote,
            tx,
        });
        for f in [frame(1, "A"), frame(1, "A"), frame(1, "B"), frame(0, "A")] {
            x.apply(Up::Message { peer: 1, frames: f });
        }
        let a: Shared = vec![Bytes::from_static(b"A-1")].into();
        let c: Shared = vec![Bytes::from_static(b"C-1")].into();
        assert_eq!(
            x.publish(&a).queued,
            1,
            "one of the two A subscriptions is left"
        );
        assert_eq!(x.publish(&c).queued, 0);
        assert!(matches!(rx.try_recv(), Ok(Out::One(m)) if m == a));
        assert_eq!(
            x.apply(Up::Message {
                peer: 1,
                frames: frame(0, "C")
            }),
            Some(XPubEvent::UnmatchedUnsubscribe {
                peer: 1,
                topic: Bytes::from("C")
            })
        );
        let gone = x.apply(Up::Closed {
            peer: 1,
            reason: "bye".into(),
        });
        let Some(XPubEvent::Disconnected { subscriptions, .. }) = gone else {
            panic!("{gone:?}");
        };
        assert_eq!(subscriptions, [Bytes::from("A"), Bytes::from("B")]);
    }
}
