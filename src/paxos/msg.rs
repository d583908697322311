//! The Paxos wire messages and their compact, versioned binary codec.
//!
//! Every message is one ZeroMQ frame: `[version = 1][kind][fields...]`,
//! numbers as LEB128 varints, byte strings length-prefixed. Decoding never
//! panics and its memory is bounded by the frame: every length and count
//! is checked against the bytes left before anything is read (a byte
//! string must fit in what remains, a list of `n` items needs at least `n`
//! times its smallest item's size), at most a fixed number of items is
//! allocated ahead of reading them, byte strings are slices of the frame
//! (no copy), and trailing bytes are refused. The frame itself is bounded
//! by [`ReplicaConfig::max_message`](super::ReplicaConfig::max_message)
//! (and by the transport's limit). Garbage from a peer is a typed
//! [`MsgDecodeError`], which the node counts and logs (rate-limited).

use bytes::Bytes;

use super::ballot::{Ballot, Slot};
use super::kv::{self, ClientId, Op, Outcome, Value};
use super::wire::{Reader, Writer};
use crate::transport::NodeId;

/// The codec version this build speaks.
pub const VERSION: u8 = 1;

/// One accepted entry reported in a promise.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AcceptedEntry {
    /// The slot.
    pub slot: Slot,
    /// The ballot it was accepted in.
    pub ballot: Ballot,
    /// The value accepted.
    pub value: Value,
}

/// A Paxos protocol or client message.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Msg {
    /// Phase 1a, for every slot from `from_slot` on (leader -> acceptor).
    Prepare {
        /// The candidate's ballot.
        ballot: Ballot,
        /// The first slot the candidate does not know decided.
        from_slot: Slot,
    },
    /// Phase 1b (acceptor -> candidate): the promise, with every value this
    /// acceptor accepted at or after `from_slot` and the ballot of each.
    Promise {
        /// The ballot promised.
        ballot: Ballot,
        /// Echo of the prepare's first slot.
        from_slot: Slot,
        /// What the acceptor accepted there.
        accepted: Vec<AcceptedEntry>,
    },
    /// Phase 2a (leader -> acceptor).
    Accept {
        /// The leader's ballot.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
        /// The value proposed.
        value: Value,
        /// The leader's commit index (piggybacked commit notice).
        commit: Slot,
    },
    /// Phase 2b (acceptor -> leader).
    Accepted {
        /// The ballot accepted.
        ballot: Ballot,
        /// The slot.
        slot: Slot,
    },
    /// A refusal of a prepare or accept: the acceptor promised higher.
    Nack {
        /// The ballot refused.
        ballot: Ballot,
        /// What the acceptor has promised.
        promised: Ballot,
    },
    /// Leader liveness and commit notice: every slot below `commit` is
    /// decided, and any slot at or after the leader's first slot that an
    /// acceptor accepted in `ballot` holds the decided value.
    Heartbeat {
        /// The leader's ballot.
        ballot: Ballot,
        /// The first slot not known decided by the leader.
        commit: Slot,
    },
    /// A learner asks for decided values from `from_slot` on.
    Fetch {
        /// The first slot wanted.
        from_slot: Slot,
    },
    /// Decided values (answer to `Fetch`, or pushed to pure learners).
    Decided {
        /// `(slot, value)` pairs in slot order.
        entries: Vec<(Slot, Value)>,
    },
    /// A client's request.
    Request {
        /// The client session.
        client: ClientId,
        /// Its sequence number.
        seq: u64,
        /// The operation.
        op: Op,
    },
    /// The outcome of a client's request.
    Reply {
        /// The client session.
        client: ClientId,
        /// The sequence number answered.
        seq: u64,
        /// What happened.
        outcome: Outcome,
    },
    /// "Not the leader": try `leader` if known.
    Redirect {
        /// The client session.
        client: ClientId,
        /// The sequence number refused.
        seq: u64,
        /// The leader this node believes in.
        leader: Option<NodeId>,
    },
}

/// The kinds of [`Msg`], for counting.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[allow(missing_docs)]
pub enum MsgKind {
    Prepare = 1,
    Promise = 2,
    Accept = 3,
    Accepted = 4,
    Nack = 5,
    Heartbeat = 6,
    Fetch = 7,
    Decided = 8,
    Request = 9,
    Reply = 10,
    Redirect = 11,
}

