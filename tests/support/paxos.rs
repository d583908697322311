//! Harness of the Multi-Paxos battery: a simulated cluster of replicas and
//! clients, the per-step safety invariants (S1), liveness after heal (S4),
//! durability (S3), linearizability (S2, through `linearizability.rs`) and
//! the multi-seed runner that prints a one-line replay command on failure.
#![allow(unreachable_pub, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use zpatterns::durable::Wal;
use zpatterns::paxos::{
    Ballot, ClientId, KvClient, KvClientConfig, Mutation, Op, OpRecord, Outcome, Probe, Replica,
    ReplicaConfig, Slot,
};
use zpatterns::sim::{LinkProfile, Sim};
use zpatterns::transport::{Either, NodeId, Time};

use super::linearizability::{self, Call, HistOp, Ret};
pub use super::seeds::{first_failure, run_seeds, seeds};

pub type Actor = Either<Replica, KvClient>;

/// Shape of a simulated cluster.
#[derive(Clone, Debug)]
pub struct Spec {
    pub acceptors: Vec<NodeId>,
    pub proposers: Vec<NodeId>,
    pub clients: usize,
    pub sessions: usize,
    pub link: LinkProfile,
    pub election: (Duration, Duration),
    pub mutation: Option<Mutation>,
    pub request_timeout: Duration,
    pub think: Duration,
    /// The replicas' session bound (`None`: the default).
    pub max_sessions: Option<usize>,
}

impl Spec {
    /// `n` nodes, each acceptor, proposer and learner.
    pub fn symmetric(n: u32) -> Self {
        let nodes: Vec<NodeId> = (0..n).map(NodeId).collect();
        Spec {
            acceptors: nodes.clone(),
            proposers: nodes,
            clients: 0,
            sessions: 1,
            link: LinkProfile::default(),
            election: (Duration::from_millis(300), Duration::from_millis(600)),
            mutation: None,
            request_timeout: Duration::from_millis(400),
            think: Duration::from_millis(5),
            max_sessions: None,
        }
    }

    pub fn clients(mut self, clients: usize, sessions: usize) -> Self {
        self.clients = clients;
        self.sessions = sessions;
        self
    }

    pub fn link(mut self, link: LinkProfile) -> Self {
        self.link = link;
        self
    }

    pub fn mutation(mut self, m: Option<Mutation>) -> Self {
        self.mutation = m;
        self
    }

    pub fn max_sessions(mut self, n: usize) -> Self {
        self.max_sessions = Some(n);
        self
    }

