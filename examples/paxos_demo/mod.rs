//! The Paxos demo scenario as a runner shared by `examples/paxos.rs`, the
//! tour's Paxos section and `benches/paxos.rs` (example-private code, not
//! part of the library): `A` acceptors, `L` leaders (proposers), `F`
//! acceptors failed from the start, `N` proposals from a client, an
//! optional leader kill, over real ZeroMQ sockets or on the simulator;
//! then every learner's history is compared.
//!
//! The report says whether all live learners' histories are identical,
//! complete (every proposal exactly once) and in order (each client
//! session's proposals in the order sent).

mod sim;
mod zmq;

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use zpatterns::paxos::{
    ClientId, KvClient, KvClientConfig, Learner, Op, OpRecord, Replica, ReplicaConfig,
};
use zpatterns::transport::NodeId;

pub(crate) use sim::run_sim;
pub(crate) use zmq::run_zmq;

/// How acceptors keep their state.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Storage {
    /// In memory (no durability).
    Memory,
    /// A [`FileWal`](zpatterns::durable::FileWal) per acceptor in this
    /// directory, fsynced before every reply.
    Files(std::path::PathBuf),
}

/// The scenario.
#[derive(Clone, Debug)]
pub(crate) struct DemoConfig {
    /// Acceptors (default 5).
    pub(crate) acceptors: u32,
    /// Leaders, i.e. proposers that are not acceptors (default 2).
    pub(crate) leaders: u32,
    /// Acceptors failed from the start (default 2).
    pub(crate) failed: u32,
    /// Proposals (default 1000).
    pub(crate) proposals: usize,
    /// Client sessions sending them concurrently (1: one at a time).
    pub(crate) sessions: usize,
    /// Kill the leader once this many proposals completed.
    pub(crate) kill_leader_after: Option<usize>,
    /// Acceptor storage.
    pub(crate) storage: Storage,
}

impl Default for DemoConfig {
    /// 5 acceptors (2 failed), 2 leaders, 1000 proposals, one session.
    fn default() -> Self {
        DemoConfig {
            acceptors: 5,
            leaders: 2,
            failed: 2,
            proposals: 1000,
            sessions: 1,
            kill_leader_after: None,
            storage: Storage::Memory,
        }
    }
}

/// What happened to one node.
#[derive(Clone, Debug)]
pub(crate) struct NodeReport {
    /// The node.
    pub(crate) id: NodeId,
    /// "acceptor" or "leader".
    pub(crate) role: &'static str,
    /// "live", "failed" (from the start) or "killed".
    pub(crate) state: &'static str,
    /// Slots applied.
    pub(crate) slots: u64,
    /// Distinct commands applied, in log order.
    pub(crate) history: Vec<(ClientId, u64)>,
    /// Elections this node won.
    pub(crate) elected: u64,
}

/// The outcome of a run.
#[derive(Clone, Debug)]
pub(crate) struct DemoReport {
    /// Per node.
    pub(crate) nodes: Vec<NodeReport>,
    /// Proposals completed (acknowledged to the client).
    pub(crate) completed: usize,
    /// Proposals sent.
    pub(crate) proposals: usize,
    /// All live learners' histories are identical.
    pub(crate) identical: bool,
    /// ...and contain every proposal exactly once.
    pub(crate) complete: bool,
    /// ...and each session's proposals in the order sent.
    pub(crate) in_order: bool,
    /// Time from the first proposal to the last acknowledgement (virtual
    /// time on the simulator).
    pub(crate) elapsed: Duration,
    /// Per-proposal latency, sorted.
    pub(crate) latencies: Vec<Duration>,
    /// The killed leader, if any.
    pub(crate) killed: Option<NodeId>,
}

impl DemoReport {
    /// True if every check passed.
    pub(crate) fn agree(&self) -> bool {
        self.identical && self.complete && self.in_order && self.completed == self.proposals
    }

    /// Acknowledged proposals per second.
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

impl fmt::Display for DemoReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for n in &self.nodes {
            writeln!(
                f,
                "   {} {:8} {:6}  applied {:5} slots, {:5} commands, won {} election(s)",
                n.id,
                n.role,
                n.state,
                n.slots,
                n.history.len(),
                n.elected
            )?;
        }
        if let Some(k) = self.killed {
            writeln!(f, "   leader {k} was killed during the run")?;
        }
        let yes = |b| if b { "yes" } else { "NO" };
        writeln!(
            f,
            "   proposals acknowledged: {}/{}; live learners agree: identical {}, complete {}, in order {}",
            self.completed,
            self.proposals,
            yes(self.identical),
            yes(self.complete),
            yes(self.in_order)
        )
    }
}

