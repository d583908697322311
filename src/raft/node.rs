//! `RaftNode`: the sans-IO Raft core. State, recovery from the WAL, the
//! message dispatch, elections (pre-vote, votes, leader stickiness), the
//! follower's side of replication and snapshots, and the apply loop. The
//! leader's side is in `leader.rs`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::config::{Mutation, RaftConfig};
use super::log::{Entry, EntryKind, Membership, RaftLog, Snapshot};
use super::msg::{Msg, RaftStatus, FIRST_KIND};
use super::storage::{self, Record};
use super::RaftError;
use crate::det::Rng;
use crate::durable::{DurableError, Wal};
use crate::paxos::{self, random_between, ClientId, Command, KvStore, LogGate};
use crate::transport::{NodeId, Outbox, Process, Time};

/// A node's role.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Role {
    /// A voter following a leader (or waiting for one).
    Follower,
    /// A voter asking whether it could win an election (pre-vote), its
    /// term unchanged.
    PreCandidate,
    /// A voter campaigning in a new term.
    Candidate,
    /// The leader of its term.
    Leader,
    /// Not a voter of the latest configuration: a learner, a node waiting
    /// to be added, or one that was removed. It never campaigns.
    Learner,
}

/// An observation of a node's internals, recorded only when
/// [`RaftConfig::probes`] is on, for the test battery's invariant checker.
#[doc(hidden)]
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Probe {
    /// Became leader of `term`.
    Elected {
        /// The term.
        term: u64,
    },
    /// Granted its vote (not a pre-vote) in `term`.
    Voted {
        /// The term.
        term: u64,
        /// Who got it.
        candidate: NodeId,
    },
    /// An entry was written to this node's log.
    Appended {
        /// Its index.
        index: u64,
        /// Its term.
        term: u64,
        /// [`Entry::digest`].
        digest: u64,
    },
    /// Entries from `from` on were removed (a conflict with the leader).
    Truncated {
        /// The first index removed.
        from: u64,
    },
    /// The commit index advanced to `index`.
    Committed {
        /// The new commit index.
        index: u64,
    },
    /// An entry was applied to the state machine.
    Applied {
        /// Its index.
        index: u64,
        /// Its term.
        term: u64,
        /// [`Entry::digest`].
        digest: u64,
    },
    /// The log was compacted up to `index` (a snapshot taken or installed).
    Snapshot {
        /// The last index covered.
        index: u64,
        /// Its term.
        term: u64,
    },
}

/// Counters of a node (monotonic).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RaftStats {
    /// Messages that did not decode (counted, logged, ignored).
    pub garbage: u64,
    /// Messages over the size limit (dropped undecoded).
    pub oversized: u64,
    /// Well-formed messages that made no sense here (e.g. a client reply).
    pub stray: u64,
    /// Pre-vote rounds started.
    pub pre_votes: u64,
    /// Elections started (terms campaigned in).
    pub elections: u64,
    /// Times this node became leader.
    pub leaderships: u64,
    /// Times a leader stepped down because it lost touch with a majority
    /// (check-quorum).
    pub step_downs: u64,
    /// AppendEntries sent (heartbeats included).
    pub appends_sent: u64,
    /// Entries sent in them.
    pub entries_sent: u64,
    /// AppendEntries refused by followers (log mismatch).
    pub rejects: u64,
    /// Snapshots taken (log compactions).
    pub snapshots_taken: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
    /// Client requests redirected (not the leader).
    pub redirects: u64,
    /// Client requests dropped because `max_pending` requests were held.
    pub requests_dropped: u64,
    /// Reads answered through ReadIndex.
    pub reads: u64,
    /// Client commands applied (retries included).
    pub commands_applied: u64,
    /// Leadership transfers started.
    pub transfers: u64,
    /// WAL appends or syncs that failed (the step's replies were dropped).
    pub storage_errors: u64,
}

