//! `Replica`: one Multi-Paxos node combining the acceptor, proposer
//! (leader) and learner roles its [`ReplicaConfig`] gives it, as a sans-IO
//! [`Process`].
//!
//! This file holds the state, message dispatch, the acceptor role and the
//! client-facing side; `leader.rs` and `learner.rs` add the other roles.
//! It contains no networking code and reads no clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::acceptor::{AcceptorState, Record};
use super::ballot::{Ballot, Slot};
use super::config::{Mutation, ReplicaConfig};
use super::kv::{Applied, ClientId, Command, Op};
use super::learner::Learner;
use super::msg::{AcceptedEntry, Msg};
use crate::det::Rng;
use crate::durable::{DurableError, Wal};
use crate::transport::{NodeId, Outbox, Process, Time};

/// An observation of a replica's internals, recorded only when
/// [`ReplicaConfig::probes`] is on, for the test battery's invariant checker.
#[doc(hidden)]
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Probe {
    /// The acceptor promised `ballot`.
    Promised(Ballot),
    /// The acceptor accepted a value (by digest) in `slot` at `ballot`.
    Accepted {
        /// The slot.
        slot: Slot,
        /// The ballot.
        ballot: Ballot,
        /// The value's digest.
        digest: u64,
    },
    /// The learner learned `slot` decided with a value (by digest).
    Decided {
        /// The slot.
        slot: Slot,
        /// The value's digest.
        digest: u64,
    },
    /// The learner applied `slot` (slots are applied in order).
    Applied(Slot),
    /// This node became leader with `ballot`.
    Elected(Ballot),
    /// A new leader proposed `value` (by digest) in `slot` after phase 1;
    /// `reported` is the highest-ballot accepted value the promises carried.
    Readopted {
        /// The slot.
        slot: Slot,
        /// Digest of what the leader proposed.
        proposed: u64,
        /// Digest of the highest-ballot reported value, if any.
        reported: Option<u64>,
    },
}

/// Counters of a replica (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Messages that did not decode (counted, logged, ignored).
    pub garbage: u64,
    /// Messages that decoded but made no sense here (wrong role, stale).
    pub ignored: u64,
    /// Elections started.
    pub campaigns: u64,
    /// Elections won.
    pub elected: u64,
    /// Prepares sent (each to one acceptor, including this node).
    pub prepares_sent: u64,
    /// Slots proposed in phase 2.
    pub proposed: u64,
    /// Slots this node decided as leader.
    pub decided_as_leader: u64,
    /// Client requests redirected to another node.
    pub redirects: u64,
    /// Storage failures (the step's messages were discarded).
    pub storage_errors: u64,
    /// Learner conflicts: a slot learned with two different values. Must
    /// stay zero; non-zero means a safety violation.
    pub conflicts: u64,
    /// Messages larger than [`ReplicaConfig::max_message`], dropped
    /// undecoded.
    pub oversized: u64,
    /// Client requests dropped by a leader: its queue was full
    /// ([`ReplicaConfig::max_pending`]) or the command was larger than a
    /// quarter of [`ReplicaConfig::max_message`].
    pub requests_refused: u64,
    /// Client sessions evicted from this replica's store as least recently
    /// used ([`ReplicaConfig::max_sessions`]).
    pub sessions_evicted: u64,
    /// Commands this replica's store answered
    /// [`Outcome::SessionExpired`](super::Outcome::SessionExpired).
    pub sessions_expired: u64,
}

/// At most one log line per second of the driver's time per call site,
/// for lines a peer can trigger (garbage, oversized, refused requests).
#[derive(Debug, Default)]
pub(crate) struct LogGate {
    next: Option<Time>,
    suppressed: u64,
}

impl LogGate {
    /// `Some(suppressed)` if a line may be written at `now`.
    pub(crate) fn check(&mut self, now: Time) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + Duration::from_secs(1));
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// The phase of a proposer.
#[derive(Debug)]
pub(crate) enum Role {
    /// Not leading; campaigns at `Replica::election_at`.
    Follower,
    /// Running phase 1 with `ballot` for every slot from `from_slot` on.
    Candidate {
        ballot: Ballot,
        from_slot: Slot,
        promises: BTreeMap<NodeId, Vec<AcceptedEntry>>,
        resend_at: Time,
        give_up_at: Time,
    },
    /// Leading with `ballot`: phase 2 only.
    Leader(Box<LeaderState>),
}

/// A slot a leader has proposed and not yet seen decided.
#[derive(Debug)]
pub(crate) struct InFlight {
    pub(crate) value: super::kv::Value,
    pub(crate) acks: BTreeSet<NodeId>,
    pub(crate) resend_at: Time,
}

