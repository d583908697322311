//! The replicated key-value state machine: get/put/cas on byte keys, with
//! client sessions so a retried request applies once.
//!
//! Every replica applies the same decided commands in slot order, so every
//! replica computes the same outcomes. A session remembers, per client, the
//! highest sequence number applied and its outcome: a command with an
//! older or equal sequence is not applied again, and the equal one is
//! answered from the session (exactly-once under retries).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use bytes::Bytes;

use super::wire::{Reader, Writer};
use super::DecodeError;

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
    /// The key the operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
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
        crate::sim::fnv1a64(&w.finish())
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

fn read_opt_bytes(r: &mut Reader) -> Result<Option<Bytes>, DecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.bytes()?)),
        t => Err(DecodeError::UnknownTag(t)),
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
    }
}

pub(crate) fn decode_op(r: &mut Reader) -> Result<Op, DecodeError> {
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
        t => return Err(DecodeError::UnknownTag(t)),
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
    }
}

pub(crate) fn decode_outcome(r: &mut Reader) -> Result<Outcome, DecodeError> {
    Ok(match r.u8()? {
        0 => Outcome::Read(read_opt_bytes(r)?),
        1 => Outcome::Written,
        2 => Outcome::Swapped,
        3 => Outcome::Mismatch(read_opt_bytes(r)?),
        t => return Err(DecodeError::UnknownTag(t)),
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

pub(crate) fn decode_value(r: &mut Reader) -> Result<Value, DecodeError> {
    Ok(match r.u8()? {
        0 => Value::Noop,
        1 => {
            // A command takes at least 4 bytes (client, seq, tag, key len).
            let n = r.count(4)?;
            let mut cmds = Vec::with_capacity(n);
            for _ in 0..n {
                cmds.push(Command {
                    client: ClientId(r.varint()?),
                    seq: r.varint()?,
                    op: decode_op(r)?,
                });
            }
            Value::Batch(cmds)
        }
        t => return Err(DecodeError::UnknownTag(t)),
    })
}

/// What applying one command did.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Applied {
    /// Applied for the first time, with this outcome.
    Fresh(Outcome),
    /// Already applied (a retry): the outcome remembered by the session.
    Repeat(Outcome),
    /// Older than the session's last command: ignored, no outcome kept.
    Stale,
}

/// The store: data plus client sessions.
#[derive(Clone, Debug, Default)]
pub struct KvStore {
    data: HashMap<Bytes, Bytes>,
    sessions: BTreeMap<ClientId, (u64, Outcome)>,
    applied_commands: u64,
}

impl KvStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command, deduplicating by session.
    pub fn apply(&mut self, cmd: &Command) -> Applied {
        if let Some((last, outcome)) = self.sessions.get(&cmd.client) {
            if cmd.seq == *last {
                return Applied::Repeat(outcome.clone());
            }
            if cmd.seq < *last {
                return Applied::Stale;
            }
        }
        let outcome = self.execute(&cmd.op);
        self.applied_commands += 1;
        self.sessions.insert(cmd.client, (cmd.seq, outcome.clone()));
        Applied::Fresh(outcome)
    }

    fn execute(&mut self, op: &Op) -> Outcome {
        match op {
            Op::Get { key } => Outcome::Read(self.data.get(key).cloned()),
            Op::Put { key, value } => {
                self.data.insert(key.clone(), value.clone());
                Outcome::Written
            }
            Op::Cas { key, expect, new } => {
                let current = self.data.get(key);
                if current == expect.as_ref() {
                    self.data.insert(key.clone(), new.clone());
                    Outcome::Swapped
                } else {
                    Outcome::Mismatch(current.cloned())
                }
            }
        }
    }

    /// The outcome remembered for `client`'s command `seq`, if that is its
    /// latest applied one.
    pub fn session_outcome(&self, client: ClientId, seq: u64) -> Option<&Outcome> {
        match self.sessions.get(&client) {
            Some((last, o)) if *last == seq => Some(o),
            _ => None,
        }
    }

    /// The highest sequence applied for `client`.
    pub fn last_seq(&self, client: ClientId) -> Option<u64> {
        self.sessions.get(&client).map(|(s, _)| *s)
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
