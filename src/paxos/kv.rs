//! The replicated key-value state machine: get/put/cas on byte keys, with
//! client sessions so a retried request applies once.
//!
//! Every replica applies the same decided commands in slot order, so every
//! replica computes the same outcomes. A session remembers, per client, the
//! highest sequence number applied and its outcome: a command with an
//! older or equal sequence is not applied again, and the equal one is
//! answered from the session (exactly-once under retries).
//!
//! # Bounded sessions
//!
//! Client ids are chosen by clients, so the session table is bounded
//! ([`KvStore::with_max_sessions`], default [`DEFAULT_MAX_SESSIONS`]): when
//! a command from a client without a session would exceed the bound, the
//! least recently used session is evicted (counted in
//! [`KvStore::evicted_sessions`]). Recency is measured in applied commands,
//! and eviction happens while applying the log, so every replica evicts the
//! same sessions at the same slot: the table is part of the replicated
//! state, and every replica must use the same bound.
//!
//! What an evicted client gets: a command with `seq > 1` from a client the
//! store has no session for is **not executed**; its outcome is
//! [`Outcome::SessionExpired`], remembered as that client's new session (so
//! retries of it get the same answer, and its next command runs normally).
//! The client cannot tell whether an earlier copy of that command ran
//! before the eviction, so it must treat it as indeterminate
//! ([`KvClient`](super::KvClient) records it so). The one case the bound
//! cannot catch: a retry of a client's *first* command (`seq` 1) that
//! arrives after that client's session was evicted runs again. For that,
//! [`DEFAULT_MAX_SESSIONS`] other clients must be served while the retry is
//! in flight.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;

use super::wire::{Reader, Writer};
use super::MsgDecodeError;

/// A client session identity (unique per client; one process may host
/// many clients).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// An operation on the store.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Op {
    /// Read a key.
    Get {
        /// The key.
        key: Bytes,
    },
    /// Write a key.
    Put {
        /// The key.
        key: Bytes,
        /// The new value.
        value: Bytes,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: Bytes,
    },
    /// Write `new` if the key currently holds `expect` (`None`: absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must hold.
        expect: Option<Bytes>,
        /// The value to write.
        new: Bytes,
    },
}

impl Op {
    /// An upper bound of the operation's encoded size in bytes (the
    /// lengths of its byte strings plus their prefixes and tags).
    pub fn size(&self) -> usize {
        const OVERHEAD: usize = 32;
        OVERHEAD
            + match self {
                Op::Get { key } | Op::Delete { key } => key.len(),
                Op::Put { key, value } => key.len() + value.len(),
                Op::Cas { key, expect, new } => {
                    key.len() + expect.as_ref().map_or(0, Bytes::len) + new.len()
                }
            }
    }

    /// The key the operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key } | Op::Delete { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
        }
    }
}

/// The result of applying an [`Op`].
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// A get's value (`None`: absent).
    Read(Option<Bytes>),
    /// A put was applied.
    Written,
    /// A cas matched and wrote.
    Swapped,
    /// A cas did not match; the current value.
    Mismatch(Option<Bytes>),
    /// A delete was applied; whether the key existed.
    Deleted(bool),
    /// Not executed: the store had no session for this client (evicted as
    /// least recently used) and the command was not its first. An earlier
    /// copy of it may have run before the eviction: indeterminate.
    SessionExpired,
}

/// A client's request as it is ordered in the log.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Command {
    /// Who asked.
    pub client: ClientId,
    /// The client's sequence number (strictly increasing per client).
    pub seq: u64,
    /// What to do.
    pub op: Op,
}

/// What one slot of the log decides.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub enum Value {
    /// Nothing (a hole filled by a new leader).
    #[default]
    Noop,
    /// A batch of commands, applied in order.
    Batch(Vec<Command>),
}

impl Value {
    /// An upper bound of the value's encoded size in bytes.
    pub fn size(&self) -> usize {
        8 + self
            .commands()
            .iter()
            .map(|c| 20 + c.op.size())
            .sum::<usize>()
    }

    /// The commands of the slot (none for a no-op).
    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Noop => &[],
            Value::Batch(c) => c,
        }
    }

    /// A fixed 64-bit digest (for invariant checks and traces).
    pub fn digest(&self) -> u64 {
        let mut w = Writer::new();
        encode_value(&mut w, self);
        crate::det::fnv1a64(&w.finish())
    }
}

fn opt_bytes(w: &mut Writer, b: &Option<Bytes>) {
    match b {
        None => w.u8(0),
        Some(b) => {
            w.u8(1);
            w.bytes(b);
        }
    }
}

