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
//! # Using a pattern
//!
//! Every pattern module (and every one still to come) is started, observed
//! and stopped the same way:
//!
//! 1. **A config built by chaining.** `XConfig::new(..)` takes only what has
//!    no sensible default (usually the endpoints); every other knob is a
//!    chained setter whose doc gives its default. Nothing is positional.
//! 2. **An async start under the caller's token.** The handle type is
//!    named after the pattern (`lvc::Lvc`, `clone::CloneServer`,
//!    `blackbox::BlackBox`, ...) and `Handle::start(config, .., &parent).await`
//!    (the `..` being what is not a knob: a proxy's hooks, a Black Box's
//!    worker factory) validates the config, binds the bind
//!    endpoints before it returns (so errors and port 0 surface there),
//!    spawns the pattern's task(s) under `parent.child_token()` and returns
//!    a handle. It must be called inside a tokio runtime. Cancelling
//!    `parent` stops every pattern started under it; a pattern never
//!    cancels `parent`.
//! 3. **A handle** (`#[must_use]`) with `stats()`, a cheap snapshot of the
//!    pattern's counters at any time, and `async shutdown(self)`, which
//!    cancels the child token only (other patterns under the same parent
//!    keep running), waits for the task(s), and returns the final stats or
//!    the error that ended the task (a panic included).
//! 4. **Dropping a handle stops the pattern.** Without `shutdown`, the drop
//!    cancels the child token and returns at once: the task stops in the
//!    background and its error, if any, is only logged. Keep the handle
//!    alive (`let _server = ...`, not `let _ = ...`) for as long as the
//!    pattern should run.
//! 5. **One error enum per module**, `#[non_exhaustive]`, each variant
//!    documented.
//! 6. **Bounded by limits.** Everything a remote peer can make the pattern
//!    hold (message size, subscriptions, connections, queued replays,
//!    sessions) has a limit in the config with a safe default; hitting it
//!    is counted in `stats()` and logged at most once a second per cause,
//!    and the peer's excess is refused as the pattern's page says, while
//!    every other peer is still served.
//!
//! A peer's garbage (malformed frames, unknown commands, wrong frame counts)
//! is counted, logged (rate-limited) and dropped; it never stops a server.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::clone::{CloneServer, CloneServerConfig};
//! use zpatterns::endpoint::bind_by_default;
//! use zpatterns::lvc::{Lvc, LvcConfig};
//! use zpatterns::pubsub::ProxyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let parent = CancellationToken::new();
//! let proxy = ProxyConfig::new(bind_by_default("tcp://*:5557")?, bind_by_default("tcp://*:5558")?)
//!     .max_message(256 << 10);
//! let cache = Lvc::start(LvcConfig::new(proxy), &parent).await?;
//! let server = CloneServer::start(CloneServerConfig::loopback(), &parent).await?;
//! println!("{:?}", cache.stats());
//! let final_stats = cache.shutdown().await?; // the Clone server keeps running
//! println!("cache stopped after {} messages", final_stats.proxy.messages_in);
//! parent.cancel(); // stops everything still under `parent`
//! server.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! From the bottom up: a module's code only uses modules listed above it.
//!
//! - [`det`]: deterministic hashing and seeded randomness (the WAL's
//!   checksums, the simulator, Paxos's timeouts).
//! - [`endpoint`]: `@bind` / `>connect` endpoint strings and attaching sockets.
//! - [`frames`]: helpers between `ZmqMessage` and frame lists.
//! - [`subscription`]: subscription frames, prefix matching and the
//!   reference-counted registry, below `zmtp` and `pubsub`.
//! - [`zmtp`]: this crate's own ZMTP 3.0 XPUB and XSUB servers, the proxies'
//!   backend and frontend, with per-subscriber queues and limits (the
//!   `zeromq` crate's XPUB blocks on one slow subscriber, and its sockets
//!   have no message size limit); its XSUB, also answering PUSH peers as a
//!   PULL, is the Clone server's collector; its ROUTER and DEALER
//!   connections carry `transport`'s `ZmqTransport` (the `zeromq` crate
//!   reserves whatever length a frame header announces).
//! - [`pubsub`]: the XSUB/XPUB proxy (slow-subscriber policy, counters,
//!   limits, hooks) that Espresso and the Last Value Cache build on.
//! - [`espresso`]: the tracing proxy (Guide ch. 5, "Pub-Sub Tracing",
//!   `espresso`), capture events and filters.
//! - [`lvc`]: the Last Value Cache proxy (Guide ch. 5, `lvcache`; prefix
//!   replay, bounded memory).
//! - [`snail`]: Suicidal Snail (Guide ch. 5, `suisnail`), slow-subscriber
//!   detection (lag with clock-skew estimation, sequence gaps) in a pure
//!   core, and the abort / skip / recover policies.
//! - [`blackbox`]: Black Box, a high-speed subscriber sharding messages by
//!   key over worker threads (per-key order kept, drops counted), with the
//!   batching and overflow logic in a pure dispatcher.
//! - [`bstar`]: Binary Star (Guide ch. 4 and 5, `bstar`), a primary-backup
//!   pair with client votes: the pure state machine with a persisted,
//!   fencing epoch, the state link, and a handle for any request-reply
//!   service.
//! - [`clone`]: the Clone pattern (Guide ch. 5, models 5 and 6: the CHP
//!   key-value server, alone or as a Binary Star pair with a pending list,
//!   and the client agent with acknowledgements and failover).
//! - [`durable`]: the write-ahead log trait for a consensus core's state
//!   (the Paxos acceptor's): fsynced files, and a simulated disk that loses
//!   unsynced writes.
//! - [`transport`]: the sans-IO `Process` contract of the consensus cores,
//!   a message `Transport` trait, `ZmqTransport` (ROUTER in, supervised
//!   DEALERs out, on [`zmtp`]'s connections, unsent bytes bounded), an
//!   in-memory `MemNet`, and the tokio driver.
//! - [`sim`]: `Sim`, a seeded virtual-time network that delays, reorders,
//!   drops, duplicates, partitions and crashes on purpose.
//! - [`paxos`]: a Multi-Paxos replicated key-value store, proven by a
//!   seeded fault-injection battery on [`sim`].
//! - [`raft`]: a Raft replicated key-value store (pre-vote, check-quorum,
//!   ReadIndex, snapshots, membership changes) on the same transport,
//!   simulator and proof; it shares the Paxos store's state machine, client
//!   and client messages.
//! - [`p2p`]: a peer-to-peer file-sharing node on the same transport (the
//!   XML-RPC exercise rebuilt: bounded search with query ids, fetch with a
//!   secret, content addressing, credit-based chunked transfers verified
//!   per chunk, the path guard), a sans-IO core plus its handle.
//! - `task` and `ratelog` (internal): the handle plumbing shared by every
//!   pattern, and the rate limiter for peer-triggered log lines.
//!
//! # Limits of the underlying `zeromq` crate
//!
//! Never enable `ZMQ_HEARTBEAT_*` on a libzmq peer that talks to this crate:
//! the `zeromq` crate treats a ZMTP PING as a protocol error and drops the
//! connection. See the README for the full list.

#![doc(test(attr(deny(warnings))))]

pub mod blackbox;
pub mod bstar;
pub mod clone;
pub mod det;
pub mod durable;
pub mod endpoint;
pub mod espresso;
pub mod frames;
pub mod lvc;
pub mod p2p;
pub mod paxos;
pub mod pubsub;
pub mod raft;
mod ratelog;
pub mod sim;
pub mod snail;
pub mod subscription;
mod task;
pub mod transport;
pub mod zmtp;
