//! The highly available Clone server (Guide ch. 5, model 6, `clonesrv6`):
//! one server of a Binary Star pair, its config ([`ClonePairConfig`]) and
//! its task, which joins the pure Binary Star [`Fsm`] and the pure
//! [`Store`] (in its passive and active roles) to the sockets.
//!
//! Sockets of one server (Guide ports for the primary; the backup's are in
//! brackets):
//!
//! ```text
//!  state PUB   @5003 [5004]  ── "1".."4" every heartbeat ──▶ peer's state SUB
//!  state SUB   >5004 [5003]  ◀── the peer's state
//!  ROUTER      @5556 [5566]  snapshots; every ICANHAZ? is a Binary Star vote
//!  PUB         @5557 [5567]  KVPUB, HUGZ (epoch property), in every state
//!  collector   @5558 [5568]  client KVSETs (clients publish to both servers)
//!  peer SUB    >5567 [5557]  the peer's updates: applied while passive; the
//!                            epoch they carry is read in every state
//!  DEALER      >5566 [5556]  snapshot from the active (on demand, passive)
//! ```
//!
//! A vote the FSM rejects is read and discarded: the client gets no reply
//! and fails over. A message on the snapshot socket that is not a valid
//! `ICANHAZ?` is never counted as a vote (so garbage cannot trigger a
//! failover); it is counted and dropped as on a single server.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};
use zeromq::prelude::*;
use zeromq::{DealerSocket, PubSocket, RouterSocket, SubSocket};

use super::collector::Collector;
use super::error::CloneError;
use super::kvmsg::KvMsg;
use super::link::ServerAddr;
use super::proto::{Icanhaz, SnapshotReply, Update};
use super::server::{
    bind, now, publish, received, with_collector, CloneServer, CloneServerConfig,
    CloneServerEndpoints, CloneServerStats, Finished, SnapshotStreams,
};
use super::store::{Store, StoreAction};
use crate::bstar::{
    BstarAction, BstarState, EpochFile, Fsm, FsmConfig, FsmStats, Side, StateLink, Vote,
};
use crate::endpoint::EndpointSpec;
use crate::ratelog::LogLimiter;
use crate::task::PatternTask;

/// One server of a Binary Star pair: its own Clone endpoints (a
/// [`CloneServerConfig`]), its Binary Star state endpoints, and where the
/// peer serves snapshots and updates. Built with [`new`](Self::new) or
/// [`guide`](Self::guide), then chained setters (each doc gives its
/// default).
#[derive(Debug, Clone)]
pub struct ClonePairConfig {
    side: Side,
    server: CloneServerConfig,
    state_local: EndpointSpec,
    state_remote: EndpointSpec,
    peer: ServerAddr,
    fsm: FsmConfig,
    epoch_file: Option<PathBuf>,
    peer_snapshot_timeout: Duration,
}

impl ClonePairConfig {
    /// `side` serves on `server`'s endpoints, publishes its Binary Star
    /// state on `state_local` (bound), reads the peer's from `state_remote`
    /// (connected), and fetches snapshots and updates from `peer` (its
    /// collector endpoint is not used: clients publish to both servers).
    pub fn new(
        side: Side,
        server: CloneServerConfig,
        state_local: EndpointSpec,
        state_remote: EndpointSpec,
        peer: ServerAddr,
    ) -> Self {
        Self {
            side,
            server,
            state_local,
            state_remote,
            peer,
            fsm: FsmConfig::new(),
            epoch_file: None,
            peer_snapshot_timeout: Duration::from_secs(5),
        }
    }

    /// The Guide's `clonesrv6` ports: the primary binds state 5003 and
    /// Clone 5556-5558 and reaches the backup at `peer_host` 5004 and
    /// 5566-5567; the backup binds 5004 and 5566-5568 and reaches the
    /// primary at 5003 and 5556-5557. Binds on all interfaces.
    pub fn guide(side: Side, peer_host: &str) -> Result<Self, CloneError> {
        let (mine, theirs, port, peer_port) = match side {
            Side::Primary => (5003, 5004, 5556, 5566),
            Side::Backup => (5004, 5003, 5566, 5556),
        };
        Ok(Self::new(
            side,
            CloneServerConfig::on_port("*", port)?,
            EndpointSpec::bind(&format!("tcp://*:{mine}"))?,
            EndpointSpec::connect(&format!("tcp://{peer_host}:{theirs}"))?,
            ServerAddr::from_port(peer_host, peer_port)?,
        ))
    }

    /// The Clone server's own endpoints, limits and timers.
    pub fn server(mut self, server: CloneServerConfig) -> Self {
        self.server = server;
        self
    }

