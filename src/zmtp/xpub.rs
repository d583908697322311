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
//! | `hwm` (queued messages, replays included) | 10,000 | depends on [`SlowPolicy`]: new messages dropped for it (`Drop`), publishing paused (`Block`), or disconnected (`Disconnect`) |
//!
//! # Slow subscribers
//!
//! What happens when a message does not fit in a subscriber's queue is
//! [`XPubOptions::slow`]:
//!
//! - [`SlowPolicy::Drop`] (the default, libzmq's XPUB): the message is
//!   dropped for that subscriber only; nobody waits, and the slow one has
//!   gaps in its stream.
//! - [`SlowPolicy::Block`] (libzmq's `ZMQ_XPUB_NODROP`): the message is
//!   *parked* for that subscriber and [`XPubServer::is_blocked`] turns true;
//!   the caller stops publishing (a proxy stops reading its publishers, so
//!   they feel backpressure) until [`XPubServer::recv`] has moved every
//!   parked message into its queue and returned [`XPubEvent::Unblocked`].
//!   Nothing is lost and every subscriber gets every message in order; one
//!   subscriber that stops reading stops the publishers.
//! - [`SlowPolicy::Disconnect`] (the Guide's "punish slow subscribers with
//!   disconnection", ch. 5): like `Block`, but a subscriber that has stayed
//!   behind for longer than `after` (its queue overflowed and has not since
//!   drained to half) is disconnected: its queued and parked messages are
//!   discarded and the others resume. Its stream has no gap, it ends; a
//!   libzmq SUB reconnects and starts afresh. With `after` zero it is
//!   disconnected the moment a message does not fit, and nobody ever waits.

use std::collections::{HashMap, VecDeque};
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

/// What the server does with a message that does not fit in a subscriber's
/// queue (its [`XPubOptions::hwm`]); see the module docs, "Slow subscribers".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowPolicy {
    /// Drop it for that subscriber only (libzmq's default): nobody waits,
    /// the slow subscriber has gaps.
    #[default]
    Drop,
    /// Keep it and pause publishing until the subscriber has room (libzmq's
    /// `ZMQ_XPUB_NODROP`): lossless, in order; a stuck subscriber stops the
    /// publishers.
    Block,
    /// Like [`Block`](Self::Block), but a subscriber that stays behind for
    /// longer than `after` (its queue overflowed and has not since drained
    /// to half) is disconnected, its undelivered messages discarded.
    Disconnect {
        /// How long one subscriber may hold publishing back.
        after: Duration,
    },
}

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
    /// What a full subscriber queue does to a new message (default
    /// [`SlowPolicy::Drop`]).
    pub slow: SlowPolicy,
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
            slow: SlowPolicy::Drop,
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
    /// ([`SlowPolicy::Block`] and [`SlowPolicy::Disconnect`].) Every parked
    /// message is in its subscriber's queue (or its subscriber is gone):
    /// publishing may go on.
    Unblocked,
}

/// The outcome of one [`XPubServer::publish`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    /// Subscribers whose queue took the message.
    pub queued: usize,
    /// Subscribers whose queue was full and the message dropped for them
    /// ([`SlowPolicy::Drop`]).
    pub dropped: usize,
    /// Subscribers whose queue was full and the message parked for them
    /// until there is room ([`SlowPolicy::Block`], [`SlowPolicy::Disconnect`]).
    pub parked: usize,
    /// Subscribers disconnected by this message for staying behind
    /// ([`SlowPolicy::Disconnect`]).
    pub disconnected: usize,
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
    /// Ends its connection ([`SlowPolicy::Disconnect`]).
    kill: CancellationToken,
    /// Messages parked for it.
    parked: usize,
    /// Since when it has been behind: its queue overflowed and has not
    /// drained to half since.
    behind_since: Option<Instant>,
    /// Disconnected for being slow; its `Closed` is on the way.
    evicted: bool,
}

/// Rate limiters of the log lines a subscriber can trigger.
#[derive(Debug, Default)]
struct Logs {
    slow: LogLimiter,
    evicted: LogLimiter,
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
    /// Messages waiting for room in a subscriber's queue, in order.
    parked: VecDeque<(PeerId, Out)>,
    evictions: u64,
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
            direct: None,
            identity: Bytes::new(),
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
            parked: VecDeque::new(),
            evictions: 0,
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

    /// Subscribers disconnected so far for staying behind
    /// ([`SlowPolicy::Disconnect`]).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// True while messages are parked for a full subscriber
    /// ([`SlowPolicy::Block`], [`SlowPolicy::Disconnect`]): publish
    /// nothing until [`recv`](Self::recv) returns [`XPubEvent::Unblocked`].
    pub fn is_blocked(&self) -> bool {
        !self.parked.is_empty()
    }

