//! `KvClient`: a sans-IO client of the replicated store hosting one or more
//! client sessions, each with one request outstanding.
//!
//! A session sends its request to the leader it believes in, follows
//! redirects, and on a timeout retries the same `(client, seq)` at the
//! next replica, so a retried command is applied once (the store's
//! sessions deduplicate). Every operation is recorded with its invocation
//! and completion times, for the linearizability checker; one that never
//! completed is indeterminate (it may or may not have taken effect), and
//! so is one answered [`Outcome::SessionExpired`] (the store had evicted
//! the session; see [`KvStore`](super::KvStore)): the session then carries
//! on with its next operation. It contains no networking code and reads no
//! clock; it is a protocol core driven by a driver, not a handle (it owns
//! no task).

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tracing::warn;

use super::kv::{ClientId, Op, Outcome};
use super::msg::Msg;
use super::node::{random_between, LogGate};
use crate::det::Rng;
use crate::transport::{NodeId, Outbox, Process, Time};

/// Configuration of a [`KvClient`].
#[derive(Clone, Debug)]
pub struct KvClientConfig {
    replicas: Vec<NodeId>,
    request_timeout: Duration,
    redirect_backoff: Duration,
    think_min: Duration,
    think_max: Duration,
    seed: u64,
    max_message: usize,
}

impl KvClientConfig {
    /// A client of the replicas that can lead (the proposers).
    pub fn new(replicas: &[NodeId]) -> Self {
        KvClientConfig {
            replicas: replicas.to_vec(),
            request_timeout: Duration::from_millis(500),
            redirect_backoff: Duration::from_millis(20),
            think_min: Duration::ZERO,
            think_max: Duration::ZERO,
            seed: 0,
            max_message: 16 << 20,
        }
    }

    /// How long to wait for a reply before retrying elsewhere (default
    /// 500 ms).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Pause between a session's operations, uniform in `min..=max`
    /// (default none).
    pub fn think(mut self, min: Duration, max: Duration) -> Self {
        self.think_min = min;
        self.think_max = max.max(min);
        self
    }

    /// Seed of the random workload and think times (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Largest message accepted from a replica, in bytes (default 16 MiB;
    /// larger ones are dropped and counted as garbage). Operations larger
    /// than a quarter of it are refused by [`KvClient::push`] (replicas
    /// with the same setting would refuse them).
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.max(1024);
        self
    }
}

/// One operation of a client's history.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OpRecord {
    /// The session.
    pub client: ClientId,
    /// Its sequence number.
    pub seq: u64,
    /// The operation.
    pub op: Op,
    /// When it was first sent.
    pub invoked: Time,
    /// When and how it completed; `None`: indeterminate.
    pub completed: Option<(Time, Outcome)>,
}

#[derive(Debug)]
struct Current {
    seq: u64,
    record: usize,
    target: NodeId,
    deadline: Time,
    /// The deadline is a redirect's, not a timeout.
    redirected: bool,
}

#[derive(Debug)]
struct Session {
    id: ClientId,
    seq: u64,
    current: Option<Current>,
    ready_at: Option<Time>,
    queue: VecDeque<Op>,
}

#[derive(Debug)]
struct RandomOps {
    keys: u32,
    until: Time,
}

/// Counters of a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KvClientStats {
    /// Requests sent, retries included.
    pub sent: u64,
    /// Retries after a timeout.
    pub timeouts: u64,
    /// Redirects followed.
    pub redirects: u64,
    /// Operations completed.
    pub completed: u64,
    /// Replies that matched no outstanding request (late duplicates).
    pub stray: u64,
    /// Undecodable or oversized messages.
    pub garbage: u64,
    /// Operations answered [`Outcome::SessionExpired`] (recorded as
    /// indeterminate).
    pub expired: u64,
    /// Operations refused by [`KvClient::push`] as too large.
    pub refused: u64,
}

/// A client process hosting sessions of the key-value store.
#[derive(Debug)]
pub struct KvClient {
    me: NodeId,
    cfg: KvClientConfig,
    sessions: Vec<Session>,
    history: Vec<OpRecord>,
    leader: Option<NodeId>,
    next_replica: usize,
    rng: Rng,
    random: Option<RandomOps>,
    stats: KvClientStats,
    log: LogGate,
}

