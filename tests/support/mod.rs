//! Shared support of the consensus test batteries.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod linearizability;
pub mod paxos;
pub mod raft;
pub mod seeds;
