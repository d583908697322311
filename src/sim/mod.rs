//! A deterministic network simulator for sans-IO protocol cores.
//!
//! [`Sim`] runs [`Process`](crate::transport::Process)es on one thread in
//! virtual time. The network misbehaves on purpose, from a seed: per-link
//! delay distributions (with an optional slow tail, which reorders), drop
//! and duplicate rates, partitions and heal, one-way link cuts, crash and
//! restart of a node with its durable state ([`SimDisk`](crate::durable::SimDisk)
//! loses unsynced writes), crashes between a node's step and its fsync, and
//! an adversarial message pump (hold every inbound message, deliver a random
//! held one with probability 0.95 per poll) as one profile
//! ([`PumpProfile`]).
//!
//! Every event (delivery, drop, duplicate, timer, crash) feeds a trace hash:
//! the same seed gives the same hash, so a failing seed replays exactly.
//! The simulator contains no networking code and reads no clock.

mod net;
mod types;

pub use net::Sim;
pub use types::{Envelope, Fate, LinkProfile, PumpProfile, SimStats, Step, StepKind};
