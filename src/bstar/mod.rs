//! Binary Star: a primary and a backup server that agree, without a third
//! party, which of them serves clients (Guide ch. 4, "High-Availability
//! Pair (Binary Star Pattern)", `bstarsrv`, `bstar`, `bstarsrv2`; used by
//! the Clone pair of ch. 5, `clonesrv6`).
//!
//! ```text
//!   primary                                    backup
//!   state PUB  :5003 ───"1".."4" every 1 s───▶ state SUB  (connects :5003)
//!   state SUB  (connects :5004) ◀───"1".."4"── state PUB  :5004
//!   voter ROUTER :5001 ◀─ client REQ ─┐  ┌─▶ voter ROUTER :5002
//!                                     client (fails over)
//! ```
//!
//! Each server publishes its state as one decimal ASCII frame every
//! heartbeat; the peer is dead after two silent heartbeats; a client
//! request (a *vote*) is served only by the active server, and a passive
//! server takes over only when a vote reaches it after the peer died.
//! The pieces:
//! - [`Fsm`]: the pure state machine (every row of the Guide's table, the
//!   fatal cases, the epoch and the restart rule that fixes the Guide's
//!   dual-active race), with [`FsmConfig`], [`BstarState`], [`BstarEvent`],
//!   [`BstarAction`], [`Vote`], [`FatalCause`], [`FsmStats`];
//! - [`EpochFile`]: the durable promotion epoch;
//! - [`BinaryStar`]: a server of the pair with its voter ROUTER, following
//!   the crate's handle shape (crate docs, "Using a pattern"): accepted
//!   requests come out of [`BinaryStar::recv`] and are answered with
//!   [`BstarRequest::reply`].
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::bstar::{BinaryStar, BinaryStarConfig, Side};
//! use zpatterns::endpoint::EndpointSpec;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let parent = CancellationToken::new();
//! let config = BinaryStarConfig::new(
//!     Side::Primary,
//!     EndpointSpec::bind("tcp://*:5003")?,
//!     EndpointSpec::connect("tcp://localhost:5004")?,
//!     EndpointSpec::bind("tcp://*:5001")?,
//! );
//! let mut server = BinaryStar::start(config, &parent).await?;
//! while let Some(request) = server.recv().await {
//!     let echo = request.frames().to_vec();
//!     request.reply(echo).await?; // echo, as the Guide's bstarsrv
//! }
//! let stats = server.shutdown().await?;
//! println!("{} votes accepted", stats.fsm.votes_accepted);
//! # Ok(()) }
//! ```
//!
//! See `patterns/bstar.md` for the wire contract, the race and its fix,
//! the guarantees and what Binary Star is not (consensus).

mod error;
mod fsm;
mod link;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};
use zeromq::prelude::*;
use zeromq::{RouterSendHalf, RouterSocket, ZmqMessage};

pub use error::BstarError;
pub use fsm::{
    BstarAction, BstarEvent, BstarState, FatalCause, Fsm, FsmConfig, FsmStats, Side, Vote,
};
pub use link::EpochFile;
pub(crate) use link::StateLink;

use crate::endpoint::{Attach, EndpointSpec};
use crate::ratelog::LogLimiter;
use crate::task::{PatternTask, TaskPanicked};

/// One server of a Binary Star pair: its side, its three endpoints, then
/// chained setters (each doc gives its default).
#[derive(Debug, Clone)]
pub struct BinaryStarConfig {
    side: Side,
    local_state: EndpointSpec,
    remote_state: EndpointSpec,
    voter: EndpointSpec,
    fsm: FsmConfig,
    epoch_file: Option<PathBuf>,
    max_request: usize,
    max_pending: usize,
}

impl BinaryStarConfig {
    /// `local_state`: where this server's state PUB binds (`@`);
    /// `remote_state`: the peer's state PUB, which the state SUB connects
    /// to (`>`); `voter`: where the client-facing ROUTER binds (`@`).
    pub fn new(
        side: Side,
        local_state: EndpointSpec,
        remote_state: EndpointSpec,
        voter: EndpointSpec,
    ) -> Self {
        Self {
            side,
            local_state,
            remote_state,
            voter,
            fsm: FsmConfig::new(),
            epoch_file: None,
            max_request: 64 << 10,
            max_pending: 1024,
        }
    }

