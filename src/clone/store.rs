//! The Clone server's state as a pure machine: the sequenced key-value map,
//! ephemeral-value deadlines, heartbeats, the admission of snapshot
//! requests, and the limits on what peers may make it hold.
//!
//! This module contains no networking code and reads no clock: the server
//! task feeds it what its sockets received, with `now`, and carries out the
//! [`StoreAction`]s it returns. Everything a peer sends is checked here
//! (size, then syntax, then the store's bounds), counted in [`StoreStats`]
//! and, when refused, logged at most once a second per cause.
//!
//! The map is a persistent B-tree ([`imbl::OrdMap`]), so a snapshot takes a
//! point-in-time copy in O(1) and streams it while the live map moves on;
//! KTHXBAI then carries exactly the sequence the copy was taken at.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::kvmsg::{KvMsg, Properties, Uuid, PROPS_MAX, TTL};
use super::proto::{decode_kvset, Icanhaz, Update};
use super::snapshot::SnapshotCursor;
use crate::ratelog::LogLimiter;

/// The map a server holds and snapshots share.
pub type StoreMap = imbl::OrdMap<Bytes, StoreEntry>;

/// What [`StoreConfig::max_store_bytes`] counts per key on top of the key,
/// value and properties: an estimate of the map's and the expiry index's
/// own bookkeeping.
pub const ENTRY_OVERHEAD: usize = 128;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    value: Bytes,
    seq: u64,
    uuid: Option<Uuid>,
    /// The writer's properties without `ttl`, encoded (cheap to clone).
    props: Bytes,
    deadline: Option<Instant>,
}

impl StoreEntry {
    /// The value.
    pub fn value(&self) -> &Bytes {
        &self.value
    }
    /// The sequence of the update that wrote it.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The writer's UUID, if it sent one.
    pub fn uuid(&self) -> Option<&Uuid> {
        self.uuid.as_ref()
    }
    /// When it expires, if it is ephemeral.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The KVSYNC message for this entry at `now`: the stored properties
    /// plus `ttl` as the *remaining* whole seconds (rounded up, at least 1).
    pub fn to_kvsync(&self, key: &Bytes, now: Instant) -> KvMsg {
        let mut msg = KvMsg::new(key.clone(), self.value.clone()).expect("stored keys are valid");
        msg.set_seq(self.seq);
        msg.set_uuid(self.uuid);
        if !self.props.is_empty() || self.deadline.is_some() {
            let mut props = Properties::decode(&self.props).unwrap_or_default();
            if let Some(deadline) = self.deadline {
                let left = deadline.saturating_duration_since(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                props.set(TTL, &secs.max(1).to_string()).expect("valid ttl");
            }
            *msg.props_mut() = props;
        }
        msg
    }

    /// What this entry under `key` counts against
    /// [`StoreConfig::max_store_bytes`].
    fn cost(&self, key: &[u8]) -> usize {
        key.len() + self.value.len() + self.props.len() + ENTRY_OVERHEAD
    }
}

/// The server's role. Only `Active` exists today; a passive role (for a
/// Binary Star pair, Guide ch. 5 model 6, not built yet) would be another
/// variant, which is why every event handler dispatches on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Sequences and publishes client updates, serves snapshots, expires
    /// ephemeral values.
    Active,
}

/// Limits and timers of the server state, built by chaining setters on
/// [`StoreConfig::new`]; each setter's doc gives its default.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    hugz_interval: Duration,
    max_active_snapshots: usize,
    max_queued_snapshots: usize,
    max_snapshots_per_peer: usize,
    max_ttl: Duration,
    max_keys: usize,
    max_store_bytes: usize,
    max_kvset_size: usize,
    max_request_size: usize,
    instance: Option<u64>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            hugz_interval: Duration::from_secs(1),
            max_active_snapshots: 8,
            max_queued_snapshots: 1024,
            max_snapshots_per_peer: 2,
            max_ttl: Duration::from_secs(365 * 24 * 3600),
            max_keys: 10_000_000,
            max_store_bytes: 1 << 30,
            max_kvset_size: (16 << 20) + PROPS_MAX + 1024,
            max_request_size: 1024,
            instance: Some(uuid::Uuid::new_v4().as_u64_pair().0),
        }
    }
}

