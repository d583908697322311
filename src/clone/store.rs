//! The Clone server's state as a pure machine: the sequenced key-value map,
//! ephemeral-value deadlines, heartbeats, the admission of snapshot
//! requests, the passive role of a server pair (Guide ch. 5, `clonesrv6`),
//! and the limits on what peers may make it hold.
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
//!
//! # The passive role (a server pair)
//!
//! A store made by [`Store::new_passive`] follows the active peer: its
//! driver feeds it the peer's KVPUB and HUGZ ([`Store::handle_peer_update`])
//! and fetches the peer's snapshot when told ([`StoreAction::FetchSnapshot`],
//! [`Store::handle_peer_snapshot`]). Client KVSETs go on a pending list
//! until the active's copy (same UUID) cancels them. [`Store::promote`]
//! makes it active and applies, oldest first, the pending updates the
//! active never republished. The Guide's `clonesrv6` bugs are not copied:
//!
//! - a relative `ttl` becomes an absolute deadline on arrival (the passive
//!   never expires keys itself and never advances its own sequence on its
//!   own; promotion expires what is due);
//! - the active's copy is never put on the pending list ("flip it around"),
//!   so an update the passive received from the active is never re-applied
//!   at promotion;
//! - a client write republished by the active supersedes (removes) the
//!   pending updates of its key that reached the passive before that
//!   write's own client copy did (older writes: one client's updates reach
//!   both servers in order; a snapshot's entries count as such writes), so
//!   an older value never overwrites a newer one. A pending
//!   update that arrived after the republished write's client copy stays:
//!   the active may have applied (and acknowledged) it just before dying.
//!   (The Guide assumes two clients never write the same key at the same
//!   time; if they do, the passive cannot tell their order, and a pending
//!   update the active applied after the republished one is lost if the
//!   active dies before republishing it);
//! - a pending update of a key the snapshot lacks stays (the active has
//!   not applied it yet, or deleted the key later: then the delete's own
//!   client copy is pending after it), and its ttl counts from its arrival,
//!   so one the active applied and expired meanwhile has expired here too:
//!   nothing deleted is resurrected (an ephemeral value at most for the
//!   difference in arrival times);
//! - a client copy arriving late, after the active republished a later
//!   write of the same key whose own client copy has not arrived yet, is of
//!   an older write and is dropped (within
//!   [`StoreConfig::reorder_window`]), in either role;
//! - a message without a UUID never matches a pending one;
//! - the snapshot is fetched without blocking (the driver reports success
//!   or failure; the store retries after [`StoreConfig::snapshot_retry`]);
//! - a sequence gap (a KVPUB beyond the next sequence, or a HUGZ ahead of
//!   the passive's sequence) is detected and repaired by a new snapshot that
//!   replaces the map.
//!
//! Live updates that arrive while a snapshot is fetched are buffered, within
//! [`StoreConfig::max_pending`] and [`StoreConfig::max_pending_bytes`], and
//! applied after it if newer than it; beyond the bound they are dropped
//! (`peer_buffer_overflows`) and the gap they leave starts another snapshot.
//!
//! Both roles remember the UUIDs of the last [`StoreConfig::recent_uuids`]
//! updates applied and drop a KVSET carrying one of them (`duplicates`): a
//! client re-sending an update after a failover has it applied exactly once.
//!
//! The epoch: a store presents its epoch ([`StoreConfig::epoch`], then the
//! one [`Store::promote`] gives) as the [`EPOCH`] property of its KVPUB,
//! HUGZ and KTHXBAI when above 0, never stores it, and replaces any a
//! client sent. A passive store refuses peer messages presenting an epoch
//! lower than the highest it has seen ([`Store::observed_epoch`]).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::kvmsg::{KvMsg, Properties, Uuid, PROPS_MAX, TTL};
use super::pending::{Awaited, PendingList, RecentUuids};
use super::proto::{decode_kvset, Icanhaz, Update, EPOCH};
use super::snapshot::SnapshotCursor;
use crate::ratelog::LogLimiter;

/// The map a server holds and snapshots share.
pub type StoreMap = imbl::OrdMap<Bytes, StoreEntry>;

/// What [`StoreConfig::max_store_bytes`] counts per key on top of the key,
/// value and properties: an estimate of the map's and the expiry index's
/// own bookkeeping. [`StoreConfig::max_pending_bytes`] counts the same per
/// pending update.
pub const ENTRY_OVERHEAD: usize = 128;

/// One stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreEntry {
    value: Bytes,
    seq: u64,
    uuid: Option<Uuid>,
    /// The writer's properties without `ttl` and `epoch`, encoded (cheap to
    /// clone).
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
    /// When it expires, if it is ephemeral (absolute, on either role).
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
                props
                    .set(TTL, &remaining_secs(deadline, now))
                    .expect("valid ttl");
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

