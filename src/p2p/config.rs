//! `P2pConfig`: a node's URL, secret and limits, built by chaining.

use std::time::Duration;

use bytes::Bytes;

/// Configuration of a [`P2pNode`](super::P2pNode) (and of the [`P2p`](super::P2p) handle).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct P2pConfig {
    pub(crate) url: String,
    pub(crate) secret: Bytes,
    pub(crate) history_limit: usize,
    pub(crate) query_timeout: Duration,
    pub(crate) chunk_size: u32,
    pub(crate) credit: usize,
    pub(crate) max_file: u64,
    pub(crate) max_transfers_per_peer: usize,
    pub(crate) max_queries_per_peer: usize,
    pub(crate) query_rate: u32,
    pub(crate) max_message: usize,
    pub(crate) peer_failures: u32,
    pub(crate) max_peers: usize,
    pub(crate) seed: Option<u64>,
}

impl P2pConfig {
    /// A node reachable at `url` (its ROUTER's endpoint, e.g.
    /// `tcp://127.0.0.1:5601`; its id is derived from this string) whose
    /// local fetches need `secret`.
    pub fn new(url: &str, secret: impl Into<Bytes>) -> Self {
        P2pConfig {
            url: url.to_owned(),
            secret: secret.into(),
            history_limit: 6,
            query_timeout: Duration::from_secs(2),
            chunk_size: 256 << 10,
            credit: 8,
            max_file: 1 << 30,
            max_transfers_per_peer: 4,
            max_queries_per_peer: 16,
            query_rate: 50,
            max_message: 16 << 20,
            peer_failures: 3,
            max_peers: 1024,
            seed: None,
        }
    }

    /// The node's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Longest history a query may reach before it is no longer forwarded
    /// (default 6, the seed's `MAX_HISTORY_LENGTH`).
    pub fn history_limit(mut self, n: usize) -> Self {
        self.history_limit = n.max(1);
        self
    }

    /// How long a search waits for answers (default 2 s); each hop gives
    /// the next three quarters of its own budget. Also the timeout of one
    /// chunk request.
    pub fn query_timeout(mut self, d: Duration) -> Self {
        self.query_timeout = d.max(Duration::from_millis(1));
        self
    }

    /// Bytes per chunk asked for (default 256 KiB).
    pub fn chunk_size(mut self, bytes: u32) -> Self {
        self.chunk_size = bytes.max(1);
        self
    }

    /// Chunks in flight per download, over all providers (default 8).
    pub fn credit(mut self, chunks: usize) -> Self {
        self.credit = chunks.max(1);
        self
    }

    /// Largest file served and accepted (default 1 GiB).
    pub fn max_file(mut self, bytes: u64) -> Self {
        self.max_file = bytes;
        self
    }

    /// Files one peer may download from this node at once (default 4).
    pub fn max_transfers_per_peer(mut self, n: usize) -> Self {
        self.max_transfers_per_peer = n.max(1);
        self
    }

    /// Queries of one peer this node works on at once (default 16).
    pub fn max_queries_per_peer(mut self, n: usize) -> Self {
        self.max_queries_per_peer = n.max(1);
        self
    }

    /// Queries per second accepted from one peer, with a burst of as many
    /// (default 50).
    pub fn query_rate(mut self, per_second: u32) -> Self {
        self.query_rate = per_second.max(1);
        self
    }

    /// Largest message accepted (default 16 MiB); chunks served are at
    /// most a quarter of it.
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(1024);
        self
    }

    /// Consecutive failures after which a peer is dropped (default 3).
    pub fn peer_failures(mut self, n: u32) -> Self {
        self.peer_failures = n.max(1);
        self
    }

    /// Peers this node keeps (default 1024): a HELLO from a new peer
    /// beyond it is refused (counted in `peers_refused`), so a peer that
    /// opens many connections under many identities cannot make the node
    /// connect out without bound. `hello` from the local user always adds.
    pub fn max_peers(mut self, n: usize) -> Self {
        self.max_peers = n.max(1);
        self
    }

    /// Seed of the query and request ids (default: from the URL in the
    /// sans-IO node, from the clock in the [`P2p`](super::P2p) handle).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}
