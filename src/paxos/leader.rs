//! The proposer role of a [`Replica`]: leader election by heartbeats and
//! randomized timeouts, one phase 1 for all future slots, then phase 2
//! only, with a window of slots in flight and batching of client commands.
//!
//! A new leader re-proposes, for every slot from its first undecided one,
//! the highest-ballot value any promise of its quorum reported (not just
//! the value of the promise that completed the quorum) and fills holes
//! with no-ops. It contains no networking code and reads no clock.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use tracing::info;

use super::ballot::{Ballot, Slot};
use super::config::Mutation;
use super::kv::Value;
use super::msg::{AcceptedEntry, Msg};
use super::node::{InFlight, LeaderState, Probe, Replica, Role};
use crate::transport::{NodeId, Outbox, Time};

impl Replica {
    fn is_proposer(&self) -> bool {
        self.cfg.proposers.contains(&self.cfg.id)
    }

    /// Timers: elections, phase-1 and phase-2 retransmission, heartbeats,
    /// learner catch-up.
    pub(crate) fn on_tick(&mut self, now: Time, out: &mut Outbox) {
        if self.election_at.is_some_and(|t| t <= now) && matches!(self.role, Role::Follower) {
            self.start_campaign(now, out);
        }
        let mut campaign = false;
        let mut prepares = Vec::new();
        let mut heartbeat = false;
        match &mut self.role {
            Role::Follower => {}
            Role::Candidate {
                ballot,
                from_slot,
                promises,
                resend_at,
                give_up_at,
            } => {
                if *give_up_at <= now {
                    campaign = true;
                } else if *resend_at <= now {
                    *resend_at = now + self.cfg.retransmit;
                    let msg = Msg::Prepare {
                        ballot: *ballot,
                        from_slot: *from_slot,
                    };
                    for a in self
                        .cfg
                        .acceptors
                        .iter()
                        .filter(|a| !promises.contains_key(a))
                    {
                        prepares.push((*a, msg.clone()));
                    }
                }
            }
            Role::Leader(l) => heartbeat = l.next_heartbeat <= now,
        }
        if campaign {
            self.start_campaign(now, out);
        }
        for (a, msg) in prepares {
            self.stats.prepares_sent += 1;
            self.post(now, a, msg, out);
        }
        if heartbeat {
            self.broadcast_heartbeat(now, out);
        }
        self.resend_accepts(now, out);
        self.tick_fetch(now, out);
    }

    fn start_campaign(&mut self, now: Time, out: &mut Outbox) {
        // A candidate that failed to gather a quorum, and saw no higher
        // ballot meanwhile, retries with the same ballot: a node cut off
        // from the majority does not inflate rounds and depose a healthy
        // leader when it comes back. (It never led with that ballot: a
        // leader only steps down on seeing a higher one.)
        let retry = matches!(self.role, Role::Candidate { ballot, .. } if ballot == self.max_seen);
        let ballot = if retry {
            self.max_seen
        } else {
            self.max_seen.next_for(self.cfg.id)
        };
        self.max_seen = ballot;
        let from_slot = self.learner.next_apply();
        let timeout = self.random_election_timeout();
        self.role = Role::Candidate {
            ballot,
            from_slot,
            promises: BTreeMap::new(),
            resend_at: now + self.cfg.retransmit,
            give_up_at: now + timeout,
        };
        self.election_at = None;
        self.stats.campaigns += 1;
        let prepare = Msg::Prepare { ballot, from_slot };
        for a in self.cfg.acceptors.clone() {
            self.stats.prepares_sent += 1;
            self.post(now, a, prepare.clone(), out);
        }
    }

    pub(crate) fn on_promise(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        from_slot: Slot,
        accepted: Vec<AcceptedEntry>,
        out: &mut Outbox,
    ) {
        let quorum = self.cfg.quorum();
        let Role::Candidate {
            ballot: mine,
            from_slot: first,
            promises,
            ..
        } = &mut self.role
        else {
            self.stats.ignored += 1;
            return;
        };
        if ballot != *mine || from_slot != *first || !self.cfg.acceptors.contains(&from) {
            self.stats.ignored += 1;
            return;
        }
        promises.insert(from, accepted);
        if promises.len() >= quorum {
            self.become_leader(now, out);
        }
    }

