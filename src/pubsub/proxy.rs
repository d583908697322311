//! The XSUB/XPUB forwarding task: a spawnable (`Send`) replacement for the
//! `zeromq` crate's `proxy()`, with reference-counted subscriptions,
//! per-subscriber queues, counters and hooks (capture, caching).
//!
//! ```text
//!  publishers ──PUB──▶ [XSUB frontend] ──data──▶ [XPUB backend] ──▶ SUB subscribers
//!                      [XSUB frontend] ◀─subs── [XPUB backend] ◀──
//! ```
//!
//! One task owns both sockets and `select!`s over their cancel-safe
//! receives. Both are this crate's ZMTP sockets: the frontend is an
//! [`XSubServer`], which refuses a message over its size limit from the
//! frame header (the `zeromq` crate's XSUB buffers any frame whole); the
//! backend is an [`XPubServer`], whose publish never blocks: each subscriber has
//! its own bounded queue (its HWM), and a subscriber that stops reading loses
//! only its own messages. Subscription frames update the [`Registry`]; only
//! the first subscribe and the last unsubscribe of each prefix go upstream
//! ([`UpstreamMode::Forward`]), or the proxy subscribes to everything once
//! ([`UpstreamMode::Everything`], for caches). A subscriber that disconnects
//! cancels its subscriptions, as in libzmq. Anything else a subscriber sends
//! is counted as malformed and dropped.
//!
//! Everything a peer can make the proxy hold is bounded; see
//! [`ProxyConfig`]'s "Limits" for the table.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::stats::{Counters, ProxyStats};
use crate::endpoint::{EndpointError, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::subscription::{Registry, SubEvent, SubscriptionError, Upstream};
use crate::task::{PatternTask, TaskPanicked};
use crate::zmtp::{
    CloseCause, PeerId, Shared, SlowPolicy, XPubEvent, XPubOptions, XPubServer, XSubEvent,
    XSubOptions, XSubServer,
};

/// Errors that stop a proxy from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// An endpoint could not be bound or connected.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The proxy task panicked (a bug: please report it); returned by
    /// [`Proxy::shutdown`].
    #[error("proxy task panicked")]
    Panicked,
}

/// What the proxy asks of the publishers upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum UpstreamMode {
    /// Forward subscriptions, reference-counted (libzmq's XSUB/XPUB).
    #[default]
    Forward,
    /// Subscribe to everything once and never forward (caches need all).
    Everything,
}

/// Hooks that observe or extend a running proxy. All methods run on the
/// proxy task, so they must be quick and must never block: hand work to a
/// channel with `try_send` instead.
pub trait Hooks: Send + 'static {
    /// A message from the publishers, before it is forwarded. This is the
    /// hot path, so no timestamp is taken for it: read a clock only if the
    /// hook needs one.
    fn on_message(&mut self, _msg: &Shared) {}

    /// A subscription event from subscriber `peer` (an unsubscribe is also
    /// reported for each subscription of a subscriber that disconnects).
    /// Messages pushed to `reply` go to that subscriber only, before
    /// anything published later (the Last Value Cache replays through this).
    fn on_subscription(
        &mut self,
        _peer: PeerId,
        _event: &SubEvent,
        _now: Instant,
        _reply: &mut Vec<Shared>,
    ) {
    }

    /// Something a subscriber sent that is not a subscription frame.
    fn on_malformed(&mut self, _frames: &[Bytes], _error: &SubscriptionError, _now: Instant) {}

    /// Called once with the proxy's counters, before the first event, so a
    /// hook can report into them (e.g. capture drops).
    fn attach_counters(&mut self, _counters: &ProxyCounters) {}
}

impl Hooks for () {}

