//! Multi-Paxos: a replicated key-value store on any
//! [`Transport`](crate::transport::Transport).
//!
//! - ballots `(round, node)`, totally ordered ([`Ballot`]);
//! - acceptors that persist their promise and every accepted
//!   `(ballot, value)` per slot, fsynced before replying, and reject what
//!   they must ([`AcceptorState`]);
//! - a stable leader elected by heartbeats and randomized timeouts that
//!   runs phase 1 once for all future slots, then only phase 2 (zero
//!   prepares in steady state), with a window of slots in flight and
//!   client commands batched per slot;
//! - a new leader re-proposes each slot's highest-ballot accepted value
//!   (from every promise, not just the last one) and fills holes with
//!   no-ops;
//! - learners apply decided slots in order to a [`KvStore`] (get, put,
//!   cas) whose client sessions deduplicate retries by `(client, seq)`;
//! - [`KvClient`]: a client that finds the leader, retries, and records a
//!   history for linearizability checking.
//!
//! Every part is sans-IO ([`Replica`] and [`KvClient`] are
//! [`Process`](crate::transport::Process)es driven by the simulator or by
//! [`transport::driver::run`](crate::transport::driver::run)): the test
//! battery runs them on [`Sim`](crate::sim::Sim), `examples/paxos.rs` over
//! [`ZmqTransport`](crate::transport::zmq::ZmqTransport). The wire format
//! is in [`msg`].
//!
//! # Limits
//!
//! | Limit | Default | What a peer gets beyond it |
//! |---|---|---|
//! | [`ReplicaConfig::max_sessions`]: client sessions in the store | 10,000 | the least recently used session is evicted (counted); that client's next command is answered [`Outcome::SessionExpired`], not executed |
//! | [`ReplicaConfig::max_pending`]: commands queued at the leader | 10,000 | the request is dropped (counted); the client retries after its timeout |
//! | [`ReplicaConfig::max_message`]: largest message | 16 MiB | dropped undecoded (counted); commands over a quarter of it are refused |
//!
//! Decoding is bounded by the message: see [`msg`]. Limits not addressed:
//! membership is fixed; the decided log is kept in memory whole (no
//! snapshots or log truncation), and a restarted learner re-learns it from
//! the leader; reads go through the log (no leases).

mod acceptor;
mod ballot;
mod client;
mod config;
mod kv;
mod leader;
mod learner;
pub mod msg;
mod node;
mod wire;

pub use acceptor::{AcceptorState, Record};
pub use ballot::{Ballot, Slot};
pub use client::{KvClient, KvClientConfig, KvClientStats, OpRecord};
pub use config::{Mutation, ReplicaConfig};
pub use kv::{Applied, ClientId, Command, KvStore, Op, Outcome, Value, DEFAULT_MAX_SESSIONS};
pub use learner::Learner;
pub use msg::{Msg, MsgDecodeError, MsgKind};
pub use node::{Probe, Replica, ReplicaStats};

// Shared with the Raft store, which speaks the same client messages and
// applies to the same state machine.
pub(crate) use kv::{decode_op, encode_op, PREALLOC};
pub(crate) use node::{random_between, LogGate};
pub(crate) use wire::{Reader, Writer};
