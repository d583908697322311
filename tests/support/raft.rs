//! Harness of the Raft battery: a simulated cluster of Raft nodes and
//! key-value clients on `Sim` (each node's WAL on its `SimDisk`, so a crash
//! loses exactly what was not fsynced), the per-step safety invariants (S1),
//! liveness after heal (S4), durability (S3), linearizability (S2, through
//! `linearizability.rs`); the multi-seed runner is `seeds.rs`.
//!
//! The S1 invariants, each checked after every simulator step from the
//! node's probes and accessors (the tags are the Raft paper's):
//!
//! - election safety (§5.2): at most one node is elected per term;
//! - one vote per term per node, across restarts (§5.2, Figure 2
//!   "persistent state"): a vote is never changed or forgotten within a term;
//! - log matching (§5.3): one `(index, term)` has one digest everywhere, and
//!   the same predecessor term (so, by induction, the same prefix);
//! - leader completeness (§5.4): an entry committed in term `t` is in the
//!   log of every leader of a term above `t`;
//! - state-machine safety (§5.4.3) and committed entries immutable: every
//!   node commits and applies the same entry at an index, in index order;
//! - committed on a quorum: a leader's new commit index is in the log of a
//!   quorum of its voters (checked while all of them are up);
//! - monotonic term and snapshot index (across restarts), commit and applied
//!   index (within a life), and `snapshot_index <= applied <= commit <=
//!   last_index`; a truncation never removes a committed entry.
#![allow(unreachable_pub, dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use zpatterns::durable::Wal;
use zpatterns::paxos::{ClientId, KvClient, KvClientConfig, Op, OpRecord, Outcome};
use zpatterns::raft::{Mutation, Probe, RaftConfig, RaftNode};
use zpatterns::sim::{LinkProfile, Sim};
use zpatterns::transport::{Either, NodeId, Outbox, Time};

use super::linearizability::{self, Call, HistOp, Ret};
pub use super::seeds::{first_failure, run_seeds, seeds};

pub type Actor = Either<RaftNode, KvClient>;

/// Client nodes are numbered from here.
pub const CLIENT_BASE: u32 = 100;

/// Shape of a simulated cluster. `None` settings keep the core's default.
#[derive(Clone, Debug)]
pub struct Spec {
    /// The nodes bootstrapped as voters.
    pub voters: Vec<NodeId>,
    /// Nodes started with an empty configuration: they wait until a leader
    /// adds them.
    pub joiners: Vec<NodeId>,
    pub clients: usize,
    pub sessions: usize,
    pub link: LinkProfile,
    pub heartbeat: Duration,
    pub election: (Duration, Duration),
    pub snapshot_every: Option<u64>,
    pub snapshot_chunk: Option<usize>,
    pub max_append: Option<usize>,
    pub max_inflight: Option<usize>,
    pub max_batch: Option<usize>,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub mutation: Option<Mutation>,
    pub request_timeout: Duration,
    pub think: Duration,
}