impl<A: Hooks, B: Hooks> Hooks for (A, B) {
    fn on_message(&mut self, msg: &Shared) {
        self.0.on_message(msg);
        self.1.on_message(msg);
    }
    fn on_subscription(
        &mut self,
        peer: PeerId,
        event: &SubEvent,
        now: Instant,
        reply: &mut Vec<Shared>,
    ) {
        self.0.on_subscription(peer, event, now, reply);
        self.1.on_subscription(peer, event, now, reply);
    }
    fn on_malformed(&mut self, frames: &[Bytes], error: &SubscriptionError, now: Instant) {
        self.0.on_malformed(frames, error, now);
        self.1.on_malformed(frames, error, now);
    }
    fn attach_counters(&mut self, counters: &ProxyCounters) {
        self.0.attach_counters(counters);
        self.1.attach_counters(counters);
    }
}

/// A handle on a proxy's live counters that hooks and callers may keep.
#[derive(Debug, Clone)]
pub struct ProxyCounters(pub(crate) Arc<Counters>);

impl ProxyCounters {
    /// Counts one capture event dropped by a hook.
    pub fn capture_dropped(&self) {
        Counters::add(&self.0.capture_drops, 1);
    }

    /// A snapshot of all counters.
    pub fn snapshot(&self) -> ProxyStats {
        self.0.snapshot()
    }
}

/// How to run a proxy.
///
/// # Limits
///
/// Everything a remote peer can make the proxy hold is bounded. Each limit
/// hit is counted in [`ProxyStats`] and logged at most once a second per
/// cause; the offending peer's excess is refused and every other peer is
/// still served.
///
/// | limit (setter) | default | what the peer gets | counted in |
/// |---|---|---|---|
/// | [`max_message`](Self::max_message): one message from a publisher, all frames | 1 MiB | disconnected when a frame header announces more, before the body is read (a libzmq publisher reconnects; the message is lost) | `oversized` |
/// | frames per publisher message ([`XSubOptions::max_frames`]) | 1024 | disconnected | `oversized` |
/// | one message from a subscriber ([`XPubOptions::max_frame`]) | 64 KiB | disconnected | `oversized` |
/// | [`max_connections`](Self::max_connections): live connections per listener (backend, and frontend when bound) | 1024 | accepted and closed at once | `connections_refused` |
/// | [`max_subscriptions_per_peer`](Self::max_subscriptions_per_peer): distinct prefixes of one subscriber | 10,000 | that subscribe is ignored (not registered, not forwarded) | `subscriptions_refused` |
/// | [`max_subscriptions`](Self::max_subscriptions): distinct (subscriber, prefix) pairs in total | 1,000,000 | same | `subscriptions_refused` |
/// | subscription bytes in total ([`XPubOptions::max_subscription_bytes`]) | 64 MiB | same | `subscriptions_refused` |
/// | [`subscriber_hwm`](Self::subscriber_hwm): messages queued per subscriber, hook replays (Last Value Cache) included message by message | 10,000 | as [`slow_subscribers`](Self::slow_subscribers) says: live messages dropped for it and a replay that does not fit dropped whole (`Drop`); publishers paused until it has room (`Block`); disconnected once it stays behind too long (`Disconnect`). Under `Block`/`Disconnect` at most `hwm` more messages wait for it (parked), a replay beyond that is dropped whole | `slow_drops`, `replay_drops`, `slow_blocks`, `slow_disconnects` |
/// | subscription frames queued per publisher ([`XSubOptions::send_queue`]) | 100,000 | disconnected; it gets every subscription again when it reconnects | `publisher_disconnects` |
///
/// Why 1 MiB for publishers: libzmq's default (`ZMQ_MAXMSGSIZE` = -1) is
/// unlimited, which lets one publisher take the proxy's memory; the Guide's
/// pub-sub messages are small, and 1 MiB keeps the worst case (one partial
/// message per connection plus 16 queued batches) to a few tens of MiB for
/// a handful of publishers. Raise it if your publishers send larger values.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    frontend: EndpointSpec,
    backend: EndpointSpec,
    upstream: UpstreamMode,
    backend_options: XPubOptions,
    frontend_options: XSubOptions,
}

