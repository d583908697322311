//! Black Box: a high-speed sharded subscriber. SUB sockets read by I/O
//! tasks hand every message to one of N workers, chosen by a stable hash of
//! its key, so per-key order holds while the work spreads over cores.
//!
//! Guide ch. 5, "High-Speed Subscribers (Black Box Pattern)": one thread
//! reads, others work; shard the stream when one core is not enough.
//! Topology: PUB (the feed) → SUB ×S (one I/O task each) → bounded tokio
//! mpsc ×N → N workers. The Guide's PUSH→PULL over `inproc://` becomes
//! tokio channels (the `zeromq` crate has no inproc), and round-robin
//! becomes key hashing (round-robin would reorder the updates of one key).
//!
//! # Threads and cores
//!
//! The I/O tasks run on the tokio runtime that calls [`BlackBox::start`];
//! by default each worker is a dedicated OS thread (`blackbox-w<i>`). So a
//! `current_thread` runtime plus N workers uses N + 1 threads: one core
//! reads and decodes ZMTP, N cores work. The OS places the threads (no
//! pinning: use `taskset` for the process if needed). Fully loaded threads
//! should not outnumber cores, as the Guide says; on a 2-core machine that
//! means one I/O thread and one worker, and more workers only help when
//! the work itself waits. See `patterns/blackbox.md` for measurements.
//!
//! # Layers and limits
//!
//! [`Dispatcher`] is the pure core (which worker, when a batch goes, what a
//! full queue does, oversized messages refused); the I/O tasks only read
//! sockets and hand batches over. [`BlackBox`] follows the crate's handle
//! shape (crate docs, "Using a pattern"). A publisher cannot grow the Black
//! Box without bound: messages above
//! [`BlackBoxConfig::max_message_bytes`] (default 64 KiB) are dropped and
//! counted in [`BlackBoxStats::oversized`], and each worker's queue holds
//! at most [`BlackBoxConfig::queue_depth`] messages (default 4096).
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::blackbox::{BlackBox, BlackBoxConfig, Overflow, ShardKey};
//! use zpatterns::endpoint::EndpointSpec;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let feed = EndpointSpec::connect("tcp://localhost:5556")?;
//!     let stop = CancellationToken::new();
//!     let config = BlackBoxConfig::new(vec![feed], &[""])
//!         .workers(4)
//!         .key(ShardKey::Prefix(8))
//!         .overflow(Overflow::DropNewest);
//!     let bb = BlackBox::start(config, |_worker| {
//!         |msg: zeromq::ZmqMessage| {
//!             // per-message work; messages of one key arrive here, in order
//!             drop(msg);
//!         }
//!     }, &stop)
//!     .await?;
//!     tokio::time::sleep(std::time::Duration::from_secs(10)).await;
//!     let stats = bb.shutdown().await?;
//!     println!("{} delivered, {} dropped", stats.total_delivered(), stats.total_dropped());
//!     Ok(())
//! }
//! ```

mod config;
pub mod dispatch;
mod error;
pub mod shard;
mod stats;
mod subscriber;

pub use config::{BlackBoxConfig, DropHook, Overflow, SocketSpec, WorkerThreads};
pub use dispatch::{Dispatched, Dispatcher, Handoff, WorkerBatch};
pub use error::BlackBoxError;
pub use shard::{shard_hash, KeyFn, ShardKey, Sharder};
pub use stats::BlackBoxStats;
pub use subscriber::{BlackBox, Worker};
