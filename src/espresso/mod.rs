//! Espresso, the Guide's pub-sub tracing pattern: a proxy between
//! publishers and subscribers that reports everything crossing it, in both
//! directions, to a listener.
//!
//! ```text
//!  publishers ──▶ [XSUB frontend] ──▶ [XPUB backend] ──▶ subscribers
//!                         │ capture (bounded channel, never blocks)
//!                         ▼
//!                      listener: CaptureEvent { dir, kind, topic, frames, at, seq }
//! ```
//!
//! The Guide captures through a PAIR pipe with a blocking send, so a slow
//! listener slows the whole proxy, and subscriptions are told apart from
//! data only by their first byte. Here the capture is a bounded tokio
//! channel with counted drops, and each event says which way it went and
//! what it was. Filters keep only some topics, or only subscriptions.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::espresso::{self, CaptureFilter};
//! use zpatterns::pubsub::ProxyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::new(
//!     EndpointSpec::parse("tcp://localhost:6000", Attach::Connect)?,
//!     EndpointSpec::parse("tcp://*:6001", Attach::Bind)?,
//! );
//! let filter = CaptureFilter::all().topic_prefix("A");
//! let (proxy, mut events) = espresso::start(config, filter, 4096, CancellationToken::new()).await?;
//! while let Some(ev) = events.recv().await {
//!     println!("{} {} {}", ev.dir, ev.kind, ev.topic_lossy());
//! }
//! # proxy.shutdown().await?;
//! # Ok(()) }
//! ```

mod capture;
mod tracer;

pub use capture::{CaptureEvent, CaptureFilter, Direction, EventKind};
pub use tracer::{start, Capture};
