//! The Clone client's state machine (the Guide's clone agent): which server
//! it talks to, snapshot-then-live synchronisation, failover, gap and
//! restart detection, and the local map.
//!
//! This module contains no networking code and reads no clock. The client
//! task opens a "link" (a DEALER and a SUB to one server) when told to with
//! [`AgentAction::Open`], feeds everything the link receives back tagged
//! with the link's `attempt` (stale links are ignored), and publishes the
//! KVSETs it is given.
//!
//! Per attempt: `Syncing` (KVSYNCs go into a fresh map, live updates are
//! buffered in memory up to a bound) until KTHXBAI, then `Active`. A
//! resync replaces the map (it never mixes old and new state) and reports
//! the differences as changes. Silence for `server_ttl` moves to the next
//! server; servers are retried forever, with a backoff after a whole round
//! of them failed.
//!
//! Acknowledgements and re-sending (for a Clone server pair, Guide ch. 5
//! `clonesrv6`, extended): every KVSET the client publishes for a key in
//! its subtree stays *in flight* until its UUID comes back from the server
//! on a KVPUB or a KVSYNC (a delete, which leaves no entry, is also
//! acknowledged by a snapshot without its key); that is the
//! acknowledgement ([`Agent::poll_ack`]). A KVSET for a key outside the subtree never comes
//! back (the client is not subscribed to it), so it is not tracked
//! (`untracked`). After every completed sync the agent re-sends, with the
//! same UUID, every update still in flight (of several for one key, only
//! the newest: re-sent, an older one could land after the newer one and
//! undo it): an update the dead active never sequenced reaches the new
//! one, and the servers' UUID de-duplication keeps one the new active
//! already applied from being applied twice. (A server
//! that does not de-duplicate, such as the Guide's, may apply a re-sent
//! update twice; with the Guide's assumption that clients do not write the
//! same key at the same time the value stays the same.)
//!
//! Fencing: the agent remembers the highest epoch a server presented (the
//! `epoch` property of KVPUB, HUGZ and KTHXBAI); a server presenting a lower
//! one is abandoned as if it had fallen silent (`fenced`). A server without
//! the property (a single server, the Guide's) is never fenced. HUGZ are
//! not checked while syncing, as they are not read then: a passive server
//! sends them too, with its own (older) epoch, until a vote promotes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::error::KvMsgError;
use super::inflight::InFlight;
use super::kvmsg::{KvMsg, Uuid, TTL};
use super::proto::{in_subtree, SnapshotReply, Update, HUGZ, ICANHAZ, KTHXBAI};
use crate::ratelog::LogLimiter;

/// Timers and bounds of the client state machine, built by chaining
/// setters on [`AgentConfig::new`]; each setter's doc gives its default.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    server_ttl: Duration,
    max_buffered: usize,
    max_buffered_bytes: usize,
    min_backoff: Duration,
    max_backoff: Duration,
    max_in_flight: usize,
    max_in_flight_bytes: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_ttl: Duration::from_secs(5),
            max_buffered: 1_000_000,
            max_buffered_bytes: 256 << 20,
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            max_in_flight: 100_000,
            max_in_flight_bytes: 64 << 20,
        }
    }
}

impl AgentConfig {
    /// The defaults (see each setter).
    pub fn new() -> Self {
        Self::default()
    }
    /// Silence (no HUGZ, update or snapshot data) after which the server is
    /// considered dead (the Guide's `SERVER_TTL`). Default 5 s.
    pub fn server_ttl(mut self, ttl: Duration) -> Self {
        self.server_ttl = ttl;
        self
    }
    /// Live updates held in memory while a snapshot streams; one more
    /// restarts the sync (`buffer_overflows`). Default 1,000,000.
    pub fn max_buffered(mut self, n: usize) -> Self {
        self.max_buffered = n;
        self
    }
    /// Bytes (keys, values, properties) of the live updates held while a
    /// snapshot streams; an update beyond it restarts the sync
    /// (`buffer_overflows`). Default 256 MiB.
    pub fn max_buffered_bytes(mut self, n: usize) -> Self {
        self.max_buffered_bytes = n;
        self
    }
    /// First pause after a whole round of servers failed (doubles, up to
    /// the maximum backoff). Default 250 ms.
    pub fn min_backoff(mut self, pause: Duration) -> Self {
        self.min_backoff = pause;
        self
    }
    /// Longest pause between rounds. Default 5 s.
    pub fn max_backoff(mut self, pause: Duration) -> Self {
        self.max_backoff = pause;
        self
    }
    /// Published updates kept in flight (not yet acknowledged) for
    /// re-sending; beyond it the oldest is forgotten (`in_flight_evicted`:
    /// never acknowledged, never re-sent). Default 100,000.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Bytes of the in-flight updates (keys, values and properties plus 64
    /// bytes each); beyond it the oldest is forgotten
    /// (`in_flight_evicted`). Default 64 MiB.
    pub fn max_in_flight_bytes(mut self, n: usize) -> Self {
        self.max_in_flight_bytes = n;
        self
    }
}

