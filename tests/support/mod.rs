//! Shared support of the consensus test battery.
#![allow(dead_code, unreachable_pub)]

pub mod linearizability;
pub mod paxos;
