//! The leader's side of `RaftNode`: replication with pipelining and fast
//! backtracking, commitment (current-term entries only), heartbeats and
//! check-quorum, InstallSnapshot in chunks, client requests (batched
//! writes, ReadIndex reads), membership changes and leadership transfer.

use tracing::{debug, info, warn};

use super::config::Mutation;
use super::log::{ConfChange, EntryKind};
use super::msg::Msg;
use super::node::{PendingRead, Probe, Progress, RaftNode, Role};
use super::RaftError;
use crate::paxos::{self, ClientId, Command, Op};
use crate::transport::{NodeId, Outbox, Time};

impl RaftNode {
    pub(super) fn become_leader(&mut self, now: Time, out: &mut Outbox) {
        info!(node = %self.cfg.id, term = self.term, "became leader");
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.progress.clear();
        self.reads.clear();
        self.pending.clear();
        self.waiting.clear();
        self.transfer = None;
        self.stats.leaderships += 1;
        let term = self.term;
        self.probe(|| Probe::Elected { term });
        self.sync_progress();
        for p in self.progress.values_mut() {
            p.last_ack = now;
        }
        // Commits every entry of earlier terms once it commits.
        self.term_start = self.append_entry(EntryKind::Noop);
        self.round += 1;
        self.broadcast(now, true, out);
        self.heartbeat_at = now + self.cfg.heartbeat;
    }

    /// One progress per member other than this node, added or removed as
    /// the configuration changes.
    pub(super) fn sync_progress(&mut self) {
        let me = self.cfg.id;
        let members: Vec<NodeId> = self.membership.members().filter(|m| *m != me).collect();
        self.progress.retain(|id, _| members.contains(id));
        let next = self.log.last_index() + 1;
        let now = self.heartbeat_at;
        for m in members {
            self.progress.entry(m).or_insert(Progress {
                next,
                matched: 0,
                inflight: 0,
                acked: true,
                last_ack: now,
                round: 0,
                snap: None,
            });
        }
    }

    /// Sends `peer` what it needs next: entries if the window allows, a
    /// snapshot chunk if its next entry was compacted away, else (when
    /// `heartbeat`) an empty AppendEntries.
    fn send_append(&mut self, peer: NodeId, heartbeat: bool, out: &mut Outbox) {
        let Some(p) = self.progress.get(&peer) else {
            return;
        };
        if p.snap.is_some() {
            return;
        }
        if p.next <= self.log.base_index {
            return self.send_chunk(peer, 0, out);
        }
        let last = self.log.last_index();
        let mut entries = Vec::new();
        if p.inflight < self.cfg.max_inflight && p.next <= last {
            let budget = self.cfg.max_message / 2;
            let mut bytes = 0;
            let to = p.next + self.cfg.max_append as u64 - 1;
            for e in self.log.slice(p.next, to) {
                bytes += e.size();
                if !entries.is_empty() && bytes > budget {
                    break;
                }
                entries.push(e.clone());
            }
        }
        if entries.is_empty() && !heartbeat {
            return;
        }
        let prev = if entries.is_empty() && p.inflight > 0 && self.log.term_at(p.matched).is_some()
        {
            // Entries are in flight: probe from what is known to match.
            p.matched
        } else {
            p.next - 1
        };
        let Some(prev_term) = self.log.term_at(prev) else {
            return self.send_chunk(peer, 0, out);
        };
        let n = entries.len();
        let msg = Msg::Append {
            term: self.term,
            prev_index: prev,
            prev_term,
            commit: self.commit,
            round: self.round,
            entries,
        };
        self.stats.appends_sent += 1;
        self.stats.entries_sent += n as u64;
        if n > 0 {
            if let Some(p) = self.progress.get_mut(&peer) {
                p.next = prev + n as u64 + 1;
                p.inflight += 1;
            }
        }
        out.send(peer, msg.encode());
    }