/// Why a key changed in the local map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ChangeCause {
    /// This client set it (applied at once, before the server confirms).
    Local,
    /// A (re)synchronisation from a snapshot.
    Sync,
    /// A live update from the server.
    Live,
}

/// One change of the local map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    key: Bytes,
    value: Option<Bytes>,
    seq: Option<u64>,
    cause: ChangeCause,
}

impl Change {
    /// The key.
    pub fn key(&self) -> &Bytes {
        &self.key
    }
    /// The new value; `None` if the key was deleted (or expired).
    pub fn value(&self) -> Option<&Bytes> {
        self.value.as_ref()
    }
    /// The server sequence of the change (`None` for local writes).
    pub fn seq(&self) -> Option<u64> {
        self.seq
    }
    /// Why it changed.
    pub fn cause(&self) -> ChangeCause {
        self.cause
    }
}

/// What the client task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Drop the current link and open a new one to server `server` (index
    /// in connect order), tagged `attempt`; it subscribes, then sends
    /// `ICANHAZ?`.
    Open {
        /// Which server.
        server: usize,
        /// Tag for everything the link reports.
        attempt: u64,
    },
    /// Send this KVSET to every server.
    Publish(KvMsg),
}

/// Where the state machine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// No server yet.
    Idle,
    /// Waiting between rounds of failed servers.
    Backoff,
    /// Receiving a snapshot from `server`.
    Syncing {
        /// Which server.
        server: usize,
    },
    /// Applying live updates from `server`.
    Active {
        /// Which server.
        server: usize,
        /// The last sequence applied.
        seq: u64,
    },
}

/// Counters of the state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AgentStats {
    /// Completed synchronisations (first sync and resyncs).
    pub syncs: u64,
    /// Servers abandoned after silence.
    pub failovers: u64,
    /// Resyncs because a sequence gap was detected.
    pub gaps: u64,
    /// Resyncs because the server's sequence went backwards (restart).
    pub restarts: u64,
    /// Syncs restarted because too many live updates were buffered.
    pub buffer_overflows: u64,
    /// Live updates discarded as already applied (`seq <=` last).
    pub stale: u64,
    /// Updates outside the subtree, ignored.
    pub filtered: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Messages dropped unread for exceeding the client's
    /// `max_message_size`.
    pub oversized: u64,
    /// Updates acknowledged: their UUID came back on a KVPUB or KVSYNC (a
    /// delete: or a snapshot lacked its key).
    pub acked: u64,
    /// In-flight updates re-sent after a sync.
    pub resent: u64,
    /// Updates in flight now (published, not acknowledged).
    pub in_flight: usize,
    /// In-flight updates forgotten by `max_in_flight` or
    /// `max_in_flight_bytes` (never acknowledged, never re-sent).
    pub in_flight_evicted: u64,
    /// In-flight updates dropped because a later update of the same key
    /// from this client was acknowledged, or is re-sent in their place
    /// (never re-sent, never acknowledged).
    pub in_flight_superseded: u64,
    /// Updates published but not tracked: outside the subtree (they never
    /// come back) or without a UUID.
    pub untracked: u64,
    /// Servers abandoned because they presented an epoch lower than the
    /// highest seen (also counted in `failovers`).
    pub fenced: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Item {
    value: Bytes,
    seq: u64,
}

#[derive(Debug)]
enum State {
    Idle,
    Backoff {
        until: Instant,
    },
    Syncing {
        fresh: HashMap<Bytes, Item>,
        buffer: VecDeque<KvMsg>,
        buffered_bytes: usize,
        /// In-flight UUIDs the snapshot carried (acknowledged at KTHXBAI
        /// unless the server is fenced).
        acks: HashSet<Uuid>,
    },
    Active {
        seq: u64,
    },
}