pub(crate) fn acceptor_ids(cfg: &DemoConfig) -> Vec<NodeId> {
    (0..cfg.acceptors).map(NodeId).collect()
}

pub(crate) fn leader_ids(cfg: &DemoConfig) -> Vec<NodeId> {
    (cfg.acceptors..cfg.acceptors + cfg.leaders)
        .map(NodeId)
        .collect()
}

pub(crate) const CLIENT: NodeId = NodeId(1000);

pub(crate) fn replica_config(cfg: &DemoConfig, id: NodeId, seed: u64) -> ReplicaConfig {
    ReplicaConfig::new(id, &acceptor_ids(cfg), &leader_ids(cfg))
        .heartbeat(Duration::from_millis(20))
        .election_timeout(Duration::from_millis(150), Duration::from_millis(300))
        .retransmit(Duration::from_millis(50))
        .seed(seed)
}

/// The client with its proposals queued: proposal `i` is `put v<i> = i`
/// on session `i % sessions`.
pub(crate) fn client(cfg: &DemoConfig, seed: u64) -> KvClient {
    let sessions: Vec<ClientId> = (0..cfg.sessions.max(1) as u64)
        .map(|s| ClientId(s + 1))
        .collect();
    let ccfg = KvClientConfig::new(&leader_ids(cfg))
        .request_timeout(Duration::from_millis(300))
        .seed(seed);
    let mut c = KvClient::new(CLIENT, ccfg, &sessions);
    for i in 0..cfg.proposals {
        c.push(
            i % sessions.len(),
            Op::Put {
                key: format!("v{i}").into(),
                value: i.to_string().into(),
            },
        );
    }
    c
}

/// The report of node `id`, whose replica (if still at hand) is `r`.
pub(crate) fn node_report(
    cfg: &DemoConfig,
    id: NodeId,
    failed: &[NodeId],
    killed: Option<NodeId>,
    r: Option<&Replica>,
) -> NodeReport {
    let state = if failed.contains(&id) {
        "failed"
    } else if killed == Some(id) {
        "killed"
    } else {
        "live"
    };
    NodeReport {
        id,
        role: if id.0 < cfg.acceptors {
            "acceptor"
        } else {
            "leader"
        },
        state,
        slots: r.map_or(0, |r| r.learner().next_apply()),
        history: r.map(|r| history(r.learner())).unwrap_or_default(),
        elected: r.map_or(0, |r| r.stats().elected),
    }
}

/// Distinct commands of a learner in log order.
pub(crate) fn history(l: &Learner) -> Vec<(ClientId, u64)> {
    let mut seen = BTreeSet::new();
    l.commands()
        .map(|c| (c.client, c.seq))
        .filter(|k| seen.insert(*k))
        .collect()
}

/// Fills in the verdicts.
pub(crate) fn judge(
    cfg: &DemoConfig,
    nodes: Vec<NodeReport>,
    records: &[OpRecord],
    killed: Option<NodeId>,
) -> DemoReport {
    let live: Vec<&NodeReport> = nodes.iter().filter(|n| n.state == "live").collect();
    let identical = live.windows(2).all(|w| w[0].history == w[1].history) && !live.is_empty();
    let first = live.first().map(|n| n.history.clone()).unwrap_or_default();
    let sent: BTreeSet<(ClientId, u64)> = records.iter().map(|r| (r.client, r.seq)).collect();
    let got: BTreeSet<(ClientId, u64)> = first.iter().copied().collect();
    let complete = got == sent && first.len() == cfg.proposals;
    let mut last: std::collections::BTreeMap<ClientId, u64> = Default::default();
    let in_order = first.iter().all(|(c, s)| {
        let prev = last.insert(*c, *s).unwrap_or(0);
        *s > prev
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
        nodes,
        completed: completed.len(),
        proposals: cfg.proposals,
        identical,
        complete,
        in_order,
        elapsed,
        latencies,
        killed,
    }
}