impl ProxyConfig {
    /// A proxy between publishers at `frontend` and subscribers at
    /// `backend` (each `@`bind or `>`connect); every other setting has a
    /// default, given on its setter.
    pub fn new(frontend: EndpointSpec, backend: EndpointSpec) -> Self {
        Self {
            frontend,
            backend,
            upstream: UpstreamMode::Forward,
            backend_options: XPubOptions::default(),
            frontend_options: XSubOptions::default(),
        }
    }

    /// Sets what the proxy asks of publishers (default
    /// [`UpstreamMode::Forward`]; the Last Value Cache sets
    /// [`UpstreamMode::Everything`]).
    pub fn upstream(mut self, mode: UpstreamMode) -> Self {
        self.upstream = mode;
        self
    }

    /// Messages queued per subscriber before its new ones are dropped
    /// (libzmq's SNDHWM; default 10,000).
    pub fn subscriber_hwm(mut self, hwm: usize) -> Self {
        self.backend_options.hwm = hwm;
        self
    }

    /// What a subscriber whose queue is full does to the proxy (default
    /// [`SlowPolicy::Drop`], libzmq's behaviour):
    ///
    /// - [`SlowPolicy::Drop`]: the message is dropped for that subscriber
    ///   only (`slow_drops`); nobody waits, the slow one has gaps.
    /// - [`SlowPolicy::Block`] (`--nodrop` in the examples, libzmq's
    ///   `ZMQ_XPUB_NODROP`): the proxy stops reading its publishers until
    ///   the subscriber has room (`slow_blocks` counts the pauses), so
    ///   publishers feel backpressure through TCP (a libzmq PUB then drops
    ///   at its own HWM unless it is set to block, e.g. HWM 0 or
    ///   `ZMQ_XPUB_NODROP`); nothing is lost and every subscriber gets
    ///   every message in order. One subscriber that stops reading stops
    ///   every publisher.
    /// - [`SlowPolicy::Disconnect`]: as `Block`, but a subscriber that has
    ///   stayed behind (queue overflowed, not drained to half since) for
    ///   longer than `after` is disconnected (`slow_disconnects`); its
    ///   undelivered messages are discarded, its stream ends without a
    ///   gap, and the others resume. `after` bounds how long one subscriber
    ///   can hold the publishers back; zero never holds them.
    pub fn slow_subscribers(mut self, policy: SlowPolicy) -> Self {
        self.backend_options.slow = policy;
        self
    }

    /// All tunables of the backend (default [`XPubOptions::default`]).
    pub fn backend_options(mut self, options: XPubOptions) -> Self {
        self.backend_options = options;
        self
    }

    /// All tunables of the frontend.
    pub fn frontend_options(mut self, options: XSubOptions) -> Self {
        self.frontend_options = options;
        self
    }

    /// First delay before (re)connecting a frontend publisher that is not
    /// up (default 100 ms, doubled after each failed attempt up to 5 s).
    pub fn connect_retry(mut self, every: std::time::Duration) -> Self {
        self.frontend_options.reconnect = every;
        self
    }

    /// Largest message, all frames together, accepted from a publisher
    /// (default 1 MiB): a publisher whose frame header announces more is
    /// disconnected before the body is read.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.frontend_options.max_message = bytes;
        self
    }

    /// Live connections per listener, backend and (when bound) frontend
    /// (default 1024); one more is accepted and closed at once.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.frontend_options.max_connections = n;
        self.backend_options.max_connections = n;
        self
    }

    /// Distinct prefixes one subscriber may hold (default 10,000); a
    /// subscribe to one more is ignored: not registered, not forwarded.
    pub fn max_subscriptions_per_peer(mut self, n: usize) -> Self {
        self.backend_options.max_subscriptions_per_peer = n;
        self
    }

    /// Distinct (subscriber, prefix) pairs held over all subscribers
    /// (default 1,000,000); a subscribe over it is ignored.
    pub fn max_subscriptions(mut self, n: usize) -> Self {
        self.backend_options.max_subscriptions = n;
        self
    }

    /// The frontend (publisher side) endpoint.
    pub fn frontend(&self) -> &EndpointSpec {
        &self.frontend
    }

    /// The backend (subscriber side) endpoint.
    pub fn backend(&self) -> &EndpointSpec {
        &self.backend
    }
}