    pub fn replicas(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .acceptors
            .iter()
            .chain(&self.proposers)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

pub const CLIENT_BASE: u32 = 100;

/// A simulated cluster plus its invariant checker.
pub struct Cluster {
    pub sim: Sim<Actor>,
    pub spec: Spec,
    pub replicas: Vec<NodeId>,
    pub clients: Vec<NodeId>,
    pub inv: Invariants,
    pub seed: u64,
}

impl Cluster {
    pub fn new(spec: Spec, seed: u64) -> Self {
        let mut sim: Sim<Actor> = Sim::new(seed);
        sim.set_default_link(spec.link);
        let replicas = spec.replicas();
        for id in &replicas {
            let mut cfg = ReplicaConfig::new(*id, &spec.acceptors, &spec.proposers)
                .election_timeout(spec.election.0, spec.election.1)
                .seed(seed.wrapping_mul(0x9E37_79B9).wrapping_add(u64::from(id.0)))
                .mutation(spec.mutation)
                .probes(true);
            if let Some(n) = spec.max_sessions {
                cfg = cfg.max_sessions(n);
            }
            sim.add_node(*id, move |_, disk, now| {
                let wal: Box<dyn Wal> = Box::new(disk);
                Either::Left(Replica::new(cfg.clone(), wal, now).expect("replica from its disk"))
            });
        }
        let mut clients = Vec::new();
        for c in 0..spec.clients {
            let id = NodeId(CLIENT_BASE + c as u32);
            let ccfg = KvClientConfig::new(&spec.proposers)
                .request_timeout(spec.request_timeout)
                .think(Duration::ZERO, spec.think)
                .seed(seed ^ u64::from(id.0));
            let sessions: Vec<ClientId> = (0..spec.sessions)
                .map(|s| ClientId(u64::from(id.0) << 16 | s as u64))
                .collect();
            sim.add_node(id, move |me, _, _| {
                Either::Right(KvClient::new(me, ccfg.clone(), &sessions))
            });
            clients.push(id);
        }
        let quorum = spec.acceptors.len() / 2 + 1;
        Cluster {
            sim,
            replicas,
            clients,
            inv: Invariants::new(quorum),
            spec,
            seed,
        }
    }

    pub fn replica(&self, id: NodeId) -> Option<&Replica> {
        self.sim.node(id).and_then(|a| a.left())
    }

    pub fn client(&self, id: NodeId) -> &KvClient {
        self.sim.node(id).and_then(|a| a.right()).expect("client")
    }

    pub fn client_mut(&mut self, id: NodeId) -> &mut KvClient {
        self.sim
            .node_mut(id)
            .and_then(|a| a.right_mut())
            .expect("client")
    }

    /// Runs `d` of virtual time, checking the invariants after every step.
    pub fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let deadline = self.sim.now() + d;
        self.run_until(deadline, |_| false).map(|_| ())
    }

    /// Runs until `cond` holds (checked after every step) or `deadline`;
    /// returns whether it held.
    pub fn run_until(
        &mut self,
        deadline: Time,
        mut cond: impl FnMut(&Cluster) -> bool,
    ) -> Result<bool, String> {
        while self.sim.next_event_at().is_some_and(|t| t <= deadline) {
            let Some(step) = self.sim.step() else { break };
            let node = step.node;
            self.inv.after_step(&mut self.sim, node).map_err(|e| {
                format!(
                    "{e}\n  at {} after {:?}; last events:\n    {}",
                    step.at,
                    step.kind,
                    self.sim.log_tail(20).join("\n    ")
                )
            })?;
            if cond(self) {
                return Ok(true);
            }
        }
        self.sim.advance_to(deadline);
        Ok(false)
    }

    /// The leader with the highest ballot among live replicas.
    pub fn leader(&self) -> Option<NodeId> {
        self.replicas
            .iter()
            .filter_map(|id| {
                self.replica(*id)
                    .and_then(|r| r.leader_ballot().map(|b| (b, *id)))
            })
            .max()
            .map(|(_, id)| id)
    }

    pub fn leader_ballot(&self) -> Option<Ballot> {
        self.leader().and_then(|l| self.replica(l)?.leader_ballot())
    }

    /// Waits for a leader, at most `within`.
    pub fn wait_leader(&mut self, within: Duration) -> Result<NodeId, String> {
        let deadline = self.sim.now() + within;
        self.run_until(deadline, |c| c.leader().is_some())?;
        self.leader()
            .ok_or_else(|| format!("no leader within {within:?}"))
    }

    /// Waits for a leader, lets a possible initial duel settle (1 s), and
    /// returns the leader then.
    pub fn stable_leader(&mut self) -> Result<NodeId, String> {
        self.wait_leader(secs(5))?;
        self.run_for(secs(1))?;
        self.leader()
            .ok_or_else(|| "no leader after settling".into())
    }

    /// Queues `op` on a client's session.
    pub fn submit(&mut self, client: NodeId, session: usize, op: Op) {
        self.client_mut(client).push(session, op);
        // Let the client notice right away.
        self.sim.with_node(client, |_, _, _| {});
    }

    pub fn crash(&mut self, id: NodeId) {
        self.sim.crash(id);
    }

    pub fn restart(&mut self, id: NodeId) {
        self.sim.restart(id);
        self.inv.restarted(id);
    }

    /// Heals the network, restarts crashed replicas, and checks S4: a
    /// leader within 10 x the maximum election timeout, then a fresh
    /// write committed within 2 s more.
    pub fn check_liveness(&mut self) -> Result<(), String> {
        self.sim.heal();
        self.sim.clear_filter();
        self.sim.set_pump(None);
        self.sim.set_mid_step_crash(0.0, &[]);
        self.sim.set_default_link(LinkProfile::default());
        for id in self.replicas.clone() {
            if !self.sim.is_up(id) {
                self.restart(id);
            }
        }
        let limit = self.spec.election.1 * 10;
        self.wait_leader(limit)
            .map_err(|e| format!("S4 liveness after heal: {e}"))?;
        let Some(&probe_client) = self.clients.first() else {
            return Ok(());
        };
        // A fresh write on a dedicated key by the first client's last session.
        let session = self.spec.sessions - 1;
        let marker = format!("live-{}", self.seed);
        self.client_mut(probe_client).stop();
        self.submit(
            probe_client,
            session,
            Op::Put {
                key: Bytes::from_static(b"liveness"),
                value: Bytes::from(marker.clone()),
            },
        );
        let deadline = self.sim.now() + limit + Duration::from_secs(2);
        let done = self.run_until(deadline, |c| {
            c.client(probe_client).history().iter().any(|r| {
                matches!(&r.op, Op::Put { value, .. } if value.as_ref() == marker.as_bytes())
                    && r.completed.is_some()
            })
        })?;
        if done {
            Ok(())
        } else {
            Err(
                "S4 liveness after heal: a fresh write did not commit within 2 s of the leader"
                    .into(),
            )
        }
    }

    /// Stops the clients, lets every replica catch up, then checks S3:
    /// every acknowledged write is in every replica's applied log, and all
    /// logs agree.
    pub fn check_durability(&mut self) -> Result<(), String> {
        for c in self.clients.clone() {
            self.client_mut(c).stop();
        }
        let deadline = self.sim.now() + Duration::from_secs(10);
        let ids = self.replicas.clone();
        self.run_until(deadline, |c| {
            let ends: BTreeSet<Slot> = ids
                .iter()
                .filter_map(|id| c.replica(*id))
                .map(|r| r.learner().next_apply())
                .collect();
            ends.len() == 1
        })?;
        let mut logs = Vec::new();
        for id in &self.replicas {
            let r = self
                .replica(*id)
                .ok_or_else(|| format!("{id} is down at the end"))?;
            let log: Vec<(ClientId, u64)> =
                r.learner().commands().map(|c| (c.client, c.seq)).collect();
            logs.push((*id, r.learner().next_apply(), log));
        }
        let (first_id, first_end, first_log) = &logs[0];
        for (id, end, log) in &logs[1..] {
            if end != first_end || log != first_log {
                return Err(format!(
                    "S3: replicas disagree after catch-up: {first_id} applied {first_end} slots, {id} applied {end}"
                ));
            }
        }
        let applied: BTreeSet<(ClientId, u64)> = first_log.iter().copied().collect();
        for c in &self.clients {
            for r in self.client(*c).history() {
                if r.completed.is_some() && !applied.contains(&(r.client, r.seq)) {
                    return Err(format!("S3: acknowledged {r:?} is in no replica's log"));
                }
            }
        }
        Ok(())
    }

    /// S2: the clients' history is linearizable.
    pub fn check_linearizable(&self) -> Result<(), String> {
        let history: Vec<HistOp> = self
            .clients
            .iter()
            .flat_map(|c| self.client(*c).history().iter().map(to_hist))
            .collect();
        linearizability::check(&history).map_err(|v| format!("S2: {v}"))
    }

    pub fn completed_ops(&self) -> usize {
        self.clients
            .iter()
            .map(|c| {
                self.client(*c)
                    .history()
                    .iter()
                    .filter(|r| r.completed.is_some())
                    .count()
            })
            .sum()
    }
}

pub fn to_hist(r: &OpRecord) -> HistOp {
    let call = match &r.op {
        Op::Get { .. } => Call::Get,
        Op::Put { value, .. } => Call::Put(value.clone()),
        Op::Cas { expect, new, .. } => Call::Cas {
            expect: expect.clone(),
            new: new.clone(),
        },
        _ => unreachable!("unknown op"),
    };
    let ret = r.completed.as_ref().map(|(t, o)| {
        (
            t.as_micros(),
            match o {
                Outcome::Read(v) => Ret::Read(v.clone()),
                Outcome::Written => Ret::Written,
                Outcome::Swapped => Ret::Swapped,
                Outcome::Mismatch(v) => Ret::Mismatch(v.clone()),
                _ => unreachable!("unknown outcome"),
            },
        )
    });
    HistOp {
        client: r.client.0,
        key: r.op.key().clone(),
        call,
        invoked: r.invoked.as_micros(),
        ret,
    }
}

/// S1: the Paxos safety invariants, checked after every step from the
/// replicas' probes and state.
#[derive(Debug, Default)]
pub struct Invariants {
    quorum: usize,
    /// Highest ballot each acceptor ever promised (or accepted).
    promised: BTreeMap<NodeId, Ballot>,
    /// (slot, ballot) -> (value digest, acceptors that accepted it).
    accepts: BTreeMap<(Slot, Ballot), (u64, BTreeSet<NodeId>)>,
    /// slot -> (digest, ballot) of the chosen value.
    pub chosen: BTreeMap<Slot, (u64, Ballot)>,
    /// slot -> digest learned by any learner.
    learned: BTreeMap<Slot, u64>,
    /// The next slot each replica must apply.
    next_applied: BTreeMap<NodeId, Slot>,
    pub elections: Vec<(NodeId, Ballot)>,
    /// (slot, proposed, reported) of every re-proposal after phase 1.
    pub readopted: Vec<(Slot, u64, Option<u64>)>,
}

impl Invariants {
    pub fn new(quorum: usize) -> Self {
        Invariants {
            quorum,
            ..Default::default()
        }
    }