    /// The state machine's timers. Default [`FsmConfig::new`] (heartbeat
    /// 1 s, peer dead after 2 s).
    pub fn fsm(mut self, fsm: FsmConfig) -> Self {
        self.fsm = fsm;
        self
    }

    /// Keep the promotion epoch in this file (see [`EpochFile`]), so that
    /// a restarted server knows it. Default none: the epoch lives in
    /// memory and a restart begins at 0.
    pub fn epoch_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.epoch_file = Some(path.into());
        self
    }

    /// The largest voter message accepted, in payload bytes (all frames
    /// but the routing id). Bigger ones are dropped unread (no vote, no
    /// reply) and counted in [`BinaryStarStats::requests_oversized`].
    /// Default 64 KiB.
    pub fn max_request(mut self, bytes: usize) -> Self {
        self.max_request = bytes;
        self
    }

    /// Accepted requests waiting for [`BinaryStar::recv`]; beyond this the
    /// server drops new ones (counted in
    /// [`BinaryStarStats::requests_dropped_busy`]; the client retries).
    /// Also bounds replies waiting to be sent. Default 1024.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n.max(1);
        self
    }
}

/// Where a running server listens (with the real ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryStarEndpoints {
    /// The state PUB.
    pub state: String,
    /// The voter ROUTER.
    pub voter: String,
}

/// Counters of a [`BinaryStar`] server.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BinaryStarStats {
    /// The state machine's counters (votes, peer states, bad frames,
    /// promotions).
    pub fsm: FsmStats,
    /// The state now.
    pub state: BstarState,
    /// The highest epoch known.
    pub epoch: u64,
    /// Voter messages over `max_request`, dropped.
    pub requests_oversized: u64,
    /// Accepted requests dropped because `max_pending` were waiting.
    pub requests_dropped_busy: u64,
    /// Replies sent on the voter.
    pub replies_sent: u64,
    /// Replies the ROUTER could not send (the client was gone).
    pub reply_errors: u64,
}

/// An accepted client request (a vote this server won).
#[derive(Debug)]
pub struct BstarRequest {
    identity: Bytes,
    frames: Vec<Bytes>,
    replies: mpsc::Sender<ZmqMessage>,
}

impl BstarRequest {
    /// The request's frames after the ROUTER's routing id (for a REQ
    /// client the first one is REQ's empty delimiter).
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    /// The client's routing id on the voter ROUTER.
    pub fn identity(&self) -> &Bytes {
        &self.identity
    }

    /// Sends `frames` back to the client (behind its routing id; a REQ
    /// client needs the empty delimiter first, as [`frames`](Self::frames)
    /// has it). Waits while `max_pending` replies are queued.
    pub async fn reply(self, frames: Vec<Bytes>) -> Result<(), BstarError> {
        if frames.is_empty() {
            return Err(BstarError::Config(
                "a reply needs at least one frame".into(),
            ));
        }
        let msg = crate::frames::message(std::iter::once(self.identity).chain(frames))
            .expect("two frames at least");
        self.replies
            .send(msg)
            .await
            .map_err(|_| BstarError::Stopped)
    }
}

/// A running Binary Star server.
///
/// Stop it with [`shutdown`](Self::shutdown), which waits and returns the
/// final counters, or the error that ended it ([`BstarError::Fatal`] when
/// the state machine aborted). Dropping the handle stops the server too,
/// without waiting: its task cancels its own token (a child of the one
/// given to [`start`](Self::start)). Cancelling the parent stops it as well.
#[derive(Debug)]
#[must_use = "dropping the handle stops the server"]
pub struct BinaryStar {
    endpoints: BinaryStarEndpoints,
    requests: mpsc::Receiver<BstarRequest>,
    state: watch::Receiver<BstarState>,
    stats: Arc<Mutex<BinaryStarStats>>,
    task: PatternTask<Result<(), BstarError>>,
}

