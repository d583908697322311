//! The acceptor: promises and accepted `(ballot, value)` per slot, and the
//! records that make them durable.
//!
//! Pure: [`AcceptorState`] answers prepares and accepts and says which
//! [`Record`] must reach the disk before the answer leaves; the node writes
//! it to its [`Wal`](crate::durable::Wal) and the driver fsyncs before
//! sending. On restart [`AcceptorState::replay`] rebuilds the state from the
//! records, so a promise survives a crash. An acceptor rejects (`Nack`)
//! what it must refuse, accepts only ballots at least as high as its
//! promise, and answers duplicates idempotently.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::ballot::{Ballot, Slot};
use super::kv::{self, Value};
use super::msg::{AcceptedEntry, Msg};
use super::wire::{Reader, Writer};
use crate::durable::DurableError;
use crate::transport::NodeId;

/// A durable change of acceptor state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Record {
    /// The acceptor promised this ballot.
    Promise(Ballot),
    /// The acceptor accepted `value` in `slot` at `ballot` (which implies a
    /// promise of at least `ballot`).
    Accept {
        /// The slot.
        slot: Slot,
        /// The ballot.
        ballot: Ballot,
        /// The value.
        value: Value,
    },
}

impl Record {
    /// The record's bytes in the WAL.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        match self {
            Record::Promise(b) => {
                w.u8(1);
                w.varint(b.round);
                w.varint(u64::from(b.node.0));
            }
            Record::Accept {
                slot,
                ballot,
                value,
            } => {
                w.u8(2);
                w.varint(*slot);
                w.varint(ballot.round);
                w.varint(u64::from(ballot.node.0));
                kv::encode_value(&mut w, value);
            }
        }
        w.finish()
    }

    /// Decodes a WAL record.
    pub fn decode(data: Bytes) -> Result<Record, DurableError> {
        let bad = |e| DurableError::Corrupt(format!("acceptor record: {e}"));
        let mut r = Reader::new(data);
        let rec = match r.u8().map_err(bad)? {
            1 => Record::Promise(Ballot::new(
                r.varint().map_err(bad)?,
                NodeId(r.u32().map_err(bad)?),
            )),
            2 => Record::Accept {
                slot: r.varint().map_err(bad)?,
                ballot: Ballot::new(r.varint().map_err(bad)?, NodeId(r.u32().map_err(bad)?)),
                value: kv::decode_value(&mut r).map_err(bad)?,
            },
            t => return Err(DurableError::Corrupt(format!("acceptor record tag {t}"))),
        };
        r.finish().map_err(bad)?;
        Ok(rec)
    }
}

/// An acceptor's whole state.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct AcceptorState {
    promised: Ballot,
    accepted: BTreeMap<Slot, (Ballot, Value)>,
}

impl AcceptorState {
    /// A fresh acceptor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the state from WAL records (in order).
    pub fn replay(records: impl IntoIterator<Item = Bytes>) -> Result<Self, DurableError> {
        let mut s = AcceptorState::new();
        for r in records {
            s.apply(&Record::decode(r)?);
        }
        Ok(s)
    }

    fn apply(&mut self, r: &Record) {
        match r {
            Record::Promise(b) => self.promised = self.promised.max(*b),
            Record::Accept {
                slot,
                ballot,
                value,
            } => {
                self.promised = self.promised.max(*ballot);
                self.accepted.insert(*slot, (*ballot, value.clone()));
            }
        }
    }

    /// The highest ballot promised.
    pub fn promised(&self) -> Ballot {
        self.promised
    }

    /// What was accepted in `slot`, if anything.
    pub fn accepted(&self, slot: Slot) -> Option<&(Ballot, Value)> {
        self.accepted.get(&slot)
    }

    /// Number of slots with an accepted value.
    pub fn accepted_len(&self) -> usize {
        self.accepted.len()
    }

    /// Answers a prepare: a promise (carrying every accepted entry from
    /// `from_slot` on) if `ballot` is at least the promise, else a nack.
    /// Returns the record to persist before the answer leaves.
    pub fn handle_prepare(&mut self, ballot: Ballot, from_slot: Slot) -> (Msg, Option<Record>) {
        if ballot < self.promised {
            return (self.nack(ballot), None);
        }
        let record = (ballot > self.promised).then_some(Record::Promise(ballot));
        self.promised = ballot;
        let accepted = self
            .accepted
            .range(from_slot..)
            .map(|(slot, (b, v))| AcceptedEntry {
                slot: *slot,
                ballot: *b,
                value: v.clone(),
            })
            .collect();
        let promise = Msg::Promise {
            ballot,
            from_slot,
            accepted,
        };
        (promise, record)
    }

