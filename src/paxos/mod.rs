//! Multi-Paxos: a replicated key-value store on any
//! [`Transport`](crate::transport::Transport), and the seed's Paxos demo
//! done right.
//!
//! The seed (a Python toy Paxos, digested in `seed-spec.md` part B) has 5
//! acceptors, 2 leaders and a full phase 1 per log slot; its leaders never
//! learn what they did not propose, its acceptors never reject, and a new
//! leader adopts whatever value completed its quorum. This module is a
//! clean reimplementation of the algorithm:
//!
//! - ballots `(round, node)`, totally ordered ([`Ballot`]);
//! - acceptors that persist their promise and every accepted
//!   `(ballot, value)` per slot, fsynced before replying, and reject what
//!   they must ([`AcceptorState`]);
//! - a stable leader elected by heartbeats and randomized timeouts that
//!   runs phase 1 once for all future slots, then only phase 2 (zero
//!   prepares in steady state), with a window of slots in flight and
//!   client commands batched per slot;
//! - a new leader re-proposes each slot's highest-ballot accepted value and
//!   fills holes with no-ops;
//! - learners apply decided slots in order to a [`KvStore`] (get, put,
//!   cas) whose client sessions deduplicate retries by `(client, seq)`;
//! - [`KvClient`]: a client that finds the leader, retries, and records a
//!   history for linearizability checking.
//!
//! Every part is sans-IO ([`Replica`] and [`KvClient`] are
//! [`Process`](crate::transport::Process)es): the test battery runs them
//! on [`Sim`](crate::sim::Sim), the demo over
//! [`ZmqTransport`](crate::transport::zmq::ZmqTransport). The wire format
//! is in [`msg`].
//!
//! Limits: membership is fixed; the decided log is kept in memory whole
//! (no snapshots or log truncation), and a restarted learner re-learns it
//! from the leader; reads go through the log (no leases).

mod acceptor;
mod ballot;
mod client;
mod config;
pub mod demo;
mod kv;
mod leader;
mod learner;
pub mod msg;
mod node;
mod wire;

pub use acceptor::{AcceptorState, Record};
pub use ballot::{Ballot, Slot};
pub use client::{ClientConfig, ClientStats, KvClient, OpRecord};
pub use config::{Config, Mutation};
pub use kv::{Applied, ClientId, Command, KvStore, Op, Outcome, Value};
pub use learner::Learner;
pub use msg::{DecodeError, Msg};
pub use node::{Probe, Replica, ReplicaStats};