impl StoreConfig {
    /// The defaults (see each setter).
    pub fn new() -> Self {
        Self::default()
    }

    /// Heartbeat period (HUGZ are sent every period, busy or not, because a
    /// subtree client sees none of the other subtrees' traffic). Default 1 s.
    pub fn hugz_interval(mut self, every: Duration) -> Self {
        self.hugz_interval = every;
        self
    }
    /// Snapshots streamed at the same time. Default 8.
    pub fn max_active_snapshots(mut self, n: usize) -> Self {
        self.max_active_snapshots = n;
        self
    }
    /// Snapshot requests waiting for a streaming slot, over all peers; a
    /// request beyond it is refused (no reply). Default 1024.
    pub fn max_queued_snapshots(mut self, n: usize) -> Self {
        self.max_queued_snapshots = n;
        self
    }
    /// Requests one peer (ROUTER identity) may have streaming or waiting at
    /// once; a request beyond it is refused (no reply). Default 2.
    pub fn max_snapshots_per_peer(mut self, n: usize) -> Self {
        self.max_snapshots_per_peer = n;
        self
    }
    /// Longest accepted ttl (longer ones are clamped). Default one year.
    pub fn max_ttl(mut self, ttl: Duration) -> Self {
        self.max_ttl = ttl;
        self
    }
    /// Most keys stored; a KVSET adding a key beyond it is refused (not
    /// published); updates and deletes of existing keys still pass.
    /// Default 10,000,000.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }
    /// Most bytes stored: keys, values and properties plus
    /// [`ENTRY_OVERHEAD`] (128) per key. A KVSET that would take the store
    /// beyond it is refused (not published); deletes and updates that do
    /// not grow the store still pass. Default 1 GiB.
    pub fn max_store_bytes(mut self, n: usize) -> Self {
        self.max_store_bytes = n;
        self
    }
    /// Largest message accepted on the collector (the sum of its frames);
    /// a larger one is dropped unread. Default 16 MiB + 65 KiB (a 16 MiB
    /// value plus its key and up to 64 KiB of properties).
    pub fn max_kvset_size(mut self, n: usize) -> Self {
        self.max_kvset_size = n;
        self
    }
    /// Largest message accepted on the snapshot socket (the sum of its
    /// frames, the peer's identity included); a larger one is dropped
    /// unread. Default 1 KiB (a valid `ICANHAZ?` needs at most 518 bytes).
    pub fn max_request_size(mut self, n: usize) -> Self {
        self.max_request_size = n;
        self
    }
    /// This server's instance id, sent in HUGZ and KTHXBAI (random by
    /// default; `None` sends CHP's empty properties).
    pub fn instance(mut self, instance: Option<u64>) -> Self {
        self.instance = instance;
        self
    }
}

/// Counters of everything the state machine did or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Client updates sequenced and published (sets and deletes).
    pub updates: u64,
    /// Ephemeral values expired (each published as a delete).
    pub expired: u64,
    /// Heartbeats published.
    pub hugz: u64,
    /// Snapshot requests accepted (started or queued).
    pub snapshot_requests: u64,
    /// Snapshot requests refused because a queue bound was reached.
    pub snapshots_refused: u64,
    /// KVSETs refused by `max_keys` or `max_store_bytes`.
    pub kvsets_refused: u64,
    /// Collector messages dropped for exceeding `max_kvset_size`.
    pub oversized_kvsets: u64,
    /// Snapshot-socket messages dropped for exceeding `max_request_size`.
    pub oversized_requests: u64,
    /// Collector messages that were not valid KVSETs.
    pub bad_kvsets: u64,
    /// Snapshot-socket messages that were not valid `ICANHAZ?` requests.
    pub bad_requests: u64,
}

/// What the server task must do.
#[derive(Debug)]
pub enum StoreAction {
    /// Publish these five frames (KVPUB or HUGZ) on the PUB socket.
    Publish([Bytes; 5]),
    /// Stream this snapshot to its peer, then call
    /// [`Store::handle_snapshot_done`].
    StartSnapshot(SnapshotCursor),
}

