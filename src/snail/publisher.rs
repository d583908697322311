//! A PUB socket that stamps every message it sends (toolkit envelope or the
//! Guide's C format), so that subscribers can detect lag and loss.
//!
//! Suicidal Snail (Guide ch. 5), publisher side: one PUB socket, bound or
//! connected through an [`EndpointSpec`].

use std::time::SystemTime;

use bytes::Bytes;
use zeromq::{PubSocket, Socket, SocketSend, ZmqMessage};

use super::envelope::{encode_guide, Stamper};
use super::error::SnailError;
use crate::endpoint::EndpointSpec;

/// How many sends between two `yield_now()`: the `zeromq` PUB's fan-out
/// task starves (and the PUB drops) if a tight send loop never yields.
const YIELD_EVERY: u32 = 256;

/// A stamping publisher.
pub struct SnailPublisher {
    socket: PubSocket,
    stamper: Stamper,
    since_yield: u32,
}

impl std::fmt::Debug for SnailPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnailPublisher")
            .field("stamper", &self.stamper)
            .finish_non_exhaustive()
    }
}

impl SnailPublisher {
    /// Wraps a PUB socket; `id` names this publisher in every stamp.
    pub fn new(socket: PubSocket, id: impl Into<Bytes>) -> Result<Self, SnailError> {
        Ok(Self {
            socket,
            stamper: Stamper::new(id)?,
            since_yield: 0,
        })
    }

    /// A new PUB socket attached to `endpoint`; returns it with the resolved
    /// endpoint (the real port for `@tcp://127.0.0.1:0`).
    pub async fn attach(
        endpoint: &EndpointSpec,
        id: impl Into<Bytes>,
    ) -> Result<(Self, String), SnailError> {
        let mut socket = PubSocket::new();
        let resolved = endpoint.attach_to(&mut socket).await?;
        Ok((Self::new(socket, id)?, resolved))
    }

    /// The stamper (publisher id, epoch, next sequence number).
    pub fn stamper(&self) -> &Stamper {
        &self.stamper
    }

    /// Sends `frames` (at least one; frame 0 is the topic) plus a stamp.
    /// An empty list sends nothing and consumes no sequence number.
    pub async fn send(&mut self, mut frames: Vec<Bytes>) -> Result<(), SnailError> {
        if frames.is_empty() {
            return Ok(());
        }
        self.stamper.stamp(&mut frames, SystemTime::now());
        self.send_raw(frames).await
    }

    /// Sends one Guide-format message: the current time in decimal ASCII
    /// milliseconds, as `suisnail.c` does.
    pub async fn send_guide_timestamp(&mut self) -> Result<(), SnailError> {
        self.send_raw(vec![encode_guide(SystemTime::now())]).await
    }

    async fn send_raw(&mut self, frames: Vec<Bytes>) -> Result<(), SnailError> {
        let msg = ZmqMessage::try_from(frames).expect("at least one frame");
        self.socket.send(msg).await?;
        self.since_yield += 1;
        if self.since_yield >= YIELD_EVERY {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    /// The underlying socket (e.g. for monitoring).
    pub fn socket_mut(&mut self) -> &mut PubSocket {
        &mut self.socket
    }

    /// Takes the socket back.
    pub fn into_inner(self) -> PubSocket {
        self.socket
    }
}
