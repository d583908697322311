//! `P2pNode`: the sans-IO node (search, serving, downloads). It contains no
//! networking code and reads no clock: messages and `now` in, messages,
//! events and connect requests out.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use tracing::{debug, info};

use super::msg::{Hit, Msg};
use super::transfer::{Origin, Progress, Report, Transfer};
use super::{
    code, constant_time_eq, node_id_for_url, FileInfo, Hash, Key, P2pConfig, P2pError, Share,
};
use crate::det::{fnv1a64, Rng};
use crate::transport::{NodeId, Outbox, Process, Time};

/// The id of a fetch started with [`P2pNode::fetch`].
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct FetchId(pub u64);

/// What a node reports to its owner ([`P2pNode::poll_events`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum P2pEvent {
    /// A fetch finished: the file is in the share, its hash verified.
    FetchDone {
        /// Which fetch.
        id: FetchId,
        /// The stored file.
        info: FileInfo,
        /// Where it was found (the first provider's URL; this node's own
        /// URL if it already had the file).
        from: String,
        /// URLs of the providers that delivered chunks.
        providers: Vec<String>,
        /// Bytes transferred by this fetch (not counting a resumed part).
        bytes: u64,
        /// Bytes kept from an earlier interrupted download.
        resumed: u64,
        /// Seconds from the fetch to the rename.
        secs: f64,
    },
    /// A fetch failed with a wire code ([`code`]).
    FetchFailed {
        /// Which fetch.
        id: FetchId,
        /// Why.
        code: u32,
    },
}

/// A node's counters (monotonic, except `peers`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct P2pStats {
    /// Known peers now (a gauge).
    pub peers: u64,
    /// HELLOs from new peers refused because `max_peers` peers are known.
    pub peers_refused: u64,
    /// Queries received from peers.
    pub queries_received: u64,
    /// Queries handled (each id once).
    pub queries_handled: u64,
    /// Queries received again (same id) and answered with no hits.
    pub queries_duplicate: u64,
    /// Query messages forwarded to peers.
    pub queries_forwarded: u64,
    /// Searches this node started.
    pub searches: u64,
    /// Hits this node found in its own share.
    pub local_hits: u64,
    /// Fetches stored and verified.
    pub fetches_done: u64,
    /// Fetches that failed.
    pub fetches_failed: u64,
    /// Fetches refused for a wrong secret.
    pub access_denied: u64,
    /// Names refused by the path guard (reading and writing sides).
    pub path_refused: u64,
    /// Chunks served to peers.
    pub chunks_served: u64,
    /// Bytes served to peers.
    pub bytes_served: u64,
    /// Verified chunks received.
    pub chunks_received: u64,
    /// Verified bytes received.
    pub bytes_received: u64,
    /// Bytes kept from interrupted downloads.
    pub bytes_resumed: u64,
    /// Chunks that failed verification (the provider is counted).
    pub corrupt_chunks: u64,
    /// Manifests given up on: a download failed against one provider's
    /// manifest and started over from another's (that provider counted).
    pub bad_manifests: u64,
    /// Requests that timed out (query answers, manifests, chunks).
    pub timeouts: u64,
    /// Peers dropped after consecutive failures.
    pub peers_dropped: u64,
    /// Requests refused as over `max_file`.
    pub refused_too_large: u64,
    /// Requests refused as over a per-peer concurrency limit.
    pub refused_busy: u64,
    /// Queries refused as over the per-peer rate.
    pub refused_rate: u64,
    /// Malformed or oversized messages dropped.
    pub garbage: u64,
}

#[derive(Debug)]
struct Peer {
    url: String,
    failures: u32,
}

#[derive(Debug)]
struct Search {
    upstream: Option<NodeId>,
    fetch: Option<u64>,
    hits: Vec<Hit>,
    waiting: BTreeSet<NodeId>,
    deadline: Time,
}

#[derive(Debug)]
struct Pending {
    origin: Origin,
    key: Key,
    started: Time,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Time,
}

const MAX_HITS: usize = 1024;
const MAX_SEEN: usize = 65_536;

