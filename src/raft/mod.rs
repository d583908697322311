//! Raft: a replicated key-value store on any
//! [`Transport`](crate::transport::Transport), the second consensus demo
//! beside [`paxos`](crate::paxos), held to the same proof.
//!
//! - persistent term, vote and log in the [`durable`](crate::durable) WAL,
//!   fsynced before any reply leaves (the
//!   [`Process::persist`](crate::transport::Process::persist) step);
//! - randomized election timeouts; RequestVote with the up-to-date-log
//!   check; pre-vote and check-quorum (an isolated leader steps down within
//!   the minimum election timeout, and voters that hear from a leader
//!   ignore vote requests); leadership transfer (`TimeoutNow`);
//! - AppendEntries with the consistency check, truncation of conflicting
//!   suffixes, fast backtracking (the follower's conflicting term and its
//!   first index), a window of appends in flight per follower, and
//!   commitment only by counting entries of the leader's own term (Raft
//!   figure 8), with a no-op appended on election;
//! - an apply loop into the Paxos store's state machine
//!   ([`KvStore`]: get, put, cas, delete, with
//!   bounded `(client, seq)` sessions for exactly-once application);
//! - linearizable reads without log writes: ReadIndex (the leader answers
//!   a get once a majority acknowledged a heartbeat round sent after the
//!   read arrived, and its state machine reached the commit index it had
//!   then);
//! - snapshots every N applied entries, the log before them dropped and the
//!   WAL rewritten; a lagging follower gets the snapshot in chunks
//!   (InstallSnapshot), one per round trip, beside the heartbeats;
//! - membership changes one server at a time ([`ConfChange`]: add a
//!   learner, promote it once caught up, remove), in force when stored,
//!   one uncommitted change at a time and only after the leader committed
//!   an entry of its term.
//!
//! Clients speak the Paxos store's client messages, so
//! [`paxos::KvClient`](crate::paxos::KvClient) is the Raft client too and
//! the two stores swap in the demos and benchmarks. Every part is sans-IO:
//! [`RaftNode`] is a [`Process`](crate::transport::Process) driven by
//! [`Sim`](crate::sim::Sim) (the test battery) or by
//! [`transport::driver::run`](crate::transport::driver::run) over
//! [`ZmqTransport`](crate::transport::zmq::ZmqTransport)
//! (`examples/raft.rs`). The wire format is in [`msg`].
//!
//! # Limits
//!
//! | Limit | Default | What a peer gets beyond it |
//! |---|---|---|
//! | [`RaftConfig::max_sessions`]: client sessions in the store | 10,000 | the least recently used session is evicted (counted); that client's next command is answered [`Outcome::SessionExpired`], not executed |
//! | [`RaftConfig::max_pending`]: client requests the leader holds (writes not yet applied, reads not yet confirmed) | 10,000 | the request is dropped (counted in `requests_dropped`); the client retries after its timeout |
//! | [`RaftConfig::max_message`]: largest message | 16 MiB | dropped undecoded (`oversized`); commands over a quarter of it are refused; an AppendEntries carries at most half of it |
//! | [`RaftConfig::snapshot_every`] and [`RaftConfig::log_tail`]: applied entries kept before compaction, and behind a snapshot | 1000 and 500 | the log and the WAL are compacted into a snapshot, keeping the tail |
//! | [`RaftConfig::max_snapshot`]: size of a snapshot received from a leader (assembled in memory) | 1 GiB | refused (counted as garbage); the follower stays behind until the limit is raised |
//! | [`RaftConfig::snapshot_chunk`]: bytes per InstallSnapshot message | 64 KiB | the snapshot travels in several chunks, one per round trip |
//!
//! The log is bounded too: a leader creates at most
//! [`RaftConfig::max_inflight`] uncommitted entries (of at most
//! [`RaftConfig::max_batch`] commands each) and holds the other commands as
//! pending requests, and applied entries are compacted. Raft trusts the
//! cluster's members (a node that claims a higher term is followed);
//! garbage, oversized messages and client floods from anyone are counted
//! and dropped. Not supported: leader
//! leases (reads always confirm leadership with a heartbeat round), joint
//! consensus (changes are one server at a time), and a removed node
//! learning that it was removed (it stops being contacted; with pre-vote
//! and leader stickiness its campaigns disturb nobody).

mod config;
mod leader;
mod log;
pub mod msg;
mod node;
#[cfg(test)]
mod node_tests;
mod storage;

pub use config::{Mutation, RaftConfig};
pub use log::{ConfChange, Entry, EntryKind, Membership};
pub use msg::{Msg, MsgKind, RaftStatus};
pub use node::{Probe, RaftNode, RaftStats, Role};

pub use crate::paxos::{
    ClientId, Command, KvClient, KvClientConfig, KvStore, Op, OpRecord, Outcome,
};

use crate::durable::DurableError;
use crate::transport::NodeId;

/// Errors of the Raft store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RaftError {
    /// The WAL could not be read or written, or holds something this
    /// build cannot decode.
    #[error("storage: {0}")]
    Durable(#[from] DurableError),
    /// Only the leader can do this; `leader` is the one this node knows.
    #[error("not the leader (the leader is {leader:?})")]
    NotLeader {
        /// The leader this node believes in.
        leader: Option<NodeId>,
    },
    /// The leader has not committed an entry of its term yet.
    #[error("the leader has not committed an entry of its term yet")]
    LeaderNotReady,
    /// A configuration change is still uncommitted.
    #[error("a configuration change is in progress")]
    ChangeInProgress,
    /// The learner has not caught up with the commit index.
    #[error("{0} has not caught up yet")]
    NotCaughtUp(NodeId),
    /// The node is not a member (or not a learner, for a promotion).
    #[error("{0} is not a member in that role")]
    UnknownNode(NodeId),
    /// The node is already a member.
    #[error("{0} is already a member")]
    AlreadyMember(NodeId),
    /// Removing the last voter would leave nobody to decide.
    #[error("{0} is the last voter")]
    LastVoter(NodeId),
}
