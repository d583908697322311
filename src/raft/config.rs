//! `RaftConfig`: a node's identity, its bootstrap configuration, timing,
//! batching and limits.

use std::time::Duration;

use crate::transport::NodeId;

/// A deliberately re-introduced bug, for the battery's negative controls.
///
/// Hidden from the documentation, and inert unless the crate is built with
/// the test-only cargo feature `negative-controls` (which the crate's own
/// tests turn on): only then can `RaftConfig::mutation` switch one on, to
/// prove that the battery catches each bug.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Mutation {
    /// A leader commits an entry of an earlier term once a majority stores
    /// it (Raft figure 8), instead of only entries of its own term.
    CommitPriorTerm,
    /// A voter grants its vote without checking that the candidate's log is
    /// at least as up to date as its own.
    SkipUpToDateCheck,
    /// A voter does not write its vote to disk, so after a restart it may
    /// vote again in the same term.
    ForgetVote,
}

/// Configuration of one Raft node.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    pub(crate) id: NodeId,
    pub(crate) voters: Vec<NodeId>,
    pub(crate) heartbeat: Duration,
    pub(crate) election_min: Duration,
    pub(crate) election_max: Duration,
    pub(crate) snapshot_every: u64,
    pub(crate) snapshot_chunk: usize,
    pub(crate) log_tail: Option<u64>,
    pub(crate) max_append: usize,
    pub(crate) max_inflight: usize,
    pub(crate) max_batch: usize,
    pub(crate) max_sessions: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_message: usize,
    pub(crate) max_snapshot: u64,
    pub(crate) pre_vote: bool,
    pub(crate) check_quorum: bool,
    pub(crate) seed: u64,
    #[cfg(feature = "negative-controls")]
    pub(crate) mutation: Option<Mutation>,
    pub(crate) probes: bool,
}

impl RaftConfig {
    /// Node `id`. `voters` is the initial configuration: it bootstraps a
    /// node whose WAL is empty and that is one of them (every initial
    /// member must be given the same list). A node that joins a running
    /// cluster later gets `&[]`: it never campaigns, and waits until a
    /// leader adds it as a learner and sends it the log.
    pub fn new(id: NodeId, voters: &[NodeId]) -> Self {
        let mut voters = voters.to_vec();
        voters.sort_unstable();
        voters.dedup();
        RaftConfig {
            id,
            voters,
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            snapshot_every: 1000,
            snapshot_chunk: 64 << 10,
            log_tail: None,
            max_append: 64,
            max_inflight: 8,
            max_batch: 256,
            max_sessions: crate::paxos::DEFAULT_MAX_SESSIONS,
            max_pending: 10_000,
            max_message: 16 << 20,
            max_snapshot: 1 << 30,
            pre_vote: true,
            check_quorum: true,
            seed: u64::from(id.0),
            #[cfg(feature = "negative-controls")]
            mutation: None,
            probes: false,
        }
    }

