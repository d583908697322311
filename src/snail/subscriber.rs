//! A SUB socket that checks every message with the [`Detector`] and applies
//! a policy when it fires: abort (the Guide's croak) or a recovery hook.
//!
//! Suicidal Snail (Guide ch. 5), subscriber side: one SUB socket connected
//! to one or more stamping publishers. The check happens as each message is
//! taken, before the caller works on it, exactly where the Guide checks.

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use zeromq::{Socket, SocketRecv, SubSocket};

use super::detector::{Alarm, Detector, DetectorConfig, Verdict};
use super::envelope::{self, Stamp, WireFormat};
use super::error::SnailError;
use crate::endpoint::EndpointSpec;

/// What a recovery hook asks the subscriber to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Deliver the message that fired and carry on; the publisher's alarm
    /// state is reset (e.g. after resyncing from a Last Value Cache or a
    /// Clone snapshot).
    Resume,
    /// Discard this publisher's messages (counted in
    /// [`SubscriberStats::skipped`]) until one arrives with a lag below
    /// this, then reset and carry on: drop the backlog instead of working
    /// through it. Other publishers' messages are checked as usual.
    SkipUntilLagBelow(Duration),
    /// Give up: `recv` returns [`SnailError::CannotKeepUp`].
    Abort,
}

type AbortHook = Box<dyn FnMut(&Alarm) + Send>;
type RecoverHook = Box<dyn FnMut(Alarm) -> BoxFuture<'static, Recovery> + Send>;

/// What to do when the detector croaks.
pub enum Policy {
    /// Log `E: subscriber cannot keep up, aborting`, call the hook (send a
    /// squawk to an operator, flush state), and fail with
    /// [`SnailError::CannotKeepUp`].
    Abort(Option<AbortHook>),
    /// Call the async hook instead of dying, and do what it returns.
    Recover(RecoverHook),
}

impl Policy {
    /// The Guide's croak, with no hook.
    pub fn abort() -> Self {
        Policy::Abort(None)
    }

    /// Croak, after calling `hook` with the numbers.
    pub fn abort_with(hook: impl FnMut(&Alarm) + Send + 'static) -> Self {
        Policy::Abort(Some(Box::new(hook)))
    }

    /// Recover with an async hook, e.g.
    /// `Policy::recover(|alarm| async move { resync().await; Recovery::Resume })`.
    pub fn recover<F, Fut>(mut hook: F) -> Self
    where
        F: FnMut(Alarm) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Recovery> + Send + 'static,
    {
        Policy::Recover(Box::new(move |alarm| Box::pin(hook(alarm))))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy::abort()
    }
}

impl fmt::Debug for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Policy::Abort(h) => write!(f, "Abort(hook: {})", h.is_some()),
            Policy::Recover(_) => f.write_str("Recover(..)"),
        }
    }
}

/// Configuration of a [`SnailSubscriber`].
#[derive(Debug, Default)]
pub struct SnailConfig {
    detector: DetectorConfig,
    format: WireFormat,
    policy: Policy,
}

impl SnailConfig {
    /// Defaults: 1 s maximum lag, estimated clock offset, any loss croaks,
    /// toolkit envelope only, abort policy.
    pub fn new() -> Self {
        Self::default()
    }
    /// The detector's limits.
    pub fn detector(mut self, d: DetectorConfig) -> Self {
        self.detector = d;
        self
    }
    /// Which stamp formats to accept (see [`WireFormat`]).
    pub fn format(mut self, f: WireFormat) -> Self {
        self.format = f;
        self
    }
    /// What to do on a croak.
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }
}

/// One received message, checked.
#[derive(Debug, Clone)]
pub struct Delivery {
    frames: Vec<Bytes>,
    stamp: Option<Stamp>,
    lag: Option<Duration>,
}

impl Delivery {
    /// The user's frames: the stamp frame is removed for the toolkit
    /// envelope; a Guide-format message is its one timestamp frame.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }
    /// Takes the frames.
    pub fn into_frames(self) -> Vec<Bytes> {
        self.frames
    }
    /// The stamp, or `None` for a message that carried none (counted in
    /// [`SubscriberStats::unstamped`] and delivered unchecked).
    pub fn stamp(&self) -> Option<&Stamp> {
        self.stamp.as_ref()
    }
    /// The offset-corrected lag, for stamped messages.
    pub fn lag(&self) -> Option<Duration> {
        self.lag
    }
}

/// Counters of a [`SnailSubscriber`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Messages taken from the socket.
    pub received: u64,
    /// Messages returned to the caller.
    pub delivered: u64,
    /// Messages without a valid stamp (delivered unchecked).
    pub unstamped: u64,
    /// Times the detector croaked.
    pub croaks: u64,
    /// Times a recovery hook ran.
    pub recoveries: u64,
    /// Messages discarded by [`Recovery::SkipUntilLagBelow`].
    pub skipped: u64,
    /// Receive errors from the socket (logged and skipped).
    pub socket_errors: u64,
}

/// A checked subscriber: `recv()` returns the next message, or the croak.
pub struct SnailSubscriber {
    socket: SubSocket,
    detector: Detector,
    format: WireFormat,
    policy: Policy,
    stats: SubscriberStats,
    /// The publisher whose backlog is being skipped, and until what lag.
    skipping: Option<(Bytes, Duration)>,
    lagging: bool,
}