/// The server's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Role {
    /// Sequences and publishes client updates, serves snapshots, expires
    /// ephemeral values.
    Active,
    /// One of a server pair (Guide ch. 5, `clonesrv6`) not (yet) active:
    /// follows the active peer's updates, keeps client updates pending,
    /// serves no snapshot, expires nothing, sends HUGZ. Also the role while
    /// the pair's Binary Star state is still PRIMARY or BACKUP.
    Passive,
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
    max_pending: usize,
    max_pending_bytes: usize,
    recent_uuids: usize,
    snapshot_retry: Duration,
    epoch: u64,
    reorder_window: Duration,
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
            max_pending: 100_000,
            max_pending_bytes: 64 << 20,
            recent_uuids: 1_000_000,
            snapshot_retry: Duration::from_secs(1),
            epoch: 0,
            reorder_window: Duration::from_secs(5),
        }
    }
}

impl StoreConfig {
    /// The defaults (see each setter).
    pub fn new() -> Self {
        Self::default()
    }

    /// Heartbeat period (HUGZ are sent every period, busy or not and in
    /// every role, because a subtree client sees none of the other
    /// subtrees' traffic). Default 1 s.
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
    /// published); updates and deletes of existing keys still pass. A
    /// passive store applies the same bound to what the active sends.
    /// Default 10,000,000.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }
    /// Most bytes stored: keys, values and properties plus
    /// [`ENTRY_OVERHEAD`] (128) per key. A KVSET that would take the store
    /// beyond it is refused (not published); deletes and updates that do
    /// not grow the store still pass. A passive store applies the same
    /// bound to what the active sends. Default 1 GiB.
    pub fn max_store_bytes(mut self, n: usize) -> Self {
        self.max_store_bytes = n;
        self
    }
    /// Largest message accepted on the collector or from the active peer
    /// (the sum of its frames); a larger one is dropped unread. Default
    /// 16 MiB + 65 KiB (a 16 MiB value plus its key and up to 64 KiB of
    /// properties).
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
    /// The configured [`hugz_interval`](Self::hugz_interval).
    pub(super) fn hugz_every(&self) -> Duration {
        self.hugz_interval
    }
    /// The configured [`max_request_size`](Self::max_request_size).
    pub(super) fn request_size_limit(&self) -> usize {
        self.max_request_size
    }
    /// The configured [`max_store_bytes`](Self::max_store_bytes).
    pub(super) fn store_bytes_limit(&self) -> usize {
        self.max_store_bytes
    }
    /// This server's instance id, sent in HUGZ and KTHXBAI (random by
    /// default; `None` sends CHP's empty properties).
    pub fn instance(mut self, instance: Option<u64>) -> Self {
        self.instance = instance;
        self
    }
    /// Client updates a passive store keeps pending; beyond it the oldest
    /// is dropped (`pending_dropped`). Also bounds the live updates
    /// buffered while a snapshot is fetched from the active. Default
    /// 100,000.
    pub fn max_pending(mut self, n: usize) -> Self {
        self.max_pending = n;
        self
    }
    /// Bytes of the pending client updates (keys, values and properties plus
    /// [`ENTRY_OVERHEAD`] each); beyond it the oldest is dropped
    /// (`pending_dropped`). Also bounds the live updates buffered while a
    /// snapshot is fetched. Default 64 MiB.
    pub fn max_pending_bytes(mut self, n: usize) -> Self {
        self.max_pending_bytes = n;
        self
    }
    /// UUIDs of applied updates remembered for de-duplication (about 50
    /// bytes each: about 50 MiB at the default), oldest forgotten first; 0
    /// turns de-duplication off. A client update re-sent after more
    /// updates than this were applied since is applied again. Default
    /// 1,000,000.
    pub fn recent_uuids(mut self, n: usize) -> Self {
        self.recent_uuids = n;
        self
    }
    /// Pause before a passive store asks again for the active's snapshot
    /// after a failed fetch. Default 1 s.
    pub fn snapshot_retry(mut self, pause: Duration) -> Self {
        self.snapshot_retry = pause;
        self
    }
    /// How long a passive store remembers, per key, the latest client
    /// write it learned from the active (its UUID and sequence) and whether
    /// that write's own client copy has arrived. A client copy of another
    /// write of the key arriving before it is an older write (one client's
    /// updates reach both servers in order) and is dropped (`superseded`),
    /// also after promotion. At most `max_pending` keys are remembered
    /// (each about 100 bytes plus the key). Default 5 s.
    pub fn reorder_window(mut self, window: Duration) -> Self {
        self.reorder_window = window;
        self
    }
    /// The epoch the store starts with (a pair persists it and passes it
    /// back; [`Store::promote`] sets a new one). A store presents its epoch
    /// as the [`EPOCH`] property of its KVPUB, HUGZ and KTHXBAI when it is
    /// above 0. Default 0 (a single server: nothing added on the wire).
    pub fn epoch(mut self, epoch: u64) -> Self {
        self.epoch = epoch;
        self
    }
}