impl BinaryStar {
    /// Reads the epoch file (if any), binds the state PUB and the voter
    /// ROUTER, starts connecting the state SUB in the background (the peer
    /// may be down) and runs the server under a child of `parent`.
    pub async fn start(
        config: BinaryStarConfig,
        parent: &CancellationToken,
    ) -> Result<Self, BstarError> {
        if config.voter.attach() != Attach::Bind {
            return Err(BstarError::Config(format!(
                "the voter ROUTER binds: give its endpoint as @{} (got {})",
                config.voter.endpoint(),
                config.voter
            )));
        }
        let (epoch_file, epoch) = match &config.epoch_file {
            Some(path) => {
                let (file, epoch) = EpochFile::open(path.clone())?;
                (Some(file), epoch)
            }
            None => (None, 0),
        };
        let token = parent.child_token();
        let mut router = RouterSocket::new();
        let voter = config.voter.attach_to(&mut router).await?;
        let (link, state_ep) =
            StateLink::start(&config.local_state, &config.remote_state, &token).await?;
        let endpoints = BinaryStarEndpoints {
            state: state_ep,
            voter,
        };
        info!(side = ?config.side, state = %endpoints.state, voter = %endpoints.voter,
              remote = %config.remote_state, epoch, "binary star listening");
        let fsm = Fsm::new(config.side, config.fsm.clone(), epoch, now());
        let (state_tx, state_rx) = watch::channel(fsm.state());
        let stats = Arc::new(Mutex::new(BinaryStarStats {
            fsm: fsm.stats().clone(),
            state: fsm.state(),
            epoch,
            requests_oversized: 0,
            requests_dropped_busy: 0,
            replies_sent: 0,
            reply_errors: 0,
        }));
        let (req_tx, req_rx) = mpsc::channel(config.max_pending);
        let driver = Driver {
            fsm,
            link,
            epoch_file,
            state_tx,
            stats: stats.clone(),
            requests: req_tx,
            max_request: config.max_request,
            max_pending: config.max_pending,
            io: Io::default(),
        };
        let span = tracing::info_span!("bstar", side = ?config.side, voter = %endpoints.voter);
        let join = tokio::spawn(driver.run(router, token.clone()).instrument(span));
        Ok(Self {
            endpoints,
            requests: req_rx,
            state: state_rx,
            stats,
            task: PatternTask::from_parts(token, join),
        })
    }

    /// The next accepted request; `None` once the server has stopped.
    pub async fn recv(&mut self) -> Option<BstarRequest> {
        self.requests.recv().await
    }

    /// The bound endpoints.
    pub fn endpoints(&self) -> &BinaryStarEndpoints {
        &self.endpoints
    }

    /// The state now.
    pub fn state(&self) -> BstarState {
        *self.state.borrow()
    }

    /// A receiver of state changes; it closes when the server stops (after
    /// a fatal error, or shutdown).
    pub fn watch_state(&self) -> watch::Receiver<BstarState> {
        self.state.clone()
    }