/// What a leader tracks.
#[derive(Debug)]
pub(crate) struct LeaderState {
    pub(crate) ballot: Ballot,
    pub(crate) next_slot: Slot,
    /// Every slot below is decided (the commit notice).
    pub(crate) commit: Slot,
    pub(crate) decided_ahead: BTreeSet<Slot>,
    pub(crate) inflight: BTreeMap<Slot, InFlight>,
    pub(crate) pending: VecDeque<Command>,
    pub(crate) queued: BTreeMap<ClientId, u64>,
    pub(crate) next_heartbeat: Time,
    /// The commit last announced (to send notices only on change).
    pub(crate) announced: Slot,
}

/// A Multi-Paxos replica of the key-value store.
#[derive(Debug)]
pub struct Replica {
    pub(crate) cfg: ReplicaConfig,
    pub(crate) acceptor: Option<AcceptorState>,
    pub(crate) wal: Box<dyn Wal>,
    pub(crate) wal_records: usize,
    pub(crate) learner: Learner,
    pub(crate) role: Role,
    /// Highest ballot seen anywhere.
    pub(crate) max_seen: Ballot,
    /// The leader this node believes in, and its ballot.
    pub(crate) leader: Option<NodeId>,
    pub(crate) leader_ballot: Ballot,
    /// When a proposer that hears no leader campaigns.
    pub(crate) election_at: Option<Time>,
    /// Client requests waiting for their command to apply here.
    pub(crate) waiting: BTreeMap<ClientId, (u64, NodeId)>,
    pub(crate) rng: Rng,
    pub(crate) stats: ReplicaStats,
    pub(crate) probes: Vec<Probe>,
    pub(crate) storage_failed: bool,
    pub(crate) log_garbage: LogGate,
    pub(crate) log_refused: LogGate,
}

impl Replica {
    /// A replica that restores its acceptor state from `wal` (empty for a
    /// new node). `now` is the driver's current time.
    pub fn new(cfg: ReplicaConfig, mut wal: Box<dyn Wal>, now: Time) -> Result<Self, DurableError> {
        let records = wal.records()?;
        let wal_records = records.len();
        let acceptor = if cfg.is_acceptor(cfg.id) {
            Some(AcceptorState::replay(records)?)
        } else {
            None
        };
        let max_seen = acceptor.as_ref().map(|a| a.promised()).unwrap_or_default();
        let mut rng = Rng::new(cfg.seed ^ 0x5041_5850_u64.rotate_left(32));
        let election_at = cfg
            .proposers
            .contains(&cfg.id)
            .then(|| now + random_between(&mut rng, cfg.election_min, cfg.election_max));
        Ok(Replica {
            acceptor,
            wal,
            wal_records,
            learner: Learner::new(cfg.max_sessions),
            role: Role::Follower,
            max_seen,
            leader: None,
            leader_ballot: Ballot::ZERO,
            election_at,
            waiting: BTreeMap::new(),
            rng,
            stats: ReplicaStats::default(),
            probes: Vec::new(),
            storage_failed: false,
            log_garbage: LogGate::default(),
            log_refused: LogGate::default(),
            cfg,
        })
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// The configuration.
    pub fn config(&self) -> &ReplicaConfig {
        &self.cfg
    }

    /// True while this node leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader's ballot, if this node leads.
    pub fn leader_ballot(&self) -> Option<Ballot> {
        match &self.role {
            Role::Leader(l) => Some(l.ballot),
            _ => None,
        }
    }

    /// The leader this node believes in (itself when leading).
    pub fn leader_hint(&self) -> Option<NodeId> {
        if self.is_leader() {
            Some(self.cfg.id)
        } else {
            self.leader
        }
    }

    /// The acceptor's state (for acceptors).
    pub fn acceptor(&self) -> Option<&AcceptorState> {
        self.acceptor.as_ref()
    }

    /// The learner: decided log and key-value store.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        let kv = self.learner.kv();
        ReplicaStats {
            sessions_evicted: kv.evicted_sessions(),
            sessions_expired: kv.expired_commands(),
            ..self.stats
        }
    }

