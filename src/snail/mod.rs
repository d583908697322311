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
//! - [`SnailSubscriber`]: a SUB socket that checks each message and, on a
//!   croak, aborts (the Guide) or runs a recovery hook (resync from a Last
//!   Value Cache or a Clone snapshot, or skip the backlog).
//! - [`SnailPublisher`]: a PUB socket that stamps what it sends.
//!
//! ```no_run
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::snail::{SnailConfig, SnailError, SnailSubscriber};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), SnailError> {
//!     let ep = EndpointSpec::parse("tcp://localhost:5556", Attach::Connect)?;
//!     let mut sub = SnailSubscriber::attach(&[ep], &[""], SnailConfig::new()).await?;
//!     loop {
//!         let msg = sub.recv().await?; // Err(CannotKeepUp) once > 1 s behind
//!         println!("{} frame(s), lag {:?}", msg.frames().len(), msg.lag());
//!     }
//! }
//! ```
//!
//! See `patterns/snail.md` for the wire contract frame by frame.

pub mod detector;
pub mod envelope;
mod error;
mod publisher;
mod subscriber;
mod table;

pub use detector::{
    Alarm, Cause, ClockSync, Detector, DetectorConfig, Gap, PublisherStatus, Verdict,
};
pub use envelope::{Stamp, StampKind, Stamper, WireFormat};
pub use error::{SnailError, CROAK_EXIT_CODE};
pub use publisher::SnailPublisher;
pub use subscriber::{Delivery, Policy, Recovery, SnailConfig, SnailSubscriber, SubscriberStats};