    /// A copy of the counters.
    pub fn stats(&self) -> BinaryStarStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// Stops this server only, waits for its task, and returns the final
    /// counters, or the error that had ended it ([`BstarError::Fatal`]
    /// after a dual-active, dual-passive or fencing abort).
    pub async fn shutdown(self) -> Result<BinaryStarStats, BstarError> {
        let stats = self.stats.clone();
        match self.task.shutdown().await {
            Ok(Ok(())) => Ok(stats.lock().expect("stats lock").clone()),
            Ok(Err(e)) => Err(e),
            Err(TaskPanicked) => Err(BstarError::Panicked),
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

#[derive(Debug, Default)]
struct Io {
    requests_oversized: u64,
    requests_dropped_busy: u64,
    replies_sent: u64,
    reply_errors: u64,
    oversized_log: LogLimiter,
    busy_log: LogLimiter,
}

struct Driver {
    fsm: Fsm,
    link: StateLink,
    epoch_file: Option<EpochFile>,
    state_tx: watch::Sender<BstarState>,
    stats: Arc<Mutex<BinaryStarStats>>,
    requests: mpsc::Sender<BstarRequest>,
    max_request: usize,
    max_pending: usize,
    io: Io,
}

impl Driver {
    async fn run(
        mut self,
        router: RouterSocket,
        token: CancellationToken,
    ) -> Result<(), BstarError> {
        let (mut router_tx, mut router_rx) = router.split();
        let (reply_tx, mut reply_rx) = mpsc::channel::<ZmqMessage>(self.max_pending);
        let result = loop {
            let deadline = Instant::from_std(self.fsm.poll_timeout());
            let step = tokio::select! {
                () = token.cancelled() => break Ok(()),
                () = tokio::time::sleep_until(deadline) => {
                    let actions = self.fsm.handle_timeout(now());
                    self.apply(actions).await
                }
                m = self.link.recv() => match m {
                    Some(frames) => {
                        let actions = self.fsm.handle_peer_state(&frames, now());
                        self.apply(actions).await
                    }
                    None => break Ok(()),
                },
                Some(reply) = reply_rx.recv() => {
                    self.send_reply(&mut router_tx, reply).await;
                    Ok(())
                }
                m = router_rx.recv() => match m {
                    Ok(msg) => self.vote(msg, &reply_tx).await,
                    Err(e) => {
                        warn!(cause = %e, "voter receive failed");
                        Ok(())
                    }
                },
            };
            self.publish_stats();
            if let Err(e) = step {
                break Err(e);
            }
        };
        self.publish_stats();
        drop(router_rx);
        drop(router_tx);
        self.link.close().await;
        info!("binary star stopped");
        result
    }

    /// A voter message: size check, then the FSM decides. Peer states
    /// already queued are applied first, so a vote never overtakes a state
    /// message that arrived before it.
    async fn vote(
        &mut self,
        msg: ZmqMessage,
        replies: &mpsc::Sender<ZmqMessage>,
    ) -> Result<(), BstarError> {
        let mut frames = msg.into_vec();
        let size: usize = frames.iter().skip(1).map(Bytes::len).sum();
        if size > self.max_request {
            self.io.requests_oversized += 1;
            if let Some(suppressed) = self.io.oversized_log.check(now()) {
                warn!(
                    size,
                    max = self.max_request,
                    suppressed,
                    "oversized voter message dropped"
                );
            }
            return Ok(());
        }
        for _ in 0..64 {
            let Some(state) = self.link.try_recv() else {
                break;
            };
            let actions = self.fsm.handle_peer_state(&state, now());
            self.apply(actions).await?;
        }
        if self.fsm.fatal().is_some() {
            return Ok(());
        }
        let (vote, actions) = self.fsm.handle_vote(now());
        self.apply(actions).await?;
        if vote == Vote::Reject || frames.is_empty() {
            return Ok(());
        }
        let identity = frames.remove(0);
        let request = BstarRequest {
            identity,
            frames,
            replies: replies.clone(),
        };
        if self.requests.try_send(request).is_err() {
            self.io.requests_dropped_busy += 1;
            if let Some(suppressed) = self.io.busy_log.check(now()) {
                warn!(
                    max = self.max_pending,
                    suppressed, "application busy: request dropped"
                );
            }
        }
        Ok(())
    }

    async fn send_reply(&mut self, router: &mut RouterSendHalf, reply: ZmqMessage) {
        match router.send(reply).await {
            Ok(()) => self.io.replies_sent += 1,
            Err(e) => {
                self.io.reply_errors += 1;
                tracing::debug!(cause = %e, "reply not sent");
            }
        }
    }

    async fn apply(&mut self, actions: Vec<BstarAction>) -> Result<(), BstarError> {
        for action in actions {
            match action {
                BstarAction::Publish(frame) => self.link.publish(frame).await?,
                BstarAction::Persist(epoch) => {
                    if let Some(file) = self.epoch_file.clone() {
                        tokio::task::spawn_blocking(move || file.store(epoch))
                            .await
                            .map_err(|_| BstarError::Panicked)??;
                    }
                }
                BstarAction::BecameActive { epoch } => {
                    info!(epoch, "active");
                    self.state_tx.send_replace(BstarState::Active);
                }
                BstarAction::BecamePassive => {
                    self.state_tx.send_replace(BstarState::Passive);
                }
                BstarAction::Fatal(cause) => return Err(BstarError::Fatal(cause)),
            }
        }
        Ok(())
    }

    fn publish_stats(&self) {
        let mut s = self.stats.lock().expect("stats lock");
        *s = BinaryStarStats {
            fsm: self.fsm.stats().clone(),
            state: self.fsm.state(),
            epoch: self.fsm.epoch(),
            requests_oversized: self.io.requests_oversized,
            requests_dropped_busy: self.io.requests_dropped_busy,
            replies_sent: self.io.replies_sent,
            reply_errors: self.io.reply_errors,
        };
    }
}
