//! Pub-sub proxy machinery shared by Espresso and the Last Value Cache: a
//! spawnable XSUB/XPUB proxy task with a slow-subscriber policy, limits,
//! counters and hooks. The subscription model it applies (frames, the
//! reference-counted registry) is [`crate::subscription`].
//!
//! The `zeromq` crate's own `proxy()` is not `Send`, its XSUB forgets a topic
//! when one of two subscribers leaves, its XPUB `send` blocks on one stalled
//! subscriber, and nothing reports subscribers that disconnect. This module
//! replaces it, with [`crate::zmtp::XPubServer`] as the backend. See
//! `patterns/espresso.md` for what it guarantees.
//!
//! A [`Proxy`] follows the crate's one handle shape (crate docs, "Using a
//! pattern"): [`Proxy::start`] runs it under a child of the caller's token,
//! [`Proxy::shutdown`] stops it alone and returns its final [`ProxyStats`],
//! and dropping the handle stops it too. Errors are [`ProxyError`].
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::pubsub::{Proxy, ProxyConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::new(
//!     EndpointSpec::parse(">tcp://localhost:6000", Attach::Connect)?, // publishers
//!     EndpointSpec::parse("@tcp://*:6001", Attach::Bind)?,            // subscribers
//! );
//! let parent = CancellationToken::new();
//! let proxy = Proxy::start(config, (), &parent).await?; // `()`: no hooks
//! println!("{:?}", proxy.stats());
//! let last = proxy.shutdown().await?; // `parent` is not cancelled
//! println!("forwarded {} messages", last.messages_out);
//! # Ok(()) }
//! ```

mod proxy;
mod stats;

pub use proxy::{Hooks, Proxy, ProxyConfig, ProxyCounters, ProxyError, UpstreamMode};
pub use stats::ProxyStats;

/// What a proxy does with a message for a subscriber whose queue is full
/// (see [`ProxyConfig::slow_subscribers`]).
pub use crate::zmtp::SlowPolicy;
