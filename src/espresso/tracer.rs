//! The capture hook and the tracing proxy: the pub-sub proxy plus a bounded
//! channel of [`CaptureEvent`]s that never slows forwarding down.

use std::time::{Instant, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::capture::{CaptureEvent, CaptureFilter};
use crate::pubsub::{self, Hooks, ProxyConfig, ProxyCounters, ProxyError, ProxyHandle};
use crate::subscription::{SubEvent, SubscriptionError};
use crate::zmtp::{PeerId, Shared};

/// A proxy hook that copies what crosses the proxy into a channel.
///
/// It uses `try_send`: when the listener is slower than the traffic, events
/// are dropped and counted (`capture_drops` in the proxy's stats), and the
/// `seq` numbers of the events that do arrive show the gap. Forwarding is
/// never delayed by the listener.
#[derive(Debug)]
pub struct Capture {
    tx: mpsc::Sender<CaptureEvent>,
    filter: CaptureFilter,
    seq: u64,
    counters: Option<ProxyCounters>,
}

impl Capture {
    /// A capture feeding `tx`, keeping what `filter` accepts.
    pub fn new(tx: mpsc::Sender<CaptureEvent>, filter: CaptureFilter) -> Self {
        Self {
            tx,
            filter,
            seq: 0,
            counters: None,
        }
    }

    fn offer(&mut self, mut ev: CaptureEvent) {
        if !self.filter.accepts(ev.kind, &ev.topic) {
            return;
        }
        ev.seq = self.seq;
        self.seq += 1;
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
            if let Some(c) = &self.counters {
                c.capture_dropped();
            }
        }
    }
}

impl Hooks for Capture {
    fn on_message(&mut self, msg: &Shared) {
        // Filter before building the event: data is the hot path.
        let topic = msg.first().map(|b| &b[..]).unwrap_or(&[]);
        if self.filter.accepts(super::EventKind::Message, topic) {
            self.offer(CaptureEvent::message(msg, SystemTime::now()));
        }
    }

    fn on_subscription(
        &mut self,
        peer: PeerId,
        event: &SubEvent,
        _now: Instant,
        _reply: &mut Vec<Shared>,
    ) {
        self.offer(CaptureEvent::subscription(peer, event, SystemTime::now()));
    }

    fn on_malformed(&mut self, frames: &[Bytes], _error: &SubscriptionError, _now: Instant) {
        self.offer(CaptureEvent::malformed(frames, SystemTime::now()));
    }

    fn attach_counters(&mut self, counters: &ProxyCounters) {
        self.counters = Some(counters.clone());
    }
}

/// Starts a tracing proxy (Espresso): forwards between `config`'s frontend
/// (publishers) and backend (subscribers) and captures into a channel of
/// `capacity` events.
pub async fn start(
    config: ProxyConfig,
    filter: CaptureFilter,
    capacity: usize,
    cancel: CancellationToken,
) -> Result<(ProxyHandle, mpsc::Receiver<CaptureEvent>), ProxyError> {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let proxy = pubsub::start(config, Capture::new(tx, filter), cancel).await?;
    Ok((proxy, rx))
}