/// Counters of everything the state machine did or refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Client updates sequenced and published (sets and deletes), pending
    /// updates applied at promotion included.
    pub updates: u64,
    /// Ephemeral values expired (each published as a delete).
    pub expired: u64,
    /// Heartbeats published.
    pub hugz: u64,
    /// Snapshot requests accepted (started or queued).
    pub snapshot_requests: u64,
    /// Snapshot requests refused because a queue bound was reached.
    pub snapshots_refused: u64,
    /// Snapshot requests refused because the store is passive (no reply).
    pub passive_requests: u64,
    /// KVSETs refused by `max_keys` or `max_store_bytes` (on a passive
    /// store: updates from the active it could not store).
    pub kvsets_refused: u64,
    /// Collector messages dropped for exceeding `max_kvset_size`.
    pub oversized_kvsets: u64,
    /// Snapshot-socket messages dropped for exceeding `max_request_size`.
    pub oversized_requests: u64,
    /// Collector messages that were not valid KVSETs.
    pub bad_kvsets: u64,
    /// Snapshot-socket messages that were not valid `ICANHAZ?` requests.
    pub bad_requests: u64,
    /// Client KVSETs dropped because their UUID was already applied (or,
    /// on a passive store, is already pending).
    pub duplicates: u64,
    /// Client updates put on the pending list.
    pub pending_added: u64,
    /// Pending updates cancelled by the active's copy (same UUID).
    pub pending_cancelled: u64,
    /// Pending updates applied (and published) at promotion.
    pub pending_applied: u64,
    /// Pending updates dropped by `max_pending` or `max_pending_bytes`.
    pub pending_dropped: u64,
    /// Pending updates whose ttl had run out by promotion (not applied).
    pub pending_expired: u64,
    /// Client updates discarded as older than a client write of their key
    /// the active republished (or sent in a snapshot): pending ones queued
    /// before that write's own client copy, and late copies arriving within
    /// `reorder_window` before it. Never applied.
    pub superseded: u64,
    /// Peer messages refused because their epoch was lower than the
    /// highest seen.
    pub fenced: u64,
    /// KVPUBs received from the active peer (and not fenced).
    pub peer_updates: u64,
    /// Peer KVPUBs dropped as already applied (`seq <=` own sequence).
    pub peer_stale: u64,
    /// Peer messages that were oversized or did not decode.
    pub peer_malformed: u64,
    /// Sequence gaps detected in the peer's stream (each starts a snapshot).
    pub peer_gaps: u64,
    /// Snapshots fetched from the peer and applied.
    pub peer_snapshots: u64,
    /// Snapshot fetches that failed (retried after `snapshot_retry`).
    pub peer_snapshot_failures: u64,
    /// Times the live updates buffered during a snapshot fetch exceeded the
    /// pending bounds and were dropped.
    pub peer_buffer_overflows: u64,
}

/// What the server task must do.
#[derive(Debug)]
pub enum StoreAction {
    /// Publish these five frames (KVPUB or HUGZ) on the PUB socket.
    Publish([Bytes; 5]),
    /// Stream this snapshot to its peer, then call
    /// [`Store::handle_snapshot_done`].
    StartSnapshot(SnapshotCursor),
    /// (Passive store.) Fetch the active peer's snapshot without blocking:
    /// send `["ICANHAZ?"][""]` from a DEALER to the peer's snapshot port,
    /// collect KVSYNCs until KTHXBAI within a timeout, then report with
    /// [`Store::handle_peer_snapshot`] or
    /// [`Store::handle_peer_snapshot_failed`]. Never asked again before
    /// one of those is called.
    FetchSnapshot,
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
    duplicate: LogLimiter,
    pending_dropped: LogLimiter,
    fenced: LogLimiter,
    peer_bad: LogLimiter,
    peer_overflow: LogLimiter,
}

/// A passive store's snapshot fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// None needed or none under way.
    Idle,
    /// Asked for ([`StoreAction::FetchSnapshot`]), not reported yet.
    InFlight,
    /// Failed; ask again at this time.
    RetryAt(Instant),
}