/// The client state machine.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    subtree: Bytes,
    servers: usize,
    current: usize,
    attempt: u64,
    expiry: Instant,
    failures: u32,
    hugz_carry_seq: bool,
    instance: Option<u64>,
    report: bool,
    state: State,
    map: HashMap<Bytes, Item>,
    actions: VecDeque<AgentAction>,
    changes: VecDeque<Change>,
    in_flight: InFlight,
    acks: VecDeque<Uuid>,
    report_acks: bool,
    epoch: Option<u64>,
    stats: AgentStats,
    bad_input_log: LogLimiter,
    evict_log: LogLimiter,
}

impl Agent {
    /// A client for keys under `subtree` (empty: all keys), with no server.
    pub fn new(config: AgentConfig, subtree: Bytes, now: Instant) -> Self {
        Self {
            config,
            subtree,
            servers: 0,
            current: 0,
            attempt: 0,
            expiry: now,
            failures: 0,
            hugz_carry_seq: false,
            instance: None,
            report: true,
            state: State::Idle,
            map: HashMap::new(),
            actions: VecDeque::new(),
            changes: VecDeque::new(),
            in_flight: InFlight::default(),
            acks: VecDeque::new(),
            report_acks: true,
            epoch: None,
            stats: AgentStats::default(),
            bad_input_log: LogLimiter::default(),
            evict_log: LogLimiter::default(),
        }
    }

