//! The Clone client: its config, its handle ([`CloneClient`]) and its
//! background task, the Rust counterpart of the Guide's `clone` class (a
//! frontend talking to an agent over a pipe; Guide ch. 5, `clone.c` as used
//! by `clonecli6`), with tokio channels instead of PAIR sockets.
//!
//! The task owns the [`Agent`] state machine, one link (DEALER + SUB) to the
//! current server and one supervised PUB per server; the handle sends
//! commands over an mpsc channel and exposes broadcast streams of
//! [`Change`]s and of acknowledged updates' UUIDs ([`CloneClient::acks`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::agent::{kvset, Agent, AgentAction, AgentConfig, AgentStats, Change, Phase};
use super::error::CloneError;
use super::kvmsg::{KvMsg, Uuid};
use super::link::{spawn_link, spawn_publisher, CollectorSocket, LinkEvent, ServerAddr};
use crate::ratelog::LogLimiter;
use crate::task::{PatternTask, TaskPanicked};

/// Most servers a client talks to: a primary and a backup it fails over to.
pub const SERVER_MAX: usize = 2;

/// How a [`CloneClient`] behaves, built by chaining setters on
/// [`CloneClientConfig::new`]; each setter's doc gives its default. The
/// servers are given to [`CloneClient::connect`].
#[derive(Debug, Clone)]
pub struct CloneClientConfig {
    agent: AgentConfig,
    subscribe_settle: Duration,
    publish_settle: Duration,
    publish_queue: usize,
    change_capacity: usize,
    max_message_size: usize,
    collector_socket: CollectorSocket,
}

impl Default for CloneClientConfig {
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
            subscribe_settle: Duration::from_millis(250),
            publish_settle: Duration::from_millis(100),
            publish_queue: 10_000,
            change_capacity: 65_536,
            max_message_size: (16 << 20) + super::kvmsg::PROPS_MAX + 1024,
            collector_socket: CollectorSocket::Pub,
        }
    }
}

impl CloneClientConfig {
    /// The defaults (see each setter).
    pub fn new() -> Self {
        Self::default()
    }
    /// The state machine's timers and bounds. Default [`AgentConfig::new`].
    pub fn agent(mut self, agent: AgentConfig) -> Self {
        self.agent = agent;
        self
    }
    /// The longest wait for the first message on a new subscription before
    /// asking for a snapshot. The subscription travels ahead of the
    /// DEALER's own handshake, so this is a margin, not a guarantee; without
    /// a subtree a missed update is caught by gap detection anyway.
    /// Default 250 ms.
    pub fn subscribe_settle(mut self, wait: Duration) -> Self {
        self.subscribe_settle = wait;
        self
    }
    /// Pause after a PUB connects before sending KVSETs, so the collector's
    /// subscription has arrived. Default 100 ms.
    pub fn publish_settle(mut self, wait: Duration) -> Self {
        self.publish_settle = wait;
        self
    }
    /// KVSETs queued per server while its publisher (re)connects; beyond it
    /// a KVSET is dropped (`kvsets_dropped`). Default 10,000.
    pub fn publish_queue(mut self, n: usize) -> Self {
        self.publish_queue = n;
        self
    }
    /// Changes buffered for slow [`changes`](CloneClient::changes)
    /// receivers, and acknowledgements for slow
    /// [`acks`](CloneClient::acks) receivers (they see `Lagged` beyond
    /// this). Default 65,536.
    pub fn change_capacity(mut self, n: usize) -> Self {
        self.change_capacity = n;
        self
    }
    /// Largest message accepted from a server's snapshot or update socket
    /// (the sum of its frames); a larger one is dropped unread and counted
    /// (`oversized`). Default 16 MiB + 65 KiB, as the server's
    /// `max_kvset_size`.
    pub fn max_message_size(mut self, n: usize) -> Self {
        self.max_message_size = n;
        self
    }
    /// The socket KVSETs are sent with to each server's collector (`P+2`):
    /// [`CollectorSocket::Pub`] for CHP servers (`clonesrv6`, this crate's),
    /// [`CollectorSocket::Push`] for the PULL collector of the Guide's
    /// `clonesrv3` to `clonesrv5` (this crate's server takes both). Default
    /// `Pub`.
    pub fn collector_socket(mut self, socket: CollectorSocket) -> Self {
        self.collector_socket = socket;
        self
    }
}