/// A peer-to-peer file-sharing node, driven as a [`Process`].
#[derive(Debug)]
pub struct P2pNode {
    cfg: P2pConfig,
    id: NodeId,
    share: Box<dyn Share>,
    rng: Rng,
    peers: BTreeMap<NodeId, Peer>,
    connected: BTreeSet<NodeId>,
    connects: Vec<(NodeId, String)>,
    disconnects: Vec<NodeId>,
    seen: HashMap<u64, Time>,
    seen_order: VecDeque<(Time, u64)>,
    searches: HashMap<u64, Search>,
    pending: HashMap<u64, Pending>,
    transfers: BTreeMap<u64, Transfer>,
    serving: HashMap<(NodeId, Hash), Time>,
    buckets: HashMap<NodeId, Bucket>,
    busy_queries: HashMap<NodeId, usize>,
    manifests: HashMap<(Hash, u32), std::sync::Arc<Vec<Hash>>>,
    names: HashMap<Hash, String>,
    events: Vec<P2pEvent>,
    stats: P2pStats,
}

impl P2pNode {
    /// A node with `cfg`, sharing `share`, created at `now`.
    pub fn new(cfg: P2pConfig, share: Box<dyn Share>, now: Time) -> Self {
        // Ids depend on the creation time too, so a restarted node never
        // repeats the query ids its peers still remember.
        let seed = cfg.seed.unwrap_or_else(|| fnv1a64(cfg.url.as_bytes())) ^ now.as_micros();
        P2pNode {
            id: node_id_for_url(&cfg.url),
            rng: Rng::new(seed),
            cfg,
            share,
            peers: BTreeMap::new(),
            connected: BTreeSet::new(),
            connects: Vec::new(),
            disconnects: Vec::new(),
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
            searches: HashMap::new(),
            pending: HashMap::new(),
            transfers: BTreeMap::new(),
            serving: HashMap::new(),
            buckets: HashMap::new(),
            busy_queries: HashMap::new(),
            manifests: HashMap::new(),
            names: HashMap::new(),
            events: Vec::new(),
            stats: P2pStats::default(),
        }
    }

    /// This node's id (derived from its URL, see [`node_id_for_url`]).
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// This node's URL.
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// The counters.
    pub fn stats(&self) -> P2pStats {
        let mut s = self.stats;
        s.peers = self.peers.len() as u64;
        s
    }

    /// The known peers: id and URL.
    pub fn peers(&self) -> Vec<(NodeId, String)> {
        self.peers
            .iter()
            .map(|(id, p)| (*id, p.url.clone()))
            .collect()
    }

    /// The share's files.
    pub fn list(&mut self) -> Vec<FileInfo> {
        self.share.list()
    }

    /// Downloads in progress: id, bytes stored and total size.
    pub fn progress(&self) -> Vec<(FetchId, u64, u64)> {
        self.transfers
            .values()
            .filter(|t| t.origin == Origin::Local)
            .map(|t| {
                let (d, n) = t.progress();
                (FetchId(t.id), d, n)
            })
            .collect()
    }

    /// Takes the events so far.
    pub fn poll_events(&mut self) -> Vec<P2pEvent> {
        std::mem::take(&mut self.events)
    }

    /// Takes the peers the driver must connect to (new URLs this node
    /// learned): each is given once.
    pub fn take_connects(&mut self) -> Vec<(NodeId, String)> {
        std::mem::take(&mut self.connects)
    }

    /// Takes the peers the driver must disconnect from (dropped after
    /// repeated failures): each is given once, and a later HELLO or
    /// `hello` connects again.
    pub fn take_disconnects(&mut self) -> Vec<NodeId> {
        std::mem::take(&mut self.disconnects)
    }

    fn connect(&mut self, id: NodeId, url: &str) {
        if id != self.id && self.connected.insert(id) {
            self.connects.push((id, url.to_owned()));
        }
    }

    fn add_peer(&mut self, url: &str) -> Option<NodeId> {
        let id = node_id_for_url(url);
        if id == self.id || url.is_empty() {
            return None;
        }
        self.connect(id, url);
        self.peers.entry(id).or_insert_with(|| Peer {
            url: url.to_owned(),
            failures: 0,
        });
        Some(id)
    }

