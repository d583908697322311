//! Last Value Cache (Guide ch. 5, "Last Value Caching", program `lvcache`),
//! the Guide's answer to late-joining subscribers: a proxy
//! that remembers the last message of every topic and gives it to each new
//! subscriber at once.
//!
//! ```text
//!  publishers ──PUB──▶ [XSUB frontend, subscribed to ""] ──▶ cache ──▶ [XPUB backend] ──▶ SUB clients
//!                                                      replay on subscribe ─┘
//! ```
//!
//! Beyond the Guide's `lvcache`: a subscription replays every cached topic
//! its prefix matches (`""` replays everything, `04` replays `040`..`049`),
//! in key order, to the new subscriber only (the Guide's XPUB sends the
//! replay to every matching subscriber, libzmq issue #3510), strictly before
//! any live message reaches it; a second subscriber to a known topic gets
//! its replay too (the Guide needs `ZMQ_XPUB_VERBOSE` for that and does not
//! set it); multipart values are kept whole; memory is bounded (topics and
//! bytes, least recently updated evicted first, counted); unsubscribes and
//! malformed frames are counted and ignored.
//!
//! [`Lvc`] follows the crate's one handle shape (crate docs, "Using a
//! pattern"): [`Lvc::start`] under the caller's token, `stats()`,
//! `shutdown()`, and a drop that stops it.
//!
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::bind_by_default;
//! use zpatterns::lvc::{CacheLimits, Lvc, LvcConfig};
//! use zpatterns::pubsub::ProxyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ProxyConfig::new(bind_by_default("tcp://*:5557")?, bind_by_default("tcp://*:5558")?);
//! let config = LvcConfig::new(proxy).limits(CacheLimits::new(100_000, 64 << 20));
//! let parent = CancellationToken::new();
//! let cache = Lvc::start(config, &parent).await?;
//! println!("{:?}", cache.stats());
//! let last = cache.shutdown().await?; // `parent` is not cancelled
//! println!("{} replays", last.replays);
//! # Ok(()) }
//! ```

mod cache;
mod proxy;

pub use cache::{CacheLimits, CacheStats, LastValueCache, Stored, ENTRY_OVERHEAD};
pub use proxy::{CacheHook, Lvc, LvcConfig, LvcStats};