fn read_opt_bytes(r: &mut Reader) -> Result<Option<Bytes>, MsgDecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.bytes()?)),
        t => Err(MsgDecodeError::UnknownTag(t)),
    }
}

pub(crate) fn encode_op(w: &mut Writer, op: &Op) {
    match op {
        Op::Get { key } => {
            w.u8(0);
            w.bytes(key);
        }
        Op::Put { key, value } => {
            w.u8(1);
            w.bytes(key);
            w.bytes(value);
        }
        Op::Cas { key, expect, new } => {
            w.u8(2);
            w.bytes(key);
            opt_bytes(w, expect);
            w.bytes(new);
        }
        Op::Delete { key } => {
            w.u8(3);
            w.bytes(key);
        }
    }
}

pub(crate) fn decode_op(r: &mut Reader) -> Result<Op, MsgDecodeError> {
    Ok(match r.u8()? {
        0 => Op::Get { key: r.bytes()? },
        1 => Op::Put {
            key: r.bytes()?,
            value: r.bytes()?,
        },
        2 => Op::Cas {
            key: r.bytes()?,
            expect: read_opt_bytes(r)?,
            new: r.bytes()?,
        },
        3 => Op::Delete { key: r.bytes()? },
        t => return Err(MsgDecodeError::UnknownTag(t)),
    })
}

pub(crate) fn encode_outcome(w: &mut Writer, o: &Outcome) {
    match o {
        Outcome::Read(v) => {
            w.u8(0);
            opt_bytes(w, v);
        }
        Outcome::Written => w.u8(1),
        Outcome::Swapped => w.u8(2),
        Outcome::Mismatch(v) => {
            w.u8(3);
            opt_bytes(w, v);
        }
        Outcome::SessionExpired => w.u8(4),
        Outcome::Deleted(existed) => {
            w.u8(5);
            w.u8(u8::from(*existed));
        }
    }
}

pub(crate) fn decode_outcome(r: &mut Reader) -> Result<Outcome, MsgDecodeError> {
    Ok(match r.u8()? {
        0 => Outcome::Read(read_opt_bytes(r)?),
        1 => Outcome::Written,
        2 => Outcome::Swapped,
        3 => Outcome::Mismatch(read_opt_bytes(r)?),
        4 => Outcome::SessionExpired,
        5 => match r.u8()? {
            0 => Outcome::Deleted(false),
            1 => Outcome::Deleted(true),
            t => return Err(MsgDecodeError::UnknownTag(t)),
        },
        t => return Err(MsgDecodeError::UnknownTag(t)),
    })
}

pub(crate) fn encode_value(w: &mut Writer, v: &Value) {
    match v {
        Value::Noop => w.u8(0),
        Value::Batch(cmds) => {
            w.u8(1);
            w.varint(cmds.len() as u64);
            for c in cmds {
                w.varint(c.client.0);
                w.varint(c.seq);
                encode_op(w, &c.op);
            }
        }
    }
}

pub(crate) fn decode_value(r: &mut Reader) -> Result<Value, MsgDecodeError> {
    Ok(match r.u8()? {
        0 => Value::Noop,
        1 => {
            // A command takes at least 4 bytes (client, seq, tag, key len).
            let n = r.count(4)?;
            let mut cmds = Vec::with_capacity(n.min(PREALLOC));
            for _ in 0..n {
                cmds.push(Command {
                    client: ClientId(r.varint()?),
                    seq: r.varint()?,
                    op: decode_op(r)?,
                });
            }
            Value::Batch(cmds)
        }
        t => return Err(MsgDecodeError::UnknownTag(t)),
    })
}

/// At most this many items are allocated ahead of decoding them (the
/// rest grow as they are actually read), whatever count a message claims.
pub(crate) const PREALLOC: usize = 1024;

/// Default bound of the session table ([`KvStore::with_max_sessions`]).
pub const DEFAULT_MAX_SESSIONS: usize = 10_000;

/// What applying one command did.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Applied {
    /// Applied for the first time, with this outcome.
    Fresh(Outcome),
    /// Already applied (a retry): the outcome remembered by the session.
    Repeat(Outcome),
    /// Older than the session's last command: ignored, no outcome kept.
    Stale,
    /// Not executed: no session for this client and not its first command
    /// (the answer is [`Outcome::SessionExpired`]).
    Expired,
}

/// One client's session: its last sequence, that command's outcome, and
/// when it was last used (in applied commands).
#[derive(Clone, Debug)]
struct Session {
    seq: u64,
    outcome: Outcome,
    used: u64,
}