/// Counters of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CloneClientStats {
    /// The state machine's counters.
    pub agent: AgentStats,
    /// Keys in the local map.
    pub keys: usize,
    /// KVSETs handed to publishers (counted once per server).
    pub kvsets_sent: u64,
    /// KVSETs dropped because a publisher's queue was full.
    pub kvsets_dropped: u64,
}

enum Cmd {
    Subtree(String, oneshot::Sender<Result<(), CloneError>>),
    Connect(ServerAddr, oneshot::Sender<Result<(), CloneError>>),
    Set(KvMsg),
    Get(Bytes, oneshot::Sender<Option<Bytes>>),
    Entries(oneshot::Sender<Vec<(Bytes, Bytes)>>),
    InFlight(oneshot::Sender<usize>),
}

/// A Clone client: a local copy of a server's map (or subtree) kept up to
/// date in the background.
///
/// Stop it with [`shutdown`](Self::shutdown), which waits and returns the
/// final counters. Dropping the handle stops the client too, without
/// waiting: its task, links and publishers run under a child of the token
/// given to [`start`](Self::start), which the drop cancels.
#[derive(Debug)]
#[must_use = "dropping the handle stops the client"]
pub struct CloneClient {
    cmds: mpsc::Sender<Cmd>,
    changes: broadcast::Sender<Change>,
    acks: broadcast::Sender<Uuid>,
    phase: watch::Receiver<Phase>,
    stats: Arc<Mutex<CloneClientStats>>,
    sent: Arc<AtomicU64>,
    task: PatternTask<CloneClientStats>,
}

impl CloneClient {
    /// Starts the client task under a child of `parent` (inside a tokio
    /// runtime). It does nothing until [`connect`](Self::connect); set the
    /// subtree, if any, first.
    pub async fn start(
        config: CloneClientConfig,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        let (cmds, rx) = mpsc::channel(256);
        let (changes, _) = broadcast::channel(config.change_capacity.max(1));
        let (acks, _) = broadcast::channel(config.change_capacity.max(1));
        let (phase_tx, phase) = watch::channel(Phase::Idle);
        let stats = Arc::new(Mutex::new(CloneClientStats::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let task = {
            let (changes, stats, sent) = (changes.clone(), stats.clone(), sent.clone());
            let acks = acks.clone();
            PatternTask::spawn(parent, move |token| {
                let task = Task {
                    config,
                    changes,
                    acks,
                    phase: phase_tx,
                    stats,
                    sent,
                    token,
                };
                task.run(rx).instrument(tracing::info_span!("clone_client"))
            })
        };
        Ok(Self {
            cmds,
            changes,
            acks,
            phase,
            stats,
            sent,
            task,
        })
    }

    /// Restricts the client to keys starting with `subtree` (e.g.
    /// `/client/`). Must precede [`connect`](Self::connect).
    pub async fn subtree(&self, subtree: &str) -> Result<(), CloneError> {
        self.ask(|r| Cmd::Subtree(subtree.to_owned(), r)).await?
    }

    /// Adds a server (at most [`SERVER_MAX`]); the first one starts
    /// synchronisation, the second is the failover target.
    pub async fn connect(&self, server: ServerAddr) -> Result<(), CloneError> {
        self.ask(|r| Cmd::Connect(server, r)).await?
    }

    /// Sets `key` to `value` on every server (an empty value deletes it);
    /// `ttl` makes it ephemeral. Applied to the local map at once if the
    /// key is in the subtree. Returns the update's UUID: it appears on
    /// [`acks`](Self::acks) once the server republished it (keys in the
    /// subtree only; until then the client re-sends it after every sync,
    /// see [`AgentConfig::max_in_flight`]).
    pub async fn set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<Uuid, CloneError> {
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let msg = kvset(key.into(), value.into(), ttl, uuid)?;
        // Fire and forget, like the Guide's agent: only the command queue's
        // capacity pushes back.
        self.cmds
            .send(Cmd::Set(msg))
            .await
            .map_err(|_| CloneError::Stopped)?;
        Ok(uuid)
    }

    /// The current value of `key`, or `None`.
    pub async fn get(&self, key: impl Into<Bytes>) -> Result<Option<Bytes>, CloneError> {
        let key = key.into();
        self.ask(|r| Cmd::Get(key, r)).await
    }

    /// A copy of the whole local map, sorted by key.
    pub async fn entries(&self) -> Result<Vec<(Bytes, Bytes)>, CloneError> {
        self.ask(Cmd::Entries).await
    }

    /// How many of this client's updates are still in flight (published,
    /// not yet acknowledged). Unlike `stats().agent.in_flight`, which is as
    /// of the task's last step, this counts after every earlier
    /// [`set`](Self::set) of this handle has been taken in, so `0` means
    /// every update set before the call was acknowledged (or superseded by
    /// a later acknowledged one of its key).
    pub async fn in_flight(&self) -> Result<usize, CloneError> {
        self.ask(Cmd::InFlight).await
    }

    /// A copy of the counters (as of the task's last step).
    pub fn stats(&self) -> CloneClientStats {
        let mut stats = self.stats.lock().expect("stats lock").clone();
        stats.kvsets_sent = self.sent.load(Ordering::Relaxed);
        stats
    }

    /// A stream of changes to the local map from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// A stream of the UUIDs (as [`set`](Self::set) returned them) of
    /// updates acknowledged from now on: seen republished by the server
    /// (on a KVPUB, or in a snapshot after a failover).
    pub fn acks(&self) -> broadcast::Receiver<Uuid> {
        self.acks.subscribe()
    }

    /// Where the state machine is now.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Waits until the client has a complete copy and applies live updates.
    pub async fn wait_active(&self) -> Result<Phase, CloneError> {
        let mut phase = self.phase.clone();
        let p = phase
            .wait_for(|p| matches!(p, Phase::Active { .. }))
            .await
            .map_err(|_| CloneError::Stopped)?;
        Ok(*p)
    }

    /// Stops this client only (its child token: the parent and other
    /// patterns under it keep running), waits for its task, and returns the
    /// final counters ([`CloneError::Panicked`] if the task panicked).
    pub async fn shutdown(self) -> Result<CloneClientStats, CloneError> {
        let sent = self.sent.clone();
        match self.task.shutdown().await {
            Ok(mut stats) => {
                stats.kvsets_sent = sent.load(Ordering::Relaxed);
                Ok(stats)
            }
            Err(TaskPanicked) => Err(CloneError::Panicked),
        }
    }

    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> Cmd) -> Result<T, CloneError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(cmd(tx))
            .await
            .map_err(|_| CloneError::Stopped)?;
        rx.await.map_err(|_| CloneError::Stopped)
    }
}