impl Spec {
    /// `n` voters, nodes 0..n, the core's defaults.
    pub fn voters(n: u32) -> Self {
        Spec {
            voters: (0..n).map(NodeId).collect(),
            joiners: Vec::new(),
            clients: 0,
            sessions: 1,
            link: LinkProfile::default(),
            heartbeat: Duration::from_millis(50),
            election: (Duration::from_millis(300), Duration::from_millis(600)),
            snapshot_every: None,
            snapshot_chunk: None,
            max_append: None,
            max_inflight: None,
            max_batch: None,
            pre_vote: true,
            check_quorum: true,
            mutation: None,
            request_timeout: Duration::from_millis(400),
            think: Duration::from_millis(5),
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

    pub fn snapshots(mut self, every: u64, chunk: usize) -> Self {
        self.snapshot_every = Some(every);
        self.snapshot_chunk = Some(chunk);
        self
    }

    pub fn joiners(mut self, ids: &[NodeId]) -> Self {
        self.joiners = ids.to_vec();
        self
    }

    /// Every Raft node of the cluster, voters first.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.joiners.iter().copied());
        all
    }

    pub fn config(&self, id: NodeId, seed: u64) -> RaftConfig {
        let voters: &[NodeId] = if self.voters.contains(&id) {
            &self.voters
        } else {
            &[]
        };
        let mut cfg = RaftConfig::new(id, voters)
            .heartbeat(self.heartbeat)
            .election_timeout(self.election.0, self.election.1)
            .pre_vote(self.pre_vote)
            .check_quorum(self.check_quorum)
            .seed(seed.wrapping_mul(0x9E37_79B9).wrapping_add(u64::from(id.0)))
            .mutation(self.mutation)
            .probes(true);
        if let Some(n) = self.snapshot_every {
            cfg = cfg.snapshot_every(n);
        }
        if let Some(n) = self.snapshot_chunk {
            cfg = cfg.snapshot_chunk(n);
        }
        if let Some(n) = self.max_append {
            cfg = cfg.max_append(n);
        }
        if let Some(n) = self.max_inflight {
            cfg = cfg.max_inflight(n);
        }
        if let Some(n) = self.max_batch {
            cfg = cfg.max_batch(n);
        }
        cfg
    }
}

/// A simulated cluster plus its invariant checker.
pub struct Cluster {
    pub sim: Sim<Actor>,
    pub spec: Spec,
    /// Every Raft node (voters, then joiners).
    pub nodes: Vec<NodeId>,
    pub clients: Vec<NodeId>,
    /// The harness's own client (one session, no workload): the liveness
    /// write and the final reads.
    pub probe: NodeId,
    pub inv: Invariants,
    pub seed: u64,
}

impl Cluster {
    pub fn new(spec: Spec, seed: u64) -> Self {
        let mut sim: Sim<Actor> = Sim::new(seed);
        sim.set_default_link(spec.link);
        let nodes = spec.nodes();
        for id in &nodes {
            let cfg = spec.config(*id, seed);
            sim.add_node(*id, move |_, disk, now| {
                let wal: Box<dyn Wal> = Box::new(disk);
                Either::Left(RaftNode::new(cfg.clone(), wal, now).expect("raft node from its disk"))
            });
        }
        let mut clients = Vec::new();
        for c in 0..spec.clients {
            let id = NodeId(CLIENT_BASE + c as u32);
            let ccfg = KvClientConfig::new(&nodes)
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
        let probe = NodeId(CLIENT_BASE + 99);
        let pcfg = KvClientConfig::new(&nodes)
            .request_timeout(spec.request_timeout)
            .seed(seed ^ u64::from(probe.0));
        sim.add_node(probe, move |me, _, _| {
            Either::Right(KvClient::new(
                me,
                pcfg.clone(),
                &[ClientId(u64::from(me.0) << 16)],
            ))
        });
        let mut c = Cluster {
            sim,
            nodes,
            clients,
            probe,
            inv: Invariants::default(),
            spec,
            seed,
        };
        for id in c.nodes.clone() {
            c.inv
                .after_step(&mut c.sim, id)
                .expect("a fresh node breaks no invariant");
        }
        c
    }

    pub fn node(&self, id: NodeId) -> Option<&RaftNode> {
        self.sim.node(id).and_then(|a| a.left())
    }

    /// A node that must be up.
    pub fn up(&self, id: NodeId) -> &RaftNode {
        self.node(id)
            .unwrap_or_else(|| panic!("{id} is expected to be up"))
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
        if cond(self) {
            return Ok(true);
        }
        while self.sim.next_event_at().is_some_and(|t| t <= deadline) {
            let Some(step) = self.sim.step() else { break };
            let node = step.node;
            self.inv.after_step(&mut self.sim, node).map_err(|e| {
                format!(
                    "{e}\n  at {} on {node} after {:?}; last events:\n    {}",
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

    /// Runs `f` on a Raft node as a step of its own (then persists and
    /// sends), checking the invariants after it; `None` if it is down.
    pub fn on_node<R>(
        &mut self,
        id: NodeId,
        f: impl FnOnce(&mut RaftNode, Time, &mut Outbox) -> R,
    ) -> Result<Option<R>, String> {
        let mut result = None;
        self.sim.with_node(id, |p, now, out| {
            if let Either::Left(r) = p {
                result = Some(f(r, now, out));
            }
        });
        self.inv.after_step(&mut self.sim, id)?;
        Ok(result)
    }

    /// The live nodes.
    pub fn live(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .copied()
            .filter(|id| self.node(*id).is_some())
            .collect()
    }

    /// The leader of the highest term among the live nodes of `group`, if
    /// no live node of the group is in a higher term (a current leader, not
    /// a deposed one that has not heard yet).
    pub fn leader_among(&self, group: &[NodeId]) -> Option<NodeId> {
        let live: Vec<&RaftNode> = group.iter().filter_map(|id| self.node(*id)).collect();
        let top = live.iter().map(|r| r.term()).max()?;
        live.iter()
            .find(|r| r.is_leader() && r.term() == top)
            .map(|r| r.id())
    }

    /// The current leader of the whole cluster (see [`Cluster::leader_among`]).
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_among(&self.nodes)
    }

    /// Every live node that believes it leads (any term).
    pub fn leaders(&self) -> Vec<NodeId> {
        self.live()
            .into_iter()
            .filter(|id| self.up(*id).is_leader())
            .collect()
    }

    /// Waits for a leader, at most `within`.
    pub fn wait_leader(&mut self, within: Duration) -> Result<NodeId, String> {
        let deadline = self.sim.now() + within;
        self.run_until(deadline, |c| c.leader().is_some())?;
        self.leader()
            .ok_or_else(|| format!("no leader within {within:?}"))
    }

    /// Waits for a leader among `group`, at most `within`.
    pub fn wait_leader_among(
        &mut self,
        group: &[NodeId],
        within: Duration,
    ) -> Result<NodeId, String> {
        let deadline = self.sim.now() + within;
        self.run_until(deadline, |c| c.leader_among(group).is_some())?;
        self.leader_among(group)
            .ok_or_else(|| format!("no leader among {group:?} within {within:?}"))
    }

    /// Waits for a leader (10 x the maximum election timeout), lets a
    /// possible split vote settle, and waits until the leader has committed
    /// an entry of its term (its no-op) on every live node.
    pub fn stable_leader(&mut self) -> Result<NodeId, String> {
        let limit = self.spec.election.1 * 10;
        self.wait_leader(limit)?;
        self.run_for(self.spec.election.1)?;
        let leader = self.wait_leader(limit)?;
        let deadline = self.sim.now() + limit;
        let settled = self.run_until(deadline, |c| {
            c.leader().is_some_and(|l| {
                let r = c.up(l);
                r.commit_index() == r.last_index()
                    && r.membership().members().all(|n| {
                        c.node(n)
                            .is_some_and(|m| m.commit_index() == r.commit_index())
                    })
            })
        })?;
        if !settled {
            return Err(format!(
                "leader {leader} did not commit its no-op everywhere"
            ));
        }
        self.leader()
            .ok_or_else(|| "no leader after settling".into())
    }

    /// Queues `op` on a client's session.
    pub fn submit(&mut self, client: NodeId, session: usize, op: Op) {
        self.client_mut(client).push(session, op);
        // Let the client notice right away.
        self.sim.with_node(client, |_, _, _| {});
    }

    /// Submits `op` and runs until it completes (at most `within`).
    pub fn write(
        &mut self,
        client: NodeId,
        session: usize,
        op: Op,
        within: Duration,
    ) -> Result<Outcome, String> {
        let before = self.client(client).history().len();
        self.submit(client, session, op);
        let deadline = self.sim.now() + within;
        let done = self.run_until(deadline, |c| {
            c.client(client)
                .history()
                .get(before..)
                .is_some_and(|h| h.iter().any(|r| r.completed.is_some()))
        })?;
        if !done {
            return Err(format!(
                "an operation of {client} did not complete within {within:?}"
            ));
        }
        let rec = self.client(client).history()[before..]
            .iter()
            .find(|r| r.completed.is_some())
            .expect("completed");
        Ok(rec.completed.as_ref().expect("completed").1.clone())
    }

    pub fn crash(&mut self, id: NodeId) {
        self.sim.crash(id);
    }

    /// Restarts a crashed node from its disk and checks it at once (term,
    /// vote and snapshot survived).
    pub fn restart(&mut self, id: NodeId) -> Result<(), String> {
        if self.sim.is_up(id) {
            return Ok(());
        }
        self.sim.restart(id);
        self.inv.restarted(id);
        self.inv.after_step(&mut self.sim, id)
    }

    /// Restarts every crashed node.
    pub fn restart_all(&mut self) -> Result<(), String> {
        for id in self.nodes.clone() {
            self.restart(id)?;
        }
        Ok(())
    }

    /// The members (voters and learners) of the leader's configuration, or
    /// every node if there is no leader.
    pub fn members(&self) -> Vec<NodeId> {
        match self.leader().and_then(|l| self.node(l)) {
            Some(r) => r.membership().members().collect(),
            None => self.nodes.clone(),
        }
    }

    /// Heals the network, restarts crashed nodes, and checks S4: a leader
    /// within 10 x the maximum election timeout, then a fresh write
    /// committed within 2 s more.
    pub fn check_liveness(&mut self) -> Result<(), String> {
        self.sim.heal();
        self.sim.clear_filter();
        self.sim.set_pump(None);
        self.sim.set_mid_step_crash(0.0, &[]);
        self.sim.set_default_link(LinkProfile::default());
        self.restart_all()?;
        let limit = self.spec.election.1 * 10;
        self.wait_leader(limit)
            .map_err(|e| format!("S4 liveness after heal: {e}"))?;
        // A fresh write on a dedicated key by the harness's client.
        let probe_client = self.probe;
        let session = 0;
        let marker = format!("live-{}", self.seed);
        self.submit(
            probe_client,
            session,
            Op::Put {
                key: Bytes::from_static(b"liveness"),
                value: Bytes::from(marker.clone()),
            },
        );
        let deadline = self.sim.now() + Duration::from_secs(2);
        let done = self.run_until(deadline, |c| {
            c.client(probe_client).history().iter().any(|r| {
                matches!(&r.op, Op::Put { value, .. } if value.as_ref() == marker.as_bytes())
                    && r.completed.is_some()
            })
        })?;
        if done {
            Ok(())
        } else {
            Err(format!(
                "S4 liveness after heal: a fresh write did not commit within 2 s of the leader (leader now {:?})",
                self.leader()
            ))
        }
    }

    /// Waits until every member has applied everything the leader
    /// committed, and the leader has committed its whole log.
    pub fn wait_converged(&mut self, within: Duration) -> Result<(), String> {
        let deadline = self.sim.now() + within;
        let ok = self.run_until(deadline, |c| c.converged())?;
        if ok {
            return Ok(());
        }
        let views: Vec<String> = self
            .nodes
            .iter()
            .map(|id| match self.node(*id) {
                Some(r) => format!(
                    "{id}: {:?} term {} commit {} applied {} last {} snap {}",
                    r.role(),
                    r.term(),
                    r.commit_index(),
                    r.applied_index(),
                    r.last_index(),
                    r.snapshot_index()
                ),
                None => format!("{id}: down"),
            })
            .collect();
        Err(format!(
            "the members did not converge within {within:?}: {}",
            views.join("; ")
        ))
    }

    pub fn converged(&self) -> bool {
        let Some(l) = self.leader() else {
            return false;
        };
        let lr = self.up(l);
        let commit = lr.commit_index();
        commit == lr.last_index()
            && self.members().iter().all(|id| {
                self.node(*id)
                    .is_some_and(|r| r.applied_index() == commit && r.commit_index() == commit)
            })
    }

    /// Stops the clients, lets every member catch up, then checks S3: every
    /// acknowledged write is applied on every member (its session saw it),
    /// every member holds the same state machine (digest of data, sessions
    /// and counters) and value for every key, and a final read of
    /// every key (added to the history, so S2 judges it) sees a value the
    /// history allows.
    pub fn check_durability(&mut self) -> Result<(), String> {
        for c in self.clients.clone() {
            self.client_mut(c).stop();
        }
        // Outstanding operations finish (or are abandoned) first.
        let deadline = self.sim.now() + Duration::from_secs(5);
        self.run_until(deadline, |c| {
            c.clients.iter().all(|id| c.client(*id).is_idle())
        })?;
        self.wait_converged(Duration::from_secs(10))
            .map_err(|e| format!("S3: {e}"))?;
        let members = self.members();
        let keys: BTreeSet<Bytes> = self.history().iter().map(|r| r.op.key().clone()).collect();
        let leader = self.leader().expect("converged means a leader");
        let digest = self.up(leader).kv().digest();
        for id in &members {
            let r = self.up(*id);
            if r.kv().digest() != digest {
                return Err(format!(
                    "S3: {id}'s state machine differs from the leader {leader}'s at the same applied index {}",
                    r.applied_index()
                ));
            }
            for key in &keys {
                let here = r.kv().get(key);
                let there = self.up(leader).kv().get(key);
                if here != there {
                    return Err(format!(
                        "S3: {id} holds {here:?} for key {key:?}, the leader {leader} {there:?}"
                    ));
                }
            }
            for rec in self.history() {
                let write = !matches!(rec.op, Op::Get { .. });
                if write && rec.completed.is_some() && r.kv().last_seq(rec.client) < Some(rec.seq) {
                    return Err(format!(
                        "S3: acknowledged {rec:?} is not applied at {id} (session at {:?})",
                        r.kv().last_seq(rec.client)
                    ));
                }
            }
        }
        // The final reads, by the harness's client.
        let reader = self.probe;
        let before = self.client(reader).history().len();
        for key in &keys {
            self.client_mut(reader)
                .push(0, Op::Get { key: key.clone() });
        }
        self.sim.with_node(reader, |_, _, _| {});
        let want = keys.len();
        let deadline = self.sim.now() + Duration::from_secs(5);
        let done = self.run_until(deadline, |c| {
            c.client(reader).history()[before..]
                .iter()
                .filter(|r| r.completed.is_some())
                .count()
                == want
        })?;
        if !done {
            return Err("S3: the final reads did not complete within 5 s".into());
        }
        Ok(())
    }

    /// Every client's history.
    pub fn history(&self) -> Vec<&OpRecord> {
        self.clients
            .iter()
            .chain([&self.probe])
            .flat_map(|c| self.client(*c).history())
            .collect()
    }

    /// S2: the clients' history is linearizable.
    pub fn check_linearizable(&self) -> Result<(), String> {
        let history: Vec<HistOp> = self.history().into_iter().map(to_hist).collect();
        linearizability::check(&history).map_err(|v| format!("S2: {v}"))
    }

    pub fn completed_ops(&self) -> usize {
        self.history()
            .iter()
            .filter(|r| r.completed.is_some())
            .count()
    }

    /// The log entries `from..=to` of a live node that are still in its log.
    pub fn log_terms(&self, id: NodeId) -> Vec<(u64, u64, u64)> {
        let r = self.up(id);
        (r.snapshot_index() + 1..=r.last_index())
            .filter_map(|i| r.entry(i).map(|e| (e.index, e.term, e.digest())))
            .collect()
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
        Op::Delete { .. } => Call::Delete,
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
                Outcome::Deleted(existed) => Ret::Deleted(*existed),
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

/// What the checker remembers of one node.
#[derive(Debug, Default, Clone)]
struct NodeView {
    /// Highest term seen (persistent: survives restarts).
    term: u64,
    /// The vote in `term` (persistent).
    voted_for: Option<NodeId>,
    /// Highest snapshot index (persistent).
    snapshot: u64,
    /// Commit and applied index in this life.
    commit: u64,
    applied: u64,
    /// The last index an `Applied` probe reported in this life (`None`:
    /// not known since the restart).
    applied_probe: Option<u64>,
}

/// An entry known committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub term: u64,
    pub digest: u64,
    /// The term of the first node seen to commit it (at least the term in
    /// which it was committed).
    pub seen_in: u64,
}

/// S1: the Raft safety invariants, checked after every step from the
/// nodes' probes and accessors.
#[derive(Debug, Default)]
pub struct Invariants {
    /// term -> the node elected in it.
    pub leaders: BTreeMap<u64, NodeId>,
    /// Every election, in order.
    pub elections: Vec<(NodeId, u64)>,
    /// (voter, term) -> the candidate it voted for.
    votes: BTreeMap<(NodeId, u64), NodeId>,
    /// (index, term) -> digest of every entry ever appended anywhere.
    entries: BTreeMap<(u64, u64), u64>,
    /// (index, term) -> the term of the entry before it.
    prev_terms: BTreeMap<(u64, u64), u64>,
    /// index -> the committed entry.
    pub committed: BTreeMap<u64, Committed>,
    /// index -> (term, digest) applied anywhere.
    applied: BTreeMap<u64, (u64, u64)>,
    views: BTreeMap<NodeId, NodeView>,
    /// (node, from) of every conflict truncation.
    pub truncations: Vec<(NodeId, u64)>,
    /// (node, index) of every snapshot a node installed from a leader.
    pub installs: Vec<(NodeId, u64)>,
    /// (node, index) of every snapshot a node took itself.
    pub snapshots: Vec<(NodeId, u64)>,
}

impl Invariants {
    /// Forgets what does not survive a restart (commit and applied index).
    pub fn restarted(&mut self, id: NodeId) {
        let v = self.views.entry(id).or_default();
        v.commit = 0;
        v.applied = 0;
        v.applied_probe = None;
    }

    pub fn after_step(&mut self, sim: &mut Sim<Actor>, node: NodeId) -> Result<(), String> {
        let Some(Either::Left(r)) = sim.node_mut(node) else {
            return Ok(());
        };
        let probes = r.drain_probes();
        let sim: &Sim<Actor> = sim;
        let r = sim.node(node).and_then(|a| a.left()).expect("up");
        let before = self.views.get(&node).cloned().unwrap_or_default();
        for p in probes {
            self.probe(node, r, &before, p)?;
        }
        self.commits(node, r, &before)?;
        self.committed_on_quorum(node, r, &before, sim)?;
        self.state(node, r, &before)
    }

    /// Monotonicity, ordering and the persistent vote.
    fn state(&mut self, node: NodeId, r: &RaftNode, before: &NodeView) -> Result<(), String> {
        let (term, snap, applied, commit, last) = (
            r.term(),
            r.snapshot_index(),
            r.applied_index(),
            r.commit_index(),
            r.last_index(),
        );
        if term < before.term {
            return Err(format!(
                "S1: {node}'s term went back from {} to {term} (lost on restart?)",
                before.term
            ));
        }
        if term == before.term && before.voted_for.is_some() && r.voted_for() != before.voted_for {
            return Err(format!(
                "S1: {node}'s vote in term {term} changed from {:?} to {:?} (not persisted?)",
                before.voted_for,
                r.voted_for()
            ));
        }
        if snap < before.snapshot {
            return Err(format!(
                "S1: {node}'s snapshot index went back from {} to {snap}",
                before.snapshot
            ));
        }
        if commit < before.commit || applied < before.applied {
            return Err(format!(
                "S1: {node}'s commit/applied index went back from {}/{} to {commit}/{applied}",
                before.commit, before.applied
            ));
        }
        if !(snap <= applied && applied <= commit && commit <= last) {
            return Err(format!(
                "S1: {node} breaks snapshot {snap} <= applied {applied} <= commit {commit} <= last {last}"
            ));
        }
        if let Some(v) = r.voted_for() {
            if let Some(prev) = self.votes.insert((node, term), v) {
                if prev != v {
                    return Err(format!(
                        "S1: {node} voted for {prev} and then {v} in term {term}"
                    ));
                }
            }
        }
        let v = self.views.entry(node).or_default();
        v.term = term;
        v.voted_for = r.voted_for();
        v.snapshot = snap;
        v.commit = commit;
        v.applied = applied;
        v.applied_probe.get_or_insert(applied);
        Ok(())
    }

    /// A leader's new commit index is held by a quorum of its voters
    /// (checked while every voter is up: a crashed one's disk is not read).
    fn committed_on_quorum(
        &self,
        node: NodeId,
        r: &RaftNode,
        before: &NodeView,
        sim: &Sim<Actor>,
    ) -> Result<(), String> {
        let i = r.commit_index();
        if !r.is_leader() || i <= before.commit {
            return Ok(());
        }
        let Some(e) = r.entry(i) else { return Ok(()) };
        let m = r.membership();
        let mut have = Vec::new();
        for v in &m.voters {
            let Some(n) = sim.node(*v).and_then(|a| a.left()) else {
                return Ok(());
            };
            if n.snapshot_index() >= i || n.entry(i).is_some_and(|x| x.term == e.term) {
                have.push(*v);
            }
        }
        if have.len() < m.quorum() {
            return Err(format!(
                "S1: committed-on-quorum: leader {node} committed index {i} (term {}), held only by {have:?} of the voters {:?}",
                e.term, m.voters
            ));
        }
        Ok(())
    }

    /// Records the entries a node newly committed: the same entry at an
    /// index everywhere, never changed.
    fn commits(&mut self, node: NodeId, r: &RaftNode, before: &NodeView) -> Result<(), String> {
        let from = before.commit.max(r.snapshot_index()) + 1;
        for i in from..=r.commit_index() {
            let Some(e) = r.entry(i) else { continue };
            let c = Committed {
                term: e.term,
                digest: e.digest(),
                seen_in: r.term(),
            };
            match self.committed.get(&i) {
                Some(old) if (old.term, old.digest) != (c.term, c.digest) => {
                    return Err(format!(
                        "S1: {node} committed index {i} as term {} {:#x}, committed before as term {} {:#x}",
                        c.term, c.digest, old.term, old.digest
                    ));
                }
                Some(_) => {}
                None => {
                    self.committed.insert(i, c);
                }
            }
        }
        Ok(())
    }

    fn probe(
        &mut self,
        node: NodeId,
        r: &RaftNode,
        before: &NodeView,
        p: Probe,
    ) -> Result<(), String> {
        match p {
            Probe::Elected { term } => {
                self.elections.push((node, term));
                if let Some(other) = self.leaders.insert(term, node) {
                    if other != node {
                        return Err(format!(
                            "S1: two leaders in term {term}: {other} and {node}"
                        ));
                    }
                }
                self.leader_completeness(node, r, term)?;
            }
            Probe::Voted { term, candidate } => {
                if let Some(prev) = self.votes.insert((node, term), candidate) {
                    if prev != candidate {
                        return Err(format!(
                            "S1: {node} voted twice in term {term}: for {prev}, then for {candidate}"
                        ));
                    }
                }
            }
            Probe::Appended {
                index,
                term,
                digest,
            } => {
                if let Some(d) = self.entries.insert((index, term), digest) {
                    if d != digest {
                        return Err(format!(
                            "S1: two entries at index {index} in term {term}: {d:#x} and {digest:#x}"
                        ));
                    }
                }
                self.log_matching(node, r, index, term)?;
            }
            Probe::Truncated { from } => {
                self.truncations.push((node, from));
                if from <= before.commit {
                    return Err(format!(
                        "S1: {node} truncated its log from {from}, below its commit index {}",
                        before.commit
                    ));
                }
            }
            Probe::Applied {
                index,
                term,
                digest,
            } => {
                let v = self.views.entry(node).or_default();
                if let Some(last) = v.applied_probe {
                    if index != last + 1 {
                        return Err(format!(
                            "S1: {node} applied index {index} after {last} (out of order)"
                        ));
                    }
                }
                v.applied_probe = Some(index);
                if let Some(old) = self.applied.insert(index, (term, digest)) {
                    if old != (term, digest) {
                        return Err(format!(
                            "S1: state-machine safety: {node} applied index {index} as term {term} {digest:#x}, another node as term {} {:#x}",
                            old.0, old.1
                        ));
                    }
                }
                if let Some(c) = self.committed.get(&index) {
                    if (c.term, c.digest) != (term, digest) {
                        return Err(format!(
                            "S1: {node} applied index {index} as term {term}, committed as term {}",
                            c.term
                        ));
                    }
                }
            }
            Probe::Snapshot { index, term } => {
                let v = self.views.entry(node).or_default();
                match v.applied_probe {
                    Some(a) if index > a => self.installs.push((node, index)),
                    Some(_) => self.snapshots.push((node, index)),
                    None => {} // restored from the disk at a restart
                }
                if v.applied_probe.is_none_or(|a| index > a) {
                    v.applied_probe = Some(index);
                }
                if let Some(c) = self.committed.get(&index) {
                    if c.term != term {
                        return Err(format!(
                            "S1: {node}'s snapshot at index {index} has term {term}, the committed entry term {}",
                            c.term
                        ));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// §5.4: a new leader of `term` holds every entry committed in a lower
    /// term.
    fn leader_completeness(&self, node: NodeId, r: &RaftNode, term: u64) -> Result<(), String> {
        for (i, c) in self.committed.range(r.snapshot_index() + 1..) {
            if c.seen_in >= term {
                continue;
            }
            let has = r.entry(*i).map(|e| (e.term, e.digest()));
            if has != Some((c.term, c.digest)) {
                return Err(format!(
                    "S1: leader completeness: {node}, leader of term {term}, lacks index {i} (term {} {:#x}) committed by term {}; it has {has:?}",
                    c.term, c.digest, c.seen_in
                ));
            }
        }
        Ok(())
    }

    /// §5.3: the same (index, term) has the same predecessor everywhere.
    fn log_matching(
        &mut self,
        node: NodeId,
        r: &RaftNode,
        index: u64,
        term: u64,
    ) -> Result<(), String> {
        if r.entry(index).is_none_or(|e| e.term != term) {
            return Ok(()); // replaced within the same step
        }
        let prev = if index == 1 {
            Some(0)
        } else if index - 1 == r.snapshot_index() {
            Some(r.snapshot_term())
        } else {
            r.entry(index - 1).map(|e| e.term)
        };
        let Some(prev) = prev else { return Ok(()) };
        if let Some(p) = self.prev_terms.insert((index, term), prev) {
            if p != prev {
                return Err(format!(
                    "S1: log matching: {node}'s entry {index} (term {term}) follows term {prev}, elsewhere term {p}"
                ));
            }
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

pub fn get(key: &str) -> Op {
    Op::Get {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

pub fn delete(key: &str) -> Op {
    Op::Delete {
        key: Bytes::copy_from_slice(key.as_bytes()),
    }
}

pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// The variant name of a Raft protocol message (`None`: not one, e.g.
/// client traffic).
pub fn raft_kind(msg: &Bytes) -> Option<String> {
    let m = zpatterns::raft::Msg::decode(msg.clone()).ok()?;
    Some(format!("{:?}", m.kind()))
}

/// True for a Raft request (as opposed to its reply): 6.824 counts RPCs.
pub fn is_request(kind: &str) -> bool {
    !(kind.contains("Reply") || kind.contains("Resp") || kind.contains("Ack"))
}