    /// Adds the peer at `url` and tells it this node's URL (so it adds
    /// this node back).
    pub fn hello(&mut self, _now: Time, url: &str, out: &mut Outbox) {
        if let Some(id) = self.add_peer(url) {
            out.send(
                id,
                Msg::Hello {
                    url: self.cfg.url.clone(),
                }
                .encode(),
            );
        }
    }

    /// Fetches `name_or_hash` (64 hex digits: a hash) into the share. A
    /// wrong `secret` is [`P2pError::AccessDenied`] at once; the outcome
    /// of an accepted fetch comes as a [`P2pEvent`].
    pub fn fetch(
        &mut self,
        now: Time,
        name_or_hash: &str,
        secret: &[u8],
        out: &mut Outbox,
    ) -> Result<FetchId, P2pError> {
        if !constant_time_eq(secret, &self.cfg.secret) {
            self.stats.access_denied += 1;
            return Err(P2pError::AccessDenied);
        }
        let key = Key::parse(name_or_hash);
        if let Key::Name(n) = &key {
            if super::share::check_name(n).is_err() {
                self.stats.path_refused += 1;
                return Err(P2pError::BadPath);
            }
        }
        let id = self.rng.next_u64();
        self.start_fetch(now, id, Origin::Local, key, out);
        Ok(FetchId(id))
    }

    fn start_fetch(&mut self, now: Time, id: u64, origin: Origin, key: Key, out: &mut Outbox) {
        if let Some(info) = self.lookup(&key) {
            let url = self.cfg.url.clone();
            self.finish(origin, id, Ok((info, url, Vec::new(), 0, 0)), now, now, out);
            return;
        }
        self.stats.searches += 1;
        self.pending.insert(
            id,
            Pending {
                origin,
                key: key.clone(),
                started: now,
            },
        );
        let qid = self.rng.next_u64();
        self.mark_seen(now, qid);
        let history = vec![self.cfg.url.clone()];
        let budget = self.cfg.query_timeout;
        let targets = self.targets(&history);
        self.searches.insert(
            qid,
            Search {
                upstream: None,
                fetch: Some(id),
                hits: Vec::new(),
                waiting: BTreeSet::new(),
                deadline: now + budget,
            },
        );
        self.forward(qid, budget, &key, history, targets, out);
        self.maybe_complete(now, qid, out);
    }

    fn lookup(&mut self, key: &Key) -> Option<FileInfo> {
        match key {
            Key::Name(n) => {
                if super::share::check_name(n).is_err() {
                    self.stats.path_refused += 1;
                    return None;
                }
                self.share.lookup(n)
            }
            Key::Hash(h) => self.share.by_hash(h),
        }
    }

    fn targets(&self, history: &[String]) -> Vec<NodeId> {
        if history.len() >= self.cfg.history_limit {
            return Vec::new();
        }
        self.peers
            .iter()
            .filter(|(_, p)| !history.contains(&p.url))
            .map(|(id, _)| *id)
            .collect()
    }

    fn forward(
        &mut self,
        qid: u64,
        budget: Duration,
        key: &Key,
        history: Vec<String>,
        targets: Vec<NodeId>,
        out: &mut Outbox,
    ) {
        let budget_ms = u32::try_from(budget.as_millis()).unwrap_or(u32::MAX);
        let frame = Msg::Query {
            qid,
            budget_ms,
            key: key.clone(),
            history,
        }
        .encode();
        for t in &targets {
            out.send(*t, frame.clone());
            self.stats.queries_forwarded += 1;
        }
        if let Some(s) = self.searches.get_mut(&qid) {
            s.waiting.extend(targets);
        }
    }

    fn mark_seen(&mut self, now: Time, qid: u64) {
        self.seen.insert(qid, now);
        self.seen_order.push_back((now, qid));
        while self.seen_order.len() > MAX_SEEN {
            if let Some((_, q)) = self.seen_order.pop_front() {
                self.seen.remove(&q);
            }
        }
    }

    fn seen_ttl(&self) -> Duration {
        self.cfg.query_timeout * 4
    }