/// A running proxy (XSUB frontend, XPUB backend), started with
/// [`Proxy::start`].
///
/// The proxy runs under a child of the token it was started with:
/// [`shutdown`](Self::shutdown) stops this proxy only, and cancelling the
/// parent stops it along with everything else under the parent. Dropping
/// the handle cancels the proxy's token without waiting: the proxy stops in
/// the background (its sockets close shortly after) and an error it ended
/// with is only logged.
#[derive(Debug)]
#[must_use = "dropping the handle stops the proxy; keep it for as long as the proxy should run"]
pub struct Proxy {
    frontend: String,
    backend: String,
    counters: ProxyCounters,
    task: PatternTask<Result<(), ProxyError>>,
}

impl Proxy {
    /// Starts a proxy under a child of `parent`: binds its bind endpoints
    /// before returning (so bind errors surface here and port 0 resolves),
    /// connects its connect endpoints in the background (retrying with a
    /// backoff that starts at [`ProxyConfig::connect_retry`]), and runs until
    /// [`shutdown`](Self::shutdown), a drop of the handle, or `parent` is
    /// cancelled. `hooks` observe or extend it (`()` for a plain proxy).
    /// Must be called inside a tokio runtime. Never cancels `parent`.
    pub async fn start<H: Hooks>(
        config: ProxyConfig,
        mut hooks: H,
        parent: &CancellationToken,
    ) -> Result<Self, ProxyError> {
        let xsub = XSubServer::attach(&config.frontend, config.frontend_options).await?;
        let frontend = xsub.endpoint().to_owned();
        let xpub = XPubServer::attach(&config.backend, config.backend_options).await?;
        let backend = xpub.endpoint().to_owned();
        let counters = ProxyCounters(Arc::new(Counters::default()));
        hooks.attach_counters(&counters);
        let span = tracing::info_span!("pubsub_proxy", %frontend, %backend);
        let run = Run {
            xsub,
            xpub,
            registry: Registry::new(),
            counters: counters.0.clone(),
            hooks,
            upstream: config.upstream,
            logs: Logs::default(),
        };
        let task = PatternTask::spawn(parent, move |child| {
            async move {
                let result = run.run(child).await;
                if let Err(error) = &result {
                    warn!(%error, "proxy stopped with an error");
                }
                result
            }
            .instrument(span)
        });
        Ok(Self {
            frontend,
            backend,
            counters,
            task,
        })
    }

    /// The frontend endpoint (resolved, if it was bound).
    pub fn frontend_endpoint(&self) -> &str {
        &self.frontend
    }

    /// The backend endpoint (resolved, if it was bound).
    pub fn backend_endpoint(&self) -> &str {
        &self.backend
    }

    /// A snapshot of the counters (cheap: a few atomic loads).
    pub fn stats(&self) -> ProxyStats {
        self.counters.snapshot()
    }

    /// A clonable handle on the counters, readable after the proxy stopped.
    pub fn counters(&self) -> ProxyCounters {
        self.counters.clone()
    }

    /// Stops this proxy (only: its parent token and anything else under it
    /// keep running), waits for its task, and returns the final counters,
    /// or the error the proxy ended with ([`ProxyError::Panicked`] if its
    /// task panicked).
    pub async fn shutdown(self) -> Result<ProxyStats, ProxyError> {
        let counters = self.counters;
        match self.task.shutdown().await {
            Ok(Ok(())) => Ok(counters.snapshot()),
            Ok(Err(e)) => Err(e),
            Err(TaskPanicked) => Err(ProxyError::Panicked),
        }
    }
}

/// Messages of one read forwarded before the other branches of the loop
/// are looked at again.
const BURST: usize = 256;
/// Messages forwarded between yields to the runtime (the subscribers'
/// writer tasks run then, on a current-thread runtime).
const YIELD_EVERY: usize = 1024;

