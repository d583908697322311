//! The Raft demo scenario as a runner shared by `examples/raft.rs`, the
//! tour's Raft section and `benches/raft.rs` (example-private code, not
//! part of the library): `N` Raft nodes, a client with `S` sessions
//! writing (puts, and deletes of its own earlier keys), the leader killed
//! and restarted from its WAL, a follower held back until the leader has
//! compacted its log past it (so it is caught up by InstallSnapshot), over
//! real ZeroMQ sockets or on the simulator; then every node's state
//! machine is compared.
//!
//! The report says whether all nodes applied the same entries (the same
//! applied index, the same entry digests where their logs overlap), hold
//! the same key-value state (the same digest), and whether that state and
//! every acknowledged outcome are what the workload implies.

mod sim;
mod zmq;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use zpatterns::paxos::{ClientId, KvClient, KvClientConfig, Op, OpRecord, Outcome};
use zpatterns::raft::{RaftConfig, RaftNode, RaftStatus, Role};
use zpatterns::transport::NodeId;

pub(crate) use sim::run_sim;
pub(crate) use zmq::run_zmq;

/// How nodes keep their term, vote, log and snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Storage {
    /// In memory: a restarted node comes back empty (used by the
    /// benchmark's no-restart runs only; the simulator always uses its
    /// crashable disks).
    Memory,
    /// A [`FileWal`](zpatterns::durable::FileWal) per node in this
    /// directory, fsynced before every reply.
    Files(std::path::PathBuf),
}

/// The scenario.
#[derive(Clone, Debug)]
pub(crate) struct DemoConfig {
    /// Raft nodes (voters), ids 1..=nodes (default 5).
    pub(crate) nodes: u32,
    /// Client operations (default 2000).
    pub(crate) ops: usize,
    /// Client sessions sending them concurrently (default 8).
    pub(crate) sessions: usize,
    /// Snapshot every this many entries (default 50).
    pub(crate) snapshot_every: u64,
    /// Kill the leader at 30 % of the operations, restart it from its WAL
    /// at 50 %.
    pub(crate) kill_leader: bool,
    /// Stop a follower at 10 % and start it again from its WAL once the
    /// leader's snapshot has passed the follower's last entry (at 70 % at
    /// the earliest).
    pub(crate) hold_back: bool,
    /// Node storage.
    pub(crate) storage: Storage,
}

impl Default for DemoConfig {
    /// 5 nodes, 2000 operations from 8 sessions, a snapshot every 50
    /// entries, the leader killed and a follower held back, state in
    /// memory.
    fn default() -> Self {
        DemoConfig {
            nodes: 5,
            ops: 2000,
            sessions: 8,
            snapshot_every: 50,
            kill_leader: true,
            hold_back: true,
            storage: Storage::Memory,
        }
    }
}

impl DemoConfig {
    /// The node ids, 1..=nodes.
    pub(crate) fn ids(&self) -> Vec<NodeId> {
        (1..=self.nodes).map(NodeId).collect()
    }

    /// Operations acknowledged when the follower is held back.
    pub(crate) fn hold_at(&self) -> usize {
        self.ops / 10
    }

    /// ...when the leader is killed.
    pub(crate) fn kill_at(&self) -> usize {
        self.ops * 3 / 10
    }

    /// ...when the killed leader restarts.
    pub(crate) fn restart_at(&self) -> usize {
        self.ops / 2
    }

    /// ...from when the held-back follower may come back.
    pub(crate) fn release_at(&self) -> usize {
        self.ops * 7 / 10
    }
}

/// The client's node id (above every replica's).
pub(crate) const CLIENT: NodeId = NodeId(1000);

/// The node configuration of the demo: fast timers for loopback, small
/// snapshot chunks so a catch-up takes several messages.
pub(crate) fn raft_config(cfg: &DemoConfig, id: NodeId, seed: u64) -> RaftConfig {
    RaftConfig::new(id, &cfg.ids())
        .heartbeat(Duration::from_millis(20))
        .election_timeout(Duration::from_millis(150), Duration::from_millis(300))
        .snapshot_every(cfg.snapshot_every)
        .snapshot_chunk(4096)
        .seed(seed)
}

/// Operation `i`: on session `i % sessions`; every tenth deletes the key
/// the same session wrote `sessions` operations before (so each key is
/// only ever touched by one session, and the final state is known), the
/// others put `v<i> = i`.
pub(crate) fn op(cfg: &DemoConfig, i: usize) -> Op {
    let s = cfg.sessions.max(1);
    if i % 10 == 9 && i >= s {
        Op::Delete { key: key(i - s) }
    } else {
        Op::Put {
            key: key(i),
            value: Bytes::from(i.to_string()),
        }
    }
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("v{i}"))
}

/// The client with the workload queued.
pub(crate) fn client(cfg: &DemoConfig, seed: u64) -> KvClient {
    let sessions: Vec<ClientId> = (0..cfg.sessions.max(1) as u64)
        .map(|s| ClientId(s + 1))
        .collect();
    let ccfg = KvClientConfig::new(&cfg.ids())
        .request_timeout(Duration::from_millis(300))
        .seed(seed);
    let mut c = KvClient::new(CLIENT, ccfg, &sessions);
    for i in 0..cfg.ops {
        c.push(i % sessions.len(), op(cfg, i));
    }
    c
}