/// Replication state of one follower, kept by the leader.
#[derive(Debug)]
pub(super) struct Progress {
    /// The next index to send.
    pub(super) next: u64,
    /// The highest index known to match.
    pub(super) matched: u64,
    /// AppendEntries with entries sent and not answered.
    pub(super) inflight: usize,
    /// A reply came since the last heartbeat tick.
    pub(super) acked: bool,
    /// When it last answered in this term.
    pub(super) last_ack: Time,
    /// The highest heartbeat round it echoed.
    pub(super) round: u64,
    /// A snapshot being sent: its index and the offset acknowledged.
    pub(super) snap: Option<(u64, u64)>,
}

/// A read waiting for its leadership check and for the state machine.
#[derive(Debug)]
pub(super) struct PendingRead {
    pub(super) round: u64,
    pub(super) index: u64,
    pub(super) from: NodeId,
    pub(super) client: ClientId,
    pub(super) seq: u64,
    pub(super) key: Bytes,
}

/// A snapshot being received.
#[derive(Debug)]
struct Incoming {
    index: u64,
    term: u64,
    membership: Membership,
    total: u64,
    buf: Vec<u8>,
}

/// A Raft node: a [`Process`] that replicates the key-value store.
#[derive(Debug)]
pub struct RaftNode {
    pub(super) cfg: RaftConfig,
    wal: Box<dyn Wal>,
    wal_failed: bool,
    pub(super) term: u64,
    pub(super) vote: Option<NodeId>,
    pub(super) log: RaftLog,
    /// The latest snapshot (index 0: none yet, the empty store).
    pub(super) snapshot: Snapshot,
    /// The configuration in force: the latest in the log, or the
    /// snapshot's.
    pub(super) membership: Membership,
    pub(super) membership_index: u64,
    pub(super) commit: u64,
    pub(super) applied: u64,
    pub(super) kv: KvStore,
    pub(super) role: Role,
    pub(super) leader: Option<NodeId>,
    election_at: Time,
    leader_contact: Option<Time>,
    rng: Rng,
    votes: BTreeSet<NodeId>,
    // Leader state.
    pub(super) progress: BTreeMap<NodeId, Progress>,
    pub(super) heartbeat_at: Time,
    pub(super) round: u64,
    pub(super) broadcast_round: bool,
    pub(super) term_start: u64,
    pub(super) reads: VecDeque<PendingRead>,
    pub(super) pending: VecDeque<Command>,
    pub(super) waiting: HashMap<(ClientId, u64), NodeId>,
    pub(super) transfer: Option<(NodeId, Time, bool)>,
    incoming: Option<Incoming>,
    probes: Vec<Probe>,
    pub(super) stats: RaftStats,
    pub(super) gate: LogGate,
}

impl RaftNode {
    /// A node over `wal`: a fresh node if it is empty (bootstrapped with
    /// the config's voters if it is one of them), else the node that wrote
    /// it, restarted (term, vote, log and snapshot replayed).
    pub fn new(cfg: RaftConfig, mut wal: Box<dyn Wal>, now: Time) -> Result<Self, RaftError> {
        let rec = storage::replay(wal.records()?)?;
        let fresh = rec.records == 0;
        let bootstrap = match rec.bootstrap {
            Some(m) => m,
            None if fresh && cfg.voters.contains(&cfg.id) => {
                let m = Membership::of(&cfg.voters);
                wal.append(&Record::Bootstrap(m.clone()).encode())?;
                wal.sync()?;
                m
            }
            None => Membership::default(),
        };
        let (snapshot, kv) = match rec.snapshot {
            Some(s) => {
                let kv = KvStore::decode_snapshot(s.data.clone())
                    .map_err(|e| DurableError::Corrupt(format!("snapshot: {e}")))?;
                (s, kv)
            }
            None => {
                let kv = KvStore::with_max_sessions(cfg.max_sessions);
                (
                    Snapshot {
                        index: 0,
                        term: 0,
                        membership: bootstrap,
                        data: Bytes::new(),
                    },
                    kv,
                )
            }
        };
        let mut rng = Rng::new(cfg.seed ^ 0x5241_4654);
        let election_at = now + random_between(&mut rng, cfg.election_min, cfg.election_max);
        let mut node = RaftNode {
            wal,
            wal_failed: false,
            term: rec.term,
            vote: rec.vote,
            log: rec.log,
            commit: snapshot.index,
            applied: snapshot.index,
            membership: Membership::default(),
            membership_index: 0,
            snapshot,
            kv,
            role: Role::Follower,
            leader: None,
            election_at,
            leader_contact: None,
            rng,
            votes: BTreeSet::new(),
            progress: BTreeMap::new(),
            heartbeat_at: now,
            round: 0,
            broadcast_round: false,
            term_start: 0,
            reads: VecDeque::new(),
            pending: VecDeque::new(),
            waiting: HashMap::new(),
            transfer: None,
            incoming: None,
            probes: Vec::new(),
            stats: RaftStats::default(),
            gate: LogGate::default(),
            cfg,
        };
        node.refresh_membership();
        info!(node = %node.cfg.id, term = node.term, last = node.log.last_index(),
              snapshot = node.snapshot.index, "raft node started");
        Ok(node)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    /// Its configuration.
    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Its current term.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The vote it cast in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.vote
    }