/// The server state machine.
#[derive(Debug)]
pub struct Store {
    config: StoreConfig,
    role: Role,
    map: StoreMap,
    synced: bool,
    bytes: usize,
    sequence: u64,
    epoch: u64,
    observed_epoch: Option<u64>,
    expiries: BTreeSet<(Instant, Bytes)>,
    next_hugz: Instant,
    active_snapshots: usize,
    queued: VecDeque<(Bytes, Bytes)>,
    per_peer: HashMap<Bytes, usize>,
    pending: PendingList,
    recent: RecentUuids,
    awaited: Awaited,
    fetch: Fetch,
    buffer: VecDeque<KvMsg>,
    buffer_bytes: usize,
    stats: StoreStats,
    logs: Logs,
}

impl Store {
    /// An empty active store at sequence 0 (a single server).
    pub fn new(config: StoreConfig, now: Instant) -> Self {
        let mut store = Self::new_passive(config, now);
        store.role = Role::Active;
        store.synced = true;
        store
    }

    /// A passive store for one of a server pair: no map until the first
    /// snapshot from the active peer (fetched on the peer's first message),
    /// client updates kept pending, until [`promote`](Self::promote).
    pub fn new_passive(config: StoreConfig, now: Instant) -> Self {
        let next_hugz = now + config.hugz_interval;
        Self {
            role: Role::Passive,
            map: StoreMap::new(),
            synced: false,
            bytes: 0,
            sequence: 0,
            epoch: config.epoch,
            observed_epoch: None,
            expiries: BTreeSet::new(),
            next_hugz,
            active_snapshots: 0,
            queued: VecDeque::new(),
            per_peer: HashMap::new(),
            pending: PendingList::default(),
            recent: RecentUuids::new(config.recent_uuids),
            awaited: Awaited::new(config.max_pending, config.reorder_window),
            fetch: Fetch::Idle,
            buffer: VecDeque::new(),
            buffer_bytes: 0,
            stats: StoreStats::default(),
            logs: Logs::default(),
            config,
        }
    }

