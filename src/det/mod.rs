//! Deterministic hashing and randomness, fixed by this crate's source.
//!
//! [`fnv1a64`] / [`TraceHash`] (FNV-1a 64) and [`Rng`] (xoshiro256**
//! seeded through [`splitmix64`]) are written here, not taken from `std`
//! or a dependency, so that what they produce never changes with a Rust
//! release or a dependency upgrade: WAL checksums on disk
//! ([`FileWal`](crate::durable::FileWal)), value digests and election
//! timeouts in [`paxos`](crate::paxos), and recorded simulation trace
//! hashes in [`sim`](crate::sim) all stay valid. Nothing here is
//! cryptographic.
//!
//! This module sits below the simulator, the storage and the protocol
//! cores, so production code never depends on the simulator for them.

mod hash;
mod rng;

pub use hash::{fnv1a64, TraceHash};
pub use rng::{splitmix64, Rng};
