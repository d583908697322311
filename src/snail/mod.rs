//! Suicidal Snail: slow-subscriber detection for pub-sub, where the
//! publisher cannot see its subscribers and nothing reports a subscriber
//! falling behind (a libzmq PUB drops silently at its HWM; the `zeromq`
//! crate's PUB queues without bound, so the backlog shows only as lag).
//!
//! Guide ch. 5, "Slow Subscriber Detection (Suicidal Snail Pattern)": a
//! publisher stamps every message; each subscriber compares the stamp with
//! its clock and, past a limit, "croaks" instead of letting late data flow
//! downstream. Topology: PUB (bind) → SUB (connect), any number of each.
//!
//! - [`envelope`]: the stamp frame (publisher id, epoch, sequence number,
//!   send time) appended after the user's frames, and the Guide's C format
//!   (one frame of decimal ASCII milliseconds). Pure.
//! - [`detector`]: lag with a per-publisher clock-offset estimate (no false
//!   alarm from skewed clocks), sequence gaps, restarts, a sustained-lag
//!   option, and a [`Verdict`] with the numbers. Pure.
//! - [`core`]: the subscriber's policy machine ([`SnailCore`]): a received
//!   message and `now` in, deliver / skip / drop / croak out, and the
//!   recovery's answer back in. Pure.
//! - [`SnailSubscriber`]: the driver, a SUB socket whose messages go through
//!   the core as the caller takes them; on a croak it aborts (the Guide) or
//!   runs a recovery hook (resync from a Last Value Cache or a Clone
//!   snapshot, or skip the backlog).
//! - [`SnailPublisher`]: a PUB socket that stamps what it sends.
//!
//! Both follow the crate's handle shape (crate docs, "Using a pattern"):
//! `start(config, &parent)`, `stats()`, `shutdown(self)`, and dropping the
//! handle closes it. Neither has a task of its own: the subscriber is
//! pull-style, and checks each message inside `recv()`.
//!
//! # Limits
//!
//! What a publisher can make a subscriber hold is bounded: messages above
//! [`SnailConfig::max_message_bytes`] (default 1 MiB) are dropped and
//! counted in [`SnailStats::oversized`]; publisher ids beyond
//! [`DetectorConfig::max_publishers`] (default 1024) evict the least
//! recently heard one, counted in [`SnailStats::publishers_evicted`]. Both
//! are logged at most once a second. The `zeromq` crate reads a whole frame
//! before this crate sees it: the memory of one frame in flight is not
//! bounded here.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::snail::{SnailConfig, SnailError, SnailSubscriber};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), SnailError> {
//!     let ep = EndpointSpec::parse("tcp://localhost:5556", Attach::Connect)?;
//!     let stop = CancellationToken::new();
//!     let mut sub = SnailSubscriber::start(SnailConfig::new([ep]), &stop).await?;
//!     loop {
//!         let msg = sub.recv().await?; // Err(CannotKeepUp) once > 1 s behind
//!         println!("{} frame(s), lag {:?}", msg.frames().len(), msg.lag());
//!     }
//! }
//! ```
//!
//! See `patterns/snail.md` for the wire contract frame by frame.

pub mod core;
pub mod detector;
pub mod envelope;
mod error;
mod publisher;
mod subscriber;
mod table;

pub use self::core::{Croak, Recovery, SnailCore, SnailMessage, SnailStats, SnailStep};
pub use detector::{
    Alarm, AlarmCause, ClockSync, Detector, DetectorConfig, Gap, PublisherStatus, Verdict,
};
pub use envelope::{EnvelopeError, Stamp, StampKind, Stamper, WireFormat};
pub use error::{SnailError, CROAK_EXIT_CODE};
pub use publisher::{SnailPublisher, SnailPublisherConfig, SnailPublisherStats};
pub use subscriber::{Policy, SnailConfig, SnailSubscriber};