    /// Answers an accept: accepted if `ballot` is at least the promise,
    /// else a nack. Returns the record to persist before the answer leaves.
    pub fn handle_accept(
        &mut self,
        ballot: Ballot,
        slot: Slot,
        value: &Value,
    ) -> (Msg, Option<Record>) {
        if ballot < self.promised {
            return (self.nack(ballot), None);
        }
        self.promised = ballot;
        let record = match self.accepted.get(&slot) {
            // A duplicate: answer again, nothing new to persist.
            Some((b, v)) if *b == ballot && v == value => None,
            _ => {
                self.accepted.insert(slot, (ballot, value.clone()));
                Some(Record::Accept {
                    slot,
                    ballot,
                    value: value.clone(),
                })
            }
        };
        (Msg::Accepted { ballot, slot }, record)
    }

    fn nack(&self, ballot: Ballot) -> Msg {
        Msg::Nack {
            ballot,
            promised: self.promised,
        }
    }

    /// The minimal records that rebuild this state (for WAL compaction).
    pub fn snapshot(&self) -> Vec<Bytes> {
        let mut out = vec![Record::Promise(self.promised).encode()];
        for (slot, (ballot, value)) in &self.accepted {
            out.push(
                Record::Accept {
                    slot: *slot,
                    ballot: *ballot,
                    value: value.clone(),
                }
                .encode(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(round: u64, node: u32) -> Ballot {
        Ballot::new(round, NodeId(node))
    }

    #[test]
    fn promises_are_monotonic_and_refusals_are_explicit() {
        let mut a = AcceptorState::new();
        let (m, r) = a.handle_prepare(b(2, 1), 0);
        assert!(matches!(m, Msg::Promise { .. }));
        assert_eq!(r, Some(Record::Promise(b(2, 1))));
        // A retransmitted prepare is answered again without a new record.
        assert_eq!(a.handle_prepare(b(2, 1), 0).1, None);
        let (m, r) = a.handle_prepare(b(1, 9), 0);
        assert_eq!(
            m,
            Msg::Nack {
                ballot: b(1, 9),
                promised: b(2, 1)
            }
        );
        assert_eq!(r, None);
        // A classic phase-2 bug: an accept below the promise must fail.
        let (m, _) = a.handle_accept(b(1, 9), 0, &Value::Noop);
        assert!(matches!(m, Msg::Nack { .. }));
        assert_eq!(a.accepted(0), None);
    }

    #[test]
    fn promise_reports_accepted_values_with_their_ballots() {
        let mut a = AcceptorState::new();
        a.handle_accept(b(1, 1), 3, &Value::Noop);
        a.handle_accept(b(1, 1), 7, &Value::Noop);
        let (m, _) = a.handle_prepare(b(2, 2), 5);
        let Msg::Promise { accepted, .. } = m else {
            panic!("{m:?}")
        };
        assert_eq!(accepted.len(), 1);
        assert_eq!((accepted[0].slot, accepted[0].ballot), (7, b(1, 1)));
        // A duplicate accept is idempotent.
        let (m, r) = a.handle_accept(b(2, 2), 7, &Value::Noop);
        assert_eq!(
            m,
            Msg::Accepted {
                ballot: b(2, 2),
                slot: 7
            }
        );
        assert!(r.is_some());
        assert_eq!(a.handle_accept(b(2, 2), 7, &Value::Noop).1, None);
    }

    #[test]
    fn replay_rebuilds_and_snapshot_compacts() {
        let mut a = AcceptorState::new();
        let mut log = Vec::new();
        for (ballot, slot) in [(b(1, 1), 0), (b(2, 2), 0), (b(2, 2), 1)] {
            if let (_, Some(r)) = a.handle_prepare(ballot, 0) {
                log.push(r.encode());
            }
            if let (_, Some(r)) = a.handle_accept(ballot, slot, &Value::Noop) {
                log.push(r.encode());
            }
        }
        if let Some(r) = a.handle_prepare(b(5, 0), 0).1 {
            log.push(r.encode());
        }
        let back = AcceptorState::replay(log.clone()).unwrap();
        assert_eq!(back, a);
        assert_eq!(AcceptorState::replay(a.snapshot()).unwrap(), a);
        assert!(a.snapshot().len() < log.len());
        assert!(AcceptorState::replay([Bytes::from_static(&[9])]).is_err());
    }
}
