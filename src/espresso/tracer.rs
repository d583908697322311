//! The tokio side of Espresso: the capture hook that feeds the pure
//! [`Recorder`] from the proxy task into a bounded channel, and the
//! [`Espresso`] handle (the pub-sub proxy plus that channel). The hook is
//! the only place that reads a clock: the wall clock once when it is built,
//! and the monotonic clock for each data message it keeps (the proxy does
//! not time messages, to keep its hot path clock-free); subscriptions and
//! malformed input are stamped with the `now` the proxy hands its hooks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::capture::{CaptureEvent, CaptureFilter, Recorder, TimeBase};
use crate::pubsub::{Hooks, Proxy, ProxyConfig, ProxyCounters, ProxyError, ProxyStats};
use crate::subscription::{SubEvent, SubscriptionError};
use crate::zmtp::{PeerId, Shared};

/// Capture events buffered for the listener by default (see
/// [`EspressoConfig::capacity`]).
pub const DEFAULT_CAPTURE_CAPACITY: usize = 4096;

/// Errors that stop Espresso from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EspressoError {
    /// [`EspressoConfig::capacity`] was 0: the capture must hold at least
    /// one event.
    #[error("the capture capacity must be at least 1")]
    ZeroCapacity,
    /// The proxy underneath failed: an endpoint could not be bound or
    /// connected, or its task panicked ([`ProxyError::Panicked`]).
    #[error(transparent)]
    Proxy(#[from] ProxyError),
}

/// A proxy hook that copies what crosses the proxy into a channel.
///
/// It uses `try_send`: when the listener is slower than the traffic, events
/// are dropped and counted (`capture_drops` in the proxy's stats), and the
/// `seq` numbers of the events that do arrive show the gap. Forwarding is
/// never delayed by the listener. [`Espresso`] installs one; build one
/// yourself only to combine it with other hooks on a
/// [`Proxy`](crate::pubsub::Proxy) (e.g. with a Last Value Cache's
/// [`CacheHook`](crate::lvc::CacheHook)).
#[derive(Debug)]
pub struct Capture {
    tx: mpsc::Sender<CaptureEvent>,
    recorder: Recorder,
    captured: Arc<AtomicU64>,
    counters: Option<ProxyCounters>,
}

impl Capture {
    /// A capture feeding `tx`, keeping what `filter` accepts. Event times
    /// are anchored to the wall clock read now.
    pub fn new(tx: mpsc::Sender<CaptureEvent>, filter: CaptureFilter) -> Self {
        let base = TimeBase::new(Instant::now(), SystemTime::now());
        Self {
            tx,
            recorder: Recorder::new(filter, base),
            captured: Arc::default(),
            counters: None,
        }
    }