/// Why a message could not be decoded.
#[derive(Clone, Copy, PartialEq, Eq, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MsgDecodeError {
    /// The message ends in the middle of a field.
    #[error("truncated message")]
    Truncated,
    /// The first byte is not a codec version this build speaks.
    #[error("unsupported codec version {0}")]
    Version(u8),
    /// The kind byte is unknown.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// An enum tag inside a field is unknown.
    #[error("unknown tag {0}")]
    UnknownTag(u8),
    /// A varint is longer than 64 bits.
    #[error("malformed varint")]
    BadVarint,
    /// A number does not fit its field.
    #[error("number out of range")]
    OutOfRange,
    /// Bytes follow the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

fn ballot(w: &mut Writer, b: Ballot) {
    w.varint(b.round);
    w.varint(u64::from(b.node.0));
}

fn read_ballot(r: &mut Reader) -> Result<Ballot, MsgDecodeError> {
    Ok(Ballot::new(r.varint()?, NodeId(r.u32()?)))
}

impl Msg {
    /// The message's kind.
    pub fn kind(&self) -> MsgKind {
        match self {
            Msg::Prepare { .. } => MsgKind::Prepare,
            Msg::Promise { .. } => MsgKind::Promise,
            Msg::Accept { .. } => MsgKind::Accept,
            Msg::Accepted { .. } => MsgKind::Accepted,
            Msg::Nack { .. } => MsgKind::Nack,
            Msg::Heartbeat { .. } => MsgKind::Heartbeat,
            Msg::Fetch { .. } => MsgKind::Fetch,
            Msg::Decided { .. } => MsgKind::Decided,
            Msg::Request { .. } => MsgKind::Request,
            Msg::Reply { .. } => MsgKind::Reply,
            Msg::Redirect { .. } => MsgKind::Redirect,
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        w.u8(VERSION);
        w.u8(self.kind() as u8);
        match self {
            Msg::Prepare {
                ballot: b,
                from_slot,
            } => {
                ballot(&mut w, *b);
                w.varint(*from_slot);
            }
            Msg::Promise {
                ballot: b,
                from_slot,
                accepted,
            } => {
                ballot(&mut w, *b);
                w.varint(*from_slot);
                w.varint(accepted.len() as u64);
                for e in accepted {
                    w.varint(e.slot);
                    ballot(&mut w, e.ballot);
                    kv::encode_value(&mut w, &e.value);
                }
            }
            Msg::Accept {
                ballot: b,
                slot,
                value,
                commit,
            } => {
                ballot(&mut w, *b);
                w.varint(*slot);
                w.varint(*commit);
                kv::encode_value(&mut w, value);
            }
            Msg::Accepted { ballot: b, slot } => {
                ballot(&mut w, *b);
                w.varint(*slot);
            }
            Msg::Nack {
                ballot: b,
                promised,
            } => {
                ballot(&mut w, *b);
                ballot(&mut w, *promised);
            }
            Msg::Heartbeat { ballot: b, commit } => {
                ballot(&mut w, *b);
                w.varint(*commit);
            }
            Msg::Fetch { from_slot } => w.varint(*from_slot),
            Msg::Decided { entries } => {
                w.varint(entries.len() as u64);
                for (slot, value) in entries {
                    w.varint(*slot);
                    kv::encode_value(&mut w, value);
                }
            }
            Msg::Request { client, seq, op } => {
                w.varint(client.0);
                w.varint(*seq);
                kv::encode_op(&mut w, op);
            }
            Msg::Reply {
                client,
                seq,
                outcome,
            } => {
                w.varint(client.0);
                w.varint(*seq);
                kv::encode_outcome(&mut w, outcome);
            }
            Msg::Redirect {
                client,
                seq,
                leader,
            } => {
                w.varint(client.0);
                w.varint(*seq);
                match leader {
                    None => w.u8(0),
                    Some(n) => {
                        w.u8(1);
                        w.varint(u64::from(n.0));
                    }
                }
            }
        }
        w.finish()
    }

    /// Decodes one frame.
    pub fn decode(frame: Bytes) -> Result<Msg, MsgDecodeError> {
        let mut r = Reader::new(frame);
        let version = r.u8()?;
        if version != VERSION {
            return Err(MsgDecodeError::Version(version));
        }
        let msg = match r.u8()? {
            1 => Msg::Prepare {
                ballot: read_ballot(&mut r)?,
                from_slot: r.varint()?,
            },
            2 => {
                let b = read_ballot(&mut r)?;
                let from_slot = r.varint()?;
                let n = r.count(4)?;
                let mut accepted = Vec::with_capacity(n.min(kv::PREALLOC));
                for _ in 0..n {
                    accepted.push(AcceptedEntry {
                        slot: r.varint()?,
                        ballot: read_ballot(&mut r)?,
                        value: kv::decode_value(&mut r)?,
                    });
                }
                Msg::Promise {
                    ballot: b,
                    from_slot,
                    accepted,
                }
            }
            3 => Msg::Accept {
                ballot: read_ballot(&mut r)?,
                slot: r.varint()?,
                commit: r.varint()?,
                value: kv::decode_value(&mut r)?,
            },
            4 => Msg::Accepted {
                ballot: read_ballot(&mut r)?,
                slot: r.varint()?,
            },
            5 => Msg::Nack {
                ballot: read_ballot(&mut r)?,
                promised: read_ballot(&mut r)?,
            },
            6 => Msg::Heartbeat {
                ballot: read_ballot(&mut r)?,
                commit: r.varint()?,
            },
            7 => Msg::Fetch {
                from_slot: r.varint()?,
            },
            8 => {
                let n = r.count(2)?;
                let mut entries = Vec::with_capacity(n.min(kv::PREALLOC));
                for _ in 0..n {
                    entries.push((r.varint()?, kv::decode_value(&mut r)?));
                }
                Msg::Decided { entries }
            }
            9 => Msg::Request {
                client: ClientId(r.varint()?),
                seq: r.varint()?,
                op: kv::decode_op(&mut r)?,
            },
            10 => Msg::Reply {
                client: ClientId(r.varint()?),
                seq: r.varint()?,
                outcome: kv::decode_outcome(&mut r)?,
            },
            11 => Msg::Redirect {
                client: ClientId(r.varint()?),
                seq: r.varint()?,
                leader: match r.u8()? {
                    0 => None,
                    1 => Some(NodeId(r.u32()?)),
                    t => return Err(MsgDecodeError::UnknownTag(t)),
                },
            },
            k => return Err(MsgDecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::super::kv::Command;
    use super::*;

    fn samples() -> Vec<Msg> {
        let b = Ballot::new(3, NodeId(2));
        let value = Value::Batch(vec![Command {
            client: ClientId(u64::MAX),
            seq: 1,
            op: Op::Put {
                key: Bytes::from("k"),
                value: Bytes::from("v"),
            },
        }]);
        vec![
            Msg::Prepare {
                ballot: b,
                from_slot: 9,
            },
            Msg::Promise {
                ballot: b,
                from_slot: 9,
                accepted: vec![AcceptedEntry {
                    slot: 10,
                    ballot: Ballot::new(1, NodeId(1)),
                    value: value.clone(),
                }],
            },
            Msg::Accept {
                ballot: b,
                slot: 11,
                value: value.clone(),
                commit: 10,
            },
            Msg::Accepted {
                ballot: b,
                slot: 11,
            },
            Msg::Nack {
                ballot: b,
                promised: Ballot::new(4, NodeId(0)),
            },
            Msg::Heartbeat {
                ballot: b,
                commit: 12,
            },
            Msg::Fetch { from_slot: 3 },
            Msg::Decided {
                entries: vec![(3, Value::Noop), (4, value)],
            },
            Msg::Request {
                client: ClientId(5),
                seq: 6,
                op: Op::Get {
                    key: Bytes::from("k"),
                },
            },
            Msg::Reply {
                client: ClientId(5),
                seq: 6,
                outcome: Outcome::Mismatch(None),
            },
            Msg::Redirect {
                client: ClientId(5),
                seq: 6,
                leader: Some(NodeId(1)),
            },
            Msg::Redirect {
                client: ClientId(5),
                seq: 7,
                leader: None,
            },
        ]
    }

    #[test]
    fn every_kind_round_trips() {
        for m in samples() {
            assert_eq!(Msg::decode(m.encode()), Ok(m.clone()), "{m:?}");
        }
    }

    #[test]
    fn garbage_is_a_typed_error_never_a_panic() {
        assert_eq!(Msg::decode(Bytes::new()), Err(MsgDecodeError::Truncated));
        assert_eq!(
            Msg::decode(Bytes::from_static(&[2, 1])),
            Err(MsgDecodeError::Version(2))
        );
        assert_eq!(
            Msg::decode(Bytes::from_static(&[1, 99])),
            Err(MsgDecodeError::UnknownKind(99))
        );
        let mut extra = samples()[0].encode().to_vec();
        extra.push(0);
        assert_eq!(Msg::decode(extra.into()), Err(MsgDecodeError::Trailing(1)));
        // Every truncation of every sample fails cleanly.
        for m in samples() {
            let full = m.encode();
            for cut in 0..full.len() {
                assert!(
                    Msg::decode(full.slice(..cut)).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = crate::det::Rng::new(1);
        for _ in 0..20_000 {
            let len = rng.index(24);
            let mut data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len > 1 && rng.chance(0.7) {
                data[0] = VERSION;
                data[1] = 1 + rng.index(11) as u8;
            }
            let _ = Msg::decode(data.into());
        }
    }
}