    /// The leader it believes in (itself if it leads).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// True if it leads.
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }

    /// Its commit index.
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// The last index applied to its state machine.
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// Its last log index.
    pub fn last_index(&self) -> u64 {
        self.log.last_index()
    }

    /// The last index its snapshot covers (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    /// The term of that entry.
    pub fn snapshot_term(&self) -> u64 {
        self.snapshot.term
    }

    /// Entry `index`, if the log holds it (not compacted, not beyond the
    /// end). The log keeps a tail of entries the snapshot covers
    /// ([`RaftConfig::log_tail`]).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        self.log.get(index)
    }

    /// The configuration in force (the latest in the log, maybe not yet
    /// committed).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The state machine (what the applied entries made of it).
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// Client requests this node holds as leader (writes not yet applied,
    /// reads not yet confirmed): at most [`RaftConfig::max_pending`].
    pub fn held_requests(&self) -> usize {
        self.held()
    }

    /// Counters.
    pub fn stats(&self) -> RaftStats {
        self.stats
    }

    /// Its state, as `raft status` shows it.
    pub fn status(&self) -> RaftStatus {
        RaftStatus {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit: self.commit,
            applied: self.applied,
            last_index: self.log.last_index(),
            snapshot_index: self.snapshot.index,
            log_entries: self.log.len() as u64,
            snapshot_bytes: self.snapshot.data.len() as u64,
            voters: self.membership.voters.iter().copied().collect(),
            learners: self.membership.learners.iter().copied().collect(),
        }
    }

    /// Takes the probes recorded since the last call.
    #[doc(hidden)]
    pub fn drain_probes(&mut self) -> Vec<Probe> {
        std::mem::take(&mut self.probes)
    }

    pub(super) fn probe(&mut self, p: impl FnOnce() -> Probe) {
        if self.cfg.probes {
            self.probes.push(p());
        }
    }

    pub(super) fn is_voter(&self) -> bool {
        self.membership.voters.contains(&self.cfg.id)
    }

    fn idle_role(&self) -> Role {
        if self.is_voter() {
            Role::Follower
        } else {
            Role::Learner
        }
    }

    // ---- durability ----

    pub(super) fn wal_append(&mut self, rec: &Record) {
        if let Err(e) = self.wal.append(&rec.encode()) {
            self.wal_failed = true;
            warn!(node = %self.cfg.id, cause = %e, "WAL append failed");
        }
    }

    fn hard_state_record(&self) -> Record {
        let vote = if self.cfg.mutated(Mutation::ForgetVote) {
            None
        } else {
            self.vote
        };
        Record::HardState {
            term: self.term,
            vote,
        }
    }

    fn save_hard_state(&mut self) {
        let rec = self.hard_state_record();
        self.wal_append(&rec);
    }

    /// Rewrites the WAL as `[hard state, snapshot, entries after it]`.
    fn rewrite_wal(&mut self) {
        let mut records = vec![
            self.hard_state_record().encode(),
            Record::Snapshot(self.snapshot.clone()).encode(),
        ];
        if self.log.len() > 0 {
            records.push(Record::Entries(self.log.entries().to_vec()).encode());
        }
        if let Err(e) = self.wal.rewrite(&records) {
            self.wal_failed = true;
            warn!(node = %self.cfg.id, cause = %e, "WAL rewrite failed");
        }
    }

    /// Appends a new entry of the current term (leader).
    pub(super) fn append_entry(&mut self, kind: EntryKind) -> u64 {
        let e = Entry {
            term: self.term,
            index: self.log.last_index() + 1,
            kind,
        };
        self.wal_append(&Record::Entries(vec![e.clone()]));
        let index = e.index;
        self.store_entry(e);
        index
    }

    fn store_entry(&mut self, e: Entry) {
        self.probe(|| Probe::Appended {
            index: e.index,
            term: e.term,
            digest: e.digest(),
        });
        if let EntryKind::Config(m) = &e.kind {
            self.membership = m.clone();
            self.membership_index = e.index;
            self.on_membership_change();
        }
        self.log.push(e);
    }

    /// Recomputes the configuration from the log (after a truncation or a
    /// snapshot).
    fn refresh_membership(&mut self) {
        let last = self.log.last_index();
        let (index, m) = match self.log.config_at(last) {
            Some((i, m)) => (i, m.clone()),
            None => (self.snapshot.index, self.snapshot.membership.clone()),
        };
        self.membership = m;
        self.membership_index = index;
        self.on_membership_change();
    }

    fn on_membership_change(&mut self) {
        match self.role {
            Role::Leader => self.sync_progress(),
            Role::Learner | Role::Follower => self.role = self.idle_role(),
            Role::PreCandidate | Role::Candidate if !self.is_voter() => self.role = Role::Learner,
            _ => {}
        }
    }

    // ---- roles ----

    fn election_timeout(&mut self) -> Duration {
        random_between(&mut self.rng, self.cfg.election_min, self.cfg.election_max)
    }

    /// Leaves any leader or candidate state; adopts `term` if higher.
    pub(super) fn become_follower(&mut self, now: Time, term: u64, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
            self.save_hard_state();
        }
        if self.role == Role::Leader {
            info!(node = %self.cfg.id, term = self.term, "leader stepping down");
        }
        self.role = self.idle_role();
        self.leader = leader;
        self.votes.clear();
        self.progress.clear();
        self.reads.clear();
        self.pending.clear();
        self.waiting.clear();
        self.transfer = None;
        self.election_at = now + self.election_timeout();
    }

    fn in_lease(&self, now: Time) -> bool {
        self.role == Role::Leader
            || self
                .leader_contact
                .is_some_and(|t| now.saturating_since(t) < self.cfg.election_min)
    }

    fn campaign(&mut self, now: Time, transfer: bool, out: &mut Outbox) {
        if !self.is_voter() {
            return;
        }
        self.election_at = now + self.election_timeout();
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id);
        if self.cfg.pre_vote && !transfer {
            self.role = Role::PreCandidate;
            self.stats.pre_votes += 1;
            debug!(node = %self.cfg.id, term = self.term + 1, "pre-vote");
            if self.votes.len() >= self.membership.quorum() {
                return self.start_election(now, false, out);
            }
            let msg = Msg::PreVote {
                term: self.term + 1,
                last_index: self.log.last_index(),
                last_term: self.log.last_term(),
            }
            .encode();
            for v in self.other_voters() {
                out.send(v, msg.clone());
            }
        } else {
            self.start_election(now, transfer, out);
        }
    }

    fn start_election(&mut self, now: Time, transfer: bool, out: &mut Outbox) {
        self.term += 1;
        self.vote = Some(self.cfg.id);
        self.save_hard_state();
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id);
        self.election_at = now + self.election_timeout();
        self.stats.elections += 1;
        debug!(node = %self.cfg.id, term = self.term, "campaigning");
        if self.votes.len() >= self.membership.quorum() {
            return self.become_leader(now, out);
        }
        let msg = Msg::Vote {
            term: self.term,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            transfer,
        }
        .encode();
        for v in self.other_voters() {
            out.send(v, msg.clone());
        }
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.membership
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.cfg.id)
            .collect()
    }

    fn votes_won(&self) -> bool {
        self.votes
            .iter()
            .filter(|v| self.membership.voters.contains(v))
            .count()
            >= self.membership.quorum()
    }

    /// Whether a candidate's log is at least as up to date as ours.
    fn up_to_date(&self, last_index: u64, last_term: u64) -> bool {
        (last_term, last_index) >= (self.log.last_term(), self.log.last_index())
    }

    fn on_pre_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        li: u64,
        lt: u64,
        out: &mut Outbox,
    ) {
        let granted = term > self.term && self.up_to_date(li, lt) && !self.in_lease(now);
        let term = if granted { term } else { self.term };
        out.send(from, Msg::PreVoteReply { term, granted }.encode());
    }

    fn on_pre_vote_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        granted: bool,
        out: &mut Outbox,
    ) {
        if !granted {
            if term > self.term {
                self.become_follower(now, term, None);
            }
            return;
        }
        if self.role == Role::PreCandidate && term == self.term + 1 {
            self.votes.insert(from);
            if self.votes_won() {
                self.start_election(now, false, out);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        li: u64,
        lt: u64,
        transfer: bool,
        out: &mut Outbox,
    ) {
        if term < self.term {
            let reply = Msg::VoteReply {
                term: self.term,
                granted: false,
            };
            return out.send(from, reply.encode());
        }
        if self.cfg.check_quorum && !transfer && self.in_lease(now) {
            // Leader stickiness: a leader is alive, this is a disruption.
            return;
        }
        if term > self.term {
            self.become_follower(now, term, None);
        }
        let log_ok = self.cfg.mutated(Mutation::SkipUpToDateCheck) || self.up_to_date(li, lt);
        let granted = self.vote.is_none_or(|v| v == from) && log_ok;
        if granted {
            self.vote = Some(from);
            self.save_hard_state();
            self.election_at = now + self.election_timeout();
            self.probe(|| Probe::Voted {
                term,
                candidate: from,
            });
        }
        let reply = Msg::VoteReply {
            term: self.term,
            granted,
        };
        out.send(from, reply.encode());
    }

    fn on_vote_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        granted: bool,
        out: &mut Outbox,
    ) {
        if term > self.term {
            return self.become_follower(now, term, None);
        }
        if self.role == Role::Candidate && term == self.term && granted {
            self.votes.insert(from);
            if self.votes_won() {
                self.become_leader(now, out);
            }
        }
    }

    /// Accepts `from` as the leader of `term` (>= ours).
    fn follow(&mut self, now: Time, term: u64, from: NodeId) {
        if term > self.term || self.role != self.idle_role() || self.leader != Some(from) {
            self.become_follower(now, term, Some(from));
        }
        self.leader_contact = Some(now);
        self.election_at = now + self.election_timeout();
    }

    // ---- follower: replication ----

    #[allow(clippy::too_many_arguments)]
    fn on_append(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        mut prev_index: u64,
        mut prev_term: u64,
        commit: u64,
        round: u64,
        mut entries: Vec<Entry>,
        out: &mut Outbox,
    ) {
        let reject =
            |me: &Self, index: u64, hint_index: u64, hint_term: Option<u64>| Msg::AppendReply {
                term: me.term,
                round,
                success: false,
                index,
                hint_index,
                hint_term,
            };
        if term < self.term {
            return out.send(from, reject(self, prev_index, 0, None).encode());
        }
        self.follow(now, term, from);
        let count = entries.len() as u64;
        let snap = self.log.base_index;
        if prev_index < snap {
            // What our snapshot covers is committed, hence matches.
            let skip = snap - prev_index;
            if count <= skip {
                let reply = Msg::AppendReply {
                    term: self.term,
                    round,
                    success: true,
                    index: prev_index + count,
                    hint_index: 0,
                    hint_term: None,
                };
                return out.send(from, reply.encode());
            }
            entries.drain(..skip as usize);
            prev_index = snap;
            prev_term = self.log.base_term;
        }
        match self.log.term_at(prev_index) {
            None => {
                let hint = self.log.last_index() + 1;
                return out.send(from, reject(self, prev_index, hint, None).encode());
            }
            Some(t) if t != prev_term => {
                let hint = self.log.first_of_term(prev_index, t);
                return out.send(from, reject(self, prev_index, hint, Some(t)).encode());
            }
            Some(_) => {}
        }
        let last_new = prev_index + entries.len() as u64;
        let mut new = Vec::new();
        for e in entries {
            match self.log.term_at(e.index) {
                Some(t) if t == e.term && new.is_empty() => continue,
                Some(_) if new.is_empty() => {
                    if e.index <= self.commit {
                        warn!(node = %self.cfg.id, index = e.index, commit = self.commit,
                              "leader sent a conflicting committed entry; ignored");
                        return;
                    }
                    self.log.truncate_from(e.index);
                    self.probe(|| Probe::Truncated { from: e.index });
                    self.refresh_membership();
                    new.push(e);
                }
                _ => new.push(e),
            }
        }
        if !new.is_empty() {
            self.wal_append(&Record::Entries(new.clone()));
            for e in new {
                self.store_entry(e);
            }
        }
        let target = commit.min(last_new);
        if target > self.commit {
            self.commit = target;
            self.probe(|| Probe::Committed { index: target });
        }
        let reply = Msg::AppendReply {
            term: self.term,
            round,
            success: true,
            index: last_new,
            hint_index: 0,
            hint_term: None,
        };
        out.send(from, reply.encode());
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        index: u64,
        snap_term: u64,
        membership: Membership,
        total: u64,
        offset: u64,
        data: Bytes,
        out: &mut Outbox,
    ) {
        let reply = |me: &Self, received: u64, done: bool| Msg::SnapshotReply {
            term: me.term,
            index,
            received,
            done,
        };
        if term < self.term {
            return out.send(from, reply(self, 0, false).encode());
        }
        self.follow(now, term, from);
        if index <= self.commit {
            self.incoming = None;
            return out.send(from, reply(self, total, true).encode());
        }
        if total > self.cfg.max_snapshot {
            let limit = self.cfg.max_snapshot;
            self.garbage(
                now,
                from,
                &format_args!("a snapshot of {total} bytes (limit {limit})"),
            );
            return out.send(from, reply(self, 0, false).encode());
        }
        if offset == 0
            && self
                .incoming
                .as_ref()
                .is_none_or(|i| i.index != index || !i.buf.is_empty())
        {
            self.incoming = Some(Incoming {
                index,
                term: snap_term,
                membership,
                total,
                buf: Vec::new(),
            });
        }
        let Some(inc) = self.incoming.as_mut().filter(|i| i.index == index) else {
            return out.send(from, reply(self, 0, false).encode());
        };
        let end = offset + data.len() as u64;
        if offset == inc.buf.len() as u64 && end <= inc.total {
            inc.buf.extend_from_slice(&data);
        }
        let received = inc.buf.len() as u64;
        if received < inc.total {
            return out.send(from, reply(self, received, false).encode());
        }
        let Some(inc) = self.incoming.take() else {
            return;
        };
        match KvStore::decode_snapshot(Bytes::from(inc.buf)) {
            Ok(kv) => self.install(inc.index, inc.term, inc.membership, kv),
            Err(e) => {
                self.stats.garbage += 1;
                warn!(node = %self.cfg.id, cause = %e, "undecodable snapshot from the leader");
                return out.send(from, reply(self, 0, false).encode());
            }
        }
        out.send(from, reply(self, received, true).encode());
    }

    /// Replaces the state machine and the log up to `index` by a snapshot.
    fn install(&mut self, index: u64, term: u64, membership: Membership, kv: KvStore) {
        self.log.compact(index, term);
        self.snapshot = Snapshot {
            index,
            term,
            membership,
            data: kv.encode_snapshot(),
        };
        self.kv = kv;
        self.commit = self.commit.max(index);
        self.applied = index;
        self.refresh_membership();
        self.rewrite_wal();
        self.stats.snapshots_installed += 1;
        info!(node = %self.cfg.id, index, "snapshot installed");
        self.probe(|| Probe::Snapshot { index, term });
        self.probe(|| Probe::Committed { index });
    }

    fn on_timeout_now(&mut self, now: Time, from: NodeId, term: u64, out: &mut Outbox) {
        if term == self.term && self.leader == Some(from) && self.role == Role::Follower {
            info!(node = %self.cfg.id, term, "leadership handed over");
            self.campaign(now, true, out);
        }
    }

    // ---- apply ----

    fn apply_committed(&mut self, out: &mut Outbox) {
        while self.applied < self.commit {
            let index = self.applied + 1;
            let Some(e) = self.log.get(index).cloned() else {
                break;
            };
            if let EntryKind::Commands(cmds) = &e.kind {
                for cmd in cmds {
                    let applied = self.kv.apply(cmd);
                    self.stats.commands_applied += 1;
                    if let Some(to) = self.waiting.remove(&(cmd.client, cmd.seq)) {
                        let outcome = match applied {
                            paxos::Applied::Fresh(o) | paxos::Applied::Repeat(o) => Some(o),
                            paxos::Applied::Expired => Some(paxos::Outcome::SessionExpired),
                            _ => None,
                        };
                        if let Some(outcome) = outcome {
                            let reply = paxos::Msg::Reply {
                                client: cmd.client,
                                seq: cmd.seq,
                                outcome,
                            };
                            out.send(to, reply.encode());
                        }
                    }
                }
            }
            self.applied = index;
            self.probe(|| Probe::Applied {
                index,
                term: e.term,
                digest: e.digest(),
            });
        }
    }

    fn maybe_snapshot(&mut self, now: Time) {
        let every = self.cfg.snapshot_every;
        if every == 0 || self.applied < self.snapshot.index + every {
            return;
        }
        // While a follower is being sent the snapshot, a new one would make
        // it start over, and it would install one after another as long as
        // its round trip outlasts the log tail: wait, up to a second
        // interval.
        let sending = self.progress.values().any(|p| p.snap.is_some());
        if sending && self.applied < self.snapshot.index + 2 * every {
            return;
        }
        let index = self.applied;
        let Some(term) = self.log.term_at(index) else {
            return;
        };
        let membership = match self.log.config_at(index) {
            Some((_, m)) => m.clone(),
            None => self.snapshot.membership.clone(),
        };
        self.snapshot = Snapshot {
            index,
            term,
            membership,
            data: self.kv.encode_snapshot(),
        };
        // Keep a tail, so that a follower a little behind is sent entries;
        // a leader keeps more for followers it is catching up (up to three
        // intervals behind the snapshot), so that one that just installed
        // a snapshot is not sent the next one.
        let mut cut = index.saturating_sub(self.cfg.log_tail.unwrap_or(every / 2));
        let floor = index.saturating_sub(3 * every);
        let window = self.cfg.election_min;
        for p in self.progress.values() {
            let keep_from = match p.snap {
                Some((snap, _)) => snap,
                None if now.saturating_since(p.last_ack) < window => p.matched,
                None => continue,
            };
            if keep_from >= floor {
                cut = cut.min(keep_from);
            }
        }
        if let Some(cut_term) = self.log.term_at(cut).filter(|_| cut > self.log.base_index) {
            self.log.compact(cut, cut_term);
        }
        self.rewrite_wal();
        self.stats.snapshots_taken += 1;
        debug!(node = %self.cfg.id, index, bytes = self.snapshot.data.len(), "snapshot taken");
        self.probe(|| Probe::Snapshot { index, term });
    }

    /// What every step ends with: the leader batches and commits, every
    /// node applies, answers what became answerable, and compacts.
    fn settle(&mut self, now: Time, out: &mut Outbox) {
        if self.role == Role::Leader {
            self.flush_pending(now, out);
            self.advance_commit(now, out);
        }
        self.apply_committed(out);
        if self.role == Role::Leader {
            self.serve_reads(out);
            self.check_removed(now);
            if std::mem::take(&mut self.broadcast_round) {
                self.round += 1;
                self.broadcast(now, true, out);
            }
        }
        self.maybe_snapshot(now);
    }

    fn garbage(&mut self, now: Time, from: NodeId, cause: &dyn std::fmt::Display) {
        self.stats.garbage += 1;
        if let Some(suppressed) = self.gate.check(now) {
            warn!(node = %self.cfg.id, peer = %from, %cause, suppressed, "undecodable message ignored");
        }
    }

    fn dispatch(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        // A reply or a leader's message with a higher term: that term
        // exists, follow it (vote requests are handled below, where leader
        // stickiness may ignore them).
        match &msg {
            Msg::VoteReply { term, .. }
            | Msg::AppendReply { term, .. }
            | Msg::SnapshotReply { term, .. }
                if *term > self.term =>
            {
                return self.become_follower(now, *term, None);
            }
            _ => {}
        }
        match msg {
            Msg::PreVote {
                term,
                last_index,
                last_term,
            } => self.on_pre_vote(now, from, term, last_index, last_term, out),
            Msg::PreVoteReply { term, granted } => {
                self.on_pre_vote_reply(now, from, term, granted, out)
            }
            Msg::Vote {
                term,
                last_index,
                last_term,
                transfer,
            } => self.on_vote(now, from, term, last_index, last_term, transfer, out),
            Msg::VoteReply { term, granted } => self.on_vote_reply(now, from, term, granted, out),
            Msg::Append {
                term,
                prev_index,
                prev_term,
                commit,
                round,
                entries,
            } => self.on_append(
                now, from, term, prev_index, prev_term, commit, round, entries, out,
            ),
            Msg::AppendReply {
                term,
                round,
                success,
                index,
                hint_index,
                hint_term,
            } => self.on_append_reply(
                now, from, term, round, success, index, hint_index, hint_term, out,
            ),
            Msg::Snapshot {
                term,
                index,
                snap_term,
                membership,
                total,
                offset,
                data,
            } => self.on_snapshot(
                now, from, term, index, snap_term, membership, total, offset, data, out,
            ),
            Msg::SnapshotReply {
                term,
                index,
                received,
                done,
            } => self.on_snapshot_reply(now, from, term, index, received, done, out),
            Msg::TimeoutNow { term } => self.on_timeout_now(now, from, term, out),
            Msg::Status { nonce } => {
                let reply = Msg::StatusReply {
                    nonce,
                    status: self.status(),
                };
                out.send(from, reply.encode());
            }
            _ => self.stats.stray += 1,
        }
    }
}

