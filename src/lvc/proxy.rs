//! The Last Value Cache proxy: the pub-sub proxy with a cache hook. It
//! subscribes upstream to everything, remembers the last message of every
//! topic, and answers each new subscription with the cached values that
//! match it, sent to that subscriber only and before any live message.
//! The [`Lvc`] handle is the crate's one handle shape around it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::cache::{CacheLimits, CacheStats, LastValueCache, Stored};
use crate::pubsub::{Hooks, Proxy, ProxyConfig, ProxyError, ProxyStats, UpstreamMode};
use crate::subscription::SubEvent;
use crate::zmtp::{PeerId, Shared};

/// The cache hook. [`Lvc`] installs one; use it directly only to combine a
/// cache with other hooks on a [`Proxy`] (e.g.
/// `(CacheHook::new(limits), espresso::Capture::new(..))`, with
/// [`UpstreamMode::Everything`] set on the proxy's config).
#[derive(Debug)]
pub struct CacheHook {
    cache: LastValueCache,
    shared: Arc<LvcCounters>,
}

/// The cache's counters, published by the proxy task with plain atomic
/// stores (one writer) and read by handles.
#[derive(Debug, Default)]
struct LvcCounters {
    topics: AtomicU64,
    bytes: AtomicU64,
    updates: AtomicU64,
    evictions: AtomicU64,
    no_value: AtomicU64,
    too_large: AtomicU64,
    replays: AtomicU64,
}

impl LvcCounters {
    fn store(&self, s: &CacheStats) {
        self.topics.store(s.topics, Relaxed);
        self.bytes.store(s.bytes, Relaxed);
        self.updates.store(s.updates, Relaxed);
        self.evictions.store(s.evictions, Relaxed);
        self.no_value.store(s.no_value, Relaxed);
        self.too_large.store(s.too_large, Relaxed);
    }

    fn load(&self) -> CacheStats {
        CacheStats {
            topics: self.topics.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            updates: self.updates.load(Relaxed),
            evictions: self.evictions.load(Relaxed),
            no_value: self.no_value.load(Relaxed),
            too_large: self.too_large.load(Relaxed),
        }
    }
}

impl CacheHook {
    /// A hook with an empty cache bounded by `limits`.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            cache: LastValueCache::new(limits),
            shared: Arc::default(),
        }
    }

    fn publish_stats(&self) {
        self.shared.store(&self.cache.stats());
    }
}

impl Hooks for CacheHook {
    fn on_message(&mut self, msg: &Shared) {
        if let Stored::TooLarge = self.cache.update(msg) {
            debug!(topic = ?msg.first(), "message larger than the cache budget; not cached");
        }
        self.publish_stats();
    }

    fn on_subscription(
        &mut self,
        peer: PeerId,
        event: &SubEvent,
        _now: Instant,
        reply: &mut Vec<Shared>,
    ) {
        // Unsubscribes are counted by the proxy and otherwise ignored.
        let SubEvent::Subscribe(prefix) = event else {
            return;
        };
        reply.extend(self.cache.matching(prefix).cloned());
        // DEBUG: a subscriber can send subscriptions as fast as it likes.
        debug!(peer, prefix = %String::from_utf8_lossy(prefix), values = reply.len(), "sending cached values");
        self.shared.replays.fetch_add(1, Relaxed);
    }
}

/// How to run a Last Value Cache.
#[derive(Debug, Clone)]
pub struct LvcConfig {
    proxy: ProxyConfig,
    limits: CacheLimits,
}

impl LvcConfig {
    /// A cache between publishers (`proxy`'s frontend) and subscribers (its
    /// backend); the proxy's other settings are kept, except that it always
    /// subscribes upstream to everything ([`UpstreamMode::Everything`]).
    pub fn new(proxy: ProxyConfig) -> Self {
        Self {
            proxy: proxy.upstream(UpstreamMode::Everything),
            limits: CacheLimits::default(),
        }
    }

    /// Bounds the cache (default [`CacheLimits::default`]: 1,000,000
    /// topics, 256 MiB).
    pub fn limits(mut self, limits: CacheLimits) -> Self {
        self.limits = limits;
        self
    }
}

/// A snapshot of a Last Value Cache's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LvcStats {
    /// The proxy's counters (traffic, subscriptions, drops, malformed).
    pub proxy: ProxyStats,
    /// The cache's counters (topics, bytes, evictions).
    pub cache: CacheStats,
    /// Subscriptions answered from the cache.
    pub replays: u64,
}

/// A running Last Value Cache, started with [`Lvc::start`].
///
/// Like every pattern's handle, [`shutdown`](Self::shutdown) stops this
/// cache only (other tasks under the same parent token keep running), and
/// dropping the handle cancels it without waiting: the proxy stops in the
/// background and its sockets close shortly after. Errors are
/// [`ProxyError`]s (the cache itself cannot fail).
#[derive(Debug)]
#[must_use = "dropping the handle stops the cache; keep it for as long as the cache should run"]
pub struct Lvc {
    proxy: Proxy,
    shared: Arc<LvcCounters>,
}

impl Lvc {
    /// Starts a Last Value Cache under a child of `parent`: binds its bind
    /// endpoints before returning (so errors and port 0 surface here),
    /// connects its connect endpoints in the background, and runs until
    /// [`shutdown`](Self::shutdown), a drop of the handle, or `parent` is
    /// cancelled. Must be called inside a tokio runtime. Never cancels
    /// `parent`.
    pub async fn start(config: LvcConfig, parent: &CancellationToken) -> Result<Self, ProxyError> {
        let hook = CacheHook::new(config.limits);
        let shared = hook.shared.clone();
        let proxy = Proxy::start(config.proxy, hook, parent).await?;
        Ok(Self { proxy, shared })
    }

    /// The frontend (publisher side) endpoint, resolved if bound.
    pub fn frontend_endpoint(&self) -> &str {
        self.proxy.frontend_endpoint()
    }

    /// The backend (subscriber side) endpoint, resolved if bound.
    pub fn backend_endpoint(&self) -> &str {
        self.proxy.backend_endpoint()
    }

    /// A snapshot of the counters (cheap: a few atomic loads).
    pub fn stats(&self) -> LvcStats {
        Self::snapshot(self.proxy.stats(), &self.shared)
    }

    fn snapshot(proxy: ProxyStats, shared: &LvcCounters) -> LvcStats {
        LvcStats {
            proxy,
            cache: shared.load(),
            replays: shared.replays.load(Relaxed),
        }
    }

    /// Stops this cache (only), waits for its task, and returns the final
    /// counters, or the error the proxy ended with
    /// ([`ProxyError::Panicked`] if its task panicked).
    pub async fn shutdown(self) -> Result<LvcStats, ProxyError> {
        let shared = self.shared;
        let proxy = self.proxy.shutdown().await?;
        Ok(Self::snapshot(proxy, &shared))
    }
}