impl KvClient {
    /// A client at node `me` with the given sessions.
    pub fn new(me: NodeId, cfg: KvClientConfig, sessions: &[ClientId]) -> Self {
        let rng = Rng::new(cfg.seed ^ u64::from(me.0).rotate_left(17));
        KvClient {
            me,
            sessions: sessions
                .iter()
                .map(|id| Session {
                    id: *id,
                    seq: 0,
                    current: None,
                    ready_at: None,
                    queue: VecDeque::new(),
                })
                .collect(),
            history: Vec::new(),
            leader: None,
            next_replica: 0,
            rng,
            random: None,
            cfg,
            stats: KvClientStats::default(),
            log: LogGate::default(),
        }
    }

    /// Queues `op` on the session at `index` (runs as soon as the session
    /// is idle). An operation larger than a quarter of
    /// [`KvClientConfig::max_message`] is refused (counted in
    /// [`KvClientStats::refused`], logged).
    pub fn push(&mut self, index: usize, op: Op) {
        if op.size() > self.cfg.max_message / 4 {
            self.stats.refused += 1;
            warn!(client = %self.me, bytes = op.size(), "operation too large; refused");
            return;
        }
        if let Some(s) = self.sessions.get_mut(index) {
            s.queue.push_back(op);
            s.ready_at.get_or_insert(Time::ZERO);
        }
    }

    /// Makes every session issue random get/put/cas operations on `keys`
    /// keys until `until` (puts write unique values).
    pub fn random_workload(&mut self, keys: u32, until: Time) {
        self.random = Some(RandomOps {
            keys: keys.max(1),
            until,
        });
        for s in &mut self.sessions {
            s.ready_at.get_or_insert(Time::ZERO);
        }
    }

    /// Stops issuing new operations: clears the queues and the random
    /// workload (outstanding ones still retry until answered).
    pub fn stop(&mut self) {
        self.random = None;
        for s in &mut self.sessions {
            s.queue.clear();
            s.ready_at = None;
        }
    }

    /// The history so far.
    pub fn history(&self) -> &[OpRecord] {
        &self.history
    }

    /// True if nothing is outstanding or queued.
    pub fn is_idle(&self) -> bool {
        self.sessions
            .iter()
            .all(|s| s.current.is_none() && s.queue.is_empty())
            && self.random.is_none()
    }

    /// Counters.
    pub fn stats(&self) -> KvClientStats {
        self.stats
    }