    /// The role.
    pub fn role(&self) -> Role {
        self.role
    }
    /// The last sequence number assigned (active) or applied from the
    /// active peer (passive).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }
    /// This store's epoch: the configured one until
    /// [`promote`](Self::promote) sets a new one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// The highest epoch the peer presented (in any role), if any; peer
    /// messages with a lower one are refused while passive.
    pub fn observed_epoch(&self) -> Option<u64> {
        self.observed_epoch
    }
    /// `true` once the store has a map: always when active, after the first
    /// peer snapshot when passive.
    pub fn is_synced(&self) -> bool {
        self.synced
    }
    /// Client updates pending (passive) and the bytes they count.
    pub fn pending_load(&self) -> (usize, usize) {
        (self.pending.len(), self.pending.bytes())
    }
    /// UUIDs remembered for de-duplication.
    pub fn recent_uuids(&self) -> usize {
        self.recent.len()
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

    /// A message the collector received: dropped if larger than
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

    /// A client's KVSET (already validated by the codec).
    ///
    /// Active: dropped if its UUID was applied recently (`duplicates`);
    /// refused if it would exceed `max_keys` or `max_store_bytes`; else
    /// sequenced, published (with the client's relative `ttl`, as
    /// received, and this store's epoch) and stored, its UUID remembered.
    ///
    /// Passive: dropped if its UUID was already applied from the active
    /// (`duplicates`) or is already pending; else appended to the pending
    /// list (oldest dropped beyond the pending bounds). An update without a
    /// UUID is never de-duplicated and never matches a pending one.
    ///
    /// Either role: a late copy of a write older than one of its key the
    /// active republished is dropped (`superseded`, see
    /// [`StoreConfig::reorder_window`]).
    pub fn handle_kvset(&mut self, msg: KvMsg, now: Instant) -> Vec<StoreAction> {
        if let Some(u) = msg.uuid() {
            self.awaited.arrived(msg.key(), u);
        }
        if msg.uuid().is_some_and(|u| self.recent.contains(u)) {
            self.stats.duplicates += 1;
            if let Some(suppressed) = self.logs.duplicate.check(now) {
                debug!(key = ?msg.key(), suppressed, "duplicate KVSET (UUID already applied) dropped");
            }
            return Vec::new();
        }
        if msg
            .uuid()
            .is_some_and(|u| self.awaited.is_older(msg.key(), u, now))
        {
            // The active republished a later write of this key whose own
            // client copy has not arrived: this copy is of an older one.
            self.stats.superseded += 1;
            debug!(key = ?msg.key(), "late client copy of an older write dropped");
            return Vec::new();
        }
        match self.role {
            Role::Active => {
                let deadline = msg.ttl().map(|ttl| now + ttl.min(self.config.max_ttl));
                self.commit(msg, deadline, now).into_iter().collect()
            }
            Role::Passive => {
                let pushed = self.pending.push(
                    msg,
                    now,
                    self.config.max_pending,
                    self.config.max_pending_bytes,
                );
                if pushed.added {
                    self.stats.pending_added += 1;
                } else {
                    self.stats.duplicates += 1;
                }
                if pushed.evicted > 0 {
                    self.stats.pending_dropped += pushed.evicted as u64;
                    if let Some(suppressed) = self.logs.pending_dropped.check(now) {
                        warn!(
                            max = self.config.max_pending,
                            max_bytes = self.config.max_pending_bytes,
                            suppressed,
                            "pending list full; oldest client update dropped"
                        );
                    }
                }
                Vec::new()
            }
        }
    }

    /// A snapshot request from `peer` for `subtree`: start it now, queue it,
    /// or refuse it when a bound is reached (counted and logged). A passive
    /// store refuses every request (no reply; `passive_requests`): its
    /// driver passes only the votes the Binary Star state machine accepted,
    /// which promote it first.
    pub fn handle_icanhaz(
        &mut self,
        peer: Bytes,
        subtree: Bytes,
        now: Instant,
    ) -> Vec<StoreAction> {
        if self.role == Role::Passive {
            self.stats.passive_requests += 1;
            if let Some(suppressed) = self.logs.snapshot_refused.check(now) {
                warn!(peer = ?peer, suppressed, "snapshot request refused: passive");
            }
            return Vec::new();
        }
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

    /// A message from the active peer's PUB (KVPUB or HUGZ); only a passive
    /// store acts on it (an active one records the epoch it presents and
    /// ignores it).
    ///
    /// Dropped if larger than `max_kvset_size` or malformed
    /// (`peer_malformed`), or if it presents an epoch lower than the
    /// highest seen (`fenced`). A KVPUB cancels the pending update with its
    /// UUID and supersedes the pending updates of its key queued before
    /// that one (all of them if its client copy has not arrived); its UUID
    /// is remembered. Without a map, the first message asks for a snapshot
    /// ([`StoreAction::FetchSnapshot`]) and KVPUBs are buffered until it
    /// arrives. With one, a KVPUB at the next sequence is applied (its
    /// relative `ttl` becoming a deadline from `now`), an older one is
    /// dropped (`peer_stale`), and a KVPUB beyond the next sequence or a
    /// HUGZ ahead of the store's sequence is a gap (`peer_gaps`): a new
    /// snapshot is fetched, which will replace the map.
    pub fn handle_peer_update(&mut self, frames: &[Bytes], now: Instant) -> Vec<StoreAction> {
        let size = frames_size(frames);
        let update = if size > self.config.max_kvset_size {
            Err(format!("oversized ({size} bytes)"))
        } else {
            Update::decode(frames).map_err(|e| e.to_string())
        };
        let update = match update {
            Ok(u) => u,
            Err(cause) => {
                self.stats.peer_malformed += 1;
                if let Some(suppressed) = self.logs.peer_bad.check(now) {
                    warn!(%cause, suppressed, "bad message from the active peer dropped");
                }
                return Vec::new();
            }
        };
        if self.role != Role::Passive {
            if let Some(epoch) = update.epoch() {
                self.observed_epoch = Some(self.observed_epoch.map_or(epoch, |e| e.max(epoch)));
            }
            return Vec::new();
        }
        if !self.accept_epoch(update.epoch(), now) {
            return Vec::new();
        }
        match update {
            Update::Hugz { seq, .. } => {
                if self.synced && self.fetch == Fetch::Idle && seq > self.sequence {
                    self.stats.peer_gaps += 1;
                    warn!(
                        own = self.sequence,
                        peer = seq,
                        "missed updates from the active; fetching its snapshot"
                    );
                    return self.start_fetch();
                }
                if !self.synced && self.fetch == Fetch::Idle {
                    return self.start_fetch();
                }
                Vec::new()
            }
            Update::Kvpub(msg) => {
                self.stats.peer_updates += 1;
                self.note_peer_write(&msg, now);
                if !self.synced || self.fetch != Fetch::Idle {
                    self.buffer_peer(msg, now);
                    if !self.synced && self.fetch == Fetch::Idle {
                        return self.start_fetch();
                    }
                    return Vec::new();
                }
                self.apply_peer(msg, now)
            }
        }
    }

    /// The active peer's snapshot, fetched as [`StoreAction::FetchSnapshot`]
    /// asked: its KVSYNC `entries`, KTHXBAI's `seq` and the `epoch` KTHXBAI
    /// presented. Refused if it presents an epoch lower than the highest
    /// seen (`fenced`; asked again after `snapshot_retry`). Otherwise it
    /// replaces the map (each entry's remaining `ttl` becoming a deadline
    /// from `now`), sets the sequence to `seq`, treats each entry whose UUID
    /// it did not know as a republished write (remembered, cancelling and
    /// superseding pending updates as a KVPUB does), then applies the
    /// buffered live updates newer than `seq`. Ignored
    /// unless a fetch was asked for and the store is still passive.
    pub fn handle_peer_snapshot(
        &mut self,
        entries: Vec<KvMsg>,
        seq: u64,
        epoch: Option<u64>,
        now: Instant,
    ) -> Vec<StoreAction> {
        if self.role != Role::Passive || self.fetch != Fetch::InFlight {
            debug!("unexpected peer snapshot ignored");
            return Vec::new();
        }
        if !self.accept_epoch(epoch, now) {
            self.fetch = Fetch::RetryAt(now + self.config.snapshot_retry);
            return Vec::new();
        }
        self.map = StoreMap::new();
        self.expiries.clear();
        self.bytes = 0;
        let keys = entries.len();
        for msg in entries {
            // Each entry is the last write of its key by the snapshot's
            // time: news unless its UUID was already known.
            self.note_peer_write(&msg, now);
            let deadline = msg.ttl().map(|ttl| now + ttl.min(self.config.max_ttl));
            let seq = msg.seq();
            self.store_peer(msg, seq, deadline, now);
        }
        self.sequence = seq;
        let map = &self.map;
        self.awaited
            .forget_deleted(seq, |key| map.contains_key(key));
        self.synced = true;
        self.fetch = Fetch::Idle;
        self.stats.peer_snapshots += 1;
        info!(seq, keys, "received snapshot from the active peer");
        let mut actions = Vec::new();
        let buffer = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        let mut buffer = buffer.into_iter();
        for msg in buffer.by_ref() {
            actions.extend(self.apply_peer(msg, now));
            if self.fetch != Fetch::Idle {
                break; // a gap: the rest waits for the next snapshot
            }
        }
        for msg in buffer {
            self.buffer_peer(msg, now);
        }
        actions
    }

    /// A snapshot fetch failed (timeout, connection error, bad data): the
    /// store asks again after `snapshot_retry` (from
    /// [`handle_timeout`](Self::handle_timeout)).
    pub fn handle_peer_snapshot_failed(&mut self, now: Instant) -> Vec<StoreAction> {
        if self.role == Role::Passive && self.fetch == Fetch::InFlight {
            self.stats.peer_snapshot_failures += 1;
            self.fetch = Fetch::RetryAt(now + self.config.snapshot_retry);
            warn!(
                retry_in = ?self.config.snapshot_retry,
                "snapshot from the active peer failed; will retry"
            );
        }
        Vec::new()
    }

    /// Makes a passive store active with `epoch`: applies the live updates
    /// still buffered (newer than its sequence), then the pending updates
    /// the active never republished, oldest first, each with a new
    /// sequence and published (a pending update's ttl counts from its
    /// arrival: one already run out is not applied, `pending_expired`).
    /// From then on it serves snapshots and expires keys (what fell due
    /// meanwhile expires at the next [`handle_timeout`](Self::handle_timeout)).
    /// A snapshot still being fetched is ignored when it arrives. No effect
    /// on an active store.
    pub fn promote(&mut self, epoch: u64, now: Instant) -> Vec<StoreAction> {
        if self.role == Role::Active {
            return Vec::new();
        }
        self.role = Role::Active;
        self.epoch = epoch;
        self.fetch = Fetch::Idle;
        self.synced = true;
        let buffered = std::mem::take(&mut self.buffer);
        self.buffer_bytes = 0;
        for msg in buffered {
            if msg.seq() > self.sequence {
                self.sequence = msg.seq();
                let deadline = msg.ttl().map(|ttl| now + ttl.min(self.config.max_ttl));
                let seq = msg.seq();
                self.store_peer(msg, seq, deadline, now);
            }
        }
        let mut actions = Vec::new();
        let pending = self.pending.drain();
        let count = pending.len();
        for p in pending {
            let mut msg = p.msg;
            let deadline = msg
                .ttl()
                .filter(|_| !msg.is_delete())
                .map(|ttl| p.arrived + ttl.min(self.config.max_ttl));
            if let Some(d) = deadline {
                if d <= now {
                    self.stats.pending_expired += 1;
                    continue;
                }
                let left = remaining_secs(d, now);
                msg.props_mut().set(TTL, &left).expect("valid ttl");
            }
            if let Some(action) = self.commit(msg, deadline, now) {
                self.stats.pending_applied += 1;
                actions.push(action);
            }
        }
        info!(
            epoch,
            seq = self.sequence,
            pending = count,
            applied = actions.len(),
            "promoted to active"
        );
        actions
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Instant {
        let mut next = self.next_hugz;
        if self.role == Role::Active {
            if let Some((deadline, _)) = self.expiries.first() {
                next = next.min(*deadline);
            }
        }
        if let Fetch::RetryAt(at) = self.fetch {
            next = next.min(at);
        }
        next
    }

    /// Active: expires due ephemeral values (each published as a delete
    /// with a new sequence). Every role: sends HUGZ when due, carrying the
    /// store's sequence (and its epoch, if above 0). Passive: asks again
    /// for the peer's snapshot when the retry pause is over.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<StoreAction> {
        let mut actions = Vec::new();
        while self.role == Role::Active {
            let Some((deadline, _)) = self.expiries.first() else {
                break;
            };
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
            self.present_epoch(&mut delete);
            actions.push(StoreAction::Publish(delete.encode()));
        }
        if now >= self.next_hugz {
            self.stats.hugz += 1;
            actions.push(StoreAction::Publish(Update::encode_hugz(
                self.sequence,
                self.config.instance,
                self.wire_epoch(),
            )));
            self.next_hugz = now + self.config.hugz_interval;
        }
        if matches!(self.fetch, Fetch::RetryAt(at) if now >= at) && self.role == Role::Passive {
            actions.extend(self.start_fetch());
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
                    .with_instance(self.config.instance)
                    .with_epoch(self.wire_epoch()),
            ));
        }
        actions
    }