/// The final state and the outcome of every operation, as the workload
/// implies (each key belongs to one session, whose operations run in
/// order).
fn expected(cfg: &DemoConfig) -> (BTreeMap<Bytes, Bytes>, Vec<Outcome>) {
    let mut kv = BTreeMap::new();
    let outcomes = (0..cfg.ops)
        .map(|i| match op(cfg, i) {
            Op::Put { key, value } => {
                kv.insert(key, value);
                Outcome::Written
            }
            Op::Delete { key } => Outcome::Deleted(kv.remove(&key).is_some()),
            _ => unreachable!("the workload only puts and deletes"),
        })
        .collect();
    (kv, outcomes)
}

/// A digest of a node's key-value state over the workload's keys (the only
/// keys the client writes) and its size.
pub(crate) fn kv_digest(cfg: &DemoConfig, node: &RaftNode) -> u64 {
    let kv = node.kv();
    let mut h = zpatterns::det::TraceHash::new();
    h.write_u64(kv.len() as u64);
    for i in 0..cfg.ops {
        let k = key(i);
        if let Some(v) = kv.get(&k) {
            h.write(&k);
            h.write(v);
        }
    }
    h.finish()
}

/// What happened to one node during the run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Ran throughout.
    Ran,
    /// Was the leader, killed, restarted from its WAL.
    Restarted,
    /// Held back, restarted from its WAL behind the leader's snapshot.
    HeldBack,
}

/// One node at the end of the run.
#[derive(Clone, Debug)]
pub(crate) struct NodeReport {
    /// The node.
    pub(crate) id: NodeId,
    /// What happened to it.
    pub(crate) fate: Fate,
    /// Its final status (`None`: it was not running at the end).
    pub(crate) status: Option<RaftStatus>,
    /// [`kv_digest`] of its state machine.
    pub(crate) kv_digest: u64,
    /// Keys in its state machine.
    pub(crate) keys: usize,
    /// Snapshots it installed from a leader since it last started.
    pub(crate) installed: u64,
}

/// The held-back follower.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeldBack {
    /// The follower.
    pub(crate) id: NodeId,
    /// Its last log index when it was stopped.
    pub(crate) stopped_at: u64,
    /// The leader's snapshot index when it came back (0: never released
    /// behind a snapshot).
    pub(crate) leader_snapshot: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub(crate) struct DemoReport {
    /// Per node.
    pub(crate) nodes: Vec<NodeReport>,
    /// Operations acknowledged to the client.
    pub(crate) completed: usize,
    /// Operations sent.
    pub(crate) ops: usize,
    /// Every node applied up to the same index, which is the commit index.
    pub(crate) same_applied: bool,
    /// Where their logs overlap, every node holds the same entries.
    pub(crate) logs_match: bool,
    /// Every node's key-value state has the same digest.
    pub(crate) same_kv: bool,
    /// ...and it is the state the workload implies, and every
    /// acknowledged outcome is the one it implies.
    pub(crate) correct: bool,
    /// The killed (and restarted) leader.
    pub(crate) killed: Option<NodeId>,
    /// The held-back follower.
    pub(crate) held: Option<HeldBack>,
    /// Time from the first operation to the last acknowledgement (virtual
    /// time on the simulator).
    pub(crate) elapsed: Duration,
    /// Per-operation latency, sorted.
    pub(crate) latencies: Vec<Duration>,
}

impl DemoReport {
    /// True if every check passed and every operation was acknowledged.
    pub(crate) fn agree(&self) -> bool {
        self.same_applied
            && self.logs_match
            && self.same_kv
            && self.correct
            && self.completed == self.ops
    }

    /// True if the held-back follower could only have caught up through
    /// InstallSnapshot (the leader had compacted its log past the
    /// follower's last entry before the follower came back), did install a
    /// snapshot, and caught up.
    pub(crate) fn snapshot_catch_up(&self) -> bool {
        self.held.is_some_and(|h| {
            h.leader_snapshot > h.stopped_at
                && self.same_applied
                && self.nodes.iter().any(|n| n.id == h.id && n.installed > 0)
        })
    }