    /// The subtree.
    pub fn subtree(&self) -> &Bytes {
        &self.subtree
    }
    /// The value of `key` in the local map.
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key).map(|i| &i.value)
    }
    /// Number of keys in the local map.
    pub fn len(&self) -> usize {
        self.map.len()
    }
    /// `true` if the local map is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    /// The local map's entries, sorted by key.
    pub fn entries(&self) -> Vec<(Bytes, Bytes)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .map(|(k, i)| (k.clone(), i.value.clone()))
            .collect();
        v.sort_unstable();
        v
    }
    /// The counters.
    pub fn stats(&self) -> &AgentStats {
        &self.stats
    }
    /// The current attempt tag (events with another tag are stale).
    pub fn attempt(&self) -> u64 {
        self.attempt
    }
    /// Where the machine is.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Backoff { .. } => Phase::Backoff,
            State::Syncing { .. } => Phase::Syncing {
                server: self.current,
            },
            State::Active { seq } => Phase::Active {
                server: self.current,
                seq: *seq,
            },
        }
    }

    /// The next action for the task, if any.
    pub fn poll_action(&mut self) -> Option<AgentAction> {
        self.actions.pop_front()
    }
    /// Whether to queue [`Change`]s (on by default). The task turns it off
    /// while nobody listens, which spares a million-key sync a million
    /// events.
    pub fn set_report_changes(&mut self, report: bool) {
        self.report = report;
        if !report {
            self.changes.clear();
        }
    }

    /// The next change of the local map, if any.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    /// Whether to queue acknowledgements for [`poll_ack`](Self::poll_ack)
    /// (on by default; in-flight tracking and re-sending happen either
    /// way).
    pub fn set_report_acks(&mut self, report: bool) {
        self.report_acks = report;
        if !report {
            self.acks.clear();
        }
    }

    /// The UUID of the next update acknowledged (seen republished by the
    /// server, on a KVPUB or in a snapshot), if any.
    pub fn poll_ack(&mut self) -> Option<Uuid> {
        self.acks.pop_front()
    }

    /// Updates published and not yet acknowledged, and the bytes they count
    /// against [`AgentConfig::max_in_flight_bytes`].
    pub fn in_flight(&self) -> (usize, usize) {
        (self.in_flight.len(), self.in_flight.bytes())
    }

    /// The highest epoch a server presented, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// A server was added (the task keeps the address list); the first one
    /// starts synchronisation.
    pub fn handle_server_added(&mut self, now: Instant) {
        self.servers += 1;
        if matches!(self.state, State::Idle) {
            info!(server = 0, "waiting for server");
            self.open(0, now);
        }
    }

    /// The application sets a key (a message from [`kvset`]): publish it
    /// and, if the key is in the subtree, apply it locally at once and keep
    /// it in flight until acknowledged (a key outside the subtree, or a
    /// message without a UUID, is not tracked: `untracked`).
    pub fn handle_set(&mut self, msg: KvMsg, now: Instant) {
        let (key, value) = (msg.key().clone(), msg.body().clone());
        let tracked = in_subtree(&key, &self.subtree);
        match msg.uuid().copied().filter(|_| tracked) {
            Some(uuid) => {
                let evicted = self.in_flight.push(
                    uuid,
                    msg.clone(),
                    self.config.max_in_flight,
                    self.config.max_in_flight_bytes,
                );
                if evicted > 0 {
                    self.stats.in_flight_evicted += evicted as u64;
                    if let Some(suppressed) = self.evict_log.check(now) {
                        warn!(
                            max = self.config.max_in_flight,
                            max_bytes = self.config.max_in_flight_bytes,
                            suppressed,
                            "too many unacknowledged updates; oldest forgotten"
                        );
                    }
                }
                self.stats.in_flight = self.in_flight.len();
            }
            None => self.stats.untracked += 1,
        }
        self.actions.push_back(AgentAction::Publish(msg));
        if tracked {
            let item = (!value.is_empty()).then_some(Item { value, seq: 0 });
            self.store(key, item, None, ChangeCause::Local);
        }
    }

    /// A message from the link's snapshot DEALER.
    pub fn handle_snapshot(&mut self, attempt: u64, reply: SnapshotReply, now: Instant) {
        if attempt != self.attempt {
            return;
        }
        let State::Syncing { fresh, acks, .. } = &mut self.state else {
            debug!("snapshot data outside a sync ignored");
            return;
        };
        self.expiry = now + self.config.server_ttl;
        match reply {
            SnapshotReply::Kvsync(msg) => {
                if let Some(u) = msg.uuid().filter(|u| self.in_flight.contains(u)) {
                    acks.insert(*u);
                }
                if !in_subtree(msg.key(), &self.subtree) {
                    self.stats.filtered += 1;
                } else if msg.is_delete() {
                    fresh.remove(msg.key());
                } else {
                    let item = Item {
                        value: msg.body().clone(),
                        seq: msg.seq(),
                    };
                    fresh.insert(msg.key().clone(), item);
                }
            }
            SnapshotReply::Kthxbai {
                seq,
                instance,
                epoch,
                ..
            } => {
                let mut acks: Vec<Uuid> = std::mem::take(acks).into_iter().collect();
                // A delete leaves nothing to carry its UUID: a key absent
                // from the snapshot acknowledges the deletes of it.
                acks.extend(
                    self.in_flight
                        .deletes()
                        .into_iter()
                        .filter(|(_, key)| !fresh.contains_key(key))
                        .map(|(uuid, _)| uuid),
                );
                if !self.accept_epoch(epoch, now) {
                    return;
                }
                for uuid in acks {
                    self.ack(&uuid);
                }
                self.instance = instance;
                self.finish_sync(seq, now);
                self.resend();
            }
        }
    }

    /// A message from the link's SUB.
    pub fn handle_update(&mut self, attempt: u64, update: Update, now: Instant) {
        if attempt != self.attempt {
            return;
        }
        let checked = match (&self.state, &update) {
            (State::Syncing { .. } | State::Active { .. }, Update::Kvpub(_))
            | (State::Active { .. }, Update::Hugz { .. }) => update.epoch(),
            _ => None,
        };
        if !self.accept_epoch(checked, now) {
            return;
        }
        if let Update::Kvpub(msg) = &update {
            if let Some(uuid) = msg.uuid().copied() {
                if matches!(self.state, State::Syncing { .. } | State::Active { .. }) {
                    self.ack(&uuid);
                }
            }
        }
        match (&mut self.state, update) {
            (
                State::Syncing {
                    buffer,
                    buffered_bytes,
                    ..
                },
                Update::Kvpub(msg),
            ) => {
                // Buffered in memory, not left in a socket queue.
                let size = msg.key().len() + msg.body().len() + msg.props().encoded_len();
                if buffer.len() >= self.config.max_buffered
                    || *buffered_bytes + size > self.config.max_buffered_bytes
                {
                    self.stats.buffer_overflows += 1;
                    warn!(
                        max = self.config.max_buffered,
                        max_bytes = self.config.max_buffered_bytes,
                        "too many updates during sync; restarting sync"
                    );
                    self.open(self.current, now);
                    return;
                }
                *buffered_bytes += size;
                buffer.push_back(msg);
            }
            (State::Syncing { .. }, Update::Hugz { .. }) => {}
            (State::Active { .. }, Update::Kvpub(msg)) => {
                self.expiry = now + self.config.server_ttl;
                self.apply_live(msg, now);
            }
            (
                State::Active { seq },
                Update::Hugz {
                    seq: hugz,
                    instance,
                    ..
                },
            ) => {
                let last = *seq;
                self.expiry = now + self.config.server_ttl;
                self.hugz_carry_seq |= hugz > 0;
                let restarted = instance.is_some() && instance != self.instance;
                if restarted || (self.hugz_carry_seq && hugz < last) {
                    self.stats.restarts += 1;
                    warn!(
                        last,
                        hugz, "server sequence went backwards (restart?); resyncing"
                    );
                    self.open(self.current, now);
                } else if self.subtree.is_empty() && hugz > last {
                    self.stats.gaps += 1;
                    warn!(last, hugz, "missed updates before heartbeat; resyncing");
                    self.open(self.current, now);
                }
            }
            (State::Idle | State::Backoff { .. }, _) => {}
        }
    }

    /// A message from the link that did not decode (logged at most once
    /// a second).
    pub fn handle_malformed(&mut self, attempt: u64, cause: &KvMsgError, now: Instant) {
        if attempt == self.attempt {
            self.stats.malformed += 1;
            if let Some(suppressed) = self.bad_input_log.check(now) {
                warn!(cause = %cause, suppressed, "malformed message from server dropped");
            }
        }
    }

    /// The link dropped a message of `size` bytes unread, for exceeding the
    /// client's `max_message_size` (logged at most once a second). The
    /// local map lacks whatever it carried; without a subtree the sequence
    /// gap it leaves triggers a resync.
    pub fn handle_oversized(&mut self, attempt: u64, size: usize, now: Instant) {
        if attempt == self.attempt {
            self.stats.oversized += 1;
            if let Some(suppressed) = self.bad_input_log.check(now) {
                warn!(size, suppressed, "oversized message from server dropped");
            }
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Idle => None,
            State::Backoff { until } => Some(*until),
            State::Syncing { .. } | State::Active { .. } => Some(self.expiry),
        }
    }

    /// Silence or backoff expiry: move to the next server.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Idle => {}
            State::Backoff { until } if now >= until => self.open(self.current, now),
            State::Syncing { .. } | State::Active { .. } if now >= self.expiry => {
                info!(
                    server = self.current,
                    "server didn't give HUGZ; failing over"
                );
                self.fail_over(now);
            }
            _ => {}
        }
    }

    /// Abandons the current server for the next one (after a backoff once a
    /// whole round failed).
    fn fail_over(&mut self, now: Instant) {
        self.stats.failovers += 1;
        self.failures += 1;
        self.current = (self.current + 1) % self.servers.max(1);
        let rounds = self.failures / self.servers.max(1) as u32;
        if rounds == 0 {
            self.open(self.current, now);
        } else {
            let backoff = self.config.min_backoff * 2u32.saturating_pow(rounds - 1);
            let until = now + backoff.min(self.config.max_backoff);
            self.state = State::Backoff { until };
        }
    }

    /// Fencing: `false` if `epoch` is below the highest seen, after
    /// abandoning the server (counted, logged); else records it. No epoch
    /// always passes.
    fn accept_epoch(&mut self, epoch: Option<u64>, now: Instant) -> bool {
        let Some(epoch) = epoch else { return true };
        match self.epoch {
            Some(seen) if epoch < seen => {
                self.stats.fenced += 1;
                warn!(
                    server = self.current,
                    epoch, seen, "server presents an older epoch; failing over"
                );
                self.fail_over(now);
                false
            }
            _ => {
                self.epoch = Some(epoch);
                true
            }
        }
    }

    /// `uuid` came back from the server: acknowledged if in flight.
    fn ack(&mut self, uuid: &Uuid) {
        if let Some(acked) = self.in_flight.ack(uuid) {
            self.stats.acked += 1;
            self.stats.in_flight_superseded += acked.superseded as u64;
            self.stats.in_flight = self.in_flight.len();
            if self.report_acks {
                self.acks.push_back(*uuid);
            }
        }
    }

    /// Re-sends the updates still in flight, oldest first, same UUIDs:
    /// of several for one key only the newest (an older one, re-sent, could
    /// arrive after the newer one's first copy and undo it).
    fn resend(&mut self) {
        let (msgs, older) = self.in_flight.latest_per_key();
        self.stats.in_flight_superseded += older as u64;
        self.stats.in_flight = self.in_flight.len();
        if !msgs.is_empty() {
            info!(count = msgs.len(), "re-sending unacknowledged updates");
        }
        self.stats.resent += msgs.len() as u64;
        self.actions
            .extend(msgs.into_iter().map(AgentAction::Publish));
    }

    fn open(&mut self, server: usize, now: Instant) {
        self.current = server;
        self.hugz_carry_seq = false;
        self.instance = None;
        self.attempt += 1;
        self.expiry = now + self.config.server_ttl;
        self.state = State::Syncing {
            fresh: HashMap::new(),
            buffer: VecDeque::new(),
            buffered_bytes: 0,
            acks: HashSet::new(),
        };
        self.actions.push_back(AgentAction::Open {
            server,
            attempt: self.attempt,
        });
    }

    fn finish_sync(&mut self, snapshot_seq: u64, now: Instant) {
        let State::Syncing { fresh, buffer, .. } = std::mem::replace(&mut self.state, State::Idle)
        else {
            unreachable!("checked by the caller");
        };
        self.failures = 0;
        self.stats.syncs += 1;
        info!(
            server = self.current,
            seq = snapshot_seq,
            keys = fresh.len(),
            "received snapshot"
        );
        let old = std::mem::replace(&mut self.map, fresh);
        self.report_differences(old);
        self.state = State::Active { seq: snapshot_seq };
        for msg in buffer {
            self.apply_live(msg, now);
            if !matches!(self.state, State::Active { .. }) {
                return; // a gap: a new sync has started
            }
        }
    }

    fn report_differences(&mut self, old: HashMap<Bytes, Item>) {
        if !self.report {
            return;
        }
        for (key, item) in &self.map {
            if old.get(key).is_none_or(|o| o.value != item.value) {
                self.changes.push_back(Change {
                    key: key.clone(),
                    value: Some(item.value.clone()),
                    seq: Some(item.seq),
                    cause: ChangeCause::Sync,
                });
            }
        }
        for (key, _) in old.into_iter().filter(|(k, _)| !self.map.contains_key(k)) {
            self.changes.push_back(Change {
                key,
                value: None,
                seq: None,
                cause: ChangeCause::Sync,
            });
        }
    }

    fn apply_live(&mut self, msg: KvMsg, now: Instant) {
        let State::Active { seq: last } = &mut self.state else {
            return;
        };
        let seq = msg.seq();
        if seq <= *last {
            self.stats.stale += 1;
            return;
        }
        if self.subtree.is_empty() && seq > *last + 1 {
            self.stats.gaps += 1;
            warn!(last = *last, seq, "sequence gap; resyncing");
            self.open(self.current, now);
            return;
        }
        *last = seq;
        if !in_subtree(msg.key(), &self.subtree) {
            self.stats.filtered += 1;
            return;
        }
        let item = (!msg.is_delete()).then(|| Item {
            value: msg.body().clone(),
            seq,
        });
        self.store(msg.key().clone(), item, Some(seq), ChangeCause::Live);
    }

    /// Applies one change; reports it only if the value changed.
    fn store(&mut self, key: Bytes, item: Option<Item>, seq: Option<u64>, cause: ChangeCause) {
        let changed = match &item {
            Some(new) => self
                .map
                .insert(key.clone(), new.clone())
                .is_none_or(|old| old.value != new.value),
            None => self.map.remove(&key).is_some(),
        };
        if changed && self.report {
            self.changes.push_back(Change {
                key,
                value: item.map(|i| i.value),
                seq,
                cause,
            });
        }
    }
}

/// Builds a client's KVSET: `key` (not a CHP command name) set to `value`
/// (empty deletes), `ttl` as whole seconds rounded up (none or zero: not
/// ephemeral), carrying `uuid`.
pub fn kvset(
    key: Bytes,
    value: Bytes,
    ttl: Option<Duration>,
    uuid: [u8; 16],
) -> Result<KvMsg, KvMsgError> {
    if key == HUGZ || key == KTHXBAI || key == ICANHAZ {
        return Err(KvMsgError::ReservedKey(
            String::from_utf8_lossy(&key).into(),
        ));
    }
    let mut msg = KvMsg::new(key, value)?;
    msg.set_uuid(Some(uuid));
    if let Some(ttl) = ttl.filter(|t| !t.is_zero()) {
        let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        msg.props_mut().set(TTL, &secs.to_string()).expect("valid");
    }
    Ok(msg)
}

#[cfg(test)]
#[path = "agent_tests.rs"]
mod tests;