    pub fn restarted(&mut self, id: NodeId) {
        // The learner restarts from slot 0 and re-learns the log.
        self.next_applied.remove(&id);
    }

    pub fn after_step(&mut self, sim: &mut Sim<Actor>, node: NodeId) -> Result<(), String> {
        let Some(Either::Left(r)) = sim.node_mut(node) else {
            return Ok(());
        };
        let probes = r.drain_probes();
        let conflicts = r.stats().conflicts;
        let promised_now = r.acceptor().map(|a| a.promised());
        if conflicts > 0 {
            return Err(format!("S1: {node} learned a slot with two values"));
        }
        if let (Some(now), Some(max)) = (promised_now, self.promised.get(&node)) {
            if now < *max {
                return Err(format!(
                    "S1: {node}'s promise went back from {max} to {now} (lost on restart?)"
                ));
            }
        }
        for p in probes {
            self.probe(node, p)?;
        }
        Ok(())
    }

    fn probe(&mut self, node: NodeId, p: Probe) -> Result<(), String> {
        match p {
            Probe::Promised(b) => {
                let max = self.promised.entry(node).or_default();
                if b <= *max {
                    return Err(format!("S1: {node} promised {b} after promising {max}"));
                }
                *max = b;
            }
            Probe::Accepted {
                slot,
                ballot,
                digest,
            } => {
                let max = self.promised.entry(node).or_default();
                if ballot < *max {
                    return Err(format!(
                        "S1: {node} accepted slot {slot} at {ballot} below its promise {max}"
                    ));
                }
                *max = ballot;
                let entry = self
                    .accepts
                    .entry((slot, ballot))
                    .or_insert((digest, BTreeSet::new()));
                if entry.0 != digest {
                    return Err(format!(
                        "S1: two values proposed in slot {slot} at ballot {ballot}"
                    ));
                }
                entry.1.insert(node);
                if entry.1.len() >= self.quorum {
                    match self.chosen.get(&slot) {
                        Some((d, b)) if *d != digest => {
                            return Err(format!(
                                "S1: two values chosen in slot {slot}: {d:#x} at {b}, then {digest:#x} at {ballot}"
                            ))
                        }
                        Some(_) => {}
                        None => {
                            self.chosen.insert(slot, (digest, ballot));
                        }
                    }
                    if let Some(l) = self.learned.get(&slot) {
                        if *l != digest {
                            return Err(format!(
                                "S1: slot {slot} learned as {l:#x} but chosen {digest:#x}"
                            ));
                        }
                    }
                }
            }
            Probe::Decided { slot, digest } => {
                if let Some(l) = self.learned.insert(slot, digest) {
                    if l != digest {
                        return Err(format!(
                            "S1: learners disagree on slot {slot}: {l:#x} vs {digest:#x}"
                        ));
                    }
                }
                if let Some((c, _)) = self.chosen.get(&slot) {
                    if *c != digest {
                        return Err(format!(
                            "S1: {node} learned slot {slot} as {digest:#x}, chosen {c:#x}"
                        ));
                    }
                }
            }
            Probe::Applied(slot) => {
                let next = self.next_applied.entry(node).or_insert(0);
                if slot != *next {
                    return Err(format!(
                        "S1: {node} applied slot {slot}, expected {next} (out of order)"
                    ));
                }
                *next += 1;
            }
            Probe::Elected(b) => self.elections.push((node, b)),
            Probe::Readopted {
                slot,
                proposed,
                reported,
            } => {
                self.readopted.push((slot, proposed, reported));
                if let Some(rep) = reported {
                    if rep != proposed {
                        return Err(format!(
                            "P4: new leader {node} proposed {proposed:#x} in slot {slot} instead of the reported {rep:#x}"
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

pub fn put(key: &str, value: &str) -> Op {
    Op::Put {
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}
