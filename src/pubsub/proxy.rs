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
//! receives. The frontend is the `zeromq` crate's XSUB; the backend is this
//! crate's [`XPubServer`], whose publish never blocks: each subscriber has
//! its own bounded queue (its HWM), and a subscriber that stops reading loses
//! only its own messages. Subscription frames update the [`Registry`]; only
//! the first subscribe and the last unsubscribe of each prefix go upstream
//! ([`UpstreamMode::Forward`]), or the proxy subscribes to everything once
//! ([`UpstreamMode::Everything`], for caches). A subscriber that disconnects
//! cancels its subscriptions, as in libzmq. Anything else a subscriber sends
//! is counted as malformed and dropped.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};
use zeromq::prelude::*;
use zeromq::{XSubSocket, ZmqError, ZmqMessage};

use super::registry::{Registry, Upstream};
use super::stats::{Counters, ProxyStats};
use super::subscription::{SubEvent, SubscriptionError};
use crate::endpoint::{Attach, EndpointError, EndpointSpec};
use crate::task::{PatternTask, TaskPanicked};
use crate::zmtp::{PeerId, Shared, XPubEvent, XPubOptions, XPubServer};

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
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    frontend: EndpointSpec,
    backend: EndpointSpec,
    upstream: UpstreamMode,
    backend_options: XPubOptions,
    connect_retry: Duration,
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
            connect_retry: Duration::from_millis(500),
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

    /// All tunables of the backend (default [`XPubOptions::default`]).
    pub fn backend_options(mut self, options: XPubOptions) -> Self {
        self.backend_options = options;
        self
    }

    /// How often to retry a frontend connect whose publisher is not up yet
    /// (default 500 ms).
    pub fn connect_retry(mut self, every: Duration) -> Self {
        self.connect_retry = every;
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
    /// connects its connect endpoints in the background (retrying every
    /// [`ProxyConfig::connect_retry`] until the peer is up), and runs until
    /// [`shutdown`](Self::shutdown), a drop of the handle, or `parent` is
    /// cancelled. `hooks` observe or extend it (`()` for a plain proxy).
    /// Must be called inside a tokio runtime. Never cancels `parent`.
    pub async fn start<H: Hooks>(
        config: ProxyConfig,
        mut hooks: H,
        parent: &CancellationToken,
    ) -> Result<Self, ProxyError> {
        let mut xsub = XSubSocket::new();
        let frontend = match config.frontend.attach() {
            Attach::Bind => config.frontend.attach_to(&mut xsub).await?,
            Attach::Connect => config.frontend.endpoint().to_owned(),
        };
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
        };
        let task = PatternTask::spawn(parent, move |child| {
            async move {
                let result = run.run(config, child).await;
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

struct Run<H> {
    xsub: XSubSocket,
    xpub: XPubServer,
    registry: Registry,
    counters: Arc<Counters>,
    hooks: H,
    upstream: UpstreamMode,
}

impl<H: Hooks> Run<H> {
    async fn run(
        mut self,
        config: ProxyConfig,
        cancel: CancellationToken,
    ) -> Result<(), ProxyError> {
        if self.upstream == UpstreamMode::Everything {
            // Recorded by the XSUB and replayed to every publisher that connects.
            self.send_upstream(SubEvent::Subscribe(Bytes::new())).await;
        }
        if config.frontend.attach() == Attach::Connect {
            let connect = config
                .frontend
                .attach_patiently(&mut self.xsub, config.connect_retry);
            tokio::select! {
                r = connect => { r?; }
                _ = cancel.cancelled() => return Ok(()),
            }
        }
        info!("proxy running");
        // The cancellation branch goes last: polling a `cancelled()` future
        // locks two mutexes, which cost ~7% of the proxy's CPU at 16 B when
        // it was polled first for every message. While idle it is reached
        // (and wakes us); under a flood it is checked every 64 messages.
        let cancelled = cancel.cancelled();
        tokio::pin!(cancelled);
        let mut n: u32 = 0;
        loop {
            n = n.wrapping_add(1);
            if n.is_multiple_of(64) && cancel.is_cancelled() {
                break;
            }
            tokio::select! {
                biased;
                ev = self.xpub.recv() => self.on_backend_event(ev).await,
                r = self.xsub.recv() => self.on_publisher_message(r).await,
                _ = &mut cancelled => break,
            }
        }
        info!(stats = ?self.counters.snapshot(), "proxy stopped");
        Ok(())
    }

    async fn on_publisher_message(&mut self, r: Result<ZmqMessage, ZmqError>) {
        let msg: Shared = match r {
            Ok(m) => m.into_vec().into(),
            Err(e) => return self.recv_error(e).await,
        };
        let len: usize = msg.iter().map(Bytes::len).sum();
        Counters::bump(&self.counters.messages_in, 1);
        Counters::bump(&self.counters.bytes_in, len as u64);
        self.hooks.on_message(&msg);
        let d = self.xpub.publish(&msg);
        Counters::bump(&self.counters.deliveries, d.queued as u64);
        Counters::bump(&self.counters.slow_drops, d.dropped as u64);
        // The frontend can always have more to read; let the subscribers'
        // writer tasks (and new connections) run between batches.
        tokio::task::consume_budget().await;
    }

    async fn on_backend_event(&mut self, ev: XPubEvent) {
        let now = Instant::now();
        let up_bytes = match &ev {
            XPubEvent::Subscription { event, .. } => 1 + event.topic().len(),
            XPubEvent::UnmatchedUnsubscribe { topic, .. } => 1 + topic.len(),
            XPubEvent::Malformed { frames, .. } => frames.iter().map(Bytes::len).sum(),
            _ => 0,
        };
        if up_bytes > 0 || matches!(ev, XPubEvent::Malformed { .. }) {
            Counters::add(&self.counters.up_messages, 1);
            Counters::add(&self.counters.up_bytes, up_bytes as u64);
        }
        match ev {
            XPubEvent::Connected { .. } => Counters::add(&self.counters.connects, 1),
            XPubEvent::Subscription { peer, event } => self.subscription(peer, event, now).await,
            XPubEvent::Disconnected {
                peer,
                subscriptions,
                ..
            } => {
                Counters::add(&self.counters.disconnects, 1);
                for topic in subscriptions {
                    self.subscription(peer, SubEvent::Unsubscribe(topic), now)
                        .await;
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
                warn!(peer, %error, frames = frames.len(), "ignoring a subscriber message that is not a subscription");
                self.hooks.on_malformed(&frames, &error, now);
            }
        }
    }

    async fn subscription(&mut self, peer: PeerId, event: SubEvent, now: Instant) {
        let counter = if event.is_subscribe() {
            &self.counters.subscribes
        } else {
            &self.counters.unsubscribes
        };
        Counters::add(counter, 1);
        if let Upstream::Forward(up) = self.registry.apply(&event) {
            if self.upstream == UpstreamMode::Forward {
                self.send_upstream(up).await;
            }
        }
        let mut reply = Vec::new();
        self.hooks.on_subscription(peer, &event, now, &mut reply);
        if !reply.is_empty() {
            let n = reply.len() as u64;
            Counters::add(&self.counters.replayed, n);
            if !self.xpub.send_to(peer, reply) {
                Counters::add(&self.counters.slow_drops, n);
            }
        }
    }

    async fn send_upstream(&mut self, event: SubEvent) {
        let msg = ZmqMessage::from(event.encode());
        // Subscriptions are tiny and publishers read them; the bound only
        // protects the proxy from a publisher that stopped reading.
        match tokio::time::timeout(Duration::from_secs(1), self.xsub.send(msg)).await {
            Ok(Ok(())) => Counters::add(&self.counters.upstream_sent, 1),
            Ok(Err(error)) => {
                warn!(%error, topic = ?event.topic(), "subscription not sent upstream")
            }
            Err(_) => warn!(topic = ?event.topic(), "subscription send upstream timed out"),
        }
    }

    async fn recv_error(&mut self, error: ZmqError) {
        Counters::add(&self.counters.recv_errors, 1);
        if matches!(error, ZmqError::NoMessage) {
            // No publisher to read from right now; do not spin.
            tokio::time::sleep(Duration::from_millis(10)).await;
        } else {
            warn!(%error, "frontend receive error (a publisher dropped); carrying on");
        }
    }
}