    /// Sends every follower what it needs (`heartbeat`: something to each).
    pub(super) fn broadcast(&mut self, _now: Time, heartbeat: bool, out: &mut Outbox) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_append(peer, heartbeat, out);
        }
    }

    /// Sends the chunk of the current snapshot at `offset`.
    fn send_chunk(&mut self, peer: NodeId, offset: u64, out: &mut Outbox) {
        let s = &self.snapshot;
        let total = s.data.len() as u64;
        let offset = offset.min(total);
        let end = (offset + self.cfg.snapshot_chunk as u64).min(total);
        let msg = Msg::Snapshot {
            term: self.term,
            index: s.index,
            snap_term: s.term,
            membership: s.membership.clone(),
            total,
            offset,
            data: s.data.slice(offset as usize..end as usize),
        };
        let index = s.index;
        if let Some(p) = self.progress.get_mut(&peer) {
            if p.snap.is_none() {
                debug!(node = %self.cfg.id, %peer, index, "sending a snapshot");
            }
            p.snap = Some((index, offset));
        }
        self.stats.snapshot_chunks_sent += 1;
        out.send(peer, msg.encode());
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_append_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        round: u64,
        success: bool,
        index: u64,
        hint_index: u64,
        hint_term: Option<u64>,
        out: &mut Outbox,
    ) {
        if self.role != Role::Leader || term != self.term {
            return;
        }
        let last = self.log.last_index();
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.last_ack = now;
        p.acked = true;
        p.round = p.round.max(round);
        if p.snap.is_some() {
            return;
        }
        if success {
            let index = index.min(last);
            p.matched = p.matched.max(index);
            p.next = p.next.max(p.matched + 1);
            p.inflight = p.inflight.saturating_sub(1);
            let caught_up = p.matched == last;
            if let Some((to, _, sent)) = &mut self.transfer {
                if *to == from && caught_up && !*sent {
                    *sent = true;
                    out.send(from, Msg::TimeoutNow { term: self.term }.encode());
                }
            }
        } else {
            if index <= p.matched || index >= p.next {
                // About entries known to match, or one of several appends
                // in flight refused after an earlier refusal reset `next`:
                // stale.
                return;
            }
            self.stats.rejects += 1;
            let resume = match hint_term {
                Some(t) => match self.log.last_of_term(t) {
                    Some(i) => i + 1,
                    None => hint_index,
                },
                None => hint_index,
            };
            p.next = resume.min(index).max(p.matched + 1);
            p.inflight = 0;
        }
        self.send_append(from, false, out);
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_snapshot_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        index: u64,
        received: u64,
        done: bool,
        out: &mut Outbox,
    ) {
        if self.role != Role::Leader || term != self.term {
            return;
        }
        let current = self.snapshot.index;
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        p.last_ack = now;
        p.acked = true;
        let Some((sending, _)) = p.snap else {
            return;
        };
        if done {
            p.matched = p.matched.max(index);
            p.next = p.matched + 1;
            p.inflight = 0;
            p.snap = None;
            info!(node = %self.cfg.id, peer = %from, index, "snapshot delivered");
            self.send_append(from, true, out);
        } else if sending == index && index == current {
            p.snap = Some((index, received));
            self.send_chunk(from, received, out);
        } else {
            // A newer snapshot replaced the one being sent: start over.
            self.send_chunk(from, 0, out);
        }
    }

    /// Commits the highest index stored by a majority of voters, if it is
    /// of the current term (Raft figure 8: never by counting an earlier
    /// term's entries).
    pub(super) fn advance_commit(&mut self, _now: Time, _out: &mut Outbox) {
        let mut matched: Vec<u64> = self
            .membership
            .voters
            .iter()
            .map(|v| {
                if *v == self.cfg.id {
                    self.log.last_index()
                } else {
                    self.progress.get(v).map_or(0, |p| p.matched)
                }
            })
            .collect();
        if matched.is_empty() {
            return;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let n = matched[self.membership.quorum() - 1];
        if n <= self.commit {
            return;
        }
        let current = self.log.term_at(n) == Some(self.term);
        if current || self.cfg.mutated(Mutation::CommitPriorTerm) {
            self.commit = n;
            self.probe(|| Probe::Committed { index: n });
        }
    }

    /// The heartbeat tick: check-quorum, retransmissions, heartbeats.
    pub(super) fn tick(&mut self, now: Time, out: &mut Outbox) {
        self.heartbeat_at = now + self.cfg.heartbeat;
        if self.cfg.check_quorum {
            let window = self.cfg.election_min;
            let active = self
                .membership
                .voters
                .iter()
                .filter(|v| {
                    **v == self.cfg.id
                        || self
                            .progress
                            .get(v)
                            .is_some_and(|p| now.saturating_since(p.last_ack) < window)
                })
                .count();
            if active < self.membership.quorum() {
                warn!(node = %self.cfg.id, term = self.term, active, "lost touch with a majority; stepping down");
                self.stats.step_downs += 1;
                return self.become_follower(now, self.term, None);
            }
        }
        if let Some((to, deadline, _)) = self.transfer {
            if now >= deadline {
                info!(node = %self.cfg.id, %to, "leadership transfer timed out");
                self.transfer = None;
            }
        }
        self.round += 1;
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            let Some(p) = self.progress.get_mut(&peer) else {
                continue;
            };
            let acked = std::mem::replace(&mut p.acked, false);
            match p.snap {
                Some((_, offset)) => {
                    if !acked {
                        self.send_chunk(peer, offset, out);
                    }
                }
                None => {
                    if !acked && p.inflight > 0 {
                        // Unanswered for a whole interval: resend.
                        p.next = p.matched + 1;
                        p.inflight = 0;
                    }
                    self.send_append(peer, true, out);
                }
            }
        }
    }

    // ---- clients ----

    pub(super) fn held(&self) -> usize {
        self.waiting.len() + self.reads.len()
    }

    pub(super) fn on_request(
        &mut self,
        now: Time,
        from: NodeId,
        client: ClientId,
        seq: u64,
        op: Op,
        out: &mut Outbox,
    ) {
        if self.role != Role::Leader || self.transfer.is_some() {
            self.stats.redirects += 1;
            let leader = if self.role == Role::Leader {
                None
            } else {
                self.leader
            };
            let msg = paxos::Msg::Redirect {
                client,
                seq,
                leader,
            };
            return out.send(from, msg.encode());
        }
        if op.size() > self.cfg.max_message / 4 {
            self.stats.requests_dropped += 1;
            if let Some(suppressed) = self.gate.check(now) {
                warn!(node = %self.cfg.id, %client, bytes = op.size(), suppressed, "command too large; dropped");
            }
            return;
        }
        // A read goes through ReadIndex, off the log, once the store knows
        // the session. A session's first operation goes through the log
        // even if it is a read: it opens the session, so that the store
        // can tell this client's later writes (sequence > 1) from those of
        // a client whose session it evicted.
        let known = self.kv.last_seq(client).is_some();
        if let (Op::Get { key }, true) = (&op, known) {
            let key = key.clone();
            if self.held() >= self.cfg.max_pending {
                self.stats.requests_dropped += 1;
                return;
            }
            self.reads.push_back(PendingRead {
                round: self.round + 1,
                index: self.commit.max(self.term_start),
                from,
                client,
                seq,
                key,
            });
            self.broadcast_round = true;
            return;
        }
        if let Some(outcome) = self.kv.session_outcome(client, seq) {
            let reply = paxos::Msg::Reply {
                client,
                seq,
                outcome: outcome.clone(),
            };
            return out.send(from, reply.encode());
        }
        if self.kv.last_seq(client).is_some_and(|s| s > seq) {
            self.stats.stray += 1;
            return; // superseded: the client has moved on
        }
        if let Some(to) = self.waiting.get_mut(&(client, seq)) {
            *to = from; // a retry of a command already on its way
            return;
        }
        if self.held() >= self.cfg.max_pending {
            self.stats.requests_dropped += 1;
            if let Some(suppressed) = self.gate.check(now) {
                warn!(node = %self.cfg.id, held = self.held(), suppressed, "too many pending requests; dropped");
            }
            return;
        }
        self.waiting.insert((client, seq), from);
        self.pending.push_back(Command { client, seq, op });
    }

    /// Turns pending commands into log entries while fewer than
    /// `max_inflight` entries are uncommitted (group commit under load).
    pub(super) fn flush_pending(&mut self, now: Time, out: &mut Outbox) {
        let mut appended = false;
        while !self.pending.is_empty()
            && self.log.last_index() - self.commit < self.cfg.max_inflight as u64
        {
            let budget = self.cfg.max_message / 4;
            let mut bytes = 0;
            let mut batch = Vec::new();
            while let Some(c) = self.pending.front() {
                bytes += 20 + c.op.size();
                if batch.len() >= self.cfg.max_batch || (!batch.is_empty() && bytes > budget) {
                    break;
                }
                batch.extend(self.pending.pop_front());
            }
            self.append_entry(EntryKind::Commands(batch));
            appended = true;
        }
        if appended {
            self.broadcast(now, false, out);
        }
    }

    /// Answers the reads whose leadership check a majority confirmed, once
    /// the state machine has reached their read index.
    pub(super) fn serve_reads(&mut self, out: &mut Outbox) {
        while let Some(r) = self.reads.front() {
            let confirmed = self
                .membership
                .voters
                .iter()
                .filter(|v| {
                    **v == self.cfg.id || self.progress.get(v).is_some_and(|p| p.round >= r.round)
                })
                .count()
                >= self.membership.quorum();
            if !confirmed || self.applied < r.index {
                break;
            }
            let Some(r) = self.reads.pop_front() else {
                break;
            };
            self.stats.reads += 1;
            let reply = paxos::Msg::Reply {
                client: r.client,
                seq: r.seq,
                outcome: paxos::Outcome::Read(self.kv.get(&r.key).cloned()),
            };
            out.send(r.from, reply.encode());
        }
    }

    /// A leader whose removal committed steps down.
    pub(super) fn check_removed(&mut self, now: Time) {
        if !self.is_voter() && self.membership_index <= self.commit {
            info!(node = %self.cfg.id, "removed from the configuration; stepping down");
            self.become_follower(now, self.term, None);
        }
    }

    // ---- administration ----

    /// Proposes a configuration change (leader only, one at a time, and
    /// only once an entry of the leader's term committed). Returns the log
    /// index of the change; it is in force on each node as soon as that
    /// node stores it.
    pub fn propose_change(
        &mut self,
        now: Time,
        change: ConfChange,
        out: &mut Outbox,
    ) -> Result<u64, RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if self.membership_index > self.commit {
            return Err(RaftError::ChangeInProgress);
        }
        if self.log.term_at(self.commit) != Some(self.term) {
            return Err(RaftError::LeaderNotReady);
        }
        let mut m = self.membership.clone();
        match change {
            ConfChange::AddLearner(id) => {
                if m.contains(id) {
                    return Err(RaftError::AlreadyMember(id));
                }
                m.learners.insert(id);
            }
            ConfChange::Promote(id) => {
                if !m.learners.contains(&id) {
                    return Err(RaftError::UnknownNode(id));
                }
                let matched = self.progress.get(&id).map_or(0, |p| p.matched);
                if matched < self.commit {
                    return Err(RaftError::NotCaughtUp(id));
                }
                m.learners.remove(&id);
                m.voters.insert(id);
            }
            ConfChange::Remove(id) => {
                if !m.contains(id) {
                    return Err(RaftError::UnknownNode(id));
                }
                if m.voters.len() == 1 && m.voters.contains(&id) {
                    return Err(RaftError::LastVoter(id));
                }
                m.voters.remove(&id);
                m.learners.remove(&id);
            }
        }
        info!(node = %self.cfg.id, ?change, "configuration change proposed");
        let index = self.append_entry(EntryKind::Config(m));
        self.broadcast(now, false, out);
        self.advance_commit(now, out);
        Ok(index)
    }

    /// Hands leadership to `to` (a voter): new writes are redirected, `to`
    /// is brought up to date and told to campaign at once. Abandoned after
    /// one maximum election timeout.
    pub fn transfer_leadership(
        &mut self,
        now: Time,
        to: NodeId,
        out: &mut Outbox,
    ) -> Result<(), RaftError> {
        if self.role != Role::Leader {
            return Err(RaftError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id {
            return Ok(());
        }
        if !self.membership.voters.contains(&to) {
            return Err(RaftError::UnknownNode(to));
        }
        self.stats.transfers += 1;
        let caught_up = self
            .progress
            .get(&to)
            .is_some_and(|p| p.matched == self.log.last_index());
        self.transfer = Some((to, now + self.cfg.election_max, caught_up));
        info!(node = %self.cfg.id, %to, "transferring leadership");
        if caught_up {
            out.send(to, Msg::TimeoutNow { term: self.term }.encode());
        } else {
            self.send_append(to, true, out);
        }
        Ok(())
    }
}
