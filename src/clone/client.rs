//! The Clone client handle and its background task: the Rust counterpart of
//! the Guide's `clone` class (a frontend talking to an agent over a pipe),
//! with tokio channels instead of PAIR sockets.
//!
//! Guide pattern: the clone class and agent (A.16). The task owns the
//! [`Agent`] state machine, one link (DEALER + SUB) to the current server
//! and one supervised PUB per server; the handle sends commands over an
//! mpsc channel and exposes a broadcast stream of [`Change`]s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use super::agent::{kvset, Agent, AgentAction, AgentConfig, AgentStats, Change, Phase};
use super::error::CloneError;
use super::kvmsg::KvMsg;
use super::link::{spawn_link, spawn_publisher, LinkEvent, ServerAddr};

/// Most servers a client talks to (a Binary Star pair).
pub const SERVER_MAX: usize = 2;

/// How the client behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The state machine's timers and bounds.
    pub agent: AgentConfig,
    /// The longest wait for the first message on a new subscription before
    /// asking for a snapshot. The subscription travels ahead of the
    /// DEALER's own handshake, so this is a margin, not a guarantee; without
    /// a subtree a missed update is caught by gap detection anyway.
    pub subscribe_settle: Duration,
    /// Pause after a PUB connects before sending KVSETs, so the collector's
    /// subscription has arrived.
    pub publish_settle: Duration,
    /// KVSETs queued per server while its publisher (re)connects.
    pub publish_queue: usize,
    /// Changes buffered for slow [`changes`](CloneClient::changes)
    /// receivers (they see `Lagged` beyond this).
    pub change_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            agent: AgentConfig::default(),
            subscribe_settle: Duration::from_millis(250),
            publish_settle: Duration::from_millis(100),
            publish_queue: 10_000,
            change_capacity: 65_536,
        }
    }
}

/// Counters of a client.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
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
    Stats(oneshot::Sender<ClientStats>),
}

/// A Clone client: a local copy of a server's map (or subtree) kept up to
/// date in the background.
#[derive(Debug)]
#[must_use = "the client's task stops when the handle is dropped"]
pub struct CloneClient {
    cmds: mpsc::Sender<Cmd>,
    changes: broadcast::Sender<Change>,
    phase: watch::Receiver<Phase>,
    token: CancellationToken,
    _stop_on_drop: tokio_util::sync::DropGuard,
}

impl CloneClient {
    /// Starts the client task (inside a tokio runtime) under a child of
    /// `parent`. Set the subtree, then connect.
    pub fn new(config: ClientConfig, parent: &CancellationToken) -> Self {
        let token = parent.child_token();
        let (cmds, rx) = mpsc::channel(256);
        let (changes, _) = broadcast::channel(config.change_capacity.max(1));
        let (phase_tx, phase) = watch::channel(Phase::Idle);
        let task = Task {
            config,
            changes: changes.clone(),
            phase: phase_tx,
            token: token.clone(),
        };
        tokio::spawn(task.run(rx).instrument(tracing::info_span!("clone_client")));
        Self {
            cmds,
            changes,
            phase,
            _stop_on_drop: token.clone().drop_guard(),
            token,
        }
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
    /// key is in the subtree.
    pub async fn set(
        &self,
        key: impl Into<Bytes>,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<(), CloneError> {
        let uuid = *uuid::Uuid::new_v4().as_bytes();
        let msg = kvset(key.into(), value.into(), ttl, uuid)?;
        // Fire and forget, like the Guide's agent: only the command queue's
        // capacity pushes back.
        self.cmds
            .send(Cmd::Set(msg))
            .await
            .map_err(|_| CloneError::Stopped)
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

    /// The counters.
    pub async fn stats(&self) -> Result<ClientStats, CloneError> {
        self.ask(Cmd::Stats).await
    }

    /// A stream of changes to the local map from now on.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
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

    /// Stops the background task.
    pub fn stop(&self) {
        self.token.cancel();
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
    config: ClientConfig,
    changes: broadcast::Sender<Change>,
    phase: watch::Sender<Phase>,
    token: CancellationToken,
}

struct Servers {
    addrs: Vec<ServerAddr>,
    publishers: Vec<mpsc::Sender<KvMsg>>,
    link: Option<CancellationToken>,
    sent: Arc<AtomicU64>,
    dropped: u64,
}

impl Task {
    async fn run(self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut agent = Agent::new(self.config.agent.clone(), Bytes::new(), now());
        let (link_tx, mut link_rx) = mpsc::channel::<(u64, LinkEvent)>(4096);
        let mut servers = Servers {
            addrs: Vec::new(),
            publishers: Vec::new(),
            link: None,
            sent: Arc::new(AtomicU64::new(0)),
            dropped: 0,
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
            if let Some(cmd) = cmd {
                self.command(cmd, &mut agent, &mut servers);
            }
            for (attempt, ev) in batch.drain(..) {
                match ev {
                    LinkEvent::Snapshot(r) => agent.handle_snapshot(attempt, r, now()),
                    LinkEvent::Update(u) => agent.handle_update(attempt, u, now()),
                    LinkEvent::Malformed(e) => agent.handle_malformed(attempt, &e),
                }
            }
            self.carry_out(&mut agent, &mut servers, &link_tx);
        }
        if let Some(link) = servers.link.take() {
            link.cancel();
        }
        info!("clone client stopped");
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
                let (settle, sent) = (self.config.publish_settle, servers.sent.clone());
                spawn_publisher(addr.clone(), settle, rx, sent, self.token.child_token());
                servers.publishers.push(tx);
                servers.addrs.push(addr);
                agent.handle_server_added(now());
                let _ = reply.send(Ok(()));
            }
            Cmd::Set(msg) => agent.handle_set(msg),
            Cmd::Get(key, reply) => {
                let _ = reply.send(agent.get(&key).cloned());
            }
            Cmd::Entries(reply) => {
                let _ = reply.send(agent.entries());
            }
            Cmd::Stats(reply) => {
                let _ = reply.send(ClientStats {
                    agent: agent.stats().clone(),
                    keys: agent.len(),
                    kvsets_sent: servers.sent.load(Ordering::Relaxed),
                    kvsets_dropped: servers.dropped,
                });
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
                    let settle = self.config.subscribe_settle;
                    spawn_link(
                        addr,
                        attempt,
                        subtree,
                        settle,
                        link_tx.clone(),
                        token.clone(),
                    );
                    servers.link = Some(token);
                }
                AgentAction::Publish(msg) => {
                    for publisher in &servers.publishers {
                        if publisher.try_send(msg.clone()).is_err() {
                            servers.dropped += 1;
                            warn!(key = ?msg.key(), "publisher queue full; KVSET dropped");
                        }
                    }
                }
            }
        }
        while let Some(change) = agent.poll_change() {
            let _ = self.changes.send(change);
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
