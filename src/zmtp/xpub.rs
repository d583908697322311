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
//!
//! # Limits
//!
//! Everything a subscriber can make the server hold is bounded by an
//! [`XPubOptions`] field; each refusal is reported as an [`XPubEvent`] and
//! logged at most once a second per cause:
//!
//! | limit | default | what the peer gets |
//! |---|---|---|
//! | `max_frame` (one upstream message) | 64 KiB | disconnected (`CloseCause::TooLarge`) |
//! | `max_connections` (live, per listener) | 1024 | accepted and closed at once |
//! | `max_subscriptions_per_peer` (distinct prefixes) | 10,000 | that subscribe is ignored |
//! | `max_subscriptions` (all peers' distinct prefixes) | 1,000,000 | that subscribe is ignored |
//! | `max_subscription_bytes` (all peers' prefixes, 64 B overhead each) | 64 MiB | that subscribe is ignored |
//! | `hwm` (queued messages, replays included) | 10,000 | new messages dropped for it; a replay that does not fit is dropped whole |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, warn};

#[cfg(test)]
use super::conn::PeerSocketType;
use super::conn::{CloseCause, Limits, Out, Role, Shared, Up};
use super::net;
use crate::endpoint::{EndpointError, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::subscription::{Registry, SubEvent, SubscriptionError, Upstream};

/// A subscriber's id, unique within one server.
pub type PeerId = u64;

/// What one subscription costs in [`XPubOptions::max_subscription_bytes`]
/// beyond its prefix (map entry, counters).
pub const SUBSCRIPTION_OVERHEAD: usize = 64;

/// Tunables of an [`XPubServer`]. Every field bounds something a remote
/// subscriber could otherwise grow (see the module docs' table).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct XPubOptions {
    /// Messages queued per subscriber before its new messages are dropped
    /// (libzmq's SNDHWM; its default is 1000). Targeted sends
    /// ([`XPubServer::send_to`], Last Value Cache replays) count against it
    /// message by message.
    pub hwm: usize,
    /// Largest message (all frames together) accepted from a subscriber;
    /// larger ones end the connection. Subscriptions are small: this bounds
    /// what a misbehaving peer can make the server hold.
    pub max_frame: usize,
    /// Time allowed for a new connection's ZMTP handshake.
    pub handshake_timeout: Duration,
    /// Delay between reconnect attempts of a connecting server (doubled
    /// after each failed attempt, up to `reconnect_max`).
    pub reconnect: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// Live connections of a binding server; one more is accepted and
    /// closed at once ([`XPubEvent::ConnectionRefused`]).
    pub max_connections: usize,
    /// Distinct prefixes one subscriber may hold; a subscribe to one more is
    /// ignored ([`XPubEvent::SubscriptionRefused`]). A duplicate subscribe
    /// of a prefix it holds only bumps a counter and is always accepted.
    pub max_subscriptions_per_peer: usize,
    /// Distinct (subscriber, prefix) pairs held across all subscribers.
    pub max_subscriptions: usize,
    /// Bytes of prefixes held across all subscribers, each charged
    /// [`SUBSCRIPTION_OVERHEAD`] more.
    pub max_subscription_bytes: usize,
}

impl Default for XPubOptions {
    fn default() -> Self {
        Self {
            hwm: 10_000,
            max_frame: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            reconnect: Duration::from_millis(200),
            reconnect_max: Duration::from_secs(5),
            max_connections: 1024,
            max_subscriptions_per_peer: 10_000,
            max_subscriptions: 1_000_000,
            max_subscription_bytes: 64 << 20,
        }
    }
}

/// Which subscription limit refused a subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionLimit {
    /// [`XPubOptions::max_subscriptions_per_peer`].
    PerPeer,
    /// [`XPubOptions::max_subscriptions`].
    Total,
    /// [`XPubOptions::max_subscription_bytes`].
    Bytes,
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
    /// A subscribe over a limit: not registered (the subscriber gets no
    /// messages for it) and not to be forwarded.
    SubscriptionRefused {
        /// Who sent it.
        peer: PeerId,
        /// The prefix.
        topic: Bytes,
        /// The limit it hit.
        limit: SubscriptionLimit,
    },
    /// An unsubscribe for a prefix this subscriber never subscribed (or
    /// whose subscribe was refused).
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
        /// The same, as a kind (e.g. [`CloseCause::TooLarge`]).
        cause: CloseCause,
    },
    /// A connection over [`XPubOptions::max_connections`] was accepted and
    /// closed at once.
    ConnectionRefused {
        /// Its address.
        remote: SocketAddr,
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
    /// Its share of `max_subscription_bytes`.
    bytes: usize,
    remote: SocketAddr,
    dropping: u64,
}