    /// The epoch as presented on the wire: none at 0.
    fn wire_epoch(&self) -> Option<u64> {
        (self.epoch > 0).then_some(self.epoch)
    }

    /// Replaces any `epoch` property of an outgoing KVPUB by this store's.
    fn present_epoch(&self, msg: &mut KvMsg) {
        msg.props_mut().remove(EPOCH);
        if let Some(epoch) = self.wire_epoch() {
            msg.props_mut()
                .set(EPOCH, &epoch.to_string())
                .expect("valid property");
        }
    }

    /// Fencing: `false` (counted, logged) if `epoch` is below the highest
    /// seen; else records it. A message without an epoch always passes.
    fn accept_epoch(&mut self, epoch: Option<u64>, now: Instant) -> bool {
        let Some(epoch) = epoch else { return true };
        match self.observed_epoch {
            Some(seen) if epoch < seen => {
                self.stats.fenced += 1;
                if let Some(suppressed) = self.logs.fenced.check(now) {
                    warn!(
                        epoch,
                        seen, suppressed, "peer message from a lower epoch refused"
                    );
                }
                false
            }
            _ => {
                self.observed_epoch = Some(epoch);
                true
            }
        }
    }

    fn start_fetch(&mut self) -> Vec<StoreAction> {
        self.fetch = Fetch::InFlight;
        info!("asking the active peer for a snapshot");
        vec![StoreAction::FetchSnapshot]
    }

