//! The learner role: decided values by slot, applied to the key-value
//! store strictly in slot order (execution waits at the first hole), and
//! catch-up of missed values from the leader.
//!
//! A learner learns a slot in one of three ways: it is the leader and
//! counted a quorum; a commit notice from the leader of ballot `b` covers
//! a slot its own acceptor accepted in `b` (that value is the decided one);
//! or a `Decided` message carries it (an answer to `Fetch`, or a push to a
//! learner that is not an acceptor). Every learner, not only the leader
//! that proposed a slot, learns it. It contains no networking code and
//! reads no clock.

use std::collections::BTreeMap;

use tracing::error;

use super::ballot::{Ballot, Slot};
use super::kv::{Applied, Command, KvStore, Value};
use super::msg::Msg;
use super::node::{Probe, Replica};
use crate::transport::{NodeId, Outbox, Time};

/// Most entries in one `Decided` message.
const FETCH_ENTRIES: usize = 512;
/// Most commands in one `Decided` message (at least one slot is sent).
const FETCH_COMMANDS: usize = 4096;

/// The learner's state: the decided log and the store it feeds.
#[derive(Debug, Default)]
pub struct Learner {
    decided: BTreeMap<Slot, Value>,
    next_apply: Slot,
    commit_hint: Slot,
    kv: KvStore,
    fetch_due: Option<Time>,
    last_fetch: Option<Time>,
    /// Per ballot, the slot up to which the own acceptor was matched
    /// against commit notices.
    scanned: (Ballot, Slot),
}

impl Learner {
    pub(crate) fn new(max_sessions: usize) -> Self {
        Learner {
            kv: KvStore::with_max_sessions(max_sessions),
            ..Self::default()
        }
    }

    /// The first slot not applied yet (every slot below is decided and
    /// applied).
    pub fn next_apply(&self) -> Slot {
        self.next_apply
    }

    /// The decided value of `slot`, if known.
    pub fn decided(&self, slot: Slot) -> Option<&Value> {
        self.decided.get(&slot)
    }

    /// The highest slot known decided.
    pub fn max_decided(&self) -> Option<Slot> {
        self.decided.keys().next_back().copied()
    }

    /// The highest commit index heard from a leader.
    pub fn commit_hint(&self) -> Slot {
        self.commit_hint
    }

    /// The store, as of `next_apply`.
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }

    /// The applied log: every decided value from slot 0 to `next_apply`.
    pub fn history(&self) -> impl Iterator<Item = (Slot, &Value)> + '_ {
        self.decided.range(..self.next_apply).map(|(s, v)| (*s, v))
    }

    /// Every command applied, in log order (with duplicates of retried
    /// commands that the sessions skipped).
    pub fn commands(&self) -> impl Iterator<Item = &Command> + '_ {
        self.history().flat_map(|(_, v)| v.commands())
    }

    pub(crate) fn fetch_due(&self) -> Option<Time> {
        self.fetch_due
    }

    /// Records a decided value; `Err(existing)` if the slot was already
    /// decided with a different value (a safety violation).
    fn decide(&mut self, slot: Slot, value: Value) -> Result<bool, Value> {
        if slot < self.next_apply {
            return match self.decided.get(&slot) {
                Some(v) if *v != value => Err(v.clone()),
                _ => Ok(false),
            };
        }
        match self.decided.get(&slot) {
            Some(v) if *v == value => Ok(false),
            Some(v) => Err(v.clone()),
            None => {
                self.decided.insert(slot, value);
                Ok(true)
            }
        }
    }

    /// Applies every decided slot that is next in order.
    fn apply_ready(&mut self, mut on_slot: impl FnMut(Slot)) -> Vec<(Command, Applied)> {
        let mut applied = Vec::new();
        while let Some(value) = self.decided.get(&self.next_apply) {
            for cmd in value.commands() {
                applied.push((cmd.clone(), self.kv.apply(cmd)));
            }
            on_slot(self.next_apply);
            self.next_apply += 1;
        }
        self.commit_hint = self.commit_hint.max(self.next_apply);
        applied
    }
}