    fn become_leader(&mut self, now: Time, out: &mut Outbox) {
        let Role::Candidate {
            ballot,
            from_slot,
            promises,
            ..
        } = std::mem::replace(&mut self.role, Role::Follower)
        else {
            return;
        };
        // The highest-ballot accepted value of every reported slot.
        let mut reported: BTreeMap<Slot, (Ballot, Value)> = BTreeMap::new();
        for entry in promises.into_values().flatten() {
            let keep = reported
                .get(&entry.slot)
                .is_none_or(|(b, _)| entry.ballot > *b);
            if keep && entry.slot >= from_slot {
                reported.insert(entry.slot, (entry.ballot, entry.value));
            }
        }
        let end = [
            from_slot,
            reported.keys().next_back().map_or(0, |s| s + 1),
            self.learner.max_decided().map_or(0, |s| s + 1),
        ]
        .into_iter()
        .max()
        .unwrap_or(from_slot);
        info!(node = %self.cfg.id, %ballot, from_slot, end, "elected leader");
        self.role = Role::Leader(Box::new(LeaderState {
            ballot,
            next_slot: end,
            commit: from_slot,
            decided_ahead: BTreeSet::new(),
            inflight: BTreeMap::new(),
            pending: VecDeque::new(),
            queued: BTreeMap::new(),
            next_heartbeat: now + self.cfg.heartbeat,
            announced: from_slot,
        }));
        self.leader = Some(self.cfg.id);
        self.leader_ballot = ballot;
        self.election_at = None;
        self.stats.elected += 1;
        self.probe(|| Probe::Elected(ballot));
        self.broadcast_heartbeat(now, out);
        for slot in from_slot..end {
            let highest = reported.remove(&slot).map(|(_, v)| v);
            let value = if self.mutated(Mutation::ProposeOwnValue) {
                Value::Noop
            } else if let Some(v) = self.learner.decided(slot) {
                v.clone()
            } else {
                highest.clone().unwrap_or(Value::Noop)
            };
            let proposed = value.digest();
            let reported = highest.as_ref().map(Value::digest);
            self.probe(|| Probe::Readopted {
                slot,
                proposed,
                reported,
            });
            self.propose(now, slot, value, out);
        }
    }

