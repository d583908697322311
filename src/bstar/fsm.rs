//! The Binary Star state machine (Guide ch. 4, "High-Availability Pair
//! (Binary Star Pattern)", `bstarsrv` / `bstar`): pure, with no sockets and
//! no clock. Events and `now` go in, [`BstarAction`]s come out; the tokio
//! driver ([`BinaryStar`](super::BinaryStar), or the Clone server pair)
//! owns the sockets and carries the actions out.
//!
//! Beyond the Guide it keeps a promotion epoch (fencing) and closes the
//! Guide's restart race (zguide issues #172 and #174): see [`Fsm`] and
//! `patterns/bstar.md`.

use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{error, info, warn};

use crate::ratelog::LogLimiter;

/// A server's Binary Star state, as published to its peer (one decimal
/// ASCII frame, `"1"` to `"4"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BstarState {
    /// A primary waiting for its peer (the start state of `-p`).
    Primary = 1,
    /// A backup waiting for its peer (the start state of `-b`).
    Backup = 2,
    /// Serving clients; the only way out is death.
    Active = 3,
    /// Standing by; refuses client requests while the peer lives.
    Passive = 4,
}

impl BstarState {
    /// The state message the Guide's `bstar` publishes: `b"1"`..`b"4"`.
    pub fn as_frame(self) -> Bytes {
        Bytes::from_static(match self {
            BstarState::Primary => b"1",
            BstarState::Backup => b"2",
            BstarState::Active => b"3",
            BstarState::Passive => b"4",
        })
    }

    /// Parses a state frame (exactly one ASCII digit `1`..`4`).
    pub fn from_frame(frame: &[u8]) -> Option<Self> {
        match frame {
            b"1" => Some(BstarState::Primary),
            b"2" => Some(BstarState::Backup),
            b"3" => Some(BstarState::Active),
            b"4" => Some(BstarState::Passive),
            _ => None,
        }
    }
}

impl fmt::Display for BstarState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BstarState::Primary => "primary",
            BstarState::Backup => "backup",
            BstarState::Active => "active",
            BstarState::Passive => "passive",
        })
    }
}

/// The FSM's events: the peer's published state, or a client's vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BstarEvent {
    /// The peer says it is a primary waiting for its peer.
    PeerPrimary = 1,
    /// The peer says it is a backup waiting for its peer.
    PeerBackup = 2,
    /// The peer says it is active.
    PeerActive = 3,
    /// The peer says it is passive.
    PeerPassive = 4,
    /// A client request arrived on the voter socket.
    ClientRequest = 5,
}

impl From<BstarState> for BstarEvent {
    fn from(s: BstarState) -> Self {
        match s {
            BstarState::Primary => BstarEvent::PeerPrimary,
            BstarState::Backup => BstarEvent::PeerBackup,
            BstarState::Active => BstarEvent::PeerActive,
            BstarState::Passive => BstarEvent::PeerPassive,
        }
    }
}

/// Which server of the pair this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The primary (`-p`): starts in [`BstarState::Primary`].
    Primary,
    /// The backup (`-b`): starts in [`BstarState::Backup`].
    Backup,
}

/// The FSM's timers: chained setters, each doc giving its default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsmConfig {
    heartbeat: Duration,
    peer_timeout: Option<Duration>,
}

impl Default for FsmConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl FsmConfig {
    /// The Guide's timers: heartbeat 1 s, peer dead after 2 heartbeats.
    pub fn new() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            peer_timeout: None,
        }
    }

    /// How often the state is published. Default 1 s (the Guide's
    /// `BSTAR_HEARTBEAT`). Values under 1 ms are raised to 1 ms.
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(1));
        self
    }

    /// How long without a valid peer state before the peer counts as dead
    /// (failover then needs a client vote). Default 2 heartbeats. It must
    /// exceed one heartbeat (a shorter value is raised to 2 heartbeats:
    /// a live peer would look dead between its messages).
    pub fn peer_timeout(mut self, timeout: Duration) -> Self {
        self.peer_timeout = Some(timeout);
        self
    }

    /// The heartbeat in effect.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat
    }

    /// The peer timeout in effect (see [`peer_timeout`](Self::peer_timeout)).
    pub fn peer_timeout_interval(&self) -> Duration {
        match self.peer_timeout {
            Some(t) if t > self.heartbeat => t,
            _ => self.heartbeat * 2,
        }
    }
}

/// How a client's vote was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vote {
    /// Serve the request (the server is, or has just become, active).
    Accept,
    /// Read and discard the request without a reply (the Guide's `-1`).
    Reject,
}