/// One log budget per cause a peer can trigger.
#[derive(Debug, Default)]
struct Logs {
    oversized: LogLimiter,
    bad_kvset: LogLimiter,
    bad_request: LogLimiter,
    kvset_refused: LogLimiter,
    snapshot_refused: LogLimiter,
    snapshot_started: LogLimiter,
}

/// The server state machine.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    role: Role,
    map: StoreMap,
    bytes: usize,
    sequence: u64,
    expiries: BTreeSet<(Instant, Bytes)>,
    next_hugz: Instant,
    active_snapshots: usize,
    queued: VecDeque<(Bytes, Bytes)>,
    per_peer: HashMap<Bytes, usize>,
    stats: StoreStats,
    logs: Logs,
}

impl Store {
    /// An empty active store at sequence 0.
    pub fn new(config: StoreConfig, now: Instant) -> Self {
        let next_hugz = now + config.hugz_interval;
        Self {
            config,
            role: Role::Active,
            map: StoreMap::new(),
            bytes: 0,
            sequence: 0,
            expiries: BTreeSet::new(),
            next_hugz,
            active_snapshots: 0,
            queued: VecDeque::new(),
            per_peer: HashMap::new(),
            stats: StoreStats::default(),
            logs: Logs::default(),
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The last sequence number assigned.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// The current map (an O(1) copy).
    pub fn map(&self) -> StoreMap {
        self.map.clone()
    }
    /// The entry for `key`.
    pub fn get(&self, key: &[u8]) -> Option<&StoreEntry> {
        self.map.get(key)
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// `true` if no keys are stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// What the map counts against [`StoreConfig::max_store_bytes`] now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The counters.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }
    /// Snapshots streaming and waiting.
    pub fn snapshot_load(&self) -> (usize, usize) {
        (self.active_snapshots, self.queued.len())
    }

    /// A message the collector SUB received: dropped if larger than
    /// `max_kvset_size` or not a valid KVSET (counted, logged at most once
    /// a second), else [`handle_kvset`](Self::handle_kvset).
    pub fn handle_collector(&mut self, frames: &[Bytes], now: Instant) -> Vec<StoreAction> {
        let size = frames_size(frames);
        if size > self.config.max_kvset_size {
            self.stats.oversized_kvsets += 1;
            if let Some(suppressed) = self.logs.oversized.check(now) {
                warn!(
                    size,
                    max = self.config.max_kvset_size,
                    suppressed,
                    "oversized collector message dropped"
                );
            }
            return Vec::new();
        }
        match decode_kvset(frames) {
            Ok(kv) => self.handle_kvset(kv, now),
            Err(e) => {
                self.stats.bad_kvsets += 1;
                if let Some(suppressed) = self.logs.bad_kvset.check(now) {
                    warn!(cause = %e, frames = frames.len(), suppressed, "bad KVSET dropped");
                }
                Vec::new()
            }
        }
    }

    /// A message the snapshot ROUTER received (`frames[0]` is the peer's
    /// identity): dropped if larger than `max_request_size` or not a valid
    /// `ICANHAZ?` (counted, logged at most once a second), else
    /// [`handle_icanhaz`](Self::handle_icanhaz).
    pub fn handle_request(&mut self, mut frames: Vec<Bytes>, now: Instant) -> Vec<StoreAction> {
        let size = frames_size(&frames);
        if size > self.config.max_request_size {
            self.stats.oversized_requests += 1;
            if let Some(suppressed) = self.logs.oversized.check(now) {
                warn!(
                    size,
                    max = self.config.max_request_size,
                    suppressed,
                    "oversized snapshot request dropped"
                );
            }
            return Vec::new();
        }
        let peer = if frames.is_empty() {
            Bytes::new()
        } else {
            frames.remove(0)
        };
        match Icanhaz::decode(&frames) {
            Ok(req) => self.handle_icanhaz(peer, req.subtree, now),
            Err(e) => {
                self.stats.bad_requests += 1;
                if let Some(suppressed) = self.logs.bad_request.check(now) {
                    warn!(peer = ?peer, cause = %e, suppressed, "bad snapshot request dropped");
                }
                Vec::new()
            }
        }
    }

    /// A client's KVSET (already validated by the codec): refused if it
    /// would exceed `max_keys` or `max_store_bytes`; else sequenced,
    /// published (with the client's relative `ttl`, as received) and
    /// stored.
    pub fn handle_kvset(&mut self, mut msg: KvMsg, now: Instant) -> Vec<StoreAction> {
        let old = self.map.get(msg.key()).map_or(0, |e| e.cost(msg.key()));
        let entry = (!msg.is_delete()).then(|| self.entry(&msg, now));
        let new = entry.as_ref().map_or(0, |e| e.cost(msg.key()));
        let too_many = entry.is_some() && old == 0 && self.map.len() >= self.config.max_keys;
        let too_big = new > old && self.bytes - old + new > self.config.max_store_bytes;
        if too_many || too_big {
            self.stats.kvsets_refused += 1;
            if let Some(suppressed) = self.logs.kvset_refused.check(now) {
                warn!(key = ?msg.key(), size = msg.body().len(), keys = self.map.len(),
                      bytes = self.bytes, suppressed, "KVSET refused: store limits reached");
            }
            return Vec::new();
        }
        match self.role {
            Role::Active => {
                self.sequence += 1;
                msg.set_seq(self.sequence);
                self.stats.updates += 1;
                self.apply(
                    msg.key().clone(),
                    entry.map(|e| StoreEntry {
                        seq: self.sequence,
                        ..e
                    }),
                );
                debug!(seq = self.sequence, key = ?msg.key(), "publishing update");
                vec![StoreAction::Publish(msg.encode())]
            }
        }
    }

    /// A snapshot request from `peer` for `subtree`: start it now, queue it,
    /// or refuse it when a bound is reached (counted and logged).
    pub fn handle_icanhaz(
        &mut self,
        peer: Bytes,
        subtree: Bytes,
        now: Instant,
    ) -> Vec<StoreAction> {
        let mine = self.per_peer.get(&peer).copied().unwrap_or(0);
        if mine >= self.config.max_snapshots_per_peer
            || (self.active_snapshots >= self.config.max_active_snapshots
                && self.queued.len() >= self.config.max_queued_snapshots)
        {
            self.stats.snapshots_refused += 1;
            if let Some(suppressed) = self.logs.snapshot_refused.check(now) {
                warn!(peer = ?peer, pending = mine, suppressed,
                      "snapshot request refused: too many pending");
            }
            return Vec::new();
        }
        self.stats.snapshot_requests += 1;
        *self.per_peer.entry(peer.clone()).or_default() += 1;
        self.queued.push_back((peer, subtree));
        self.start_queued(now)
    }

    /// A snapshot stream for `peer` has ended (sent or abandoned).
    pub fn handle_snapshot_done(&mut self, peer: &Bytes, now: Instant) -> Vec<StoreAction> {
        self.active_snapshots = self.active_snapshots.saturating_sub(1);
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
        self.start_queued(now)
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Instant {
        match self.expiries.first() {
            Some((deadline, _)) => (*deadline).min(self.next_hugz),
            None => self.next_hugz,
        }
    }

    /// Expires due ephemeral values (each published as a delete with a new
    /// sequence) and sends HUGZ when due.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<StoreAction> {
        let mut actions = Vec::new();
        while let Some((deadline, _)) = self.expiries.first() {
            if *deadline > now {
                break;
            }
            let (_, key) = self.expiries.pop_first().expect("non-empty");
            self.sequence += 1;
            let mut delete = KvMsg::new(key, Bytes::new()).expect("stored keys are valid");
            delete.set_seq(self.sequence);
            if let Some(old) = self.map.remove(delete.key()) {
                self.bytes -= old.cost(delete.key());
            }
            self.stats.expired += 1;
            debug!(seq = self.sequence, key = ?delete.key(), "publishing delete (ttl expired)");
            actions.push(StoreAction::Publish(delete.encode()));
        }
        if now >= self.next_hugz {
            self.stats.hugz += 1;
            actions.push(StoreAction::Publish(Update::encode_hugz(
                self.sequence,
                self.config.instance,
            )));
            self.next_hugz = now + self.config.hugz_interval;
        }
        actions
    }

    fn start_queued(&mut self, now: Instant) -> Vec<StoreAction> {
        let mut actions = Vec::new();
        while self.active_snapshots < self.config.max_active_snapshots {
            let Some((peer, subtree)) = self.queued.pop_front() else {
                break;
            };
            self.active_snapshots += 1;
            if let Some(suppressed) = self.logs.snapshot_started.check(now) {
                info!(peer = ?peer, seq = self.sequence, suppressed, "sending snapshot");
            }
            actions.push(StoreAction::StartSnapshot(
                SnapshotCursor::new(peer, subtree, self.map.clone(), self.sequence, now)
                    .with_instance(self.config.instance),
            ));
        }
        actions
    }

    /// The entry `msg` would store at `now` (sequence still 0).
    fn entry(&self, msg: &KvMsg, now: Instant) -> StoreEntry {
        let deadline = msg.ttl().map(|ttl| now + ttl.min(self.config.max_ttl));
        let mut props = msg.props().clone();
        props.remove(TTL);
        StoreEntry {
            value: msg.body().clone(),
            seq: 0,
            uuid: msg.uuid().copied(),
            props: props.encode(),
            deadline,
        }
    }

    /// Stores `entry` under `key` (or deletes `key`), keeping the expiry
    /// index and the byte count in step.
    fn apply(&mut self, key: Bytes, entry: Option<StoreEntry>) {
        if let Some(old) = self.map.remove(&key) {
            self.bytes -= old.cost(&key);
            if let Some(d) = old.deadline {
                self.expiries.remove(&(d, key.clone()));
            }
        }
        let Some(entry) = entry else { return };
        if let Some(d) = entry.deadline {
            self.expiries.insert((d, key.clone()));
        }
        self.bytes += entry.cost(&key);
        self.map.insert(key, entry);
    }
}

fn frames_size(frames: &[Bytes]) -> usize {
    frames.iter().map(Bytes::len).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone::SnapshotReply;

    fn kvset(key: &str, value: &str, ttl: Option<u32>) -> KvMsg {
        let mut m = KvMsg::new(key.to_owned(), value.to_owned()).unwrap();
        if let Some(t) = ttl {
            m.props_mut().set(TTL, &t.to_string()).unwrap();
        }
        m
    }

    fn published(actions: &[StoreAction]) -> Vec<KvMsg> {
        actions
            .iter()
            .filter_map(|a| match a {
                StoreAction::Publish(f) => Some(KvMsg::decode(f).unwrap()),
                StoreAction::StartSnapshot(_) => None,
            })
            .collect()
    }

    fn drain(mut cursor: SnapshotCursor, now: Instant) -> (Vec<KvMsg>, u64) {
        let mut out = Vec::new();
        while !cursor.next_chunk(now, 3, &mut out) {}
        let last = out.pop().unwrap();
        let entries = out.iter().map(|f| KvMsg::decode(f).unwrap()).collect();
        match SnapshotReply::decode(&last).unwrap() {
            SnapshotReply::Kthxbai { seq, .. } => (entries, seq),
            other => panic!("no KTHXBAI: {other:?}"),
        }
    }

    fn start(actions: Vec<StoreAction>) -> SnapshotCursor {
        match actions.into_iter().next() {
            Some(StoreAction::StartSnapshot(c)) => c,
            other => panic!("no snapshot started: {other:?}"),
        }
    }

    #[test]
    fn updates_are_sequenced_published_with_relative_ttl_and_stored() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        let out = published(&s.handle_kvset(kvset("/a/1", "x", Some(5)), t0));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].seq(), 1);
        assert_eq!(out[0].props().get(TTL), Some("5"));
        assert_eq!(
            s.get(b"/a/1").unwrap().deadline(),
            Some(t0 + Duration::from_secs(5))
        );
        let out = published(&s.handle_kvset(kvset("/a/1", "", None), t0));
        assert_eq!(out[0].seq(), 2);
        assert!(s.is_empty(), "empty body deletes");
        assert_eq!(
            s.poll_timeout(),
            t0 + Duration::from_secs(1),
            "no stale deadline"
        );
    }

