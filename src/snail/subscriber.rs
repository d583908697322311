//! The Suicidal Snail subscriber's driver: a SUB socket whose messages go
//! through the pure [`SnailCore`] as the caller takes them, and the policy
//! (abort, the Guide's croak, or an async recovery hook) when it croaks.
//!
//! Suicidal Snail (Guide ch. 5), subscriber side: one SUB socket connected
//! to one or more stamping publishers. The check happens as each message is
//! taken, before the caller works on it, exactly where the Guide checks.
//! This file only does I/O, runs hooks and logs; what to do with a message
//! is decided in [`core`](super::core).

use std::fmt;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SubSocket};

use super::core::{Croak, Recovery, SnailCore, SnailMessage, SnailStats, SnailStep};
use super::detector::{Alarm, Detector, DetectorConfig};
use super::envelope::WireFormat;
use super::error::SnailError;
use crate::endpoint::EndpointSpec;
use crate::ratelog::LogLimiter;

/// The default largest message a subscriber accepts, all frames: 1 MiB.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;

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
#[derive(Debug)]
pub struct SnailConfig {
    endpoints: Vec<EndpointSpec>,
    topics: Vec<String>,
    detector: DetectorConfig,
    format: WireFormat,
    policy: Policy,
    max_message_bytes: usize,
}

impl SnailConfig {
    /// A subscriber on `endpoints` (at least one; usually connects to the
    /// publishers). Defaults: subscribed to everything, 1 s maximum lag,
    /// estimated clock offset, any loss croaks, at most 1024 publishers
    /// tracked, toolkit envelope only, abort policy, messages up to 1 MiB.
    pub fn new(endpoints: impl IntoIterator<Item = EndpointSpec>) -> Self {
        Self {
            endpoints: endpoints.into_iter().collect(),
            topics: vec![String::new()],
            detector: DetectorConfig::default(),
            format: WireFormat::default(),
            policy: Policy::default(),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
        }
    }
    /// The topic prefixes to subscribe to (default `[""]`: everything). A
    /// topic filter hides other topics' sequence numbers: set
    /// [`DetectorConfig::max_lost`] to `None` with one.
    pub fn topics<T: Into<String>>(mut self, topics: impl IntoIterator<Item = T>) -> Self {
        self.topics = topics.into_iter().map(Into::into).collect();
        self
    }
    /// The detector's limits (default [`DetectorConfig::default`]),
    /// including the bound on tracked publishers.
    pub fn detector(mut self, d: DetectorConfig) -> Self {
        self.detector = d;
        self
    }
    /// Which stamp formats to accept (see [`WireFormat`]; default toolkit).
    pub fn format(mut self, f: WireFormat) -> Self {
        self.format = f;
        self
    }
    /// What to do on a croak (default [`Policy::abort`]).
    pub fn policy(mut self, p: Policy) -> Self {
        self.policy = p;
        self
    }
    /// The largest message accepted, all frames together (default 1 MiB).
    /// A larger one is dropped unread,
    /// counted in [`SnailStats::oversized`] and logged (at most once a
    /// second). The `zeromq` crate reads a whole frame before this crate
    /// sees it, so the memory of one frame in flight is not bounded here.
    pub fn max_message_bytes(mut self, n: usize) -> Self {
        self.max_message_bytes = n;
        self
    }
}

/// Rate limits of the subscriber's peer-triggered log lines.
#[derive(Debug, Default)]
struct Logs {
    oversized: LogLimiter,
    unstamped: LogLimiter,
    behind: LogLimiter,
    recovering: LogLimiter,
    socket: LogLimiter,
}

/// A checked subscriber: `recv()` returns the next message, or the croak.
///
/// It has no task of its own: the SUB socket is read, and each message
/// checked, inside [`recv`](Self::recv). Dropping the handle cancels its
/// child token and closes the socket at once.
#[must_use = "dropping the subscriber closes it"]
pub struct SnailSubscriber {
    socket: SubSocket,
    core: SnailCore,
    policy: Policy,
    token: CancellationToken,
    logs: Logs,
}