    fn record_failure(&mut self, peer: NodeId) {
        let limit = self.cfg.peer_failures;
        if let Some(p) = self.peers.get_mut(&peer) {
            p.failures += 1;
            if p.failures >= limit {
                info!(peer = %peer, url = %p.url, failures = p.failures, "dropping peer after consecutive failures");
                self.peers.remove(&peer);
                self.stats.peers_dropped += 1;
                if self.connected.remove(&peer) {
                    self.disconnects.push(peer);
                }
            }
        }
    }

    fn record_success(&mut self, peer: NodeId) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.failures = 0;
        }
    }

    fn error(&mut self, to: NodeId, id: u64, c: u32, out: &mut Outbox) {
        match c {
            code::TOO_LARGE => self.stats.refused_too_large += 1,
            code::BUSY => self.stats.refused_busy += 1,
            code::RATE => self.stats.refused_rate += 1,
            _ => {}
        }
        out.send(
            to,
            Msg::Error {
                id,
                code: c,
                message: code::message(c).to_owned(),
            }
            .encode(),
        );
    }

    fn rate_ok(&mut self, now: Time, from: NodeId) -> bool {
        let rate = f64::from(self.cfg.query_rate);
        let b = self.buckets.entry(from).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let dt = (now - b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(rate);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_query(
        &mut self,
        now: Time,
        from: NodeId,
        qid: u64,
        budget_ms: u32,
        key: Key,
        mut history: Vec<String>,
        out: &mut Outbox,
    ) {
        self.stats.queries_received += 1;
        if !self.rate_ok(now, from) {
            self.error(from, qid, code::RATE, out);
            return;
        }
        if self.seen.contains_key(&qid) {
            self.stats.queries_duplicate += 1;
            out.send(
                from,
                Msg::Hits {
                    qid,
                    hits: Vec::new(),
                }
                .encode(),
            );
            return;
        }
        let busy = self.busy_queries.get(&from).copied().unwrap_or(0);
        if busy >= self.cfg.max_queries_per_peer {
            self.error(from, qid, code::BUSY, out);
            return;
        }
        self.mark_seen(now, qid);
        self.stats.queries_handled += 1;
        let mut hits = Vec::new();
        if let Some(info) = self.lookup(&key) {
            self.stats.local_hits += 1;
            hits.push(Hit {
                info,
                url: self.cfg.url.clone(),
            });
        }
        if !history.contains(&self.cfg.url) {
            history.push(self.cfg.url.clone());
        }
        let budget = Duration::from_millis(u64::from(budget_ms)).min(self.cfg.query_timeout);
        let child = budget * 3 / 4;
        let targets = self.targets(&history);
        if targets.is_empty() {
            out.send(from, Msg::Hits { qid, hits }.encode());
            return;
        }
        *self.busy_queries.entry(from).or_default() += 1;
        self.searches.insert(
            qid,
            Search {
                upstream: Some(from),
                fetch: None,
                hits,
                waiting: BTreeSet::new(),
                deadline: now + child + (budget - child) / 2,
            },
        );
        self.forward(qid, child, &key, history, targets, out);
    }

    fn on_hits(&mut self, now: Time, from: NodeId, qid: u64, hits: Vec<Hit>, out: &mut Outbox) {
        let Some(s) = self.searches.get_mut(&qid) else {
            return;
        };
        if !s.waiting.remove(&from) {
            return;
        }
        for h in hits {
            if s.hits.len() >= MAX_HITS {
                break;
            }
            if !s.hits.contains(&h) {
                s.hits.push(h);
            }
        }
        self.record_success(from);
        self.maybe_complete(now, qid, out);
    }

    fn maybe_complete(&mut self, now: Time, qid: u64, out: &mut Outbox) {
        let done = self
            .searches
            .get(&qid)
            .is_some_and(|s| s.waiting.is_empty() || s.deadline <= now);
        if !done {
            return;
        }
        let Some(mut s) = self.searches.remove(&qid) else {
            return;
        };
        for late in &s.waiting {
            self.stats.timeouts += 1;
            self.record_failure(*late);
        }
        if let Some(up) = s.upstream {
            if let Some(n) = self.busy_queries.get_mut(&up) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.busy_queries.remove(&up);
                }
            }
            let hits = std::mem::take(&mut s.hits);
            out.send(up, Msg::Hits { qid, hits }.encode());
        }
        if let Some(f) = s.fetch {
            self.search_done(now, f, s.hits, out);
        }
    }

    fn search_done(&mut self, now: Time, id: u64, hits: Vec<Hit>, out: &mut Outbox) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let matching: Vec<Hit> = hits
            .into_iter()
            .filter(|h| h.url != self.cfg.url)
            .filter(|h| match &p.key {
                Key::Name(n) => &h.info.name == n,
                Key::Hash(x) => &h.info.hash == x,
            })
            .collect();
        if matching.is_empty() {
            self.finish(p.origin, id, Err(code::UNHANDLED), p.started, now, out);
            return;
        }
        let fitting: Vec<Hit> = matching
            .into_iter()
            .filter(|h| h.info.size <= self.cfg.max_file)
            .collect();
        if fitting.is_empty() {
            self.stats.refused_too_large += 1;
            self.finish(p.origin, id, Err(code::TOO_LARGE), p.started, now, out);
            return;
        }
        // The content most providers offer, then its providers.
        let mut by_hash: BTreeMap<Hash, Vec<&Hit>> = BTreeMap::new();
        for h in &fitting {
            by_hash.entry(h.info.hash).or_default().push(h);
        }
        let best = by_hash
            .values()
            .max_by_key(|v| v.len())
            .map(|v| v[0].info.clone())
            .unwrap_or_else(|| fitting[0].info.clone());
        let mut providers: Vec<(NodeId, String)> = Vec::new();
        for h in fitting.iter().filter(|h| h.info.hash == best.hash) {
            let nid = node_id_for_url(&h.url);
            if !providers.iter().any(|(n, _)| *n == nid) {
                providers.push((nid, h.url.clone()));
            }
        }
        for (nid, url) in &providers {
            self.connect(*nid, url);
        }
        let name = match &p.key {
            Key::Name(n) => n.clone(),
            Key::Hash(_) => best.name.clone(),
        };
        let info = FileInfo { name, ..best };
        let mut t = Transfer::new(
            id,
            p.origin,
            p.started,
            info,
            providers,
            self.cfg.chunk_size,
            self.cfg.credit,
            self.cfg.query_timeout,
            self.cfg.peer_failures,
        );
        let progress = t.start(now, out);
        self.transfers.insert(id, t);
        self.settle(now, id, progress, Report::default(), out);
    }

    fn settle(&mut self, now: Time, id: u64, progress: Progress, report: Report, out: &mut Outbox) {
        self.stats.corrupt_chunks += report.corrupt;
        self.stats.bad_manifests += report.bad_manifests;
        self.stats.timeouts += report.timeouts;
        self.stats.chunks_received += report.chunks;
        self.stats.bytes_received += report.bytes;
        if report.path_refused {
            self.stats.path_refused += 1;
        }
        for n in report.failed {
            self.record_failure(n);
        }
        for n in report.succeeded {
            self.record_success(n);
        }
        let result = match progress {
            Progress::Running => return,
            Progress::Done(info) => Ok(info),
            Progress::Failed(c) => Err(c),
        };
        let Some(t) = self.transfers.remove(&id) else {
            return;
        };
        let result = result.map(|info| {
            let from = t
                .providers
                .first()
                .map(|p| p.url.clone())
                .unwrap_or_default();
            let delivered = t
                .providers
                .iter()
                .filter(|p| p.delivered > 0)
                .map(|p| p.url.clone())
                .collect();
            self.stats.bytes_resumed += t.resumed;
            (info, from, delivered, t.bytes, t.resumed)
        });
        self.finish(t.origin, id, result, t.started, now, out);
    }

    #[allow(clippy::type_complexity)]
    fn finish(
        &mut self,
        origin: Origin,
        id: u64,
        result: Result<(FileInfo, String, Vec<String>, u64, u64), u32>,
        started: Time,
        now: Time,
        out: &mut Outbox,
    ) {
        match &result {
            Ok(_) => self.stats.fetches_done += 1,
            Err(_) => self.stats.fetches_failed += 1,
        }
        match origin {
            Origin::Local => self.events.push(match result {
                Ok((info, from, providers, bytes, resumed)) => P2pEvent::FetchDone {
                    id: FetchId(id),
                    info,
                    from,
                    providers,
                    bytes,
                    resumed,
                    secs: (now - started).as_secs_f64(),
                },
                Err(code) => P2pEvent::FetchFailed {
                    id: FetchId(id),
                    code,
                },
            }),
            Origin::Remote(peer, req) => match result {
                Ok((info, ..)) => out.send(peer, Msg::Fetched { req, info }.encode()),
                Err(c) => self.error(peer, req, c, out),
            },
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn serve_ok(
        &mut self,
        now: Time,
        from: NodeId,
        req: u64,
        hash: Hash,
        out: &mut Outbox,
    ) -> Option<FileInfo> {
        let info = self
            .names
            .get(&hash)
            .cloned()
            .and_then(|n| self.share.lookup(&n))
            .filter(|i| i.hash == hash)
            .or_else(|| self.share.by_hash(&hash));
        let Some(info) = info else {
            self.error(from, req, code::UNHANDLED, out);
            return None;
        };
        self.names.insert(hash, info.name.clone());
        if info.size > self.cfg.max_file {
            self.error(from, req, code::TOO_LARGE, out);
            return None;
        }
        if !self.serving.contains_key(&(from, hash)) {
            let active = self.serving.keys().filter(|(p, _)| *p == from).count();
            if active >= self.cfg.max_transfers_per_peer {
                self.error(from, req, code::BUSY, out);
                return None;
            }
        }
        self.serving.insert((from, hash), now);
        Some(info)
    }

    fn max_chunk(&self) -> u32 {
        u32::try_from(self.cfg.max_message / 4).unwrap_or(u32::MAX)
    }

    #[allow(clippy::too_many_arguments)]
    fn on_get_manifest(
        &mut self,
        now: Time,
        from: NodeId,
        req: u64,
        hash: Hash,
        cs: u32,
        out: &mut Outbox,
    ) {
        let Some(info) = self.serve_ok(now, from, req, hash, out) else {
            return;
        };
        let cs = cs.clamp(1, self.max_chunk());
        let chunks = match self.manifests.get(&(hash, cs)) {
            Some(m) => m.clone(),
            None => match self.share.manifest(&info, cs) {
                Ok(m) => {
                    if self.manifests.len() >= 64 {
                        self.manifests.clear();
                    }
                    let m = std::sync::Arc::new(m);
                    self.manifests.insert((hash, cs), m.clone());
                    m
                }
                Err(_) => {
                    self.error(from, req, code::UNHANDLED, out);
                    return;
                }
            },
        };
        out.send(
            from,
            Msg::Manifest {
                req,
                size: info.size,
                chunk_size: cs,
                chunks: chunks.to_vec(),
            }
            .encode(),
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_get(
        &mut self,
        now: Time,
        from: NodeId,
        req: u64,
        hash: Hash,
        index: u32,
        cs: u32,
        out: &mut Outbox,
    ) {
        let Some(info) = self.serve_ok(now, from, req, hash, out) else {
            return;
        };
        let cs = u64::from(cs.clamp(1, self.max_chunk()));
        let offset = u64::from(index) * cs;
        if offset >= info.size {
            self.error(from, req, code::UNHANDLED, out);
            return;
        }
        match self.share.read(&info.name, offset, cs as usize) {
            Ok(data) => {
                self.stats.chunks_served += 1;
                self.stats.bytes_served += data.len() as u64;
                out.send(from, Msg::Chunk { req, index, data }.encode());
            }
            Err(_) => self.error(from, req, code::UNHANDLED, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_fetch_cmd(
        &mut self,
        now: Time,
        from: NodeId,
        req: u64,
        secret: Bytes,
        key: Key,
        out: &mut Outbox,
    ) {
        if !constant_time_eq(&secret, &self.cfg.secret) {
            self.stats.access_denied += 1;
            self.error(from, req, code::ACCESS_DENIED, out);
            return;
        }
        if let Key::Name(n) = &key {
            if super::share::check_name(n).is_err() {
                self.stats.path_refused += 1;
                self.error(from, req, code::UNHANDLED, out);
                return;
            }
        }
        let id = self.rng.next_u64();
        self.start_fetch(now, id, Origin::Remote(from, req), key, out);
    }

    fn with_transfer(
        &mut self,
        now: Time,
        id: u64,
        out: &mut Outbox,
        f: impl FnOnce(&mut Transfer, &mut dyn Share, &mut Outbox, &mut Report) -> Progress,
    ) {
        let Some(t) = self.transfers.get_mut(&id) else {
            return;
        };
        let mut report = Report::default();
        let progress = f(t, self.share.as_mut(), out, &mut report);
        self.settle(now, id, progress, report, out);
    }

    fn dispatch(&mut self, now: Time, from: NodeId, msg: Msg, out: &mut Outbox) {
        match msg {
            Msg::Hello { url } => {
                if node_id_for_url(&url) != from {
                    self.stats.garbage += 1;
                } else if !self.peers.contains_key(&from) && self.peers.len() >= self.cfg.max_peers
                {
                    self.stats.peers_refused += 1;
                } else {
                    self.add_peer(&url);
                }
            }
            Msg::Query {
                qid,
                budget_ms,
                key,
                history,
            } => self.on_query(now, from, qid, budget_ms, key, history, out),
            Msg::Hits { qid, hits } => self.on_hits(now, from, qid, hits, out),
            Msg::Error { id, code: c, .. } => {
                if let Some(s) = self.searches.get_mut(&id) {
                    if s.waiting.remove(&from) {
                        self.maybe_complete(now, id, out);
                    }
                } else {
                    self.with_transfer(now, id, out, |t, share, out, r| {
                        t.on_error(now, from, c, share, out, r)
                    });
                }
            }
            Msg::Fetch { req, secret, key } => self.on_fetch_cmd(now, from, req, secret, key, out),
            Msg::Fetched { .. } => {}
            Msg::GetManifest {
                req,
                hash,
                chunk_size,
            } => self.on_get_manifest(now, from, req, hash, chunk_size, out),
            Msg::Manifest {
                req,
                size,
                chunk_size,
                chunks,
            } => self.with_transfer(now, req, out, |t, share, out, r| {
                t.on_manifest(now, from, size, chunk_size, chunks, share, out, r)
            }),
            Msg::Get {
                req,
                hash,
                index,
                chunk_size,
            } => self.on_get(now, from, req, hash, index, chunk_size, out),
            Msg::Chunk { req, index, data } => {
                self.with_transfer(now, req, out, |t, share, out, r| {
                    t.on_chunk(now, from, index, data, share, out, r)
                })
            }
        }
    }

    fn expire(&mut self, now: Time) {
        let ttl = self.seen_ttl();
        while let Some((t, q)) = self.seen_order.front().copied() {
            if now - t < ttl {
                break;
            }
            self.seen_order.pop_front();
            if self.seen.get(&q) == Some(&t) {
                self.seen.remove(&q);
            }
        }
        self.serving.retain(|_, t| now - *t < ttl);
        self.buckets.retain(|_, b| now - b.at < ttl);
    }
}

impl Process for P2pNode {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        if msg.len() > self.cfg.max_message {
            self.stats.garbage += 1;
            return;
        }
        match Msg::decode(&msg) {
            Some(m) => self.dispatch(now, from, m, out),
            None => {
                self.stats.garbage += 1;
                debug!(peer = %from, len = msg.len(), "garbage message dropped");
            }
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        let due: Vec<u64> = self
            .searches
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for q in due {
            self.maybe_complete(now, q, out);
        }
        let due: Vec<u64> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.deadline().is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.with_transfer(now, id, out, |t, share, out, r| {
                t.on_timeout(now, share, out, r)
            });
        }
        self.expire(now);
    }

    fn poll_timeout(&self) -> Option<Time> {
        let s = self.searches.values().map(|s| s.deadline).min();
        let t = self.transfers.values().filter_map(Transfer::deadline).min();
        let ttl = self.seen_ttl();
        let e = self.seen_order.front().map(|(t, _)| *t + ttl);
        let v = self.serving.values().min().map(|t| *t + ttl);
        [s, t, e, v].into_iter().flatten().min()
    }
}