    /// What a KVPUB from the active tells about pending updates, whether or
    /// not it is applied now: its UUID is applied (cancel, remember), and
    /// the pending updates of its key that reached this server before that
    /// client write did (or before now, if its copy has not arrived) are
    /// older writes of the key: superseded. An update still pending when a
    /// (gap-free) KVPUB arrives was not applied by the active before it;
    /// one that reached this server *after* the KVPUB's own client copy
    /// may be applied by the active later, so it stays (dropping it could
    /// lose an acknowledged update). A KVPUB without a UUID (an expiry, or
    /// a client that sends none) supersedes nothing: it was not a client
    /// write racing the pending ones.
    fn note_peer_write(&mut self, msg: &KvMsg, now: Instant) {
        let Some(u) = msg.uuid() else { return };
        if self.recent.contains(u) {
            return; // known already (from a snapshot, or a stale repeat)
        }
        self.recent.insert(*u);
        let cancelled = self.pending.cancel(u);
        if cancelled.is_some() {
            self.stats.pending_cancelled += 1;
        }
        let flags = (msg.is_delete(), cancelled.is_some());
        if !self.awaited.insert(msg.key(), *u, msg.seq(), flags, now) {
            return; // older than a write of the key already known
        }
        let before = cancelled.unwrap_or(u64::MAX);
        self.stats.superseded += self.pending.supersede_before(msg.key(), before) as u64;
    }