/// Why the FSM stopped for good ("the only way out of ACTIVE is death").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FatalCause {
    /// Both servers active (split brain): the Guide's "dual actives".
    DualActive,
    /// Both servers passive: nobody would serve, the Guide's "dual passives".
    DualPassive,
    /// While active, a peer epoch newer than this server's promotion was
    /// observed: another server was promoted after this one (fencing).
    Fenced,
}

impl fmt::Display for FatalCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FatalCause::DualActive => "dual actives",
            FatalCause::DualPassive => "dual passives",
            FatalCause::Fenced => "fenced by a newer epoch",
        })
    }
}

/// What the driver must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BstarAction {
    /// Send this state frame on the state PUB.
    Publish(Bytes),
    /// Write this epoch durably (e.g. [`EpochFile::store`](super::EpochFile::store))
    /// before acting on the [`BecameActive`](Self::BecameActive) that follows
    /// (also emitted when a higher epoch is observed from the peer).
    Persist(u64),
    /// This server is now active with this promotion epoch (the Guide's
    /// `new_active` callback).
    BecameActive {
        /// The epoch of this promotion (higher than any known before).
        epoch: u64,
    },
    /// This server is now passive (the Guide's `new_passive` callback).
    BecamePassive,
    /// Stop: the pair is in a state the Guide aborts on (or fenced). The
    /// FSM accepts nothing more.
    Fatal(FatalCause),
}

/// Counters of one FSM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FsmStats {
    /// Client requests accepted.
    pub votes_accepted: u64,
    /// Client requests rejected (read and discarded).
    pub votes_rejected: u64,
    /// Valid peer state messages received.
    pub peer_states: u64,
    /// Peer messages that were not one frame `"1"`..`"4"` (ignored).
    pub bad_state_frames: u64,
    /// Times this server became active.
    pub promotions: u64,
    /// State frames published (heartbeats and transitions).
    pub states_published: u64,
    /// Epochs reported by the application through `observe_epoch`.
    pub epochs_observed: u64,
    /// State-link connections reported before the role was decided.
    pub link_ups: u64,
}

/// The Binary Star FSM of one server: every row of the Guide's table
/// (`bstar.c`, `s_execute_fsm`), the rows it ignores, its two fatal cases,
/// plus fencing by epoch.
///
/// # The restart rule (the fix for zguide #172/#174)
///
/// A vote can promote a server only in [`BstarState::Primary`] and
/// [`BstarState::Passive`], and only once the peer is *expired*:
/// `now >= peer_expiry`, where
///
/// 1. `peer_expiry` starts at `start + peer_timeout` (a restarted server
///    never trusts the silence of a peer it has not had time to hear; this
///    is the Guide's own fix), and moves to `now + peer_timeout` on every
///    valid peer state;
/// 2. while the role is undecided (still `Primary`/`Backup`), the state
///    link's connection ([`handle_link_up`](Self::handle_link_up), or an
///    empty frame list given to
///    [`handle_peer_state`](Self::handle_peer_state)) also moves it to
///    `now + peer_timeout`: silence counts only from the moment the link
///    could carry a message, so a slow connect cannot be mistaken for a
///    dead peer.
///
/// A live active peer publishes every heartbeat, so, as long as its
/// messages reach this server within `peer_timeout - heartbeat` of the
/// link coming up, the restarted primary hears `PEER_ACTIVE` and becomes
/// passive before any vote can promote it. A partition longer than the
/// peer timeout defeats every rule of this kind: see `patterns/bstar.md`.
#[derive(Debug)]
pub struct Fsm {
    side: Side,
    heartbeat: Duration,
    peer_timeout: Duration,
    state: BstarState,
    fatal: Option<FatalCause>,
    epoch: u64,
    active_epoch: Option<u64>,
    peer_expiry: Instant,
    heard_peer: bool,
    next_heartbeat: Instant,
    stats: FsmStats,
    bad_log: LogLimiter,
}

impl Fsm {
    /// A server that has just started at `now`; `epoch` is the last
    /// persisted promotion epoch (0 if none).
    pub fn new(side: Side, config: FsmConfig, epoch: u64, now: Instant) -> Self {
        let peer_timeout = config.peer_timeout_interval();
        let state = match side {
            Side::Primary => BstarState::Primary,
            Side::Backup => BstarState::Backup,
        };
        match side {
            Side::Primary => info!("I: primary active, waiting for backup (passive)"),
            Side::Backup => info!("I: backup passive, waiting for primary (active)"),
        }
        Self {
            side,
            heartbeat: config.heartbeat_interval(),
            peer_timeout,
            state,
            fatal: None,
            epoch,
            active_epoch: None,
            peer_expiry: now + peer_timeout,
            heard_peer: false,
            next_heartbeat: now,
            stats: FsmStats::default(),
            bad_log: LogLimiter::default(),
        }
    }