struct Run<H> {
    xsub: XSubServer,
    xpub: XPubServer,
    registry: Registry,
    counters: Arc<Counters>,
    hooks: H,
    upstream: UpstreamMode,
    logs: Logs,
}

/// Rate limiters of the proxy's log lines that a peer can trigger.
#[derive(Default)]
struct Logs {
    malformed: LogLimiter,
    upstream: LogLimiter,
}

impl<H: Hooks> Run<H> {
    async fn run(mut self, cancel: CancellationToken) -> Result<(), ProxyError> {
        if self.upstream == UpstreamMode::Everything {
            // Recorded by the XSUB and replayed to every publisher that connects.
            self.send_upstream(SubEvent::Subscribe(Bytes::new()));
        }
        info!("proxy running");
        // The cancellation branch goes last: polling a `cancelled()` future
        // locks two mutexes, which cost ~7% of the proxy's CPU at 16 B when
        // it was polled first for every message. While idle it is reached
        // (and wakes us); under a flood it is checked every 64 messages.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut n: u32 = 0;
        let mut forwarded = 0;
        loop {
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && cancel.is_cancelled() {
                break;
            }
            tokio::select! {
                biased;
                ev = self.xpub.recv() => self.on_backend_event(ev),
                // While a full subscriber holds parked messages, publishers
                // are not read: they feel backpressure (SlowPolicy::Block).
                ev = self.xsub.recv(), if !self.xpub.is_blocked() => match ev {
                    XSubEvent::Message(msg) => {
                        self.on_publisher_message(msg);
                        // The rest of this read, without going round the
                        // select for each message (polling the other
                        // branches cost ~20% of the CPU at 16 B).
                        let mut n = 1;
                        while n < BURST && !self.xpub.is_blocked() {
                            let Some(msg) = self.xsub.next_buffered() else {
                                break;
                            };
                            self.on_publisher_message(msg);
                            n += 1;
                        }
                        forwarded += n;
                        // The frontend can always have more to read: let
                        // the subscribers' writer tasks (and new
                        // connections) run every `YIELD_EVERY` messages.
                        if forwarded >= YIELD_EVERY {
                            forwarded = 0;
                            tokio::task::yield_now().await;
                        }
                    }
                    other => self.on_frontend_event(other),
                },
                _ = &mut cancelled => break,
            }
        }
        info!(stats = ?self.counters.snapshot(), "proxy stopped");
        Ok(())
    }

    fn on_publisher_message(&mut self, msg: Shared) {
        let len: usize = msg.iter().map(Bytes::len).sum();
        Counters::bump(&self.counters.messages_in, 1);
        Counters::bump(&self.counters.bytes_in, len as u64);
        self.hooks.on_message(&msg);
        let d = self.xpub.publish(&msg);
        Counters::bump(&self.counters.deliveries, (d.queued + d.parked) as u64);
        Counters::bump(&self.counters.slow_drops, d.dropped as u64);
        if d.parked > 0 {
            Counters::add(&self.counters.slow_blocks, 1);
        }
    }

    fn on_frontend_event(&mut self, ev: XSubEvent) {
        match ev {
            XSubEvent::Connected { .. } => Counters::add(&self.counters.publisher_connects, 1),
            XSubEvent::Disconnected { cause, .. } => {
                Counters::add(&self.counters.publisher_disconnects, 1);
                match cause {
                    CloseCause::TooLarge => Counters::add(&self.counters.oversized, 1),
                    CloseCause::Error => Counters::add(&self.counters.recv_errors, 1),
                    _ => {}
                }
            }
            XSubEvent::ConnectionRefused { .. } => {
                Counters::add(&self.counters.connections_refused, 1)
            }
            // Handled on the hot path; future kinds are ignored.
            _ => {}
        }
    }

