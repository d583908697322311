//! Last Value Cache, the Guide's answer to late-joining subscribers: a proxy
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
//! ```no_run
//! use tokio_util::sync::CancellationToken;
//! use zpatterns::endpoint::bind_by_default;
//! use zpatterns::lvc::{self, CacheLimits, LvcConfig};
//! use zpatterns::pubsub::ProxyConfig;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let proxy = ProxyConfig::new(bind_by_default("tcp://*:5557")?, bind_by_default("tcp://*:5558")?);
//! let config = LvcConfig::new(proxy).limits(CacheLimits::new(100_000, 64 << 20));
//! let cache = lvc::start(config, CancellationToken::new()).await?;
//! println!("{:?}", cache.stats());
//! # cache.shutdown().await?;
//! # Ok(()) }
//! ```

mod cache;
mod proxy;

pub use cache::{CacheLimits, CacheStats, LastValueCache, Stored, ENTRY_OVERHEAD};
pub use proxy::{start, CacheHook, LvcConfig, LvcHandle, LvcStats};