struct Task {
    config: CloneClientConfig,
    changes: broadcast::Sender<Change>,
    acks: broadcast::Sender<Uuid>,
    phase: watch::Sender<Phase>,
    stats: Arc<Mutex<CloneClientStats>>,
    sent: Arc<AtomicU64>,
    token: CancellationToken,
}

struct Servers {
    addrs: Vec<ServerAddr>,
    publishers: Vec<mpsc::Sender<KvMsg>>,
    link: Option<CancellationToken>,
    dropped: u64,
    dropped_log: LogLimiter,
}

impl Task {
    async fn run(self, mut cmds: mpsc::Receiver<Cmd>) -> CloneClientStats {
        let mut agent = Agent::new(self.config.agent.clone(), Bytes::new(), now());
        let (link_tx, mut link_rx) = mpsc::channel::<(u64, LinkEvent)>(4096);
        let mut servers = Servers {
            addrs: Vec::new(),
            publishers: Vec::new(),
            link: None,
            dropped: 0,
            dropped_log: LogLimiter::default(),
        };
        let mut batch = Vec::with_capacity(256);
        loop {
            let timeout = agent.poll_timeout().map(Instant::from_std);
            let cmd = tokio::select! {
                () = self.token.cancelled() => break,
                cmd = cmds.recv() => match cmd {
                    Some(cmd) => Some(cmd),
                    None => break,
                },
                n = link_rx.recv_many(&mut batch, 256) => {
                    if n == 0 { break }
                    None
                }
                () = sleep_until(timeout) => {
                    agent.handle_timeout(now());
                    None
                }
            };
            // Checked after the wait: a receiver taken just before a `set`
            // must see that set's change.
            agent.set_report_changes(self.changes.receiver_count() > 0);
            agent.set_report_acks(self.acks.receiver_count() > 0);
            if let Some(cmd) = cmd {
                self.command(cmd, &mut agent, &mut servers);
            }
            for (attempt, ev) in batch.drain(..) {
                match ev {
                    LinkEvent::Snapshot(r) => agent.handle_snapshot(attempt, r, now()),
                    LinkEvent::Update(u) => agent.handle_update(attempt, u, now()),
                    LinkEvent::Malformed(e) => agent.handle_malformed(attempt, &e, now()),
                    LinkEvent::Oversized(size) => agent.handle_oversized(attempt, size, now()),
                }
            }
            self.carry_out(&mut agent, &mut servers, &link_tx);
        }
        if let Some(link) = servers.link.take() {
            link.cancel();
        }
        info!("clone client stopped");
        Self::stats(&agent, &servers)
    }