    /// Takes the probes recorded since the last call.
    #[doc(hidden)]
    pub fn drain_probes(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.probes)
    }

    pub(crate) fn probe(&mut self, p: impl FnOnce() -> Probe) {
        if self.cfg.probes {
            self.probes.push(p());
        }
    }

    /// Whether a negative control re-introduced bug `m`: never, unless
    /// built with the test-only feature `negative-controls`.
    #[cfg(feature = "negative-controls")]
    pub(crate) fn mutated(&self, m: Mutation) -> bool {
        self.cfg.mutation == Some(m)
    }

    #[cfg(not(feature = "negative-controls"))]
    pub(crate) fn mutated(&self, _: Mutation) -> bool {
        false
    }

    pub(crate) fn random_election_timeout(&mut self) -> Duration {
        random_between(&mut self.rng, self.cfg.election_min, self.cfg.election_max)
    }

    /// Sends `msg` to `to`, handling it right here when `to` is this node
    /// (a leader is also an acceptor and a learner).
    pub(crate) fn post(&mut self, now: Time, to: NodeId, msg: Msg, out: &mut Outbox) {
        if to == self.cfg.id {
            self.dispatch(now, to, msg, out);
        } else {
            out.send(to, msg.encode());
        }
    }

    pub(crate) fn dispatch(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::Prepare { ballot, from_slot } => {
                self.on_prepare(now, from, ballot, from_slot, out)
            }
            Msg::Accept {
                ballot,
                slot,
                value,
                commit,
            } => self.on_accept(now, from, ballot, slot, value, commit, out),
            Msg::Promise {
                ballot,
                from_slot,
                accepted,
            } => self.on_promise(now, from, ballot, from_slot, accepted, out),
            Msg::Accepted { ballot, slot } => self.on_accepted(now, from, ballot, slot, out),
            Msg::Nack { ballot, promised } => self.on_nack(now, ballot, promised),
            Msg::Heartbeat { ballot, commit } => self.on_heartbeat(now, from, ballot, commit, out),
            Msg::Fetch { from_slot } => self.on_fetch(from, from_slot, out),
            Msg::Decided { entries } => self.on_decided(now, entries, out),
            Msg::Request { client, seq, op } => self.on_request(now, from, client, seq, op, out),
            Msg::Reply { .. } | Msg::Redirect { .. } => self.stats.ignored += 1,
        }
    }

    /// Writes an acceptor record (unless a mutation drops promises).
    fn write(&mut self, record: Record) {
        if let Record::Promise(_) = record {
            if self.mutated(Mutation::ForgetPromiseOnRestart) {
                return;
            }
        }
        match self.wal.append(&record.encode()) {
            Ok(()) => self.wal_records += 1,
            Err(e) => {
                warn!(node = %self.cfg.id, cause = %e, "acceptor WAL append failed");
                self.storage_failed = true;
            }
        }
    }

    fn on_prepare(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        out: &mut Outbox,
    ) {
        let Some(acc) = self.acceptor.as_mut() else {
            self.stats.ignored += 1;
            return;
        };
        let (reply, record) = acc.handle_prepare(ballot, from_slot);
        if let Some(r) = record {
            self.write(r);
            self.probe(|| Probe::Promised(ballot));
        }
        self.note_ballot(now, ballot);
        self.post(now, from, reply, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_accept(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        slot: Slot,
        value: super::kv::Value,
        commit: Slot,
        out: &mut Outbox,
    ) {
        let Some(acc) = self.acceptor.as_mut() else {
            self.stats.ignored += 1;
            return;
        };
        let (reply, record) = acc.handle_accept(ballot, slot, &value);
        if let Some(r) = record {
            self.write(r);
            let digest = value.digest();
            self.probe(|| Probe::Accepted {
                slot,
                ballot,
                digest,
            });
        }
        let accepted = matches!(reply, Msg::Accepted { .. });
        self.post(now, from, reply, out);
        if accepted && from != self.cfg.id {
            self.hear_leader(now, ballot);
            self.on_commit_notice(now, ballot, commit, out);
        }
    }

    /// Notes a ballot seen in a prepare: a higher one deposes this node.
    fn note_ballot(&mut self, now: Time, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
        let mine = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Follower => None,
        };
        if mine.is_some_and(|m| ballot > m) {
            self.step_down(now);
        }
    }

    fn on_request(
        &mut self,
        now: Time,
        from: NodeId,
        client: ClientId,
        seq: u64,
        op: Op,
        out: &mut Outbox,
    ) {
        if let Some(outcome) = self.learner.kv().session_outcome(client, seq) {
            // Already applied here: answer from the session (a retry).
            let outcome = outcome.clone();
            out.send(
                from,
                Msg::Reply {
                    client,
                    seq,
                    outcome,
                }
                .encode(),
            );
            return;
        }
        if self
            .learner
            .kv()
            .last_seq(client)
            .is_some_and(|last| seq < last)
        {
            self.stats.ignored += 1;
            return;
        }
        if !matches!(self.role, Role::Leader(_)) {
            self.stats.redirects += 1;
            let leader = self.leader.filter(|l| *l != self.cfg.id);
            out.send(
                from,
                Msg::Redirect {
                    client,
                    seq,
                    leader,
                }
                .encode(),
            );
            return;
        }
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        if l.queued.get(&client).is_some_and(|s| *s >= seq) {
            self.waiting.insert(client, (seq, from));
            return; // already pending or in flight here
        }
        let too_big = op.size() > self.cfg.max_message / 4;
        if too_big || l.pending.len() >= self.cfg.max_pending {
            self.stats.requests_refused += 1;
            if let Some(suppressed) = self.log_refused.check(now) {
                warn!(node = %self.cfg.id, %client, peer = %from, too_big, suppressed, "client request refused (queue full or command too large)");
            }
            return;
        }
        self.waiting.insert(client, (seq, from));
        l.queued.insert(client, seq);
        l.pending.push_back(Command { client, seq, op });
        self.fill_window(now, out);
    }

    /// Replies to clients whose commands were just applied here.
    pub(crate) fn answer(&mut self, applied: Vec<(Command, Applied)>, out: &mut Outbox) {
        for (cmd, result) in applied {
            let outcome = match result {
                Applied::Fresh(o) | Applied::Repeat(o) => o,
                Applied::Expired => super::kv::Outcome::SessionExpired,
                _ => continue,
            };
            if let Some((seq, to)) = self.waiting.get(&cmd.client).copied() {
                if seq == cmd.seq {
                    self.waiting.remove(&cmd.client);
                    let reply = Msg::Reply {
                        client: cmd.client,
                        seq,
                        outcome,
                    };
                    out.send(to, reply.encode());
                }
            }
            if let Role::Leader(l) = &mut self.role {
                if l.queued.get(&cmd.client) == Some(&cmd.seq) {
                    l.queued.remove(&cmd.client);
                }
            }
        }
    }

    /// Compacts the WAL once it holds far more records than live state.
    fn maybe_compact(&mut self) {
        let Some(acc) = &self.acceptor else { return };
        if self.wal_records <= 2 * acc.accepted_len() + 1024 || self.wal.is_dirty() {
            return;
        }
        let snapshot = acc.snapshot();
        match self.wal.rewrite(&snapshot) {
            Ok(()) => self.wal_records = snapshot.len(),
            Err(e) => warn!(node = %self.cfg.id, cause = %e, "WAL compaction failed"),
        }
    }
}