impl fmt::Debug for SnailSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnailSubscriber")
            .field("detector", &self.detector)
            .field("format", &self.format)
            .field("policy", &self.policy)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SnailSubscriber {
    /// Wraps a SUB socket that is already connected and subscribed.
    pub fn new(socket: SubSocket, config: SnailConfig) -> Self {
        Self {
            socket,
            detector: Detector::new(config.detector),
            format: config.format,
            policy: config.policy,
            stats: SubscriberStats::default(),
            skipping: None,
            lagging: false,
        }
    }

    /// A new SUB socket attached to every endpoint and subscribed to
    /// `topics` (`&[""]` for everything).
    pub async fn attach(
        endpoints: &[EndpointSpec],
        topics: &[&str],
        config: SnailConfig,
    ) -> Result<Self, SnailError> {
        let mut socket = SubSocket::new();
        for t in topics {
            socket.subscribe(t).await?;
        }
        for ep in endpoints {
            ep.attach_to(&mut socket).await?;
        }
        Ok(Self::new(socket, config))
    }

    /// The detector (per-publisher counters and clock estimates).
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> SubscriberStats {
        self.stats
    }

    /// The underlying socket (to subscribe to more topics).
    pub fn socket_mut(&mut self) -> &mut SubSocket {
        &mut self.socket
    }

    /// The next message, checked at the current wall-clock time. Fails with
    /// [`SnailError::CannotKeepUp`] when the policy aborts; the caller
    /// should then stop (see [`SnailError::exit_code`]).
    ///
    /// A receive error (a peer's protocol garbage makes the `zeromq` crate
    /// drop that connection, and the SUB reconnects) is logged, counted in
    /// [`SubscriberStats::socket_errors`] and skipped: it never ends the
    /// subscriber.
    ///
    /// Cancel-safe while waiting for a message; cancelling during a
    /// recovery hook loses the message that fired.
    pub async fn recv(&mut self) -> Result<Delivery, SnailError> {
        loop {
            let frames = match self.socket.recv().await {
                Ok(msg) => msg.into_vec(),
                Err(cause) => {
                    self.stats.socket_errors += 1;
                    let n = self.stats.socket_errors;
                    if n.is_power_of_two() {
                        tracing::warn!(%cause, errors = n, "receive error, carrying on");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            if let Some(d) = self.check(frames, SystemTime::now()).await? {
                self.stats.delivered += 1;
                return Ok(d);
            }
        }
    }

    /// Checks one received message; `None` if it is to be skipped.
    async fn check(
        &mut self,
        mut frames: Vec<Bytes>,
        now: SystemTime,
    ) -> Result<Option<Delivery>, SnailError> {
        self.stats.received += 1;
        let stamp = match envelope::take_stamp(&mut frames, self.format) {
            Ok(stamp) => stamp,
            Err(cause) => {
                self.stats.unstamped += 1;
                let n = self.stats.unstamped;
                if n.is_power_of_two() {
                    tracing::warn!(%cause, unstamped = n, "message without a valid snail stamp, delivered unchecked");
                }
                return Ok(Some(Delivery {
                    frames,
                    stamp: None,
                    lag: None,
                }));
            }
        };
        let verdict = self.detector.handle_message(&stamp, now);
        let lag = verdict.lag();
        let skip_until = match &self.skipping {
            Some((p, t)) if p == stamp.publisher() => Some(*t),
            _ => None,
        };
        if let Some(threshold) = skip_until {
            if lag >= threshold {
                self.stats.skipped += 1;
                return Ok(None);
            }
            tracing::info!(
                skipped = self.stats.skipped,
                ?lag,
                "caught up after skipping the backlog"
            );
            self.skipping = None;
            self.detector.reset(stamp.publisher());
        } else {
            match verdict {
                Verdict::Healthy { .. } => self.lagging = false,
                Verdict::Warning(alarm) => {
                    if !std::mem::replace(&mut self.lagging, true) || alarm.gap().is_some() {
                        tracing::warn!(%alarm, "subscriber falling behind");
                    }
                }
                Verdict::Croak(alarm) => {
                    self.stats.croaks += 1;
                    let recovery = self.apply_policy(*alarm).await?;
                    self.detector.reset(stamp.publisher());
                    if let Recovery::SkipUntilLagBelow(t) = recovery {
                        self.skipping = Some((stamp.publisher().clone(), t));
                        self.stats.skipped += 1;
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(Delivery {
            frames,
            stamp: Some(stamp),
            lag: Some(lag),
        }))
    }

    /// Runs the policy: `Err` to abort, `Ok(r)` to go on as `r` says.
    async fn apply_policy(&mut self, alarm: Alarm) -> Result<Recovery, SnailError> {
        let recovery = match &mut self.policy {
            Policy::Abort(hook) => {
                croak_log(&alarm);
                if let Some(hook) = hook {
                    hook(&alarm);
                }
                return Err(SnailError::CannotKeepUp(Box::new(alarm)));
            }
            Policy::Recover(hook) => {
                self.stats.recoveries += 1;
                tracing::warn!(%alarm, "subscriber cannot keep up, recovering");
                hook(alarm.clone()).await
            }
        };
        if recovery == Recovery::Abort {
            croak_log(&alarm);
            return Err(SnailError::CannotKeepUp(Box::new(alarm)));
        }
        Ok(recovery)
    }
}

fn croak_log(alarm: &Alarm) {
    tracing::error!(
        publisher = %String::from_utf8_lossy(alarm.publisher()),
        lag_ms = alarm.lag().as_secs_f64() * 1e3,
        lost = alarm.lost(),
        cause = ?alarm.cause(),
        "E: subscriber cannot keep up, aborting"
    );
}
