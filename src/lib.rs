//! The ZeroMQ Guide's advanced pub-sub patterns (chapter 5) as async Rust
//! modules on the pure-Rust [`zeromq`] crate, wire-compatible with libzmq.
//!
//! Each pattern is split the same way: a pure state machine that takes
//! events and `now` and returns actions (no sockets, no clock, unit-tested
//! deterministically), and a thin tokio task that owns the sockets and
//! drives it. Internal pipes are tokio channels (the `zeromq` crate has no
//! `inproc://` or PAIR); long-lived tasks stop on a
//! [`CancellationToken`](tokio_util::sync::CancellationToken).
//!
//! # Layout
//!
//! - [`endpoint`]: `@bind` / `>connect` endpoint strings and attaching sockets.
//! - [`frames`]: helpers between `ZmqMessage` and frame lists.
//! - [`pubsub`]: the XSUB/XPUB proxy machinery (subscription registry, slow-subscriber
//!   policy, counters, hooks) that Espresso and the Last Value Cache build on.
//! - [`espresso`]: the tracing proxy (Guide: "Pub-Sub Tracing"), capture events and filters.
//! - [`lvc`]: the Last Value Cache proxy (prefix replay, bounded memory).
//! - [`snail`]: Suicidal Snail, slow-subscriber detection (lag with clock-skew
//!   estimation, sequence gaps) and the abort / recover policies.
//! - [`blackbox`]: Black Box, a high-speed subscriber sharding messages by
//!   key over worker threads (per-key order kept, drops counted).
//! - [`zmtp`]: a minimal ZMTP 3.0 XPUB server with per-subscriber queues, the
//!   proxies' backend (the `zeromq` crate's XPUB blocks on one slow subscriber).
//! - [`clone`]: the Clone pattern (CHP key-value server and client agent).
//! - [`transport`]: the sans-IO `Process` contract of the consensus demos,
//!   a message `Transport` trait, `ZmqTransport` (ROUTER in, supervised
//!   DEALERs out), an in-memory `MemNet`, and the tokio driver.
//! - [`sim`]: `Sim`, a seeded virtual-time network that delays, reorders,
//!   drops, duplicates, partitions and crashes on purpose.
//! - [`durable`]: the write-ahead log trait for acceptor (and Raft) state:
//!   fsynced files, and a simulated disk that loses unsynced writes.
//! - [`paxos`]: Multi-Paxos replicated key-value store (the seed's Paxos
//!   demo, done right).
//!
//! # Limits of the underlying `zeromq` crate
//!
//! Never enable `ZMQ_HEARTBEAT_*` on a libzmq peer that talks to this crate:
//! the `zeromq` crate treats a ZMTP PING as a protocol error and drops the
//! connection. See the README for the full list.

#![doc(test(attr(deny(warnings))))]

pub mod blackbox;
pub mod clone;
pub mod durable;
pub mod endpoint;
pub mod espresso;
pub mod frames;
pub mod lvc;
pub mod paxos;
pub mod pubsub;
pub mod sim;
pub mod snail;
pub mod transport;
pub mod zmtp;