    fn on_backend_event(&mut self, ev: XPubEvent) {
        let now = Instant::now();
        let up_bytes = match &ev {
            XPubEvent::Subscription { event, .. } => 1 + event.topic().len(),
            XPubEvent::SubscriptionRefused { topic, .. }
            | XPubEvent::UnmatchedUnsubscribe { topic, .. } => 1 + topic.len(),
            XPubEvent::Malformed { frames, .. } => frames.iter().map(Bytes::len).sum(),
            _ => 0,
        };
        if up_bytes > 0 || matches!(ev, XPubEvent::Malformed { .. }) {
            Counters::add(&self.counters.up_messages, 1);
            Counters::add(&self.counters.up_bytes, up_bytes as u64);
        }
        match ev {
            XPubEvent::Connected { .. } => Counters::add(&self.counters.connects, 1),
            XPubEvent::Subscription { peer, event } => self.subscription(peer, event, now),
            XPubEvent::SubscriptionRefused { .. } => {
                // Logged (rate-limited) by the XPUB server.
                Counters::add(&self.counters.subscriptions_refused, 1);
            }
            XPubEvent::Disconnected {
                peer,
                subscriptions,
                cause,
                ..
            } => {
                Counters::add(&self.counters.disconnects, 1);
                match cause {
                    CloseCause::TooLarge => Counters::add(&self.counters.oversized, 1),
                    CloseCause::Slow => Counters::add(&self.counters.slow_disconnects, 1),
                    _ => {}
                }
                for topic in subscriptions {
                    self.subscription(peer, SubEvent::Unsubscribe(topic), now);
                }
            }
            XPubEvent::UnmatchedUnsubscribe { peer, topic } => {
                Counters::add(&self.counters.unmatched_unsubscribes, 1);
                debug!(
                    peer,
                    ?topic,
                    "unsubscribe for a prefix this subscriber never subscribed"
                );
            }
            XPubEvent::Malformed {
                peer,
                frames,
                error,
            } => {
                Counters::add(&self.counters.malformed, 1);
                if let Some(suppressed) = self.logs.malformed.check(now) {
                    warn!(peer, %error, frames = frames.len(), suppressed, "ignoring a subscriber message that is not a subscription");
                }
                self.hooks.on_malformed(&frames, &error, now);
            }
            XPubEvent::ConnectionRefused { .. } => {
                Counters::add(&self.counters.connections_refused, 1)
            }
            // Publishers are read again (the select's guard).
            XPubEvent::Unblocked => {}
        }
        self.counters.subscriptions_held.store(
            self.xpub.subscription_count() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn subscription(&mut self, peer: PeerId, event: SubEvent, now: Instant) {
        let counter = if event.is_subscribe() {
            &self.counters.subscribes
        } else {
            &self.counters.unsubscribes
        };
        Counters::add(counter, 1);
        if let Upstream::Forward(up) = self.registry.apply(&event) {
            if self.upstream == UpstreamMode::Forward {
                self.send_upstream(up);
            }
        }
        let mut reply = Vec::new();
        self.hooks.on_subscription(peer, &event, now, &mut reply);
        if !reply.is_empty() {
            // Counted against the subscriber's queue message by message: a
            // replay that does not fit is dropped whole for it alone.
            let n = reply.len() as u64;
            let was_blocked = self.xpub.is_blocked();
            if self.xpub.send_to(peer, reply) {
                Counters::add(&self.counters.replayed, n);
                if !was_blocked && self.xpub.is_blocked() {
                    Counters::add(&self.counters.slow_blocks, 1);
                }
            } else {
                Counters::add(&self.counters.replay_drops, n);
            }
        }
    }

    fn send_upstream(&mut self, event: SubEvent) {
        // Never blocks: a publisher that does not read its subscriptions is
        // disconnected by the XSUB and gets them all again on reconnect.
        self.xsub.send(&event);
        Counters::add(&self.counters.upstream_sent, 1);
        if self.xsub.peer_count() == 0 {
            if let Some(suppressed) = self.logs.upstream.check(Instant::now()) {
                debug!(topic = ?event.topic(), suppressed, "no publisher connected: subscription recorded for the next one");
            }
        }
    }
}
