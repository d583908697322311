//! `Sim`: the seeded, single-threaded, virtual-time network and node
//! scheduler.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use super::types::{Envelope, Fate, LinkProfile, PumpProfile, SimStats, Step, StepKind};
use crate::det::{Rng, TraceHash};
use crate::durable::SimDisk;
use crate::transport::{NodeId, Outbox, Process, Time};

enum EventKind {
    Deliver(Envelope),
    Timer { node: NodeId, generation: u64 },
    Pump { node: NodeId },
}

struct Event {
    at: Time,
    seq: u64,
    kind: EventKind,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Event {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

type Factory<P> = Box<dyn FnMut(NodeId, SimDisk, Time) -> P>;
type Filter = Box<dyn FnMut(&Envelope) -> Fate>;
type Tap = Box<dyn FnMut(Time, &Envelope)>;

struct NodeSlot<P> {
    process: Option<P>,
    factory: Factory<P>,
    disk: SimDisk,
    timer_at: Option<Time>,
    timer_generation: u64,
    held: Vec<Envelope>,
    pump_armed: bool,
}

/// A deterministic simulated cluster of processes of type `P`.
pub struct Sim<P: Process> {
    now: Time,
    rng: Rng,
    seq: u64,
    queue: BinaryHeap<Reverse<Event>>,
    nodes: BTreeMap<NodeId, NodeSlot<P>>,
    default_link: LinkProfile,
    links: BTreeMap<(NodeId, NodeId), LinkProfile>,
    pump: Option<PumpProfile>,
    groups: BTreeMap<NodeId, u32>,
    blocked: BTreeSet<(NodeId, NodeId)>,
    mid_step_crash: f64,
    mid_step_nodes: BTreeSet<NodeId>,
    filter: Option<Filter>,
    tap: Option<Tap>,
    trace: TraceHash,
    log: Option<Vec<String>>,
    stats: SimStats,
}

impl<P: Process> fmt::Debug for Sim<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &self.now)
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<P: Process> Sim<P> {
    /// An empty simulation whose every random choice follows `seed`.
    pub fn new(seed: u64) -> Self {
        let mut trace = TraceHash::new();
        trace.write_u64(seed);
        Sim {
            now: Time::ZERO,
            rng: Rng::new(seed),
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: BTreeMap::new(),
            default_link: LinkProfile::default(),
            links: BTreeMap::new(),
            pump: None,
            groups: BTreeMap::new(),
            blocked: BTreeSet::new(),
            mid_step_crash: 0.0,
            mid_step_nodes: BTreeSet::new(),
            filter: None,
            tap: None,
            trace,
            log: None,
            stats: SimStats::default(),
        }
    }

    /// Adds a node built by `factory(id, disk, now)`; the factory is called
    /// again, with the same disk, on every restart.
    pub fn add_node(
        &mut self,
        id: NodeId,
        factory: impl FnMut(NodeId, SimDisk, Time) -> P + 'static,
    ) {
        let mut factory: Factory<P> = Box::new(factory);
        let disk = SimDisk::new();
        let process = factory(id, disk.clone(), self.now);
        self.nodes.insert(
            id,
            NodeSlot {
                process: Some(process),
                factory,
                disk,
                timer_at: None,
                timer_generation: 0,
                held: Vec::new(),
                pump_armed: false,
            },
        );
        self.rearm(id);
    }

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// The simulation's random generator (for scenario choices, so they
    /// replay with the seed).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.finish()
    }

    /// Counters so far.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Keeps a readable log of every event (see [`Sim::log_tail`]).
    pub fn record_log(&mut self, on: bool) {
        self.log = on.then(Vec::new);
    }

    /// The last `n` logged events.
    pub fn log_tail(&self, n: usize) -> &[String] {
        match &self.log {
            Some(l) => &l[l.len().saturating_sub(n)..],
            None => &[],
        }
    }

    /// The ids of all nodes.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The process of a node, if it is up.
    pub fn node(&self, id: NodeId) -> Option<&P> {
        self.nodes.get(&id)?.process.as_ref()
    }

    /// The process of a node, mutably, if it is up. Outputs it produces
    /// through other means than `handle_*` are not sent.
    pub fn node_mut(&mut self, id: NodeId) -> Option<&mut P> {
        self.nodes.get_mut(&id)?.process.as_mut()
    }