    /// Where this server publishes its Binary Star state (bound).
    pub fn state_local(mut self, endpoint: EndpointSpec) -> Self {
        self.state_local = endpoint;
        self
    }

    /// Where the peer publishes its Binary Star state (connected).
    pub fn state_remote(mut self, endpoint: EndpointSpec) -> Self {
        self.state_remote = endpoint;
        self
    }

    /// Where the peer serves snapshots and updates.
    pub fn peer(mut self, peer: ServerAddr) -> Self {
        self.peer = peer;
        self
    }

    /// Binary Star timers. Default [`FsmConfig::new`] (heartbeat 1 s, peer
    /// dead after 2 s).
    pub fn fsm(mut self, fsm: FsmConfig) -> Self {
        self.fsm = fsm;
        self
    }

    /// Where the epoch is persisted (written and synced before this server
    /// acts as active). Default none: the epoch starts at 0 on every start,
    /// which weakens fencing across restarts.
    pub fn epoch_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.epoch_file = Some(path.into());
        self
    }

    /// How long the passive waits for the active's snapshot (connect
    /// included) before giving up and retrying. Default 5 s.
    pub fn peer_snapshot_timeout(mut self, timeout: Duration) -> Self {
        self.peer_snapshot_timeout = timeout;
        self
    }

    /// Which side this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Where the peer is reached.
    pub fn peer_addr(&self) -> &ServerAddr {
        &self.peer
    }
}

/// The Binary Star part of a pair server's counters
/// ([`CloneServerStats::pair`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClonePairStats {
    /// The Binary Star state now.
    pub state: BstarState,
    /// The highest epoch this server knows (its own once active).
    pub epoch: u64,
    /// The Binary Star machine's counters (votes, peer states, ...).
    pub fsm: FsmStats,
    /// Messages received from the active peer's publisher.
    pub peer_messages: u64,
    /// Snapshot-socket messages that were not votes (not a valid
    /// `ICANHAZ?`).
    pub non_votes: u64,
}

impl CloneServer {
    /// Starts one server of a Binary Star pair (Guide ch. 5, `clonesrv6`)
    /// under a child of `parent`: binds its Clone sockets and its state
    /// publisher, then connects to the peer in the background (the peer may
    /// start later). It starts passive, with no map, and becomes active or
    /// passive as the Binary Star machine decides; [`stats`](Self::stats)
    /// tells which ([`CloneServerStats::pair`]).
    ///
    /// The task ends with [`CloneError::Fatal`] when the machine finds both
    /// servers active or both passive, or sees a newer epoch while active
    /// (the only way out of ACTIVE is death); restart it to rejoin as
    /// passive.
    pub async fn start_pair(
        config: ClonePairConfig,
        parent: &CancellationToken,
    ) -> Result<Self, CloneError> {
        let (epoch_file, epoch) = match &config.epoch_file {
            Some(path) => {
                let (file, epoch) = EpochFile::open(path)?;
                (Some(file), epoch)
            }
            None => (None, 0),
        };
        let clock = now();
        let fsm = Fsm::new(config.side, config.fsm.clone(), epoch, clock);
        // The store refuses peers older than the persisted epoch too.
        let store = Store::new_passive(config.server.store.clone().epoch(epoch), clock);
        let mut router = RouterSocket::new();
        let mut publisher = PubSocket::new();
        let snapshot = bind(&config.server.snapshot, &mut router).await?;
        let updates = bind(&config.server.publisher, &mut publisher).await?;
        let (collector, collector_ep) =
            Collector::bind(&config.server.collector, &config.server.collector_limits).await?;
        let token = parent.child_token();
        let (link, state_ep) =
            StateLink::start(&config.state_local, &config.state_remote, &token).await?;
        let endpoints = CloneServerEndpoints {
            snapshot,
            publisher: updates,
            collector: collector_ep,
            state: Some(state_ep.clone()),
        };
        match config.side {
            Side::Primary => info!("primary active, waiting for backup (passive)"),
            Side::Backup => info!("backup passive, waiting for primary (active)"),
        }
        info!(snapshot = %endpoints.snapshot, publisher = %endpoints.publisher,
              collector = %endpoints.collector, state = %state_ep, "clone pair server listening");
        let pair = ClonePairStats {
            state: fsm.state(),
            epoch: fsm.epoch(),
            fsm: fsm.stats().clone(),
            peer_messages: 0,
            non_votes: 0,
        };
        let stats = Arc::new(Mutex::new(CloneServerStats {
            pair: Some(pair),
            ..CloneServerStats::default()
        }));
        let kvsyncs = Arc::new(AtomicU64::new(0));
        let span =
            tracing::info_span!("clone_pair", side = ?config.side, snapshot = %endpoints.snapshot);
        let sockets = PairSockets {
            router,
            publisher,
            collector,
            link,
        };
        let shared = (stats.clone(), kvsyncs.clone());
        let driver = Pair {
            config,
            store,
            fsm,
            epoch_file,
            stats: shared.0,
            pair_io: PairIo::default(),
            io: CloneServerStats::default(),
            log: LogLimiter::default(),
        };
        let run = driver
            .run(sockets, shared.1, token.clone())
            .instrument(span);
        let task = PatternTask::from_parts(token, tokio::spawn(run));
        Ok(CloneServer {
            endpoints,
            stats,
            kvsyncs,
            task,
        })
    }
}

