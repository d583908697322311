//! A PUB socket that stamps every message it sends (toolkit envelope or the
//! Guide's C format), so that subscribers can detect lag and loss.
//!
//! Suicidal Snail (Guide ch. 5), publisher side: one PUB socket, bound or
//! connected through an [`EndpointSpec`]. The stamping itself is the pure
//! [`Stamper`]; this file only sends.

use std::time::SystemTime;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use super::envelope::{encode_guide, Stamper};
use super::error::SnailError;
use crate::endpoint::EndpointSpec;

/// How many sends between two `yield_now()`: the `zeromq` PUB's fan-out
/// task starves (and the PUB drops) if a tight send loop never yields.
const YIELD_EVERY: u32 = 256;

/// Configuration of a [`SnailPublisher`].
#[derive(Debug, Clone)]
pub struct SnailPublisherConfig {
    endpoint: EndpointSpec,
    id: Bytes,
    epoch: Option<u32>,
}

impl SnailPublisherConfig {
    /// A publisher on `endpoint` (usually a bind) naming itself `id` in
    /// every stamp (at most 255 bytes; give each publisher its own).
    /// Default: a random epoch per start.
    pub fn new(endpoint: EndpointSpec, id: impl Into<Bytes>) -> Self {
        Self {
            endpoint,
            id: id.into(),
            epoch: None,
        }
    }

    /// A fixed instance epoch instead of a random one (default random: a
    /// restarted publisher must not look like the old instance).
    pub fn epoch(mut self, epoch: u32) -> Self {
        self.epoch = Some(epoch);
        self
    }
}

/// Counters of a [`SnailPublisher`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnailPublisherStats {
    /// Messages sent (stamped or Guide-format).
    pub sent: u64,
}

/// A stamping publisher.
///
/// It has no task of its own: [`send`](Self::send) stamps and sends.
/// Dropping the handle cancels its child token and closes the socket.
#[must_use = "dropping the publisher closes it"]
pub struct SnailPublisher {
    socket: PubSocket,
    stamper: Stamper,
    endpoint: String,
    token: CancellationToken,
    stats: SnailPublisherStats,
    since_yield: u32,
}

impl std::fmt::Debug for SnailPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnailPublisher")
            .field("endpoint", &self.endpoint)
            .field("stamper", &self.stamper)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl SnailPublisher {
    /// A new PUB socket attached to the configured endpoint (bound before
    /// this returns, so port 0 resolves), under a child of `parent`. Fails
    /// with [`SnailError::Envelope`] for an id longer than 255 bytes.
    pub async fn start(
        config: SnailPublisherConfig,
        parent: &CancellationToken,
    ) -> Result<Self, SnailError> {
        let stamper = match config.epoch {
            Some(e) => Stamper::with_epoch(config.id, e)?,
            None => Stamper::new(config.id)?,
        };
        let mut socket = PubSocket::new();
        let endpoint = config.endpoint.attach_to(&mut socket).await?;
        Ok(Self {
            socket,
            stamper,
            endpoint,
            token: parent.child_token(),
            stats: SnailPublisherStats::default(),
            since_yield: 0,
        })
    }

    /// The resolved endpoint (the real port for `@tcp://127.0.0.1:0`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The stamper (publisher id, epoch, next sequence number).
    pub fn stamper(&self) -> &Stamper {
        &self.stamper
    }

    /// The publisher's counters.
    pub fn stats(&self) -> SnailPublisherStats {
        self.stats
    }

    /// Cancels the child token and returns the final counters (there is no
    /// task to wait for; the socket is closed).
    pub async fn shutdown(self) -> Result<SnailPublisherStats, SnailError> {
        self.token.cancel();
        Ok(self.stats)
    }

    /// Sends `frames` (at least one; frame 0 is the topic) plus a stamp.
    /// An empty list sends nothing and consumes no sequence number. Fails
    /// with [`SnailError::Stopped`] once the parent token is cancelled.
    pub async fn send(&mut self, mut frames: Vec<Bytes>) -> Result<(), SnailError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.check_running()?;
        self.stamper.stamp(&mut frames, SystemTime::now());
        self.send_raw(frames).await
    }

    /// Sends one Guide-format message: the current time in decimal ASCII
    /// milliseconds, as `suisnail.c` does.
    pub async fn send_guide_timestamp(&mut self) -> Result<(), SnailError> {
        self.check_running()?;
        self.send_raw(vec![encode_guide(SystemTime::now())]).await
    }

    fn check_running(&self) -> Result<(), SnailError> {
        if self.token.is_cancelled() {
            return Err(SnailError::Stopped);
        }
        Ok(())
    }

    async fn send_raw(&mut self, frames: Vec<Bytes>) -> Result<(), SnailError> {
        let msg = ZmqMessage::try_from(frames).expect("at least one frame");
        self.socket.send(msg).await?;
        self.stats.sent += 1;
        self.since_yield += 1;
        if self.since_yield >= YIELD_EVERY {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}

impl Drop for SnailPublisher {
    fn drop(&mut self) {
        self.token.cancel();
    }
}