impl fmt::Debug for SnailSubscriber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnailSubscriber")
            .field("core", &self.core)
            .field("policy", &self.policy)
            .field("stopped", &self.token.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl SnailSubscriber {
    /// A new SUB socket subscribed to the configured topics and attached to
    /// every endpoint, under a child of `parent`. Fails with
    /// [`SnailError::NoEndpoint`] for an empty endpoint list, and with the
    /// socket's error if an endpoint cannot be attached.
    pub async fn start(
        config: SnailConfig,
        parent: &CancellationToken,
    ) -> Result<Self, SnailError> {
        if config.endpoints.is_empty() {
            return Err(SnailError::NoEndpoint);
        }
        let mut socket = SubSocket::new();
        for t in &config.topics {
            socket.subscribe(t).await?;
        }
        for ep in &config.endpoints {
            ep.attach_to(&mut socket).await?;
        }
        Ok(Self {
            socket,
            core: SnailCore::new(config.detector, config.format, config.max_message_bytes),
            policy: config.policy,
            token: parent.child_token(),
            logs: Logs::default(),
        })
    }

    /// The detector (per-publisher counters and clock estimates).
    pub fn detector(&self) -> &Detector {
        self.core.detector()
    }

    /// The subscriber's counters.
    pub fn stats(&self) -> SnailStats {
        self.core.stats()
    }

    /// Cancels the child token and returns the final counters. (There is
    /// no task to wait for; the socket is closed.)
    pub async fn shutdown(self) -> Result<SnailStats, SnailError> {
        self.token.cancel();
        Ok(self.core.stats())
    }

    /// The next message, checked at the current wall-clock time. Fails with
    /// [`SnailError::CannotKeepUp`] when the policy aborts (the caller
    /// should then stop, see [`SnailError::exit_code`]), and with
    /// [`SnailError::Stopped`] once the parent token is cancelled.
    ///
    /// A receive error (a peer's protocol garbage makes the `zeromq` crate
    /// drop that connection, and the SUB reconnects) is logged, counted in
    /// [`SnailStats::socket_errors`] and skipped: it never ends the
    /// subscriber; so are oversized messages.
    ///
    /// Cancel-safe while waiting for a message; cancelling during a
    /// recovery hook loses the message that fired.
    pub async fn recv(&mut self) -> Result<SnailMessage, SnailError> {
        loop {
            let received = tokio::select! {
                biased;
                () = self.token.cancelled() => return Err(SnailError::Stopped),
                r = self.socket.recv() => r,
            };
            let frames = match received {
                Ok(msg) => msg.into_vec(),
                Err(cause) => {
                    self.core.on_socket_error();
                    if let Some(more) = self.logs.socket.check(Instant::now()) {
                        tracing::warn!(%cause, errors = self.core.stats().socket_errors, suppressed = more, "receive error, carrying on");
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            };
            let step = self.core.on_message(frames, SystemTime::now());
            if let Some(msg) = self.act(step).await? {
                return Ok(msg);
            }
        }
    }

    /// Does what the core said; `Some` to return a message to the caller.
    async fn act(&mut self, step: SnailStep) -> Result<Option<SnailMessage>, SnailError> {
        let now = Instant::now();
        match step {
            SnailStep::Deliver(m) => Ok(Some(m)),
            SnailStep::Behind(m, alarm) => {
                if let Some(more) = self.logs.behind.check(now) {
                    tracing::warn!(%alarm, suppressed = more, "subscriber falling behind");
                }
                Ok(Some(m))
            }
            SnailStep::CaughtUp(m) => {
                tracing::info!(
                    skipped = self.core.stats().skipped,
                    lag = ?m.lag(),
                    "caught up after skipping the backlog"
                );
                Ok(Some(m))
            }
            SnailStep::Unstamped(m, cause) => {
                if let Some(more) = self.logs.unstamped.check(now) {
                    tracing::warn!(%cause, unstamped = self.core.stats().unstamped, suppressed = more, "message without a valid snail stamp, delivered unchecked");
                }
                Ok(Some(m))
            }
            SnailStep::Skipped => Ok(None),
            SnailStep::Oversized { bytes } => {
                if let Some(more) = self.logs.oversized.check(now) {
                    tracing::warn!(
                        bytes,
                        oversized = self.core.stats().oversized,
                        suppressed = more,
                        "message over max_message_bytes, dropped"
                    );
                }
                Ok(None)
            }
            SnailStep::Croak(croak) => self.apply_policy(croak).await,
        }
    }

    /// Runs the policy on a croak: `Err` to abort, `Ok` to go on.
    async fn apply_policy(&mut self, croak: Croak) -> Result<Option<SnailMessage>, SnailError> {
        let hook = match &mut self.policy {
            Policy::Abort(hook) => {
                let alarm = self.core.abort(croak);
                croak_log(&alarm);
                if let Some(hook) = hook {
                    hook(&alarm);
                }
                return Err(SnailError::CannotKeepUp(alarm));
            }
            Policy::Recover(hook) => hook,
        };
        if let Some(more) = self.logs.recovering.check(Instant::now()) {
            tracing::warn!(alarm = %croak.alarm(), suppressed = more, "subscriber cannot keep up, recovering");
        }
        let recovery = tokio::select! {
            biased;
            () = self.token.cancelled() => return Err(SnailError::Stopped),
            r = hook(croak.alarm().clone()) => r,
        };
        match self.core.recover(croak, recovery) {
            Ok(m) => Ok(m),
            Err(alarm) => {
                croak_log(&alarm);
                Err(SnailError::CannotKeepUp(alarm))
            }
        }
    }
}

impl Drop for SnailSubscriber {
    fn drop(&mut self) {
        self.token.cancel();
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