    /// The processes that are up.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeId, &P)> {
        self.nodes
            .iter()
            .filter_map(|(id, s)| s.process.as_ref().map(|p| (*id, p)))
    }

    /// The disk of a node.
    pub fn disk(&self, id: NodeId) -> Option<&SimDisk> {
        self.nodes.get(&id).map(|s| &s.disk)
    }

    /// True if the node exists and is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// Sets the profile of every link without its own.
    pub fn set_default_link(&mut self, profile: LinkProfile) {
        self.default_link = profile;
    }

    /// Sets the profile of the directed link `from -> to`.
    pub fn set_link(&mut self, from: NodeId, to: NodeId, profile: LinkProfile) {
        self.links.insert((from, to), profile);
    }

    /// Turns the adversarial pump on (for every node) or off. Turning it off
    /// delivers nothing held: held messages stay until the pump returns.
    pub fn set_pump(&mut self, pump: Option<PumpProfile>) {
        self.pump = pump;
        let ids = self.node_ids();
        for id in ids {
            self.arm_pump(id);
        }
    }

    /// The probability that one of `nodes` crashes after a step but before
    /// its fsync (its messages are lost and so are its unsynced writes).
    pub fn set_mid_step_crash(&mut self, p: f64, nodes: &[NodeId]) {
        self.mid_step_crash = p;
        self.mid_step_nodes = nodes.iter().copied().collect();
    }

    /// Installs a filter that sees every message as it is sent.
    pub fn set_filter(&mut self, f: impl FnMut(&Envelope) -> Fate + 'static) {
        self.filter = Some(Box::new(f));
    }

    /// Removes the filter.
    pub fn clear_filter(&mut self) {
        self.filter = None;
    }

    /// Installs a tap that sees every message a process sends (before
    /// loss), e.g. to count messages by kind.
    pub fn set_tap(&mut self, f: impl FnMut(Time, &Envelope) + 'static) {
        self.tap = Some(Box::new(f));
    }

    /// Splits the network: nodes in different groups cannot talk; nodes in
    /// no group are each alone. Messages in flight across a cut are lost
    /// when they land.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        self.groups.clear();
        let mut next = u32::try_from(groups.len()).unwrap_or(u32::MAX);
        for id in self.nodes.keys() {
            let g = groups
                .iter()
                .position(|g| g.contains(id))
                .map(|g| g as u32)
                .unwrap_or_else(|| {
                    next += 1;
                    next
                });
            self.groups.insert(*id, g);
        }
        self.note(format!("partition {groups:?}"));
        self.trace.write(b"P");
        for (id, g) in &self.groups {
            self.trace.write_u64(u64::from(id.0));
            self.trace.write_u64(u64::from(*g));
        }
    }

    /// Cuts one node off from all others.
    pub fn isolate(&mut self, id: NodeId) {
        let rest: Vec<NodeId> = self.node_ids().into_iter().filter(|n| *n != id).collect();
        self.partition(&[&rest, &[id]]);
    }

    /// Cuts the directed link `from -> to` (partial connectivity).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
        self.trace.write(b"B");
        self.trace
            .write_u64(u64::from(from.0) << 32 | u64::from(to.0));
    }

    /// Removes every partition and cut link.
    pub fn heal(&mut self) {
        self.groups.clear();
        self.blocked.clear();
        self.note("heal".into());
        self.trace.write(b"H");
    }

    /// True if `from` can currently reach `to`.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        if from == to {
            return true;
        }
        let g = |n| self.groups.get(&n).copied().unwrap_or(0);
        g(from) == g(to) && !self.blocked.contains(&(from, to))
    }

    /// Crashes a node: its process is dropped, its unsynced writes are
    /// lost, messages to it are lost until it restarts.
    pub fn crash(&mut self, id: NodeId) {
        let Some(slot) = self.nodes.get_mut(&id) else {
            return;
        };
        if slot.process.take().is_none() {
            return;
        }
        let lost = slot.disk.crash();
        slot.held.clear();
        slot.timer_at = None;
        slot.timer_generation += 1;
        self.stats.crashes += 1;
        self.trace.write(b"C");
        self.trace.write_u64(u64::from(id.0));
        self.note(format!("crash {id} (lost {lost} unsynced records)"));
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, id: NodeId) {
        let now = self.now;
        let Some(slot) = self.nodes.get_mut(&id) else {
            return;
        };
        if slot.process.is_some() {
            return;
        }
        slot.process = Some((slot.factory)(id, slot.disk.clone(), now));
        self.stats.restarts += 1;
        self.trace.write(b"R");
        self.trace.write_u64(u64::from(id.0));
        self.note(format!("restart {id}"));
        self.rearm(id);
    }

    /// Delivers `msg` to `to` as if `from` had sent it now (through the
    /// link profile and filter).
    pub fn inject(&mut self, from: NodeId, to: NodeId, msg: Bytes) {
        self.send(Envelope { from, to, msg });
    }

    /// Runs `f` on a node as a step of its own (e.g. to submit work), then
    /// persists and sends what it produced.
    pub fn with_node(&mut self, id: NodeId, f: impl FnOnce(&mut P, Time, &mut Outbox)) -> bool {
        self.run_node(id, f)
    }

    /// Processes the next event; `None` if nothing is scheduled.
    pub fn step(&mut self) -> Option<Step> {
        let Reverse(ev) = self.queue.pop()?;
        self.now = ev.at;
        self.trace.write_u64(ev.at.as_micros());
        Some(match ev.kind {
            EventKind::Deliver(env) => self.land(env),
            EventKind::Timer { node, generation } => self.fire_timer(node, generation),
            EventKind::Pump { node } => self.pump_poll(node),
        })
    }

    /// The time of the next event.
    pub fn next_event_at(&self) -> Option<Time> {
        self.queue.peek().map(|Reverse(e)| e.at)
    }

    /// Runs every event up to `deadline` (then sets the clock to it),
    /// calling `check` after each; stops at the first error.
    pub fn run_until<E>(
        &mut self,
        deadline: Time,
        mut check: impl FnMut(&mut Self, &Step) -> Result<(), E>,
    ) -> Result<(), E> {
        while self.next_event_at().is_some_and(|t| t <= deadline) {
            if let Some(step) = self.step() {
                check(self, &step)?;
            }
        }
        self.now = self.now.max(deadline);
        Ok(())
    }

    /// Moves the clock to `t`, or to the next event if one is due earlier.
    pub fn advance_to(&mut self, t: Time) {
        let t = self.next_event_at().map_or(t, |e| e.min(t));
        self.now = self.now.max(t);
    }

    /// Runs for `d` of virtual time (see [`Sim::run_until`]).
    pub fn run_for<E>(
        &mut self,
        d: Duration,
        check: impl FnMut(&mut Self, &Step) -> Result<(), E>,
    ) -> Result<(), E> {
        let deadline = self.now + d;
        self.run_until(deadline, check)
    }

    fn note(&mut self, line: String) {
        if let Some(log) = &mut self.log {
            log.push(format!("{} {line}", self.now));
        }
    }

    fn schedule(&mut self, at: Time, kind: EventKind) {
        self.seq += 1;
        self.queue.push(Reverse(Event {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn rearm(&mut self, id: NodeId) {
        let now = self.now;
        let Some(slot) = self.nodes.get_mut(&id) else {
            return;
        };
        let want = slot.process.as_ref().and_then(|p| p.poll_timeout());
        if want == slot.timer_at {
            return;
        }
        slot.timer_at = want;
        slot.timer_generation += 1;
        let generation = slot.timer_generation;
        if let Some(t) = want {
            // A timer for "now" runs after what is already queued for now,
            // one microsecond later, so a core cannot spin at one instant.
            let at = t.max(now + Duration::from_micros(1));
            self.schedule(
                at,
                EventKind::Timer {
                    node: id,
                    generation,
                },
            );
        }
    }

    fn arm_pump(&mut self, id: NodeId) {
        let Some(pump) = self.pump else { return };
        let now = self.now;
        let Some(slot) = self.nodes.get_mut(&id) else {
            return;
        };
        if slot.pump_armed || slot.held.is_empty() {
            return;
        }
        slot.pump_armed = true;
        self.schedule(now + pump.poll, EventKind::Pump { node: id });
    }

    /// Runs one step of a node: `f`, then maybe a mid-step crash, then
    /// persist, then the sends, then the timer.
    fn run_node(&mut self, id: NodeId, f: impl FnOnce(&mut P, Time, &mut Outbox)) -> bool {
        let now = self.now;
        let mut out = Outbox::new();
        let Some(process) = self.nodes.get_mut(&id).and_then(|s| s.process.as_mut()) else {
            return false;
        };
        f(process, now, &mut out);
        if self.mid_step_crash > 0.0
            && self.mid_step_nodes.contains(&id)
            && self.rng.chance(self.mid_step_crash)
        {
            self.stats.mid_step_crashes += 1;
            self.crash(id);
            return false;
        }
        let process = self
            .nodes
            .get_mut(&id)
            .and_then(|s| s.process.as_mut())
            .expect("still up");
        if let Err(e) = process.persist() {
            self.stats.persist_failures += 1;
            self.note(format!("{id} persist failed: {e}"));
            out.clear();
        }
        for (to, msg) in out.drain() {
            self.send(Envelope { from: id, to, msg });
        }
        self.rearm(id);
        true
    }

    fn send(&mut self, env: Envelope) {
        self.stats.sent += 1;
        self.trace.write(b"S");
        self.trace
            .write_u64(u64::from(env.from.0) << 32 | u64::from(env.to.0));
        self.trace.write(&env.msg);
        if let Some(tap) = &mut self.tap {
            tap(self.now, &env);
        }
        if let Some(filter) = &mut self.filter {
            if filter(&env) == Fate::Drop {
                self.stats.dropped += 1;
                self.trace.write(b"F");
                return;
            }
        }
        let link = self
            .links
            .get(&(env.from, env.to))
            .copied()
            .unwrap_or(self.default_link);
        if self.rng.chance(link.drop) {
            self.stats.dropped += 1;
            self.trace.write(b"d");
            return;
        }
        let copies = if self.rng.chance(link.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = self.sample_delay(&link);
            self.schedule(self.now + delay, EventKind::Deliver(env.clone()));
        }
    }

    fn sample_delay(&mut self, link: &LinkProfile) -> Duration {
        let lo = link.min_delay.as_micros() as u64;
        let hi = link.max_delay.as_micros() as u64;
        let mut us = self.rng.range(lo, hi.max(lo));
        if self.rng.chance(link.slow_chance) {
            us += self.rng.range(0, link.slow_extra.as_micros() as u64);
        }
        Duration::from_micros(us)
    }

    fn land(&mut self, env: Envelope) -> Step {
        let (from, node) = (env.from, env.to);
        let lost = Step {
            at: self.now,
            node,
            kind: StepKind::Lost { from },
        };
        if !self.connected(from, node) {
            self.stats.cut += 1;
            self.trace.write(b"x");
            return lost;
        }
        if !self.is_up(node) {
            self.stats.to_down += 1;
            self.trace.write(b"z");
            return lost;
        }
        if self.pump.is_some() {
            if let Some(slot) = self.nodes.get_mut(&node) {
                slot.held.push(env);
            }
            self.arm_pump(node);
            return Step {
                at: self.now,
                node,
                kind: StepKind::Pump,
            };
        }
        self.deliver(env)
    }

    fn deliver(&mut self, env: Envelope) -> Step {
        let (from, node) = (env.from, env.to);
        self.stats.delivered += 1;
        self.trace.write(b"M");
        self.trace
            .write_u64(u64::from(from.0) << 32 | u64::from(node.0));
        if self.log.is_some() {
            self.note(format!("{from} -> {node} {} bytes", env.msg.len()));
        }
        let delivered = self.run_node(node, |p, now, out| {
            p.handle_message(now, from, env.msg, out)
        });
        Step {
            at: self.now,
            node,
            kind: if delivered {
                StepKind::Delivered { from }
            } else {
                StepKind::CrashedMidStep
            },
        }
    }

    fn fire_timer(&mut self, node: NodeId, generation: u64) -> Step {
        let stale = Step {
            at: self.now,
            node,
            kind: StepKind::Stale,
        };
        let Some(slot) = self.nodes.get_mut(&node) else {
            return stale;
        };
        if slot.timer_generation != generation || slot.process.is_none() {
            return stale;
        }
        slot.timer_at = None;
        self.stats.timers += 1;
        self.trace.write(b"T");
        self.trace.write_u64(u64::from(node.0));
        let ran = self.run_node(node, |p, now, out| p.handle_timeout(now, out));
        Step {
            at: self.now,
            node,
            kind: if ran {
                StepKind::Timer
            } else {
                StepKind::CrashedMidStep
            },
        }
    }

    fn pump_poll(&mut self, node: NodeId) -> Step {
        let idle = Step {
            at: self.now,
            node,
            kind: StepKind::Pump,
        };
        let Some(pump) = self.pump else {
            if let Some(slot) = self.nodes.get_mut(&node) {
                slot.pump_armed = false;
            }
            return idle;
        };
        let deliver = self.rng.chance(pump.deliver_chance);
        let Some(slot) = self.nodes.get_mut(&node) else {
            return idle;
        };
        slot.pump_armed = false;
        let picked = if deliver && !slot.held.is_empty() {
            let i = self.rng.index(slot.held.len());
            Some(slot.held.swap_remove(i))
        } else {
            None
        };
        self.trace.write(if picked.is_some() { b"p" } else { b"i" });
        let step = match picked {
            Some(env) if self.is_up(node) => self.deliver(env),
            _ => idle,
        };
        self.arm_pump(node);
        step
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