    /// Interval of the leader's heartbeats (default 50 ms); also the
    /// retransmission interval of unanswered appends and snapshot chunks.
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d.max(Duration::from_micros(100));
        self
    }

    /// A follower campaigns after hearing nothing from a leader for a time
    /// drawn uniformly from `min..=max`, again at every timeout (default
    /// 300-600 ms). `min` is also the check-quorum window: a leader that
    /// has not heard from a majority for `min` steps down.
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.election_min = min.max(self.heartbeat);
        self.election_max = max.max(self.election_min);
        self
    }

    /// Takes a snapshot of the state machine and drops the log before it
    /// once this many entries were applied since the last one (default
    /// 1000; 0: never, and the log and WAL grow without bound). A leader
    /// that is sending its snapshot to a follower waits, up to twice this
    /// many entries, so the follower does not have to start over.
    pub fn snapshot_every(mut self, entries: u64) -> Self {
        self.snapshot_every = entries;
        self
    }

    /// Entries kept in the log behind a new snapshot (default: half of
    /// [`snapshot_every`](Self::snapshot_every)): a follower that lags by
    /// fewer is sent entries, not the whole snapshot. A leader keeps more
    /// for a follower it is catching up (up to three intervals behind the
    /// snapshot). The log holds at most `4 x snapshot_every` applied
    /// entries.
    pub fn log_tail(mut self, entries: u64) -> Self {
        self.log_tail = Some(entries);
        self
    }

    /// Bytes of snapshot per InstallSnapshot message (default 64 KiB): a
    /// lagging follower gets the snapshot in chunks, one per round trip,
    /// so it never delays the leader's heartbeats.
    pub fn snapshot_chunk(mut self, bytes: usize) -> Self {
        self.snapshot_chunk = bytes.max(1);
        self
    }

    /// Most entries in one AppendEntries (default 64; also bounded by half
    /// of [`max_message`](Self::max_message) in bytes).
    pub fn max_append(mut self, entries: usize) -> Self {
        self.max_append = entries.max(1);
        self
    }

    /// AppendEntries in flight per follower before waiting for replies
    /// (pipelining, default 8); also how many uncommitted entries the
    /// leader creates before it batches further commands into the next
    /// one (group commit).
    pub fn max_inflight(mut self, n: usize) -> Self {
        self.max_inflight = n.max(1);
        self
    }

    /// Most client commands in one log entry (default 256).
    pub fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = commands.max(1);
        self
    }

    /// Bound of the state machine's client-session table (default 10,000,
    /// as the Paxos store; see [`KvStore`](crate::paxos::KvStore)). Part of
    /// the replicated state: every node must use the same value.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions.max(1);
        self
    }

    /// Client requests the leader holds (waiting for a log entry, for
    /// their entry to apply, or for a read's leadership check); beyond it
    /// a request is dropped (counted) and the client retries (default
    /// 10,000).
    pub fn max_pending(mut self, requests: usize) -> Self {
        self.max_pending = requests.max(1);
        self
    }

    /// Largest message accepted, in bytes (default 16 MiB; larger ones are
    /// dropped undecoded and counted). Commands over a quarter of it are
    /// refused.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(4096);
        self
    }

    /// Largest snapshot accepted from a leader, in bytes (default 1 GiB):
    /// a snapshot is assembled in memory from its chunks, and one that
    /// announces more is refused (counted as garbage, logged). Must exceed
    /// the size of the state machine.
    pub fn max_snapshot(mut self, bytes: u64) -> Self {
        self.max_snapshot = bytes;
        self
    }

    /// Pre-vote (default on): a node that would campaign first asks the
    /// voters whether they would vote for it, and only bumps its term if a
    /// majority would, so a node rejoining from a partition does not
    /// depose a working leader.
    pub fn pre_vote(mut self, on: bool) -> Self {
        self.pre_vote = on;
        self
    }

    /// Check-quorum (default on): a leader that has not heard from a
    /// majority within the minimum election timeout steps down (and stops
    /// accepting writes), and a voter that heard from a leader within that
    /// time ignores vote requests (leader stickiness).
    pub fn check_quorum(mut self, on: bool) -> Self {
        self.check_quorum = on;
        self
    }

    /// Seed of the randomized election timeouts (default: the node id).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Re-introduces a known bug (test-only feature `negative-controls`).
    #[doc(hidden)]
    #[cfg(feature = "negative-controls")]
    pub fn mutation(mut self, m: Option<Mutation>) -> Self {
        self.mutation = m;
        self
    }

    /// Records [`Probe`](super::Probe)s for the test battery.
    #[doc(hidden)]
    pub fn probes(mut self, on: bool) -> Self {
        self.probes = on;
        self
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The bootstrap voters.
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    pub(crate) fn mutated(&self, m: Mutation) -> bool {
        #[cfg(feature = "negative-controls")]
        {
            self.mutation == Some(m)
        }
        #[cfg(not(feature = "negative-controls"))]
        {
            let _ = m;
            false
        }
    }
}