    fn offer(&mut self, ev: Option<CaptureEvent>) {
        let Some(ev) = ev else { return };
        match self.tx.try_send(ev) {
            // One writer (the proxy task): a plain load and store.
            Ok(()) => self
                .captured
                .store(self.captured.load(Relaxed) + 1, Relaxed),
            Err(mpsc::error::TrySendError::Full(_)) => {
                if let Some(c) = &self.counters {
                    c.capture_dropped();
                }
            }
            // The listener is gone: nobody to tell.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

impl Hooks for Capture {
    fn on_message(&mut self, msg: &Shared) {
        // Filter before reading the clock or building the event: data is
        // the hot path.
        let topic = msg.first().map(|b| &b[..]).unwrap_or(&[]);
        if self.recorder.wants_message(topic) {
            let ev = self.recorder.message(msg, Instant::now());
            self.offer(ev);
        }
    }

    fn on_subscription(
        &mut self,
        peer: PeerId,
        event: &SubEvent,
        now: Instant,
        _reply: &mut Vec<Shared>,
    ) {
        let ev = self.recorder.subscription(peer, event, now);
        self.offer(ev);
    }

    fn on_malformed(&mut self, frames: &[Bytes], _error: &SubscriptionError, now: Instant) {
        let ev = self.recorder.malformed(frames, now);
        self.offer(ev);
    }

    fn attach_counters(&mut self, counters: &ProxyCounters) {
        self.counters = Some(counters.clone());
    }
}

/// How to run Espresso: a [`ProxyConfig`] plus what to capture.
#[derive(Debug, Clone)]
pub struct EspressoConfig {
    proxy: ProxyConfig,
    filter: CaptureFilter,
    capacity: usize,
}

impl EspressoConfig {
    /// A tracing proxy between `proxy`'s frontend (publishers) and backend
    /// (subscribers), capturing everything into a buffer of
    /// [`DEFAULT_CAPTURE_CAPACITY`] events.
    pub fn new(proxy: ProxyConfig) -> Self {
        Self {
            proxy,
            filter: CaptureFilter::all(),
            capacity: DEFAULT_CAPTURE_CAPACITY,
        }
    }

    /// Which events to keep (default [`CaptureFilter::all`]).
    pub fn filter(mut self, filter: CaptureFilter) -> Self {
        self.filter = filter;
        self
    }

    /// Capture events buffered for the listener (default
    /// [`DEFAULT_CAPTURE_CAPACITY`], 4096; at least 1, else
    /// [`EspressoError::ZeroCapacity`]). Events beyond it are dropped and
    /// counted in `capture_drops`; forwarding never waits for the listener.
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }
}

/// A snapshot of Espresso's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct EspressoStats {
    /// The proxy's counters (traffic, subscriptions, drops; `capture_drops`
    /// counts events lost because the listener was behind).
    pub proxy: ProxyStats,
    /// Events put in the capture buffer for the listener.
    pub captured: u64,
}

/// A running Espresso: a proxy that forwards and a capture buffer to read,
/// started with [`Espresso::start`].
///
/// Like every pattern's handle, [`shutdown`](Self::shutdown) stops this
/// Espresso only, and dropping the handle cancels it without waiting (the
/// proxy stops in the background and its sockets close shortly after).
#[derive(Debug)]
#[must_use = "dropping the handle stops the proxy; keep it for as long as it should run"]
pub struct Espresso {
    proxy: Proxy,
    events: mpsc::Receiver<CaptureEvent>,
    captured: Arc<AtomicU64>,
}

impl Espresso {
    /// Starts Espresso under a child of `parent`: binds the proxy's bind
    /// endpoints before returning, connects its connect endpoints in the
    /// background, and captures into a buffer read through
    /// [`events`](Self::events). Must be called inside a tokio runtime.
    /// Never cancels `parent`.
    pub async fn start(
        config: EspressoConfig,
        parent: &CancellationToken,
    ) -> Result<Self, EspressoError> {
        if config.capacity == 0 {
            return Err(EspressoError::ZeroCapacity);
        }
        let (tx, events) = mpsc::channel(config.capacity);
        let capture = Capture::new(tx, config.filter);
        let captured = capture.captured.clone();
        let proxy = Proxy::start(config.proxy, capture, parent).await?;
        Ok(Self {
            proxy,
            events,
            captured,
        })
    }

    /// The capture buffer. `recv` returns `None` once the proxy has stopped
    /// and the buffered events are read (or if the receiver was taken with
    /// [`take_events`](Self::take_events)).
    pub fn events(&mut self) -> &mut mpsc::Receiver<CaptureEvent> {
        &mut self.events
    }

    /// Takes the capture buffer's receiver, e.g. to read it on another task
    /// while the handle stays here; [`events`](Self::events) is then a
    /// closed, empty receiver.
    pub fn take_events(&mut self) -> mpsc::Receiver<CaptureEvent> {
        let (_, closed) = mpsc::channel(1);
        std::mem::replace(&mut self.events, closed)
    }

    /// The frontend (publisher side) endpoint, resolved if bound.
    pub fn frontend_endpoint(&self) -> &str {
        self.proxy.frontend_endpoint()
    }

    /// The backend (subscriber side) endpoint, resolved if bound.
    pub fn backend_endpoint(&self) -> &str {
        self.proxy.backend_endpoint()
    }

    /// A snapshot of the counters (cheap: a few atomic loads).
    pub fn stats(&self) -> EspressoStats {
        EspressoStats {
            proxy: self.proxy.stats(),
            captured: self.captured.load(Relaxed),
        }
    }

    /// Stops this Espresso (only), waits for its proxy task, and returns
    /// the final counters or the error the proxy ended with. Events still
    /// in the buffer are dropped with the handle; read them first (or take
    /// the receiver) if they matter.
    pub async fn shutdown(self) -> Result<EspressoStats, EspressoError> {
        let captured = self.captured;
        let proxy = self.proxy.shutdown().await?;
        Ok(EspressoStats {
            proxy,
            captured: captured.load(Relaxed),
        })
    }
}