    /// This client's node id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    fn pick_target(&mut self) -> NodeId {
        if let Some(l) = self.leader {
            return l;
        }
        let n = self.cfg.replicas.len().max(1);
        let t = self.cfg.replicas.get(self.next_replica % n).copied();
        self.next_replica += 1;
        t.unwrap_or(self.me)
    }

    fn next_op(&mut self, i: usize, now: Time) -> Option<Op> {
        if let Some(op) = self.sessions[i].queue.pop_front() {
            return Some(op);
        }
        let r = self.random.as_ref()?;
        if now >= r.until {
            return None;
        }
        let key = Bytes::from(format!("k{}", self.rng.below(u64::from(r.keys))));
        let s = &self.sessions[i];
        let value = Bytes::from(format!("{}-{}", s.id, s.seq + 1));
        Some(match self.rng.below(10) {
            0..=3 => Op::Get { key },
            4..=6 => Op::Put { key, value },
            _ => {
                // Expect the value this key had at our last completed
                // operation on it (often stale: both outcomes happen).
                let expect = self.last_known(&key);
                Op::Cas {
                    key,
                    expect,
                    new: value,
                }
            }
        })
    }

    fn last_known(&self, key: &Bytes) -> Option<Bytes> {
        self.history
            .iter()
            .rev()
            .find_map(|r| match (&r.op, &r.completed) {
                (Op::Get { key: k }, Some((_, Outcome::Read(v)))) if k == key => Some(v.clone()),
                (Op::Put { key: k, value }, Some(_)) if k == key => Some(Some(value.clone())),
                _ => None,
            })?
    }

    fn start(&mut self, i: usize, now: Time, out: &mut Outbox) {
        self.sessions[i].ready_at = None;
        let Some(op) = self.next_op(i, now) else {
            return;
        };
        let target = self.pick_target();
        let s = &mut self.sessions[i];
        s.seq += 1;
        self.history.push(OpRecord {
            client: s.id,
            seq: s.seq,
            op,
            invoked: now,
            completed: None,
        });
        s.current = Some(Current {
            seq: s.seq,
            record: self.history.len() - 1,
            target,
            deadline: now,
            redirected: false,
        });
        self.send(i, now, out);
    }

    fn send(&mut self, i: usize, now: Time, out: &mut Outbox) {
        let s = &mut self.sessions[i];
        let Some(c) = &mut s.current else { return };
        c.deadline = now + self.cfg.request_timeout;
        let msg = Msg::Request {
            client: s.id,
            seq: c.seq,
            op: self.history[c.record].op.clone(),
        };
        self.stats.sent += 1;
        out.send(c.target, msg.encode());
    }

    fn session_of(&self, client: ClientId, seq: u64) -> Option<usize> {
        self.sessions
            .iter()
            .position(|s| s.id == client && s.current.as_ref().is_some_and(|c| c.seq == seq))
    }

    fn on_reply(&mut self, now: Time, from: NodeId, client: ClientId, seq: u64, outcome: Outcome) {
        let Some(i) = self.session_of(client, seq) else {
            self.stats.stray += 1;
            return;
        };
        let Some(c) = self.sessions[i].current.take() else {
            return;
        };
        if outcome == Outcome::SessionExpired {
            // Not executed now, but an earlier copy may have run before
            // the store evicted the session: indeterminate.
            self.stats.expired += 1;
        } else {
            self.history[c.record].completed = Some((now, outcome));
            self.stats.completed += 1;
        }
        self.leader = Some(from);
        let think = random_between(&mut self.rng, self.cfg.think_min, self.cfg.think_max);
        self.sessions[i].ready_at = Some(now + think);
    }

    fn on_redirect(
        &mut self,
        now: Time,
        from: NodeId,
        client: ClientId,
        seq: u64,
        leader: Option<NodeId>,
    ) {
        let Some(i) = self.session_of(client, seq) else {
            self.stats.stray += 1;
            return;
        };
        self.stats.redirects += 1;
        let hint = leader.filter(|l| *l != from && self.cfg.replicas.contains(l));
        self.leader = hint;
        let target = match hint {
            Some(l) => l,
            None => self.pick_target(),
        };
        let backoff = self.cfg.redirect_backoff;
        if let Some(c) = &mut self.sessions[i].current {
            c.target = target;
            c.redirected = true;
            // Without a hint, wait a little: an election may be running.
            c.deadline = if hint.is_some() { now } else { now + backoff };
        }
    }
}

impl Process for KvClient {
    fn handle_message(&mut self, now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        if msg.len() > self.cfg.max_message {
            self.stats.garbage += 1;
            if let Some(suppressed) = self.log.check(now) {
                warn!(client = %self.me, peer = %from, bytes = msg.len(), suppressed, "oversized message ignored");
            }
            return;
        }
        match Msg::decode(msg) {
            Ok(Msg::Reply {
                client,
                seq,
                outcome,
            }) => self.on_reply(now, from, client, seq, outcome),
            Ok(Msg::Redirect {
                client,
                seq,
                leader,
            }) => self.on_redirect(now, from, client, seq, leader),
            Ok(_) => self.stats.stray += 1,
            Err(e) => {
                self.stats.garbage += 1;
                if let Some(suppressed) = self.log.check(now) {
                    warn!(client = %self.me, peer = %from, cause = %e, suppressed, "undecodable message ignored");
                }
            }
        }
        self.handle_timeout(now, out);
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        for i in 0..self.sessions.len() {
            let s = &mut self.sessions[i];
            let (due, redirected, start) = match &mut s.current {
                Some(c) if c.deadline <= now => (true, std::mem::take(&mut c.redirected), false),
                Some(_) => (false, false, false),
                None => (false, false, s.ready_at.is_some_and(|t| t <= now)),
            };
            if due {
                if !redirected {
                    // No answer in time: the target may be down.
                    self.stats.timeouts += 1;
                    self.leader = None;
                    let t = self.pick_target();
                    if let Some(c) = &mut self.sessions[i].current {
                        c.target = t;
                    }
                }
                self.send(i, now, out);
            } else if start {
                self.start(i, now, out);
            }
        }
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.sessions
            .iter()
            .filter_map(|s| match &s.current {
                Some(c) => Some(c.deadline),
                None => s.ready_at,
            })
            .min()
    }
}
