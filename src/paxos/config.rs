//! `ReplicaConfig`: a replica's roles in the cluster and its timing.

use std::time::Duration;

use crate::transport::NodeId;

/// A deliberately re-introduced bug, for the battery's negative controls.
///
/// Hidden from the documentation, and inert unless the crate is built with
/// the test-only cargo feature `negative-controls` (which the crate's own
/// tests turn on): only then can `ReplicaConfig::mutation` switch one on, to
/// prove that the battery catches each bug.
#[doc(hidden)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Mutation {
    /// The acceptor does not write its promise to disk, so it forgets it
    /// on restart (and may then accept a lower ballot).
    ForgetPromiseOnRestart,
    /// A new leader proposes its own value (a no-op) for every slot instead
    /// of the highest-ballot accepted value reported by the promises.
    ProposeOwnValue,
}

/// Configuration of one replica.
///
/// Every node in `acceptors`, `proposers` and `learners` is a learner and
/// holds a copy of the key-value store; only proposers can lead.
#[derive(Clone, Debug)]
pub struct ReplicaConfig {
    pub(crate) id: NodeId,
    pub(crate) acceptors: Vec<NodeId>,
    pub(crate) proposers: Vec<NodeId>,
    pub(crate) learners: Vec<NodeId>,
    pub(crate) heartbeat: Duration,
    pub(crate) election_min: Duration,
    pub(crate) election_max: Duration,
    pub(crate) retransmit: Duration,
    pub(crate) window: usize,
    pub(crate) max_batch: usize,
    pub(crate) max_sessions: usize,
    pub(crate) max_pending: usize,
    pub(crate) max_message: usize,
    pub(crate) seed: u64,
    #[cfg(feature = "negative-controls")]
    pub(crate) mutation: Option<Mutation>,
    pub(crate) probes: bool,
}

impl ReplicaConfig {
    /// A replica `id` in a cluster with these acceptors and proposers
    /// (leader candidates). Learners are all of them.
    pub fn new(id: NodeId, acceptors: &[NodeId], proposers: &[NodeId]) -> Self {
        let mut learners: Vec<NodeId> = acceptors.iter().chain(proposers).copied().collect();
        learners.sort_unstable();
        learners.dedup();
        ReplicaConfig {
            id,
            acceptors: acceptors.to_vec(),
            proposers: proposers.to_vec(),
            learners,
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(600),
            retransmit: Duration::from_millis(100),
            window: 16,
            max_batch: 256,
            max_sessions: super::kv::DEFAULT_MAX_SESSIONS,
            max_pending: 10_000,
            max_message: 16 << 20,
            seed: u64::from(id.0),
            #[cfg(feature = "negative-controls")]
            mutation: None,
            probes: false,
        }
    }

    /// A replica `id` in a cluster where every node is acceptor, proposer
    /// and learner.
    pub fn symmetric(id: NodeId, nodes: &[NodeId]) -> Self {
        ReplicaConfig::new(id, nodes, nodes)
    }

    /// Leader heartbeat interval (default 50 ms).
    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.heartbeat = d;
        self
    }

    /// The randomized election timeout range (default 300-600 ms).
    pub fn election_timeout(mut self, min: Duration, max: Duration) -> Self {
        self.election_min = min;
        self.election_max = max.max(min);
        self
    }

    /// Retransmission interval of prepares, accepts and fetches (default
    /// 100 ms).
    pub fn retransmit(mut self, d: Duration) -> Self {
        self.retransmit = d;
        self
    }

    /// Slots a leader keeps in flight (default 16).
    pub fn window(mut self, slots: usize) -> Self {
        self.window = slots.max(1);
        self
    }

    /// Commands a leader batches into one slot (default 256).
    pub fn max_batch(mut self, commands: usize) -> Self {
        self.max_batch = commands.max(1);
        self
    }

    /// Client sessions the key-value store keeps (default 10,000; at least
    /// 1); the least recently used is evicted beyond that (see
    /// [`KvStore`](super::KvStore) for what an evicted client gets).
    ///
    /// The session table is replicated state: **every replica of a cluster
    /// must use the same value**, or their stores diverge.
    pub fn max_sessions(mut self, sessions: usize) -> Self {
        self.max_sessions = sessions.max(1);
        self
    }

    /// Client commands a leader queues beyond the slots in flight (default
    /// 10,000). A request arriving when the queue is full is dropped and
    /// counted in [`ReplicaStats::requests_refused`](super::ReplicaStats);
    /// its client retries after its request timeout.
    pub fn max_pending(mut self, commands: usize) -> Self {
        self.max_pending = commands.max(1);
        self
    }

    /// Largest message accepted, in bytes (default 16 MiB). Larger ones are
    /// dropped before decoding and counted in
    /// [`ReplicaStats::oversized`](super::ReplicaStats). A leader keeps the
    /// batches it proposes and the catch-up messages it sends under half
    /// of it. A candidate whose promises would be larger (it is that far
    /// behind in accepted values) cannot win until it has caught up from
    /// the current leader.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(1024);
        self
    }

    /// Seed of the election-timeout randomness (default: the node id; use
    /// a random seed on real networks so restarts do not repeat timings).
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

    #[doc(hidden)]
    pub fn probes(mut self, on: bool) -> Self {
        self.probes = on;
        self
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The acceptors.
    pub fn acceptors(&self) -> &[NodeId] {
        &self.acceptors
    }

    /// The proposers.
    pub fn proposers(&self) -> &[NodeId] {
        &self.proposers
    }

    /// Every learner (all nodes).
    pub fn learners(&self) -> &[NodeId] {
        &self.learners
    }

    /// A majority of the acceptors.
    pub fn quorum(&self) -> usize {
        self.acceptors.len() / 2 + 1
    }

    pub(crate) fn is_acceptor(&self, n: NodeId) -> bool {
        self.acceptors.contains(&n)
    }
}