impl Replica {
    /// Learns that `slot` is decided with `value`; applies what became
    /// applicable and answers waiting clients.
    pub(crate) fn learn(&mut self, now: Time, slot: Slot, value: Value, out: &mut Outbox) {
        let digest = value.digest();
        match self.learner.decide(slot, value) {
            Ok(false) => return,
            Ok(true) => self.probe(|| Probe::Decided { slot, digest }),
            Err(existing) => {
                self.stats.conflicts += 1;
                error!(node = %self.cfg.id, slot, ?existing, "slot learned with two different values");
                return;
            }
        }
        let mut slots = Vec::new();
        let applied = self.learner.apply_ready(|s| slots.push(s));
        if self.cfg.probes {
            self.probes.extend(slots.into_iter().map(Probe::Applied));
        }
        self.answer(applied, out);
        self.schedule_fetch(now);
    }

    /// A commit notice: every slot below `commit` is decided; slots our
    /// acceptor accepted in `ballot` hold the decided value.
    pub(crate) fn on_commit_notice(
        &mut self,
        now: Time,
        ballot: Ballot,
        commit: Slot,
        out: &mut Outbox,
    ) {
        self.learner.commit_hint = self.learner.commit_hint.max(commit);
        let start = match self.learner.scanned {
            (b, s) if b == ballot => s.max(self.learner.next_apply),
            _ => self.learner.next_apply,
        };
        if let Some(acc) = &self.acceptor {
            let found: Vec<(Slot, Value)> = (start..commit)
                .filter(|s| self.learner.decided(*s).is_none())
                .filter_map(|s| match acc.accepted(s) {
                    Some((b, v)) if *b == ballot => Some((s, v.clone())),
                    _ => None,
                })
                .collect();
            for (slot, value) in found {
                self.learn(now, slot, value, out);
            }
        }
        self.learner.scanned = (ballot, commit.max(start));
        self.schedule_fetch(now);
    }

    fn schedule_fetch(&mut self, now: Time) {
        let leading = self.leader_hint() == Some(self.cfg.id);
        let retransmit = self.cfg.retransmit;
        let l = &mut self.learner;
        if l.next_apply >= l.commit_hint || leading {
            l.fetch_due = None;
        } else if l.fetch_due.is_none() {
            let earliest = l.last_fetch.map_or(now, |t| t + retransmit);
            l.fetch_due = Some(earliest.max(now));
        }
    }

    /// Sends a due `Fetch` to the leader.
    pub(crate) fn tick_fetch(&mut self, now: Time, out: &mut Outbox) {
        if self.learner.fetch_due.is_none_or(|t| t > now) {
            return;
        }
        self.learner.fetch_due = None;
        match self.leader_hint().filter(|l| *l != self.cfg.id) {
            Some(leader) => {
                self.learner.last_fetch = Some(now);
                let from_slot = self.learner.next_apply;
                out.send(leader, Msg::Fetch { from_slot }.encode());
            }
            None => self.learner.last_fetch = Some(now),
        }
        self.schedule_fetch(now);
    }

    pub(crate) fn on_fetch(&mut self, from: NodeId, from_slot: Slot, out: &mut Outbox) {
        let mut commands = 0;
        let mut bytes = 0;
        let budget = self.cfg.max_message / 2;
        let entries: Vec<(Slot, Value)> = self
            .learner
            .decided
            .range(from_slot..)
            .take(FETCH_ENTRIES)
            .take_while(|(_, v)| {
                let first = commands == 0 && bytes == 0;
                commands += v.commands().len();
                bytes += v.size();
                first || (commands <= FETCH_COMMANDS && bytes <= budget)
            })
            .map(|(s, v)| (*s, v.clone()))
            .collect();
        if !entries.is_empty() {
            out.send(from, Msg::Decided { entries }.encode());
        }
    }

    pub(crate) fn on_decided(&mut self, now: Time, entries: Vec<(Slot, Value)>, out: &mut Outbox) {
        let any = !entries.is_empty();
        for (slot, value) in entries {
            self.learner.commit_hint = self.learner.commit_hint.max(slot + 1);
            self.learn(now, slot, value, out);
        }
        if any && self.learner.next_apply < self.learner.commit_hint {
            // Progress, but still behind: ask for the next part at once.
            self.learner.last_fetch = None;
            self.learner.fetch_due = None;
            self.schedule_fetch(now);
        }
    }
}