/// The store: data plus a bounded table of client sessions.
#[derive(Clone, Debug)]
pub struct KvStore {
    data: HashMap<Bytes, Bytes>,
    sessions: BTreeMap<ClientId, Session>,
    /// Sessions by last use (`Session::used` is unique): the front is the
    /// least recently used.
    lru: BTreeMap<u64, ClientId>,
    /// Commands seen by `apply` (the recency clock).
    clock: u64,
    max_sessions: usize,
    applied_commands: u64,
    evicted: u64,
    expired: u64,
}

impl Default for KvStore {
    fn default() -> Self {
        Self::with_max_sessions(DEFAULT_MAX_SESSIONS)
    }
}

impl KvStore {
    /// An empty store with the default session bound
    /// ([`DEFAULT_MAX_SESSIONS`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping at most `max_sessions` client sessions (at
    /// least 1). Every replica of one store must use the same bound.
    pub fn with_max_sessions(max_sessions: usize) -> Self {
        KvStore {
            data: HashMap::new(),
            sessions: BTreeMap::new(),
            lru: BTreeMap::new(),
            clock: 0,
            max_sessions: max_sessions.max(1),
            applied_commands: 0,
            evicted: 0,
            expired: 0,
        }
    }

    /// Applies one command, deduplicating by session (see the module docs
    /// for sessions that were evicted).
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        self.clock += 1;
        let now = self.clock;
        if let Some(s) = self.sessions.get_mut(&cmd.client) {
            if cmd.seq < s.seq {
                return Applied::Stale;
            }
            self.lru.remove(&s.used);
            self.lru.insert(now, cmd.client);
            s.used = now;
            if cmd.seq == s.seq {
                return Applied::Repeat(s.outcome.clone());
            }
            let outcome = execute(&mut self.data, &cmd.op);
            self.applied_commands += 1;
            s.seq = cmd.seq;
            s.outcome = outcome.clone();
            return Applied::Fresh(outcome);
        }
        // A client without a session.
        while self.sessions.len() >= self.max_sessions {
            let Some((_, victim)) = self.lru.pop_first() else {
                break;
            };
            self.sessions.remove(&victim);
            self.evicted += 1;
        }
        let (applied, outcome) = if cmd.seq > 1 {
            self.expired += 1;
            (Applied::Expired, Outcome::SessionExpired)
        } else {
            let o = execute(&mut self.data, &cmd.op);
            self.applied_commands += 1;
            (Applied::Fresh(o.clone()), o)
        };
        self.sessions.insert(
            cmd.client,
            Session {
                seq: cmd.seq,
                outcome,
                used: now,
            },
        );
        self.lru.insert(now, cmd.client);
        applied
    }

    /// The outcome remembered for `client`'s command `seq`, if that is its
    /// latest applied one.
    pub fn session_outcome(&self, client: ClientId, seq: u64) -> Option<&Outcome> {
        match self.sessions.get(&client) {
            Some(s) if s.seq == seq => Some(&s.outcome),
            _ => None,
        }
    }

    /// The highest sequence applied for `client` (`None`: no session, never
    /// seen or evicted).
    pub fn last_seq(&self, client: ClientId) -> Option<u64> {
        self.sessions.get(&client).map(|s| s.seq)
    }

    /// Sessions held now (at most the bound).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The session bound.
    pub fn max_sessions(&self) -> usize {
        self.max_sessions
    }

    /// Sessions evicted as least recently used, since the start.
    pub fn evicted_sessions(&self) -> u64 {
        self.evicted
    }

    /// Commands answered [`Outcome::SessionExpired`] (not executed).
    pub fn expired_commands(&self) -> u64 {
        self.expired
    }

    /// Reads a key directly (not linearizable on its own: for tests and
    /// final-state checks).
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.data.get(key)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// True if no key is set.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Commands applied for the first time.
    pub fn applied_commands(&self) -> u64 {
        self.applied_commands
    }

    /// The whole replicated state (data, sessions and their recency, the
    /// counters) as bytes, deterministically: two stores that applied the
    /// same commands encode to the same bytes. What a Raft snapshot holds.
    pub fn encode_snapshot(&self) -> Bytes {
        let mut w = Writer::new();
        w.varint(self.max_sessions as u64);
        w.varint(self.clock);
        w.varint(self.applied_commands);
        w.varint(self.evicted);
        w.varint(self.expired);
        let mut keys: Vec<&Bytes> = self.data.keys().collect();
        keys.sort_unstable();
        w.varint(keys.len() as u64);
        for k in keys {
            w.bytes(k);
            w.bytes(&self.data[k]);
        }
        w.varint(self.sessions.len() as u64);
        for (id, s) in &self.sessions {
            w.varint(id.0);
            w.varint(s.seq);
            w.varint(s.used);
            encode_outcome(&mut w, &s.outcome);
        }
        w.finish()
    }

    /// Rebuilds a store from [`encode_snapshot`](Self::encode_snapshot)'s
    /// bytes.
    pub fn decode_snapshot(data: Bytes) -> Result<KvStore, MsgDecodeError> {
        let mut r = Reader::new(data);
        let max_sessions = usize::try_from(r.varint()?).map_err(|_| MsgDecodeError::OutOfRange)?;
        let mut kv = KvStore::with_max_sessions(max_sessions);
        kv.clock = r.varint()?;
        kv.applied_commands = r.varint()?;
        kv.evicted = r.varint()?;
        kv.expired = r.varint()?;
        let n = r.count(2)?;
        kv.data.reserve(n.min(PREALLOC));
        for _ in 0..n {
            let k = r.bytes()?;
            kv.data.insert(k, r.bytes()?);
        }
        let n = r.count(4)?;
        for _ in 0..n {
            let id = ClientId(r.varint()?);
            let seq = r.varint()?;
            let used = r.varint()?;
            let outcome = decode_outcome(&mut r)?;
            if kv.lru.insert(used, id).is_some() {
                return Err(MsgDecodeError::OutOfRange);
            }
            kv.sessions.insert(id, Session { seq, outcome, used });
        }
        r.finish()?;
        Ok(kv)
    }

    /// A digest of the replicated state (of
    /// [`encode_snapshot`](Self::encode_snapshot)'s bytes): equal on every
    /// replica that applied the same commands.
    pub fn digest(&self) -> u64 {
        crate::det::fnv1a64(&self.encode_snapshot())
    }
}