    /// Buffers a live update while a snapshot is fetched; beyond the
    /// pending bounds the buffer is dropped (the gap starts a new fetch).
    fn buffer_peer(&mut self, msg: KvMsg, now: Instant) {
        let cost = PendingList::cost(&msg);
        if self.buffer.len() >= self.config.max_pending
            || self.buffer_bytes + cost > self.config.max_pending_bytes
        {
            self.stats.peer_buffer_overflows += 1;
            if let Some(suppressed) = self.logs.peer_overflow.check(now) {
                warn!(
                    buffered = self.buffer.len(),
                    suppressed, "too many live updates during the snapshot fetch; dropped"
                );
            }
            self.buffer.clear();
            self.buffer_bytes = 0;
            return;
        }
        self.buffer_bytes += cost;
        self.buffer.push_back(msg);
    }

    /// A live update from the active on a synced passive store.
    fn apply_peer(&mut self, msg: KvMsg, now: Instant) -> Vec<StoreAction> {
        let seq = msg.seq();
        if seq <= self.sequence {
            self.stats.peer_stale += 1;
            return Vec::new();
        }
        if seq > self.sequence + 1 {
            self.stats.peer_gaps += 1;
            warn!(
                own = self.sequence,
                peer = seq,
                "sequence gap from the active; fetching its snapshot"
            );
            self.buffer_peer(msg, now);
            return self.start_fetch();
        }
        self.sequence = seq;
        let deadline = msg.ttl().map(|ttl| now + ttl.min(self.config.max_ttl));
        self.store_peer(msg, seq, deadline, now);
        Vec::new()
    }

    /// Stores (or deletes) what the active sent, within the store bounds.
    fn store_peer(&mut self, msg: KvMsg, seq: u64, deadline: Option<Instant>, now: Instant) {
        let entry = (!msg.is_delete()).then(|| StoreEntry {
            seq,
            ..self.entry(&msg, deadline)
        });
        if self.refused(msg.key(), entry.as_ref(), now) {
            // The key stays as it was (a delete is never refused).
            return;
        }
        self.apply(msg.key().clone(), entry);
    }

    /// Active: sequences, publishes and stores a client update (refused by
    /// the store bounds: `None`); remembers its UUID.
    fn commit(
        &mut self,
        mut msg: KvMsg,
        deadline: Option<Instant>,
        now: Instant,
    ) -> Option<StoreAction> {
        let entry = (!msg.is_delete()).then(|| self.entry(&msg, deadline));
        if self.refused(msg.key(), entry.as_ref(), now) {
            return None;
        }
        self.sequence += 1;
        msg.set_seq(self.sequence);
        self.stats.updates += 1;
        if let Some(u) = msg.uuid() {
            self.recent.insert(*u);
        }
        self.apply(
            msg.key().clone(),
            entry.map(|e| StoreEntry {
                seq: self.sequence,
                ..e
            }),
        );
        self.present_epoch(&mut msg);
        debug!(seq = self.sequence, key = ?msg.key(), "publishing update");
        Some(StoreAction::Publish(msg.encode()))
    }

    /// `true` (counted, logged) if storing `entry` under `key` would exceed
    /// `max_keys` or `max_store_bytes`.
    fn refused(&mut self, key: &Bytes, entry: Option<&StoreEntry>, now: Instant) -> bool {
        let old = self.map.get(key).map_or(0, |e| e.cost(key));
        let new = entry.map_or(0, |e| e.cost(key));
        let too_many = entry.is_some() && old == 0 && self.map.len() >= self.config.max_keys;
        let too_big = new > old && self.bytes - old + new > self.config.max_store_bytes;
        if too_many || too_big {
            self.stats.kvsets_refused += 1;
            if let Some(suppressed) = self.logs.kvset_refused.check(now) {
                warn!(key = ?key, size = entry.map_or(0, |e| e.value.len()), keys = self.map.len(),
                      bytes = self.bytes, suppressed, "update refused: store limits reached");
            }
            return true;
        }
        false
    }

    /// The entry `msg` would store (sequence still 0), expiring at
    /// `deadline`; `ttl` and `epoch` are not kept in its properties.
    fn entry(&self, msg: &KvMsg, deadline: Option<Instant>) -> StoreEntry {
        let mut props = msg.props().clone();
        props.remove(TTL);
        props.remove(EPOCH);
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

/// Whole seconds left until `deadline` at `now`, rounded up, at least 1.
fn remaining_secs(deadline: Instant, now: Instant) -> String {
    let left = deadline.saturating_duration_since(now);
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.max(1).to_string()
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
                StoreAction::StartSnapshot(_) | StoreAction::FetchSnapshot => None,
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
                instance: Some(_),
                epoch: None,
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

#[cfg(test)]
#[path = "store_pair_tests.rs"]
mod pair_tests;