    /// Which side this server is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The current state (the last one, after a fatal error).
    pub fn state(&self) -> BstarState {
        self.state
    }

    /// The highest epoch known: this server's own promotions and the
    /// epochs observed from the peer.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// This server's promotion epoch while it is active.
    pub fn active_epoch(&self) -> Option<u64> {
        self.active_epoch
    }

    /// Why the FSM stopped, if it has.
    pub fn fatal(&self) -> Option<FatalCause> {
        self.fatal
    }

    /// When the peer counts as dead if nothing more is heard.
    pub fn peer_expiry(&self) -> Instant {
        self.peer_expiry
    }

    /// The counters.
    pub fn stats(&self) -> &FsmStats {
        &self.stats
    }

    /// A message from the peer's state PUB. One frame `"1"`..`"4"` is the
    /// peer's state; anything else is counted in
    /// [`FsmStats::bad_state_frames`], logged (rate-limited) and ignored
    /// (it does not count as a sign of life). An empty list means the
    /// state link has connected (see [`handle_link_up`](Self::handle_link_up)).
    pub fn handle_peer_state(&mut self, frames: &[Bytes], now: Instant) -> Vec<BstarAction> {
        if frames.is_empty() {
            return self.handle_link_up(now);
        }
        if self.fatal.is_some() {
            return Vec::new();
        }
        let peer = match frames {
            [frame] => BstarState::from_frame(frame),
            _ => None,
        };
        let Some(peer) = peer else {
            self.stats.bad_state_frames += 1;
            if let Some(suppressed) = self.bad_log.check(now) {
                let first = frames.first().map(|f| crate::frames::render(f));
                warn!(
                    frames = frames.len(),
                    ?first,
                    suppressed,
                    "bad peer state message ignored"
                );
            }
            return Vec::new();
        };
        self.stats.peer_states += 1;
        self.heard_peer = true;
        self.peer_expiry = now + self.peer_timeout;
        self.execute(BstarEvent::from(peer), now).1
    }

    /// The state link (SUB to the peer) has connected. Before the role is
    /// decided (`Primary`/`Backup`, no valid peer state yet) this restarts
    /// the silence window: `peer_expiry = max(peer_expiry, now + peer_timeout)`.
    /// Afterwards it does nothing.
    pub fn handle_link_up(&mut self, now: Instant) -> Vec<BstarAction> {
        let undecided = matches!(self.state, BstarState::Primary | BstarState::Backup);
        if self.fatal.is_none() && undecided && !self.heard_peer {
            self.stats.link_ups += 1;
            self.peer_expiry = self.peer_expiry.max(now + self.peer_timeout);
        }
        Vec::new()
    }

    /// A client request arrived on the voter: accept it (serve it) or
    /// reject it (read and discard, no reply). A vote may promote this
    /// server (then the actions hold `Persist` and `BecameActive`, to be
    /// carried out before the request is served).
    pub fn handle_vote(&mut self, now: Instant) -> (Vote, Vec<BstarAction>) {
        if self.fatal.is_some() {
            self.stats.votes_rejected += 1;
            return (Vote::Reject, Vec::new());
        }
        let (vote, actions) = self.execute(BstarEvent::ClientRequest, now);
        match vote {
            Vote::Accept => self.stats.votes_accepted += 1,
            Vote::Reject => self.stats.votes_rejected += 1,
        }
        (vote, actions)
    }