fn execute(data: &mut HashMap<Bytes, Bytes>, op: &Op) -> Outcome {
    match op {
        Op::Get { key } => Outcome::Read(data.get(key).cloned()),
        Op::Delete { key } => Outcome::Deleted(data.remove(key).is_some()),
        Op::Put { key, value } => {
            data.insert(key.clone(), value.clone());
            Outcome::Written
        }
        Op::Cas { key, expect, new } => {
            let current = data.get(key);
            if current == expect.as_ref() {
                data.insert(key.clone(), new.clone());
                Outcome::Swapped
            } else {
                Outcome::Mismatch(current.cloned())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(client: u64, seq: u64, op: Op) -> Command {
        Command {
            client: ClientId(client),
            seq,
            op,
        }
    }

    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::copy_from_slice(v.as_bytes()),
        }
    }

    #[test]
    fn retries_apply_once_and_stale_ones_never() {
        let mut kv = KvStore::new();
        assert_eq!(
            kv.apply(&cmd(1, 1, put("k", "a"))),
            Applied::Fresh(Outcome::Written)
        );
        let cas = Op::Cas {
            key: Bytes::from("k"),
            expect: Some(Bytes::from("a")),
            new: Bytes::from("b"),
        };
        assert_eq!(
            kv.apply(&cmd(1, 2, cas.clone())),
            Applied::Fresh(Outcome::Swapped)
        );
        // The retry of seq 2 must not run the cas again (it would mismatch).
        assert_eq!(kv.apply(&cmd(1, 2, cas)), Applied::Repeat(Outcome::Swapped));
        assert_eq!(kv.apply(&cmd(1, 1, put("k", "z"))), Applied::Stale);
        assert_eq!(kv.get(b"k"), Some(&Bytes::from("b")));
        assert_eq!(kv.applied_commands(), 2);
        let miss = Op::Cas {
            key: Bytes::from("k"),
            expect: None,
            new: Bytes::from("c"),
        };
        assert_eq!(
            kv.apply(&cmd(2, 1, miss)),
            Applied::Fresh(Outcome::Mismatch(Some(Bytes::from("b"))))
        );
        assert_eq!(kv.session_outcome(ClientId(1), 2), Some(&Outcome::Swapped));
        assert_eq!(kv.last_seq(ClientId(2)), Some(1));
    }

    #[test]
    fn sessions_are_bounded_lru_and_evicted_clients_are_told() {
        let mut kv = KvStore::with_max_sessions(3);
        for c in 1..=3 {
            assert!(matches!(
                kv.apply(&cmd(c, 1, put("k", "a"))),
                Applied::Fresh(_)
            ));
        }
        // Client 1 is used again: client 2 is now the least recently used.
        assert_eq!(
            kv.apply(&cmd(1, 2, put("k", "b"))),
            Applied::Fresh(Outcome::Written)
        );
        assert_eq!(
            kv.apply(&cmd(4, 1, put("k", "c"))),
            Applied::Fresh(Outcome::Written)
        );
        assert_eq!((kv.sessions(), kv.evicted_sessions()), (3, 1));
        assert_eq!(kv.last_seq(ClientId(2)), None, "the LRU session went");
        assert_eq!(kv.last_seq(ClientId(1)), Some(2), "the recent one stayed");
        // Client 2 comes back with its next command: refused, not run.
        assert_eq!(kv.apply(&cmd(2, 2, put("k", "evil"))), Applied::Expired);
        assert_eq!(kv.get(b"k"), Some(&Bytes::from("c")));
        assert_eq!(kv.expired_commands(), 1);
        // Its retry gets the same answer; its next command runs.
        assert_eq!(
            kv.apply(&cmd(2, 2, put("k", "evil"))),
            Applied::Repeat(Outcome::SessionExpired)
        );
        assert_eq!(
            kv.apply(&cmd(2, 3, put("k", "d"))),
            Applied::Fresh(Outcome::Written)
        );
        assert_eq!(kv.sessions(), 3);
        assert_eq!(kv.evicted_sessions(), 2);
        // A flood of new clients never grows the table past the bound, and
        // two stores fed the same commands evict the same sessions.
        let mut twin = kv.clone();
        for c in 100..10_100 {
            kv.apply(&cmd(c, 1, Op::Get { key: Bytes::new() }));
            twin.apply(&cmd(c, 1, Op::Get { key: Bytes::new() }));
            assert!(kv.sessions() <= 3);
        }
        assert_eq!(kv.evicted_sessions(), 10_002);
        for c in 10_097..10_100 {
            assert_eq!(kv.last_seq(ClientId(c)), Some(1));
            assert_eq!(twin.last_seq(ClientId(c)), Some(1));
        }
        assert_eq!(kv.lru, twin.lru);
    }

    #[test]
    fn snapshots_round_trip_and_deletes_apply() {
        let mut kv = KvStore::with_max_sessions(2);
        kv.apply(&cmd(1, 1, put("a", "1")));
        kv.apply(&cmd(2, 1, put("b", "2")));
        kv.apply(&cmd(3, 1, put("c", "3")));
        assert_eq!(
            kv.apply(&cmd(
                3,
                2,
                Op::Delete {
                    key: Bytes::from("a")
                }
            )),
            Applied::Fresh(Outcome::Deleted(true))
        );
        assert_eq!(
            kv.apply(&cmd(
                3,
                3,
                Op::Delete {
                    key: Bytes::from("a")
                }
            )),
            Applied::Fresh(Outcome::Deleted(false))
        );
        let back = KvStore::decode_snapshot(kv.encode_snapshot()).unwrap();
        assert_eq!(back.encode_snapshot(), kv.encode_snapshot());
        assert_eq!(back.digest(), kv.digest());
        assert_eq!(back.get(b"a"), None);
        assert_eq!(back.get(b"c"), Some(&Bytes::from("3")));
        assert_eq!(back.lru, kv.lru);
        assert_eq!(back.evicted_sessions(), 1);
        // The rebuilt store carries on exactly like the original.
        let (mut x, mut y) = (kv, back);
        let next = cmd(9, 1, put("d", "4"));
        assert_eq!(x.apply(&next), y.apply(&next));
        assert_eq!(x.digest(), y.digest());
        let bytes = x.encode_snapshot();
        for cut in 0..bytes.len() {
            assert!(KvStore::decode_snapshot(bytes.slice(..cut)).is_err());
        }
    }

    #[test]
    fn values_round_trip() {
        let v = Value::Batch(vec![
            cmd(7, 1, put("a", "1")),
            cmd(
                8,
                9,
                Op::Cas {
                    key: Bytes::from("b"),
                    expect: None,
                    new: Bytes::new(),
                },
            ),
            cmd(9, 3, Op::Get { key: Bytes::new() }),
        ]);
        for v in [Value::Noop, v] {
            let mut w = Writer::new();
            encode_value(&mut w, &v);
            let mut r = Reader::new(w.finish());
            assert_eq!(decode_value(&mut r).unwrap(), v);
            r.finish().unwrap();
        }
    }
}