    /// Acknowledged operations per second.
    pub(crate) fn commits_per_sec(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The latency at quantile `q` (0..=1).
    pub(crate) fn latency(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
        Role::Learner => "learner",
        _ => "other",
    }
}

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            let fate = match n.fate {
                Fate::Ran => "",
                Fate::Restarted => "  (leader killed, restarted from its WAL)",
                Fate::HeldBack => "  (held back, caught up from the leader)",
            };
            match &n.status {
                Some(s) => writeln!(
                    f,
                    "   {} {:9} term {:3}  applied {:5}  snapshot at {:5} ({:6} bytes, {:2} installed)  {:5} keys, digest {:016x}{fate}",
                    n.id,
                    role(s.role),
                    s.term,
                    s.applied,
                    s.snapshot_index,
                    s.snapshot_bytes,
                    n.installed,
                    n.keys,
                    n.kv_digest
                )?,
                None => writeln!(f, "   {} not running at the end{fate}", n.id)?,
            }
        }
        if let Some(k) = self.killed {
            writeln!(
                f,
                "   leader {k} was killed at 30 % of the operations and restarted from its WAL at 50 %"
            )?;
        }
        if let Some(h) = self.held {
            writeln!(
                f,
                "   follower {} was stopped at log index {}; it came back when the leader's log started after index {} and installed {} snapshot(s): caught up by InstallSnapshot {}",
                h.id,
                h.stopped_at,
                h.leader_snapshot,
                self.nodes.iter().find(|n| n.id == h.id).map_or(0, |n| n.installed),
                if self.snapshot_catch_up() { "yes" } else { "NO" }
            )?;
        }
        let yes = |b| if b { "yes" } else { "NO" };
        writeln!(
            f,
            "   operations acknowledged: {}/{}; state machines agree: same applied index {}, logs match {}, same state {}, state and outcomes as expected {}",
            self.completed,
            self.ops,
            yes(self.same_applied),
            yes(self.logs_match),
            yes(self.same_kv),
            yes(self.correct)
        )
    }
}

/// The report of node `id` (its node, if running at the end, is `node`).
pub(crate) fn node_report(
    cfg: &DemoConfig,
    id: NodeId,
    fate: Fate,
    node: Option<&RaftNode>,
) -> NodeReport {
    NodeReport {
        id,
        fate,
        status: node.map(|n| n.status()),
        kv_digest: node.map_or(0, |n| kv_digest(cfg, n)),
        keys: node.map_or(0, |n| n.kv().len()),
        installed: node.map_or(0, |n| n.stats().snapshots_installed),
    }
}

/// Fills in the verdicts from the nodes as they are at the end (`nodes`:
/// those running, every node should be) and the client's history.
pub(crate) fn judge(
    cfg: &DemoConfig,
    reports: Vec<NodeReport>,
    nodes: &[&RaftNode],
    records: &[OpRecord],
    killed: Option<NodeId>,
    held: Option<HeldBack>,
) -> DemoReport {
    let all_running = nodes.len() == cfg.nodes as usize && !nodes.is_empty();
    let commit = nodes.iter().map(|n| n.commit_index()).max().unwrap_or(0);
    let same_applied = all_running && nodes.iter().all(|n| n.applied_index() == commit);
    // Log Matching where the logs overlap: every index above every node's
    // snapshot and up to the applied index.
    let from = nodes.iter().map(|n| n.snapshot_index()).max().unwrap_or(0) + 1;
    let to = nodes.iter().map(|n| n.applied_index()).min().unwrap_or(0);
    let logs_match = (from..=to).all(|i| {
        let mut d = nodes.iter().map(|n| n.entry(i).map(|e| e.digest()));
        let first = d.next().flatten();
        first.is_some() && d.all(|x| x == first)
    });
    let same_kv = all_running
        && reports
            .windows(2)
            .all(|w| w[0].kv_digest == w[1].kv_digest && w[0].keys == w[1].keys);
    let (want, outcomes) = expected(cfg);
    let state_ok = nodes.first().is_some_and(|n| {
        let kv = n.kv();
        kv.len() == want.len() && want.iter().all(|(k, v)| kv.get(k) == Some(v))
    });
    // The client pushed operation i as the (i / sessions + 1)-th command of
    // session i % sessions.
    let s = cfg.sessions.max(1);
    let outcomes_ok = records.iter().all(|r| {
        let i = (r.client.0 as usize - 1) + (r.seq as usize - 1) * s;
        match &r.completed {
            Some((_, o)) => outcomes.get(i) == Some(o),
            None => true,
        }
    });
    let completed: Vec<&OpRecord> = records.iter().filter(|r| r.completed.is_some()).collect();
    let start = records.iter().map(|r| r.invoked).min();
    let end = completed
        .iter()
        .filter_map(|r| r.completed.as_ref().map(|c| c.0))
        .max();
    let elapsed = match (start, end) {
        (Some(s), Some(e)) => e - s,
        _ => Duration::ZERO,
    };
    let mut latencies: Vec<Duration> = completed
        .iter()
        .filter_map(|r| r.completed.as_ref().map(|(t, _)| *t - r.invoked))
        .collect();
    latencies.sort_unstable();
    DemoReport {
        nodes: reports,
        completed: completed.len(),
        ops: cfg.ops,
        same_applied,
        logs_match,
        same_kv,
        correct: state_ok && outcomes_ok,
        killed,
        held,
        elapsed,
        latencies,
    }
}

/// The node to hold back: the highest-id follower among `candidates`
/// (`(id, is_leader)`).
pub(crate) fn pick_follower(candidates: &[(NodeId, bool)]) -> Option<NodeId> {
    candidates
        .iter()
        .rev()
        .find(|(_, leader)| !leader)
        .map(|(id, _)| *id)
}