    /// An epoch the application saw from the peer (the Clone pair's HUGZ
    /// and updates carry it). A higher one raises [`epoch`](Self::epoch)
    /// and is persisted (`Persist`), so the next promotion, even after a
    /// restart, goes above it. While active, an epoch newer than this
    /// server's own promotion means the peer was promoted later:
    /// [`FatalCause::Fenced`]. Call it before handling the peer state that
    /// arrived with it.
    pub fn observe_epoch(&mut self, epoch: u64, now: Instant) -> Vec<BstarAction> {
        let _ = now;
        if self.fatal.is_some() {
            return Vec::new();
        }
        self.stats.epochs_observed += 1;
        let mut actions = Vec::new();
        if epoch > self.epoch {
            // Persisted too, so that a restart never reuses an epoch the
            // pair has already used.
            self.epoch = epoch;
            actions.push(BstarAction::Persist(epoch));
        }
        if let Some(own) = self.active_epoch.filter(|own| epoch > *own) {
            error!(
                own,
                peer = epoch,
                "E: fatal error - fenced by a newer epoch, aborting"
            );
            actions.extend(self.die(FatalCause::Fenced));
        }
        actions
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due (the next
    /// heartbeat).
    pub fn poll_timeout(&self) -> Instant {
        self.next_heartbeat
    }

    /// Publishes the state once per heartbeat (the first at start).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<BstarAction> {
        if self.fatal.is_some() || now < self.next_heartbeat {
            return Vec::new();
        }
        self.next_heartbeat += self.heartbeat;
        if self.next_heartbeat <= now {
            self.next_heartbeat = now + self.heartbeat;
        }
        vec![self.publish()]
    }

    fn publish(&mut self) -> BstarAction {
        self.stats.states_published += 1;
        BstarAction::Publish(self.state.as_frame())
    }

    fn peer_expired(&self, now: Instant) -> bool {
        now >= self.peer_expiry
    }

    /// The Guide's `s_execute_fsm`: returns the vote (meaningful for
    /// `ClientRequest`; peer events always "accept") and the actions.
    fn execute(&mut self, event: BstarEvent, now: Instant) -> (Vote, Vec<BstarAction>) {
        use BstarEvent as E;
        use BstarState as S;
        match (self.state, event) {
            (S::Primary, E::PeerBackup) => {
                info!("I: connected to backup (passive), ready as active");
                (Vote::Accept, self.promote())
            }
            (S::Primary, E::PeerActive) => {
                info!("I: connected to backup (active), ready as passive");
                (Vote::Accept, self.demote())
            }
            (S::Primary, E::ClientRequest) => {
                // Accept only once the peer has had a full timeout to tell
                // us it is active (after a failover, a fail-back attempt).
                if self.peer_expired(now) {
                    info!("I: request from client, ready as active");
                    (Vote::Accept, self.promote())
                } else {
                    (Vote::Reject, Vec::new())
                }
            }
            (S::Backup, E::PeerActive) => {
                info!("I: connected to primary (active), ready as passive");
                (Vote::Accept, self.demote())
            }
            (S::Backup, E::ClientRequest) => (Vote::Reject, Vec::new()),
            (S::Active, E::PeerActive) => {
                error!("E: fatal error - dual actives, aborting");
                (Vote::Reject, self.die(FatalCause::DualActive))
            }
            (S::Active, E::ClientRequest) => (Vote::Accept, Vec::new()),
            (S::Passive, E::PeerPrimary) => {
                info!("I: primary (passive) is restarting, ready as active");
                (Vote::Accept, self.promote())
            }
            (S::Passive, E::PeerBackup) => {
                info!("I: backup (passive) is restarting, ready as active");
                (Vote::Accept, self.promote())
            }
            (S::Passive, E::PeerPassive) => {
                error!("E: fatal error - dual passives, aborting");
                (Vote::Reject, self.die(FatalCause::DualPassive))
            }
            (S::Passive, E::ClientRequest) => {
                if self.peer_expired(now) {
                    info!("I: failover successful, ready as active");
                    (Vote::Accept, self.promote())
                } else {
                    (Vote::Reject, Vec::new())
                }
            }
            // The pairs the Guide ignores: PRIMARY on PEER_PRIMARY or
            // PEER_PASSIVE; BACKUP on PEER_PRIMARY, PEER_BACKUP or
            // PEER_PASSIVE; ACTIVE on PEER_PRIMARY, PEER_BACKUP or
            // PEER_PASSIVE; PASSIVE on PEER_ACTIVE.
            (S::Primary, E::PeerPrimary | E::PeerPassive)
            | (S::Backup, E::PeerPrimary | E::PeerBackup | E::PeerPassive)
            | (S::Active, E::PeerPrimary | E::PeerBackup | E::PeerPassive)
            | (S::Passive, E::PeerActive) => (Vote::Accept, Vec::new()),
        }
    }

    fn promote(&mut self) -> Vec<BstarAction> {
        let epoch = self.epoch + 1;
        self.epoch = epoch;
        self.active_epoch = Some(epoch);
        self.state = BstarState::Active;
        self.stats.promotions += 1;
        vec![
            BstarAction::Persist(epoch),
            BstarAction::BecameActive { epoch },
            self.publish(),
        ]
    }

    fn demote(&mut self) -> Vec<BstarAction> {
        self.state = BstarState::Passive;
        vec![BstarAction::BecamePassive, self.publish()]
    }

    fn die(&mut self, cause: FatalCause) -> Vec<BstarAction> {
        self.fatal = Some(cause);
        vec![BstarAction::Fatal(cause)]
    }
}

#[cfg(test)]
#[path = "fsm_tests.rs"]
mod tests;