struct PairSockets {
    router: RouterSocket,
    publisher: PubSocket,
    collector: Collector,
    link: StateLink,
}

#[derive(Debug, Default, Clone)]
struct PairIo {
    peer_messages: u64,
    non_votes: u64,
}

/// A finished snapshot fetch from the active peer.
type Fetched = Result<(Vec<KvMsg>, u64, Option<u64>), String>;

struct Pair {
    config: ClonePairConfig,
    store: Store,
    fsm: Fsm,
    epoch_file: Option<EpochFile>,
    stats: Arc<Mutex<CloneServerStats>>,
    pair_io: PairIo,
    io: CloneServerStats,
    log: LogLimiter,
}

impl Pair {
    async fn run(
        mut self,
        sockets: PairSockets,
        kvsyncs: Arc<AtomicU64>,
        token: CancellationToken,
    ) -> Result<(), CloneError> {
        let PairSockets {
            router,
            mut publisher,
            mut collector,
            mut link,
        } = sockets;
        let (router_tx, mut router_rx) = router.split();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
        let streams = SnapshotStreams {
            router: router_tx,
            done: done_tx,
            chunk: self.config.server.snapshot_chunk.max(1),
            stall: self.config.server.snapshot_stall_timeout,
            sent: kvsyncs,
            token: token.clone(),
        };
        let (peer_tx, mut peer_rx) = mpsc::channel::<Vec<Bytes>>(1024);
        // The peer sends HUGZ every interval in every state: silence for
        // three of them means the connection is gone.
        let silence = (3 * self.config.server.store.hugz_every()).max(Duration::from_millis(300));
        spawn_peer_subscriber(
            self.config.peer.updates().to_owned(),
            silence,
            peer_tx,
            token.clone(),
        );
        let (fetch_tx, mut fetch_rx) = mpsc::channel::<Fetched>(1);
        let mut fetching = false;
        let mut published: u64 = 0;
        let mut result = Ok(());
        loop {
            let deadline =
                Instant::from_std(self.store.poll_timeout().min(self.fsm.poll_timeout()));
            let mut bstar = Vec::new();
            let mut actions = Vec::new();
            let mut serve = None;
            tokio::select! {
                () = token.cancelled() => break,
                frames = link.recv() => match frames {
                    Some(frames) => bstar = self.fsm.handle_peer_state(&frames, now()),
                    None => break,
                },
                frames = collector.recv() => {
                    // `None`: only the collector's counters changed.
                    if let Some(frames) = frames {
                        actions = self.store.handle_collector(&frames, now());
                    }
                }
                msg = router_rx.recv() => {
                    let Some(frames) = received(msg, &mut self.io, &mut self.log, "snapshot") else { continue };
                    // The peer's latest state first: a vote is judged on it.
                    while let Some(state) = link.try_recv() {
                        bstar.extend(self.fsm.handle_peer_state(&state, now()));
                    }
                    let (more, store_actions, to_serve) = self.vote(frames);
                    bstar.extend(more);
                    (actions, serve) = (store_actions, to_serve);
                }
                Some(frames) = peer_rx.recv() => {
                    self.pair_io.peer_messages += 1;
                    // Followed only while Binary Star says the peer is the
                    // active (an undecided or passive peer serves no
                    // snapshot); the store reads the epoch it presents.
                    // In any other state only the epoch is read: a newer
                    // one fences this server if it is active.
                    let epoch = if self.fsm.state() == BstarState::Passive {
                        actions = self.store.handle_peer_update(&frames, now());
                        self.store.observed_epoch()
                    } else {
                        Update::decode(&frames).ok().and_then(|u| u.epoch())
                    };
                    if let Some(epoch) = epoch.filter(|e| *e > self.fsm.epoch()) {
                        bstar = self.fsm.observe_epoch(epoch, now());
                    }
                }
                Some(fetched) = fetch_rx.recv() => {
                    fetching = false;
                    actions = match fetched {
                        Ok((entries, seq, epoch)) => {
                            info!(entries = entries.len(), seq, "received snapshot from the active peer");
                            self.store.handle_peer_snapshot(entries, seq, epoch, now())
                        }
                        Err(cause) => {
                            // The store counts it and logs the retry.
                            debug!(%cause, "snapshot from the active peer failed");
                            self.store.handle_peer_snapshot_failed(now())
                        }
                    };
                }
                Some(done) = done_rx.recv() => {
                    if done.complete { self.io.snapshots_completed += 1 } else { self.io.snapshots_abandoned += 1 }
                    actions = self.store.handle_snapshot_done(&done.peer, now());
                }
                () = tokio::time::sleep_until(deadline) => {
                    bstar = self.fsm.handle_timeout(now());
                    actions = self.store.handle_timeout(now());
                }
            }
            // Binary Star first: a promotion publishes the pending updates
            // before the vote that caused it is served.
            let mut promoted = Vec::new();
            for action in bstar {
                match self.bstar_action(action, &mut link).await {
                    Ok(more) => promoted.extend(more),
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if result.is_err() {
                break;
            }
            if let Some(frames) = serve {
                actions.extend(self.store.handle_request(frames, now()));
            }
            for action in promoted.into_iter().chain(actions) {
                match action {
                    StoreAction::Publish(frames) => {
                        publish(&mut publisher, frames, &mut published).await?;
                    }
                    StoreAction::StartSnapshot(cursor) => streams.spawn(cursor),
                    StoreAction::FetchSnapshot => {
                        if !fetching {
                            fetching = true;
                            spawn_fetch(
                                self.config.peer.snapshot().to_owned(),
                                self.config.peer_snapshot_timeout,
                                self.config.server.store.store_bytes_limit(),
                                fetch_tx.clone(),
                                token.clone(),
                            );
                        }
                    }
                }
            }
            self.publish_stats(collector.counts());
        }
        drop(streams);
        drop(router_rx);
        publisher.close().await;
        info!(state = ?self.fsm.state(), "clone pair server stopped");
        result
    }

    /// A message on the snapshot ROUTER: a vote if it is a valid
    /// `ICANHAZ?`. Returns the Binary Star actions, the store's actions for
    /// a non-vote, and the request to serve once those Binary Star actions
    /// are carried out (a promotion first makes the store active).
    fn vote(
        &mut self,
        frames: Vec<Bytes>,
    ) -> (Vec<BstarAction>, Vec<StoreAction>, Option<Vec<Bytes>>) {
        let size: usize = frames.iter().map(Bytes::len).sum();
        let valid = frames.len() >= 2
            && size <= self.config.server.store.request_size_limit()
            && Icanhaz::decode(&frames[1..]).is_ok();
        if !valid {
            self.pair_io.non_votes += 1;
            // Counted and dropped by the store, as on a single server.
            return (Vec::new(), self.store.handle_request(frames, now()), None);
        }
        let (vote, bstar) = self.fsm.handle_vote(now());
        match vote {
            Vote::Accept => (bstar, Vec::new(), Some(frames)),
            Vote::Reject => {
                debug!("vote rejected: request discarded without a reply");
                (bstar, Vec::new(), None)
            }
        }
    }

    /// Carries out one Binary Star action; a promotion returns the store's
    /// publications of its pending updates.
    async fn bstar_action(
        &mut self,
        action: BstarAction,
        link: &mut StateLink,
    ) -> Result<Vec<StoreAction>, CloneError> {
        match action {
            BstarAction::Publish(frame) => {
                if let Err(e) = link.publish(frame).await {
                    if let Some(suppressed) = self.log.check(now()) {
                        warn!(cause = %e, suppressed, "state publish failed");
                    }
                }
                Ok(Vec::new())
            }
            BstarAction::Persist(epoch) => {
                if let Some(file) = &mut self.epoch_file {
                    file.store(epoch)?;
                }
                Ok(Vec::new())
            }
            BstarAction::BecameActive { epoch } => {
                info!(
                    epoch,
                    pending = self.store.pending_load().0,
                    "becoming active"
                );
                Ok(self.store.promote(epoch, now()))
            }
            BstarAction::BecamePassive => {
                info!("passive: following the active peer");
                Ok(Vec::new())
            }
            BstarAction::Fatal(cause) => {
                error!(?cause, "fatal Binary Star error, stopping");
                Err(CloneError::Fatal(cause))
            }
        }
    }

    fn publish_stats(&self, counts: super::collector::CollectorCounts) {
        let (streaming, queued) = self.store.snapshot_load();
        let pair = ClonePairStats {
            state: self.fsm.state(),
            epoch: self.fsm.epoch(),
            fsm: self.fsm.stats().clone(),
            peer_messages: self.pair_io.peer_messages,
            non_votes: self.pair_io.non_votes,
        };
        *self.stats.lock().expect("stats lock") = with_collector(
            CloneServerStats {
                snapshots_streaming: streaming,
                snapshots_queued: queued,
                store: self.store.stats().clone(),
                keys: self.store.len(),
                bytes: self.store.bytes(),
                sequence: self.store.sequence(),
                pair: Some(pair),
                pending: self.store.pending_load().0,
                pending_bytes: self.store.pending_load().1,
                ..self.io.clone()
            },
            counts,
        );
    }
}

/// Reads the active peer's publisher for the server's whole life; the
/// store ignores what arrives while it is active, except the epoch.
///
/// The peer publishes HUGZ in every state, so `silence` without a message
/// means the connection is gone: the SUB is then replaced by a fresh one
/// that connects every 100 ms until the peer answers. (The `zeromq` SUB
/// reconnects by itself, but backs off up to 30 s: after a long outage the
/// passive would stay blind, and behind, for that long.)
fn spawn_peer_subscriber(
    endpoint: String,
    silence: Duration,
    tx: mpsc::Sender<Vec<Bytes>>,
    token: CancellationToken,
) {
    let span = tracing::info_span!("peer_subscriber", peer = %endpoint);
    let task = async move {
        let spec = EndpointSpec::connect(&endpoint)?;
        loop {
            let mut sub = SubSocket::new();
            sub.subscribe("").await?;
            spec.attach_patiently(&mut sub, Duration::from_millis(100))
                .await?;
            debug!("connected to the peer's publisher");
            loop {
                match tokio::time::timeout(silence, sub.recv()).await {
                    Ok(Ok(msg)) => {
                        if tx.send(msg.into_vec()).await.is_err() {
                            return Ok::<(), CloneError>(());
                        }
                    }
                    Ok(Err(e)) => debug!(cause = %e, "peer publisher connection failed"),
                    Err(_) => {
                        debug!(?silence, "peer publisher silent; connecting afresh");
                        break;
                    }
                }
            }
        }
    };
    tokio::spawn(
        async move {
            tokio::select! {
                () = token.cancelled() => {}
                r = task => if let Err(e) = r { warn!(cause = %e, "peer subscriber ended") },
            }
        }
        .instrument(span),
    );
}

/// Fetches the whole map from the active peer: `["ICANHAZ?"][""]` on a
/// fresh DEALER, KVSYNCs until KTHXBAI, all within `timeout`, refusing
/// more than `max_bytes` (the store's own bound).
fn spawn_fetch(
    endpoint: String,
    timeout: Duration,
    max_bytes: usize,
    tx: mpsc::Sender<Fetched>,
    token: CancellationToken,
) {
    let task = async move {
        let fetch = async {
            let mut dealer = DealerSocket::new();
            EndpointSpec::connect(&endpoint)
                .map_err(|e| e.to_string())?
                .attach_to(&mut dealer)
                .await
                .map_err(|e| e.to_string())?;
            info!(peer = %endpoint, "asking for snapshot");
            let request =
                crate::frames::message(Icanhaz::encode(&Bytes::new())).expect("two frames");
            dealer.send(request).await.map_err(|e| e.to_string())?;
            let mut entries = Vec::new();
            let mut bytes = 0usize;
            loop {
                let msg = dealer.recv().await.map_err(|e| e.to_string())?;
                let frames = msg.into_vec();
                bytes += frames.iter().map(Bytes::len).sum::<usize>();
                if bytes > max_bytes {
                    return Err(format!("snapshot exceeds {max_bytes} bytes"));
                }
                match SnapshotReply::decode(&frames).map_err(|e| e.to_string())? {
                    SnapshotReply::Kvsync(kv) => entries.push(kv),
                    SnapshotReply::Kthxbai { seq, epoch, .. } => {
                        return Ok((entries, seq, epoch));
                    }
                }
            }
        };
        let out = match tokio::time::timeout(timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(format!("no complete snapshot within {timeout:?}")),
        };
        let _ = tx.send(out).await;
    };
    tokio::spawn(async move {
        tokio::select! {
            () = token.cancelled() => {}
            () = task => {}
        }
    });
}