/// Rate limiters of the log lines a subscriber can trigger.
#[derive(Debug, Default)]
struct Logs {
    slow: LogLimiter,
    refused: LogLimiter,
    replay: LogLimiter,
    closed: LogLimiter,
}

/// The server side of XPUB. Owned by one task; `recv` is cancel-safe.
#[derive(Debug)]
pub struct XPubServer {
    endpoint: String,
    options: XPubOptions,
    peers: HashMap<PeerId, Peer>,
    up: mpsc::Receiver<Up>,
    /// The batch being handed out by `recv`.
    batch: (PeerId, std::vec::IntoIter<Shared>),
    /// Distinct (peer, prefix) pairs and their bytes, over all peers.
    entries: usize,
    entry_bytes: usize,
    drops: u64,
    logs: Logs,
    _stop: DropGuard,
}

impl XPubServer {
    /// Binds (or, with a `>` endpoint, connects and keeps reconnecting).
    pub async fn attach(spec: &EndpointSpec, options: XPubOptions) -> Result<Self, EndpointError> {
        let cancel = CancellationToken::new();
        // Batches, not messages: a few keep the connections busy, and they bound
        // what a subscription flood holds in flight.
        let (up_tx, up) = mpsc::channel(16);
        let limits = Limits {
            role: Role::XPub,
            hwm: options.hwm,
            max_message: options.max_frame,
            max_frames: 16,
            handshake_timeout: options.handshake_timeout,
            read_chunk: 8 * 1024,
            accept_push: false,
            skip_oversized: false,
        };
        let reach = net::Reach {
            max_connections: options.max_connections,
            reconnect: options.reconnect,
            reconnect_max: options.reconnect_max,
        };
        let endpoint = net::attach(spec, limits, reach, up_tx, &cancel).await?;
        Ok(Self {
            endpoint,
            options,
            peers: HashMap::new(),
            up,
            batch: (0, Vec::new().into_iter()),
            entries: 0,
            entry_bytes: 0,
            drops: 0,
            logs: Logs::default(),
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

    /// Distinct (subscriber, prefix) pairs held now, over all subscribers.
    pub fn subscription_count(&self) -> usize {
        self.entries
    }

    /// Bytes charged against [`XPubOptions::max_subscription_bytes`] now.
    pub fn subscription_bytes(&self) -> usize {
        self.entry_bytes
    }

    /// Messages dropped so far because a subscriber's queue was full
    /// (replays included).
    pub fn dropped(&self) -> u64 {
        self.drops
    }

    /// Waits for the next upstream event. Cancel-safe.
    pub async fn recv(&mut self) -> XPubEvent {
        loop {
            if let Some(msg) = self.batch.1.next() {
                if let Some(ev) = self.message(self.batch.0, msg) {
                    return ev;
                }
                continue;
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

    fn apply(&mut self, up: Up) -> Option<XPubEvent> {
        match up {
            Up::Connected {
                peer, remote, tx, ..
            } => {
                debug!(peer, %remote, "subscriber connected");
                let p = Peer {
                    tx,
                    subs: Registry::new(),
                    bytes: 0,
                    remote,
                    dropping: 0,
                };
                self.peers.insert(peer, p);
                Some(XPubEvent::Connected { peer, remote })
            }
            Up::Closed {
                peer,
                reason,
                cause,
            } => {
                let p = self.peers.remove(&peer)?;
                self.entries -= p.subs.len();
                self.entry_bytes -= p.bytes;
                if cause == CloseCause::TooLarge {
                    if let Some(suppressed) = self.logs.closed.check(Instant::now()) {
                        warn!(peer, remote = %p.remote, %reason, suppressed, "subscriber disconnected: message over the size limit");
                    }
                } else {
                    debug!(peer, remote = %p.remote, %reason, "subscriber gone");
                }
                Some(XPubEvent::Disconnected {
                    peer,
                    subscriptions: p
                        .subs
                        .counts()
                        .flat_map(|(t, n)| std::iter::repeat_n(t.clone(), n as usize))
                        .collect(),
                    reason,
                    cause,
                })
            }
            Up::Batch { peer, msgs, .. } => {
                self.batch = (peer, msgs.into_iter());
                None
            }
            Up::Refused { remote } => Some(XPubEvent::ConnectionRefused { remote }),
            Up::Rejected { remote, reason, .. } => {
                debug!(%remote, %reason, "subscriber refused at the handshake");
                None
            }
        }
    }

    /// Applies one message from subscriber `peer`.
    fn message(&mut self, peer: PeerId, msg: Shared) -> Option<XPubEvent> {
        let p = self.peers.get_mut(&peer)?;
        Some(match SubEvent::decode(&msg) {
            Err(error) => XPubEvent::Malformed {
                peer,
                frames: msg.to_vec(),
                error,
            },
            Ok(SubEvent::Subscribe(t)) => {
                if p.subs.count(&t) == 0 {
                    let cost = t.len() + SUBSCRIPTION_OVERHEAD;
                    let o = &self.options;
                    let refused = if p.subs.len() >= o.max_subscriptions_per_peer {
                        Some(SubscriptionLimit::PerPeer)
                    } else if self.entries >= o.max_subscriptions {
                        Some(SubscriptionLimit::Total)
                    } else if self.entry_bytes + cost > o.max_subscription_bytes {
                        Some(SubscriptionLimit::Bytes)
                    } else {
                        None
                    };
                    if let Some(limit) = refused {
                        if let Some(suppressed) = self.logs.refused.check(Instant::now()) {
                            warn!(peer, remote = %p.remote, ?limit, suppressed, "subscription limit reached: ignoring subscribe");
                        }
                        return Some(XPubEvent::SubscriptionRefused {
                            peer,
                            topic: t,
                            limit,
                        });
                    }
                    self.entries += 1;
                    self.entry_bytes += cost;
                    p.bytes += cost;
                    // Its own allocation: a slice would pin the read buffer.
                    p.subs.subscribe(Bytes::copy_from_slice(&t));
                } else {
                    p.subs.subscribe(t.clone());
                }
                XPubEvent::Subscription {
                    peer,
                    event: SubEvent::Subscribe(t),
                }
            }
            Ok(SubEvent::Unsubscribe(t)) => match p.subs.unsubscribe(&t) {
                Upstream::Unmatched => XPubEvent::UnmatchedUnsubscribe { peer, topic: t },
                up @ (Upstream::Forward(_) | Upstream::Absorbed) => {
                    if let Upstream::Forward(_) = up {
                        let cost = t.len() + SUBSCRIPTION_OVERHEAD;
                        self.entries -= 1;
                        self.entry_bytes -= cost;
                        p.bytes -= cost;
                    }
                    XPubEvent::Subscription {
                        peer,
                        event: SubEvent::Unsubscribe(t),
                    }
                }
            },
        })
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
            if offer(*id, p, Out::One(msg.clone()), &mut self.logs.slow) {
                d.queued += 1;
            } else {
                d.dropped += 1;
            }
        }
        self.drops += d.dropped as u64;
        d
    }

    /// Sends `msgs`, in order, to one subscriber only, ahead of anything
    /// published later. They count against the subscriber's queue limit
    /// ([`XPubOptions::hwm`]) one by one: if they do not all fit in the room
    /// left, none is sent (all are counted in [`dropped`](Self::dropped)),
    /// so a subscriber that repeats subscribes and never reads holds at most
    /// `hwm` messages. Returns false if the peer is gone or the batch was
    /// dropped.
    pub fn send_to(&mut self, peer: PeerId, msgs: Vec<Shared>) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if msgs.is_empty() {
            return true;
        }
        match p.tx.try_reserve_many(msgs.len()) {
            Ok(permits) => {
                for (permit, m) in permits.zip(msgs) {
                    permit.send(Out::One(m));
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(())) => {
                self.drops += msgs.len() as u64;
                if let Some(suppressed) = self.logs.replay.check(Instant::now()) {
                    warn!(peer, remote = %p.remote, messages = msgs.len(), hwm = self.options.hwm, suppressed, "targeted send (replay) does not fit in the subscriber's queue: dropped");
                }
                false
            }
            // The connection is closing; its Disconnected event is on the way.
            Err(mpsc::error::TrySendError::Closed(())) => false,
        }
    }
}

fn offer(id: PeerId, p: &mut Peer, out: Out, log: &mut LogLimiter) -> bool {
    match p.tx.try_send(out) {
        Ok(()) => {
            if p.dropping > 0 {
                debug!(peer = id, remote = %p.remote, dropped = p.dropping, "slow subscriber caught up");
                p.dropping = 0;
            }
            true
        }
        Err(mpsc::error::TrySendError::Full(_)) => {
            if p.dropping == 0 {
                if let Some(suppressed) = log.check(Instant::now()) {
                    warn!(peer = id, remote = %p.remote, suppressed, "subscriber too slow: its queue is full, dropping its messages");
                }
            }
            p.dropping += 1;
            false
        }
        // The connection is closing; its Disconnected event is on the way.
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cmd: u8, topic: &str) -> Shared {
        let mut v = vec![cmd];
        v.extend_from_slice(topic.as_bytes());
        vec![Bytes::from(v)].into()
    }

    async fn server(options: XPubOptions) -> XPubServer {
        XPubServer::attach(&EndpointSpec::loopback(), options)
            .await
            .unwrap()
    }

    fn connect(x: &mut XPubServer, peer: PeerId, hwm: usize) -> mpsc::Receiver<Out> {
        let (tx, rx) = mpsc::channel(hwm);
        let remote = ([127, 0, 0, 1], 1).into();
        x.apply(Up::Connected {
            peer,
            remote,
            kind: PeerSocketType::Sub,
            tx,
        });
        rx
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
            kind: PeerSocketType::Sub,
            tx,
        });
        for f in [frame(1, "A"), frame(1, "A"), frame(1, "B"), frame(0, "A")] {
            x.message(1, f);
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
            x.message(1, frame(0, "C")),
            Some(XPubEvent::UnmatchedUnsubscribe {
                peer: 1,
                topic: Bytes::from("C")
            })
        );
        let gone = x.apply(Up::Closed {
            peer: 1,
            reason: "bye".into(),
            cause: CloseCause::PeerClosed,
        });
        let Some(XPubEvent::Disconnected { subscriptions, .. }) = gone else {
            panic!("{gone:?}");
        };
        assert_eq!(subscriptions, [Bytes::from("A"), Bytes::from("B")]);
    }

    /// Distinct prefixes are limited per subscriber and in total (count and
    /// bytes); a refused subscribe is not registered, duplicates are free,
    /// and a disconnect gives the budget back.
    #[tokio::test]
    async fn subscription_limits_refuse_and_release() {
        let o = XPubOptions {
            max_subscriptions_per_peer: 2,
            max_subscriptions: 3,
            max_subscription_bytes: 4 * (SUBSCRIPTION_OVERHEAD + 1),
            ..XPubOptions::default()
        };
        let mut x = server(o).await;
        let _a = connect(&mut x, 1, 16);
        let _b = connect(&mut x, 2, 16);
        let refused = |ev: Option<XPubEvent>| match ev {
            Some(XPubEvent::SubscriptionRefused { limit, .. }) => Some(limit),
            _ => None,
        };
        assert_eq!(refused(x.message(1, frame(1, "A"))), None);
        assert_eq!(refused(x.message(1, frame(1, "B"))), None);
        assert_eq!(
            refused(x.message(1, frame(1, "A"))),
            None,
            "a duplicate is free"
        );
        assert_eq!(
            refused(x.message(1, frame(1, "C"))),
            Some(SubscriptionLimit::PerPeer)
        );
        assert_eq!(refused(x.message(2, frame(1, "A"))), None);
        assert_eq!(
            refused(x.message(2, frame(1, "B"))),
            Some(SubscriptionLimit::Total)
        );
        assert_eq!(x.subscription_count(), 3);
        // The refused prefix was not registered.
        let c: Shared = vec![Bytes::from_static(b"C-1")].into();
        assert_eq!(x.publish(&c).queued, 0);
        assert!(matches!(
            x.message(1, frame(0, "C")),
            Some(XPubEvent::UnmatchedUnsubscribe { .. })
        ));
        // Unsubscribing one of two duplicates keeps the entry.
        x.message(1, frame(0, "A"));
        assert_eq!(x.subscription_count(), 3);
        x.apply(Up::Closed {
            peer: 1,
            reason: "bye".into(),
            cause: CloseCause::PeerClosed,
        });
        assert_eq!(x.subscription_count(), 1);
        assert_eq!(x.subscription_bytes(), SUBSCRIPTION_OVERHEAD + 1);
        // Bytes: a long prefix does not fit in what is left.
        let long = "L".repeat(3 * SUBSCRIPTION_OVERHEAD);
        assert_eq!(
            refused(x.message(2, frame(1, &long))),
            Some(SubscriptionLimit::Bytes)
        );
        assert_eq!(refused(x.message(2, frame(1, "B"))), None);
    }

    /// A targeted send counts against the queue limit message by message:
    /// one that does not fit in the room left is dropped whole.
    #[tokio::test]
    async fn targeted_sends_count_against_the_queue_limit() {
        let mut x = server(XPubOptions::default()).await;
        let mut rx = connect(&mut x, 1, 4);
        let m: Shared = vec![Bytes::from_static(b"v")].into();
        assert!(x.send_to(1, vec![m.clone(); 3]));
        assert!(!x.send_to(1, vec![m.clone(); 2]), "2 do not fit in 1");
        assert_eq!(x.dropped(), 2);
        assert!(x.send_to(1, vec![m.clone()]));
        assert!(!x.send_to(1, vec![m.clone(); 5]), "more than the hwm");
        let mut n = 0;
        while let Ok(Out::One(_)) = rx.try_recv() {
            n += 1;
        }
        assert_eq!(n, 4);
        assert!(!x.send_to(9, vec![m]), "no such peer");
    }
}