    /// Waits for the next upstream event. While [blocked](Self::is_blocked)
    /// it also moves parked messages into their subscribers' queues as room
    /// appears (and disconnects a subscriber that stays behind too long,
    /// under [`SlowPolicy::Disconnect`]), returning
    /// [`XPubEvent::Unblocked`] once none is left. Cancel-safe.
    pub async fn recv(&mut self) -> XPubEvent {
        loop {
            if let Some(msg) = self.batch.1.next() {
                if let Some(ev) = self.message(self.batch.0, msg) {
                    return ev;
                }
                continue;
            }
            let up = if self.parked.is_empty() {
                self.up.recv().await
            } else {
                match self.unpark_step().await {
                    Some(up) => up,
                    None if self.parked.is_empty() => return XPubEvent::Unblocked,
                    None => continue,
                }
            };
            // The accept (or connect) task holds a sender for as long as this
            // server lives, so the channel cannot close under us.
            let Some(up) = up else {
                return std::future::pending().await;
            };
            if let Some(ev) = self.apply(up) {
                return ev;
            }
        }
    }

    /// Moves the oldest parked message into its subscriber's queue once it
    /// has room, unless an upstream event comes first (returned). Drops
    /// what is parked for a subscriber that is gone or evicted, and evicts
    /// one that stays behind past its [`SlowPolicy::Disconnect`] limit.
    /// Cancel-safe: a message leaves `parked` only when it is queued.
    async fn unpark_step(&mut self) -> Option<Option<Up>> {
        let &(id, _) = self.parked.front()?;
        let live = self.peers.get(&id).filter(|p| !p.evicted);
        let Some(p) = live else {
            self.parked.pop_front();
            if let Some(p) = self.peers.get_mut(&id) {
                p.parked -= 1;
            }
            return None;
        };
        let tx = p.tx.clone();
        let deadline = match self.options.slow {
            SlowPolicy::Disconnect { after } => p.behind_since.map(|t| t + after),
            _ => None,
        };
        let limit = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            up = self.up.recv() => Some(up),
            permit = tx.reserve() => {
                let (_, out) = self.parked.pop_front().expect("front checked above");
                let p = self.peers.get_mut(&id).expect("checked above, no await since");
                p.parked -= 1;
                if let Ok(permit) = permit {
                    permit.send(out);
                }
                None
            }
            () = limit => {
                self.evict(id, Instant::now());
                None
            }
        }
    }

    /// Disconnects subscriber `id` for staying behind: its connection ends
    /// at once (its queue and parked messages are discarded); its
    /// `Disconnected` event follows.
    fn evict(&mut self, id: PeerId, now: Instant) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.evicted {
            return;
        }
        p.evicted = true;
        p.kill.cancel();
        self.evictions += 1;
        if let Some(suppressed) = self.logs.evicted.check(now) {
            warn!(peer = id, remote = %p.remote, hwm = self.options.hwm, suppressed, "subscriber too slow: disconnected (its queue stayed full)");
        }
    }

    fn apply(&mut self, up: Up) -> Option<XPubEvent> {
        match up {
            Up::Connected {
                peer,
                remote,
                tx,
                kill,
                ..
            } => {
                debug!(peer, %remote, "subscriber connected");
                let p = Peer {
                    tx,
                    subs: Registry::new(),
                    bytes: 0,
                    remote,
                    dropping: 0,
                    kill,
                    parked: 0,
                    behind_since: None,
                    evicted: false,
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
    /// frame. Never waits; a full queue is handled as [`XPubOptions::slow`]
    /// says: the message dropped for that subscriber only, or parked for it
    /// (then [`is_blocked`](Self::is_blocked) is true: publish nothing more
    /// until [`recv`](Self::recv) returns [`XPubEvent::Unblocked`]), or the
    /// subscriber disconnected.
    pub fn publish(&mut self, msg: &Shared) -> Delivery {
        let topic: &[u8] = msg.first().map(|b| &b[..]).unwrap_or(&[]);
        let mut d = Delivery::default();
        if self.options.slow == SlowPolicy::Drop {
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
            return d;
        }
        let mut evict = Vec::new();
        for (id, p) in &mut self.peers {
            if p.evicted || !p.subs.matches(topic) {
                continue;
            }
            // Caught up: at least half its queue free again.
            if p.behind_since.is_some() && p.tx.capacity() * 2 >= self.options.hwm {
                p.behind_since = None;
            }
            // Behind what is parked for it already (a replay), in order.
            let sent = if p.parked > 0 {
                Err(mpsc::error::TrySendError::Full(Out::One(msg.clone())))
            } else {
                p.tx.try_send(Out::One(msg.clone()))
            };
            match sent {
                Ok(()) => d.queued += 1,
                Err(mpsc::error::TrySendError::Full(out)) => {
                    let now = Instant::now();
                    let since = *p.behind_since.get_or_insert(now);
                    if let SlowPolicy::Disconnect { after } = self.options.slow {
                        if now.duration_since(since) >= after {
                            evict.push(*id);
                            continue;
                        }
                    }
                    p.parked += 1;
                    self.parked.push_back((*id, out));
                    d.parked += 1;
                }
                // The connection is closing; its Disconnected event is on the way.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if !evict.is_empty() {
            let now = Instant::now();
            d.disconnected = evict.len();
            for id in evict {
                self.evict(id, now);
            }
        }
        d
    }

    /// Sends `msgs`, in order, to one subscriber only, ahead of anything
    /// published later. They count against the subscriber's queue limit
    /// ([`XPubOptions::hwm`]) one by one: if they do not all fit in the room
    /// left, none is sent (all are counted in [`dropped`](Self::dropped)),
    /// so a subscriber that repeats subscribes and never reads holds at most
    /// `hwm` messages. Returns false if the peer is gone or the batch was
    /// dropped.
    ///
    /// Under [`SlowPolicy::Block`] and [`SlowPolicy::Disconnect`], what does
    /// not fit is parked behind anything already parked for the subscriber
    /// (nothing is lost, order is kept), as long as its parked messages
    /// stay within `hwm`; a replay beyond that is dropped whole.
    pub fn send_to(&mut self, peer: PeerId, msgs: Vec<Shared>) -> bool {
        let Some(p) = self.peers.get_mut(&peer) else {
            return false;
        };
        if msgs.is_empty() {
            return true;
        }
        if p.evicted {
            return false;
        }
        if self.options.slow != SlowPolicy::Drop {
            let room = if p.parked == 0 { p.tx.capacity() } else { 0 };
            if p.parked + msgs.len().saturating_sub(room) <= self.options.hwm {
                let mut msgs = msgs.into_iter();
                for m in msgs.by_ref().take(room) {
                    // Room was counted above, with no await since.
                    let _ = p.tx.try_send(Out::One(m));
                }
                for m in msgs {
                    p.parked += 1;
                    p.behind_since.get_or_insert_with(Instant::now);
                    self.parked.push_back((peer, Out::One(m)));
                }
                return true;
            }
        }
        let reserved = if self.options.slow == SlowPolicy::Drop {
            p.tx.try_reserve_many(msgs.len())
        } else {
            // Over the parking budget: dropped whole (never ahead of what is
            // parked).
            Err(mpsc::error::TrySendError::Full(()))
        };
        match reserved {
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
        connect_killable(x, peer, hwm).0
    }

    fn connect_killable(
        x: &mut XPubServer,
        peer: PeerId,
        hwm: usize,
    ) -> (mpsc::Receiver<Out>, CancellationToken) {
        let (tx, rx) = mpsc::channel(hwm);
        let remote = ([127, 0, 0, 1], 1).into();
        let kill = CancellationToken::new();
        x.apply(Up::Connected {
            identity: Bytes::new(),
            peer,
            remote,
            kind: PeerSocketType::Sub,
            tx,
            kill: kill.clone(),
        });
        (rx, kill)
    }

    fn msg(body: &'static str) -> Shared {
        vec![Bytes::from_static(body.as_bytes())].into()
    }

    fn drain(rx: &mut mpsc::Receiver<Out>) -> Vec<Shared> {
        let mut got = Vec::new();
        while let Ok(Out::One(m)) = rx.try_recv() {
            got.push(m);
        }
        got
    }

    fn slow_server_options(slow: SlowPolicy) -> XPubOptions {
        XPubOptions {
            hwm: 2,
            slow,
            ..XPubOptions::default()
        }
    }

    /// Block: a message that does not fit is parked (nothing dropped, the
    /// others still get it at once); `recv` queues it when room appears and
    /// then reports `Unblocked`; the slow subscriber gets everything in
    /// order.
    #[tokio::test]
    async fn block_parks_what_does_not_fit_and_unblocks_in_order() {
        let mut x = server(slow_server_options(SlowPolicy::Block)).await;
        let mut slow = connect(&mut x, 1, 2);
        let mut fast = connect(&mut x, 2, 16);
        x.message(1, frame(1, ""));
        x.message(2, frame(1, ""));
        let (a, b, c) = (msg("a"), msg("b"), msg("c"));
        assert_eq!(x.publish(&a).queued, 2);
        assert_eq!(x.publish(&b).queued, 2);
        let d = x.publish(&c);
        assert_eq!((d.queued, d.parked, d.dropped), (1, 1, 0));
        assert!(x.is_blocked());
        assert_eq!(x.dropped(), 0);
        let early = tokio::time::timeout(Duration::from_millis(50), x.recv()).await;
        assert!(early.is_err(), "no room yet: still blocked, got {early:?}");
        assert!(matches!(slow.try_recv(), Ok(Out::One(m)) if m == a));
        let ev = tokio::time::timeout(Duration::from_secs(5), x.recv()).await;
        assert_eq!(ev.unwrap(), XPubEvent::Unblocked);
        assert!(!x.is_blocked());
        assert_eq!(drain(&mut slow), [b, c.clone()]);
        assert_eq!(drain(&mut fast).len(), 3);
    }

    /// Disconnect: a subscriber that stays behind for `after` is evicted
    /// (its connection killed, what is parked for it discarded) and
    /// publishing resumes; with `after` zero it is evicted at once and
    /// nothing is ever parked.
    #[tokio::test(start_paused = true)]
    async fn disconnect_evicts_a_subscriber_that_stays_behind() {
        let after = Duration::from_secs(1);
        let mut x = server(slow_server_options(SlowPolicy::Disconnect { after })).await;
        let (_slow, kill) = connect_killable(&mut x, 1, 2);
        x.message(1, frame(1, ""));
        for m in ["a", "b", "c"] {
            x.publish(&msg(m));
        }
        assert!(x.is_blocked());
        let started = tokio::time::Instant::now();
        let ev = tokio::time::timeout(Duration::from_secs(5), x.recv()).await;
        assert_eq!(ev.unwrap(), XPubEvent::Unblocked);
        assert!(started.elapsed() >= after, "held back for `after`");
        assert!(kill.is_cancelled(), "its connection is ended");
        assert_eq!(x.evictions(), 1);
        let d = x.publish(&msg("d"));
        assert_eq!(
            (d.queued, d.parked),
            (0, 0),
            "an evicted subscriber gets nothing"
        );

        // One that overflowed and caught up starts afresh: a later
        // overflow parks again rather than evicting at once.
        let mut x = server(slow_server_options(SlowPolicy::Disconnect { after })).await;
        let (mut rx, kill) = connect_killable(&mut x, 1, 2);
        x.message(1, frame(1, ""));
        for m in ["a", "b", "c"] {
            x.publish(&msg(m));
        }
        drain(&mut rx);
        let ev = tokio::time::timeout(Duration::from_secs(5), x.recv()).await;
        assert_eq!(ev.unwrap(), XPubEvent::Unblocked);
        drain(&mut rx);
        tokio::time::sleep(2 * after).await;
        for m in ["d", "e", "f"] {
            x.publish(&msg(m));
        }
        assert!(
            x.is_blocked() && !kill.is_cancelled(),
            "parked, not evicted"
        );
        assert_eq!(x.evictions(), 0);

        let mut x = server(slow_server_options(SlowPolicy::Disconnect {
            after: Duration::ZERO,
        }))
        .await;
        let (_slow, kill) = connect_killable(&mut x, 1, 2);
        let mut fast = connect(&mut x, 2, 16);
        x.message(1, frame(1, ""));
        x.message(2, frame(1, ""));
        x.publish(&msg("a"));
        x.publish(&msg("b"));
        let d = x.publish(&msg("c"));
        assert_eq!((d.queued, d.parked, d.disconnected), (1, 0, 1));
        assert!(!x.is_blocked() && kill.is_cancelled());
        assert_eq!(drain(&mut fast).len(), 3);
    }

    /// Block: a replay that does not fit is parked behind what is parked
    /// already, within `hwm` parked messages; beyond that it is dropped
    /// whole.
    #[tokio::test]
    async fn block_parks_replays_within_the_hwm() {
        let mut x = server(slow_server_options(SlowPolicy::Block)).await;
        let mut rx = connect(&mut x, 1, 2);
        assert!(x.send_to(1, vec![msg("r1"), msg("r2"), msg("r3")]));
        assert!(x.is_blocked());
        assert!(
            !x.send_to(1, vec![msg("s1"), msg("s2")]),
            "3 parked would exceed hwm 2"
        );
        assert!(x.send_to(1, vec![msg("t1")]));
        assert_eq!(x.dropped(), 2);
        let mut got = Vec::new();
        while got.len() < 4 {
            got.extend(drain(&mut rx));
            if x.is_blocked() {
                let ev = tokio::time::timeout(Duration::from_secs(5), x.recv()).await;
                assert!(matches!(ev, Ok(XPubEvent::Unblocked)) || x.is_blocked());
            }
        }
        assert_eq!(got, [msg("r1"), msg("r2"), msg("r3"), msg("t1")]);
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
            identity: Bytes::new(),
            peer: 1,
            remote,
            kind: PeerSocketType::Sub,
            tx,
            kill: CancellationToken::new(),
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