    #[test]
    fn ttl_expiry_publishes_a_delete_and_zero_ttl_never_expires() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        s.handle_kvset(kvset("eph", "x", Some(3)), t0);
        s.handle_kvset(kvset("perm", "y", Some(0)), t0);
        s.handle_kvset(kvset("plain", "z", None), t0);
        assert_eq!(s.poll_timeout(), t0 + Duration::from_secs(1));
        let t3 = t0 + Duration::from_secs(3);
        let out = published(&s.handle_timeout(t3));
        let deletes: Vec<_> = out.iter().filter(|m| m.key() != "HUGZ").collect();
        assert_eq!(deletes.len(), 1);
        assert_eq!(deletes[0].key(), "eph");
        assert!(deletes[0].is_delete());
        assert_eq!(deletes[0].seq(), 4);
        assert_eq!(s.len(), 2);
        let later = published(&s.handle_timeout(t0 + Duration::from_secs(3600)));
        assert!(later.iter().all(|m| m.key() == "HUGZ"));
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_refreshed_ttl_moves_the_deadline() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        s.handle_kvset(kvset("k", "1", Some(2)), t0);
        let t1 = t0 + Duration::from_secs(1);
        s.handle_kvset(kvset("k", "2", Some(2)), t1);
        assert!(published(&s.handle_timeout(t0 + Duration::from_secs(2)))
            .iter()
            .all(|m| m.key() == "HUGZ"));
        assert_eq!(s.len(), 1);
        let out = published(&s.handle_timeout(t1 + Duration::from_secs(2)));
        assert!(out.iter().any(|m| m.key() == "k" && m.is_delete()));
    }

    #[test]
    fn hugz_carry_the_current_sequence_every_interval() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        assert!(s.handle_timeout(t0).is_empty());
        s.handle_kvset(kvset("k", "v", None), t0);
        let t1 = s.poll_timeout();
        let out = s.handle_timeout(t1);
        let StoreAction::Publish(frames) = &out[0] else {
            panic!()
        };
        assert!(matches!(
            Update::decode(frames).unwrap(),
            Update::Hugz {
                seq: 1,
                instance: Some(_)
            }
        ));
        assert_eq!(s.poll_timeout(), t1 + Duration::from_secs(1));
    }

    #[test]
    fn a_snapshot_is_the_map_at_request_time_despite_later_updates() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        for i in 0..10 {
            s.handle_kvset(kvset(&format!("/a/{i}"), "old", None), t0);
        }
        s.handle_kvset(kvset("/b/x", "other", None), t0);
        let cursor = start(s.handle_icanhaz(Bytes::from("p"), Bytes::from("/a/"), t0));
        // The live map moves on while the snapshot streams.
        s.handle_kvset(kvset("/a/0", "new", None), t0);
        s.handle_kvset(kvset("/a/1", "", None), t0);
        let (entries, seq) = drain(cursor, t0);
        assert_eq!(seq, 11);
        assert_eq!(entries.len(), 10);
        assert!(entries.iter().all(|m| m.body() == "old" && m.seq() <= seq));
        assert!(entries.windows(2).all(|w| w[0].key() < w[1].key()));
        assert_eq!(s.get(b"/a/0").unwrap().value(), "new");
    }

    #[test]
    fn snapshots_carry_remaining_ttl_in_seconds() {
        let t0 = Instant::now();
        let mut s = Store::new(StoreConfig::default(), t0);
        let mut m = kvset("k", "v", Some(10));
        m.props_mut().set("owner", "me").unwrap();
        s.handle_kvset(m, t0);
        let cursor = start(s.handle_icanhaz(Bytes::from("p"), Bytes::new(), t0));
        let (entries, _) = drain(cursor, t0 + Duration::from_millis(2500));
        assert_eq!(entries[0].props().get(TTL), Some("8"));
        assert_eq!(entries[0].props().get("owner"), Some("me"));
    }

    #[test]
    fn store_limits_refuse_new_keys_and_growth_but_not_updates_or_deletes() {
        let t0 = Instant::now();
        let cost = |k: &str, v: &str| k.len() + v.len() + ENTRY_OVERHEAD;
        let config = StoreConfig::new()
            .max_keys(2)
            .max_store_bytes(cost("a", "1") + cost("b", "12"));
        let mut s = Store::new(config, t0);
        s.handle_kvset(kvset("a", "1", None), t0);
        s.handle_kvset(kvset("b", "12", None), t0);
        assert_eq!(s.bytes(), cost("a", "1") + cost("b", "12"));
        assert!(
            s.handle_kvset(kvset("c", "1", None), t0).is_empty(),
            "max_keys"
        );
        assert!(
            s.handle_kvset(kvset("a", "123", None), t0).is_empty(),
            "max_store_bytes"
        );
        assert_eq!(
            published(&s.handle_kvset(kvset("a", "2", None), t0)).len(),
            1
        );
        assert_eq!(
            published(&s.handle_kvset(kvset("b", "3", None), t0)).len(),
            1,
            "shrinks"
        );
        assert_eq!(
            published(&s.handle_kvset(kvset("b", "", None), t0)).len(),
            1
        );
        assert_eq!(s.bytes(), cost("a", "2"));
        assert_eq!(s.stats().kvsets_refused, 2);
        assert_eq!(s.sequence(), 5);
        s.handle_kvset(kvset("e", "1", Some(1)), t0);
        s.handle_timeout(t0 + Duration::from_secs(1));
        assert_eq!(s.bytes(), cost("a", "2"), "expiry releases its bytes");
    }

    #[test]
    fn oversized_and_malformed_input_is_dropped_and_counted() {
        let t0 = Instant::now();
        let config = StoreConfig::new().max_kvset_size(64).max_request_size(32);
        let mut s = Store::new(config, t0);
        let big = kvset("k", &"x".repeat(64), None).encode();
        assert!(s.handle_collector(&big, t0).is_empty());
        let ok = kvset("k", "v", None).encode();
        assert_eq!(published(&s.handle_collector(&ok, t0)).len(), 1);
        assert!(s.handle_collector(&ok[..3], t0).is_empty());
        let peer = Bytes::from("p");
        let huge = vec![
            peer.clone(),
            Bytes::from("ICANHAZ?"),
            Bytes::from("/".repeat(40)),
        ];
        assert!(s.handle_request(huge, t0).is_empty());
        assert!(s
            .handle_request(vec![peer.clone(), Bytes::from("GIMME")], t0)
            .is_empty());
        let req = vec![peer, Bytes::from("ICANHAZ?"), Bytes::from("/a/")];
        assert_eq!(s.handle_request(req, t0).len(), 1);
        let st = s.stats();
        assert_eq!((st.oversized_kvsets, st.bad_kvsets), (1, 1));
        assert_eq!((st.oversized_requests, st.bad_requests), (1, 1));
        assert_eq!(st.snapshot_requests, 1);
    }

    #[test]
    fn snapshot_admission_is_bounded_per_peer_and_overall() {
        let t0 = Instant::now();
        let config = StoreConfig::new()
            .max_active_snapshots(1)
            .max_queued_snapshots(2)
            .max_snapshots_per_peer(2);
        let mut s = Store::new(config, t0);
        let p = |n: &str| Bytes::from(n.to_owned());
        assert_eq!(s.handle_icanhaz(p("a"), Bytes::new(), t0).len(), 1);
        assert!(s.handle_icanhaz(p("a"), Bytes::new(), t0).is_empty());
        assert!(
            s.handle_icanhaz(p("a"), Bytes::new(), t0).is_empty(),
            "refused"
        );
        assert!(s.handle_icanhaz(p("b"), Bytes::new(), t0).is_empty());
        assert!(
            s.handle_icanhaz(p("c"), Bytes::new(), t0).is_empty(),
            "refused"
        );
        assert_eq!(s.stats().snapshots_refused, 2);
        assert_eq!(s.snapshot_load(), (1, 2));
        let next = s.handle_snapshot_done(&p("a"), t0);
        assert_eq!(next.len(), 1);
        assert_eq!(s.snapshot_load(), (1, 1));
    }
}