    fn propose(&mut self, now: Time, slot: Slot, value: Value, out: &mut Outbox) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let msg = Msg::Accept {
            ballot: l.ballot,
            slot,
            value: value.clone(),
            commit: l.commit,
        };
        l.inflight.insert(
            slot,
            InFlight {
                value,
                acks: BTreeSet::new(),
                resend_at: now + self.cfg.retransmit,
            },
        );
        self.stats.proposed += 1;
        for a in self.cfg.acceptors.clone() {
            self.post(now, a, msg.clone(), out);
        }
    }

    /// Proposes pending client commands while the window has room.
    pub(crate) fn fill_window(&mut self, now: Time, out: &mut Outbox) {
        loop {
            let Role::Leader(l) = &mut self.role else {
                return;
            };
            if l.inflight.len() >= self.cfg.window || l.pending.is_empty() {
                return;
            }
            // At most max_batch commands and half of max_message bytes
            // (one command at least: each is under a quarter of it).
            let budget = self.cfg.max_message / 2;
            let mut bytes = 0;
            let n = l
                .pending
                .iter()
                .take(self.cfg.max_batch)
                .take_while(|c| {
                    bytes += 20 + c.op.size();
                    bytes <= budget
                })
                .count()
                .max(1);
            let batch: Vec<_> = l.pending.drain(..n).collect();
            let slot = l.next_slot;
            l.next_slot += 1;
            self.propose(now, slot, Value::Batch(batch), out);
        }
    }

    fn resend_accepts(&mut self, now: Time, out: &mut Outbox) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        let mut resend = Vec::new();
        for (slot, f) in l.inflight.iter_mut().filter(|(_, f)| f.resend_at <= now) {
            f.resend_at = now + self.cfg.retransmit;
            let msg = Msg::Accept {
                ballot: l.ballot,
                slot: *slot,
                value: f.value.clone(),
                commit: l.commit,
            };
            for a in self.cfg.acceptors.iter().filter(|a| !f.acks.contains(a)) {
                resend.push((*a, msg.clone()));
            }
        }
        for (to, msg) in resend {
            self.post(now, to, msg, out);
        }
    }

    pub(crate) fn on_accepted(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        slot: Slot,
        out: &mut Outbox,
    ) {
        let quorum = self.cfg.quorum();
        let Role::Leader(l) = &mut self.role else {
            self.stats.ignored += 1;
            return;
        };
        if ballot != l.ballot || !self.cfg.acceptors.contains(&from) {
            self.stats.ignored += 1;
            return;
        }
        let Some(f) = l.inflight.get_mut(&slot) else {
            return; // a duplicate, or already decided
        };
        f.acks.insert(from);
        if f.acks.len() < quorum {
            return;
        }
        let Some(f) = l.inflight.remove(&slot) else {
            return;
        };
        l.decided_ahead.insert(slot);
        while l.decided_ahead.remove(&l.commit) {
            l.commit += 1;
        }
        self.stats.decided_as_leader += 1;
        self.learn(now, slot, f.value, out);
        self.fill_window(now, out);
    }

    pub(crate) fn on_nack(&mut self, now: Time, ballot: Ballot, promised: Ballot) {
        self.max_seen = self.max_seen.max(promised);
        let mine = match &self.role {
            Role::Leader(l) => l.ballot,
            Role::Candidate { ballot, .. } => *ballot,
            Role::Follower => return,
        };
        if ballot == mine && promised > mine {
            self.step_down(now);
        }
    }

    pub(crate) fn step_down(&mut self, now: Time) {
        if matches!(self.role, Role::Leader(_)) {
            info!(node = %self.cfg.id, "stepping down");
        }
        self.role = Role::Follower;
        // Forget which clients wait here: their commands may never be
        // decided now, and they retry elsewhere after their timeout. (This
        // also keeps the table bounded by the queue of the current term.)
        self.waiting.clear();
        if self.leader == Some(self.cfg.id) {
            self.leader = None;
        }
        if self.is_proposer() {
            let t = self.random_election_timeout();
            self.election_at = Some(now + t);
        }
    }

    /// A sign of life from the leader of `ballot` (a heartbeat or accept).
    pub(crate) fn hear_leader(&mut self, now: Time, ballot: Ballot) {
        self.max_seen = self.max_seen.max(ballot);
        let mine = match &self.role {
            Role::Leader(l) => Some(l.ballot),
            Role::Candidate { ballot, .. } => Some(*ballot),
            Role::Follower => None,
        };
        if mine == Some(ballot) {
            return; // our own message to ourselves
        }
        if ballot < self.leader_ballot || mine.is_some_and(|m| ballot < m) {
            return; // a stale leader
        }
        if mine.is_some() {
            self.step_down(now);
        }
        self.leader = Some(ballot.node);
        self.leader_ballot = ballot;
        if self.is_proposer() {
            let t = self.random_election_timeout();
            self.election_at = Some(now + t);
        }
    }

    pub(crate) fn on_heartbeat(
        &mut self,
        now: Time,
        from: NodeId,
        ballot: Ballot,
        commit: Slot,
        out: &mut Outbox,
    ) {
        if from != ballot.node {
            self.stats.ignored += 1;
            return;
        }
        self.hear_leader(now, ballot);
        self.on_commit_notice(now, ballot, commit, out);
    }

    fn broadcast_heartbeat(&mut self, now: Time, out: &mut Outbox) {
        let Role::Leader(l) = &mut self.role else {
            return;
        };
        l.next_heartbeat = now + self.cfg.heartbeat;
        l.announced = l.commit;
        let msg = Msg::Heartbeat {
            ballot: l.ballot,
            commit: l.commit,
        };
        for n in self.cfg.learners.iter().filter(|n| **n != self.cfg.id) {
            out.send(*n, msg.encode());
        }
    }

    /// After each step: announce a commit index that moved (the commit
    /// notice), pushing the decided values to learners that are not
    /// acceptors (they hold no accepted values to match).
    pub(crate) fn after_step(&mut self, now: Time, out: &mut Outbox) {
        let Role::Leader(l) = &self.role else {
            return;
        };
        if l.commit <= l.announced {
            return;
        }
        let (from, to) = (l.announced, l.commit);
        self.broadcast_heartbeat(now, out);
        let pure: Vec<NodeId> = self
            .cfg
            .learners
            .iter()
            .filter(|n| **n != self.cfg.id && !self.cfg.is_acceptor(**n))
            .copied()
            .collect();
        if pure.is_empty() {
            return;
        }
        // In messages under half of max_message each.
        let budget = self.cfg.max_message / 2;
        let mut chunk: Vec<(Slot, Value)> = Vec::new();
        let mut bytes = 0;
        let flush = |chunk: &mut Vec<(Slot, Value)>, out: &mut Outbox| {
            if chunk.is_empty() {
                return;
            }
            let msg = Msg::Decided {
                entries: std::mem::take(chunk),
            }
            .encode();
            for n in &pure {
                out.send(*n, msg.clone());
            }
        };
        for s in from..to {
            let Some(v) = self.learner.decided(s) else {
                continue;
            };
            if !chunk.is_empty() && bytes + v.size() > budget {
                flush(&mut chunk, out);
                bytes = 0;
            }
            bytes += v.size();
            chunk.push((s, v.clone()));
        }
        flush(&mut chunk, out);
    }
}