impl Process for RaftNode {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        if msg.len() > self.cfg.max_message {
            self.stats.oversized += 1;
            if let Some(suppressed) = self.gate.check(now) {
                warn!(node = %self.cfg.id, peer = %from, bytes = msg.len(), suppressed, "oversized message ignored");
            }
            return;
        }
        if msg.get(1).is_some_and(|k| *k < FIRST_KIND) {
            match paxos::Msg::decode(msg) {
                Ok(paxos::Msg::Request { client, seq, op }) => {
                    self.on_request(now, from, client, seq, op, out)
                }
                Ok(_) => self.stats.stray += 1,
                Err(e) => self.garbage(now, from, &e),
            }
        } else {
            match Msg::decode(msg) {
                Ok(m) => self.dispatch(now, from, m, out),
                Err(e) => self.garbage(now, from, &e),
            }
        }
        self.settle(now, out);
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        if self.role == Role::Leader {
            if now >= self.heartbeat_at {
                self.tick(now, out);
            }
        } else if self.is_voter() && now >= self.election_at {
            self.campaign(now, false, out);
        }
        self.settle(now, out);
    }

    fn poll_timeout(&self) -> Option<Time> {
        match self.role {
            Role::Leader => Some(self.heartbeat_at),
            _ if self.is_voter() => Some(self.election_at),
            _ => None,
        }
    }

    fn persist(&mut self) -> Result<(), DurableError> {
        if std::mem::take(&mut self.wal_failed) {
            self.stats.storage_errors += 1;
            return Err(DurableError::AppendFailed);
        }
        if self.wal.is_dirty() {
            if let Err(e) = self.wal.sync() {
                self.stats.storage_errors += 1;
                warn!(node = %self.cfg.id, cause = %e, "fsync failed; replies discarded");
                return Err(e);
            }
        }
        Ok(())
    }
}
