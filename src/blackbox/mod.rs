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
//! ```no_run
//! use zpatterns::blackbox::{BlackBox, BlackBoxConfig, Overflow, ShardKey};
//! use zpatterns::endpoint::EndpointSpec;
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let feed = EndpointSpec::connect("tcp://localhost:5556")?;
//!     let config = BlackBoxConfig::new()
//!         .socket(vec![feed], &[""])
//!         .workers(4)
//!         .key(ShardKey::Prefix(8))
//!         .overflow(Overflow::DropNewest);
//!     let bb = BlackBox::start(config, |_worker| {
//!         |msg: zeromq::ZmqMessage| {
//!             // per-message work; messages of one key arrive here, in order
//!             drop(msg);
//!         }
//!     })
//!     .await?;
//!     tokio::time::sleep(std::time::Duration::from_secs(10)).await;
//!     let stats = bb.shutdown().await?;
//!     println!("{} delivered, {} dropped", stats.total_delivered(), stats.total_dropped());
//!     Ok(())
//! }
//! ```

mod config;
mod error;
pub mod shard;
mod stats;
mod subscriber;

pub use config::{BlackBoxConfig, DropHook, Overflow, SocketSpec, WorkerThreads};
pub use error::BlackBoxError;
pub use shard::{shard_hash, KeyFn, ShardKey, Sharder};
pub use stats::BlackBoxStats;
pub use subscriber::{BlackBox, BlackBoxHandle, Worker};
