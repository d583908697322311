//! Espresso, the Guide's pub-sub tracing pattern (Guide ch. 5, "Pub-Sub
//! Tracing", program `espresso`): a proxy between publishers and
//! subscribers that reports everything crossing it, in both directions, to
//! a listener.
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
//! [`Espresso`] follows the crate's one handle shape (crate docs, "Using a
//! pattern"): an [`EspressoConfig`] built by chaining, [`Espresso::start`]
//! under the caller's token, `stats()`, `shutdown()`, and a drop that stops
//! it. The capture buffer is read through [`Espresso::events`].
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::espresso::{CaptureFilter, Espresso, EspressoConfig};
//! use zpatterns::pubsub::ProxyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ProxyConfig::new(
//!     EndpointSpec::parse("tcp://localhost:6000", Attach::Connect)?,
//!     EndpointSpec::parse("tcp://*:6001", Attach::Bind)?,
//! );
//! let config = EspressoConfig::new(proxy)
//!     .filter(CaptureFilter::all().topic_prefix("A"))
//!     .capacity(10_000);
//! let parent = CancellationToken::new();
//! let mut espresso = Espresso::start(config, &parent).await?;
//! while let Some(ev) = espresso.events().recv().await {
//!     println!("{} {} {}", ev.dir, ev.kind, ev.topic_lossy());
//! }
//! # espresso.shutdown().await?;
//! # Ok(()) }
//! ```

mod capture;
mod tracer;

pub use capture::{CaptureEvent, CaptureFilter, Direction, EventKind};
pub use tracer::{
    Capture, Espresso, EspressoConfig, EspressoError, EspressoStats, DEFAULT_CAPTURE_CAPACITY,
};
