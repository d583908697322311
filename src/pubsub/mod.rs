//! Pub-sub proxy machinery shared by Espresso and the Last Value Cache: a
//! spawnable XSUB/XPUB proxy task with a slow-subscriber policy, limits,
//! counters and hooks. The subscription model it applies (frames, the
//! reference-counted registry) is [`crate::subscription`].
//!
//! The `zeromq` crate's own `proxy()` is not `Send`, its XSUB forgets a topic
//! when one of two subscribers leaves, its XPUB `send` blocks on one stalled
//! subscriber, and nothing reports subscribers that disconnect. This module
//! replaces it, with [`crate::zmtp::XPubServer`] as the backend. See `patterns/espresso.md` for what it guarantees.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::{Attach, EndpointSpec};
//! use zpatterns::pubsub::{self, ProxyConfig};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = ProxyConfig::new(
//!     EndpointSpec::parse(">tcp://localhost:6000", Attach::Connect)?, // publishers
//!     EndpointSpec::parse("@tcp://*:6001", Attach::Bind)?,            // subscribers
//! );
//! let proxy = pubsub::start(config, (), CancellationToken::new()).await?;
//! println!("{:?}", proxy.stats());
//! proxy.shutdown().await?;
//! # Ok(()) }
//! ```

mod proxy;
mod stats;

pub use proxy::{start, Hooks, ProxyConfig, ProxyCounters, ProxyError, ProxyHandle, UpstreamMode};
pub use stats::ProxyStats;