    fn stats(agent: &Agent, servers: &Servers) -> CloneClientStats {
        CloneClientStats {
            agent: agent.stats().clone(),
            keys: agent.len(),
            kvsets_sent: 0, // read from the shared counter by the handle
            kvsets_dropped: servers.dropped,
        }
    }

    fn command(&self, cmd: Cmd, agent: &mut Agent, servers: &mut Servers) {
        match cmd {
            Cmd::Subtree(subtree, reply) => {
                let r = if servers.addrs.is_empty() {
                    *agent = Agent::new(self.config.agent.clone(), Bytes::from(subtree), now());
                    Ok(())
                } else {
                    Err(CloneError::SubtreeAfterConnect)
                };
                let _ = reply.send(r);
            }
            Cmd::Connect(addr, reply) => {
                if servers.addrs.len() >= SERVER_MAX {
                    warn!(server = %addr.snapshot(), "too many servers (max. 2)");
                    let _ = reply.send(Err(CloneError::TooManyServers(SERVER_MAX)));
                    return;
                }
                info!(server = %addr.snapshot(), "adding server");
                let (tx, rx) = mpsc::channel(self.config.publish_queue.max(1));
                let socket = (self.config.collector_socket, self.config.publish_settle);
                let sent = self.sent.clone();
                spawn_publisher(addr.clone(), socket, rx, sent, self.token.child_token());
                servers.publishers.push(tx);
                servers.addrs.push(addr);
                agent.handle_server_added(now());
                let _ = reply.send(Ok(()));
            }
            Cmd::Set(msg) => agent.handle_set(msg, now()),
            Cmd::Get(key, reply) => {
                let _ = reply.send(agent.get(&key).cloned());
            }
            Cmd::Entries(reply) => {
                let _ = reply.send(agent.entries());
            }
            Cmd::InFlight(reply) => {
                let _ = reply.send(agent.in_flight().0);
            }
        }
    }

    fn carry_out(
        &self,
        agent: &mut Agent,
        servers: &mut Servers,
        link_tx: &mpsc::Sender<(u64, LinkEvent)>,
    ) {
        while let Some(action) = agent.poll_action() {
            match action {
                AgentAction::Open { server, attempt } => {
                    if let Some(old) = servers.link.take() {
                        old.cancel();
                    }
                    let token = self.token.child_token();
                    let subtree = String::from_utf8_lossy(agent.subtree()).into_owned();
                    let addr = servers.addrs[server].clone();
                    let limits = (self.config.subscribe_settle, self.config.max_message_size);
                    spawn_link(
                        addr,
                        attempt,
                        subtree,
                        limits,
                        link_tx.clone(),
                        token.clone(),
                    );
                    servers.link = Some(token);
                }
                AgentAction::Publish(msg) => {
                    for publisher in &servers.publishers {
                        if publisher.try_send(msg.clone()).is_err() {
                            servers.dropped += 1;
                            if let Some(suppressed) = servers.dropped_log.check(now()) {
                                warn!(key = ?msg.key(), suppressed, "publisher queue full; KVSET dropped");
                            }
                        }
                    }
                }
            }
        }
        // Stats before phase and changes: whoever sees a new phase or a
        // change sees counters at least as new.
        *self.stats.lock().expect("stats lock") = Self::stats(agent, servers);
        while let Some(change) = agent.poll_change() {
            let _ = self.changes.send(change);
        }
        while let Some(uuid) = agent.poll_ack() {
            let _ = self.acks.send(uuid);
        }
        self.phase.send_if_modified(|p| {
            let new = agent.phase();
            let modified = *p != new;
            *p = new;
            modified
        });
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