pub(crate) fn random_between(rng: &mut Rng, min: Duration, max: Duration) -> Duration {
    let lo = min.as_micros() as u64;
    let hi = max.as_micros() as u64;
    Duration::from_micros(rng.range(lo, hi.max(lo)))
}

impl Process for Replica {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        if msg.len() > self.cfg.max_message {
            self.stats.oversized += 1;
            if let Some(suppressed) = self.log_garbage.check(now) {
                warn!(node = %self.cfg.id, peer = %from, bytes = msg.len(), suppressed, "oversized message ignored");
            }
            return;
        }
        match Msg::decode(msg) {
            Ok(m) => {
                self.dispatch(now, from, m, out);
                self.after_step(now, out);
            }
            Err(e) => {
                self.stats.garbage += 1;
                if let Some(suppressed) = self.log_garbage.check(now) {
                    warn!(node = %self.cfg.id, peer = %from, cause = %e, suppressed, "undecodable message ignored");
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        self.on_tick(now, out);
        self.after_step(now, out);
    }

    fn poll_timeout(&self) -> Option<Time> {
        let mut t = self.election_at;
        let mut min = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        match &self.role {
            Role::Follower => {}
            Role::Candidate {
                resend_at,
                give_up_at,
                ..
            } => {
                min(Some(*resend_at));
                min(Some(*give_up_at));
            }
            Role::Leader(l) => {
                min(Some(l.next_heartbeat));
                min(l.inflight.values().map(|f| f.resend_at).min());
            }
        }
        min(self.learner.fetch_due());
        t
    }

    fn persist(&mut self) -> Result<(), DurableError> {
        if std::mem::take(&mut self.storage_failed) {
            self.stats.storage_errors += 1;
            return Err(DurableError::Corrupt(
                "a WAL append failed in this step".into(),
            ));
        }
        if self.wal.is_dirty() {
            if let Err(e) = self.wal.sync() {
                self.stats.storage_errors += 1;
                warn!(node = %self.cfg.id, cause = %e, "fsync failed; replies discarded");
                return Err(e);
            }
        }
        self.maybe_compact();
        Ok(())
    }
}
