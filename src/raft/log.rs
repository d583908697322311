//! The replicated log: entries, cluster configurations (membership), and
//! the in-memory log that starts after the latest snapshot.

use std::collections::BTreeSet;

use bytes::Bytes;

use crate::paxos::{decode_op, encode_op, ClientId, Command, MsgDecodeError, Reader, Writer};
use crate::transport::NodeId;

/// What one log entry holds.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum EntryKind {
    /// Nothing: the entry a new leader appends to commit its term.
    Noop,
    /// Client commands, applied in order.
    Commands(Vec<Command>),
    /// A new cluster configuration, in force from the moment a node
    /// stores the entry (committed or not).
    Config(Membership),
}

/// One log entry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The leader's term when it was created.
    pub term: u64,
    /// Its position in the log (from 1).
    pub index: u64,
    /// What it holds.
    pub kind: EntryKind,
}

impl Entry {
    /// A fixed 64-bit digest of the entry (for invariant checks).
    pub fn digest(&self) -> u64 {
        let mut w = Writer::new();
        encode_entry(&mut w, self);
        crate::det::fnv1a64(&w.finish())
    }

    /// An upper bound of the entry's encoded size in bytes.
    pub fn size(&self) -> usize {
        24 + match &self.kind {
            EntryKind::Noop => 0,
            EntryKind::Commands(c) => c.iter().map(|c| 20 + c.op.size()).sum(),
            EntryKind::Config(m) => 8 * (m.voters.len() + m.learners.len()),
        }
    }
}

/// A cluster configuration: who votes, and who only receives the log.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct Membership {
    /// The nodes whose votes and acknowledgements count.
    pub voters: BTreeSet<NodeId>,
    /// Non-voting members: they get the log and apply it, and can be
    /// promoted once caught up.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A configuration of these voters and no learners.
    pub fn of(voters: &[NodeId]) -> Self {
        Membership {
            voters: voters.iter().copied().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// True if `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Every member, voters and learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }
}

/// A change of the configuration, one server at a time.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum ConfChange {
    /// Add a non-voting learner (it starts receiving the log).
    AddLearner(NodeId),
    /// Make a learner a voter (refused until it has caught up).
    Promote(NodeId),
    /// Remove a voter or a learner. A leader that removes itself leads
    /// until the change commits, then steps down.
    Remove(NodeId),
}

pub(crate) fn encode_membership(w: &mut Writer, m: &Membership) {
    for set in [&m.voters, &m.learners] {
        w.varint(set.len() as u64);
        for n in set {
            w.varint(u64::from(n.0));
        }
    }
}

pub(crate) fn decode_membership(r: &mut Reader) -> Result<Membership, MsgDecodeError> {
    let mut m = Membership::default();
    for i in 0..2 {
        let n = r.count(1)?;
        for _ in 0..n {
            let id = NodeId(r.u32()?);
            if i == 0 {
                m.voters.insert(id);
            } else {
                m.learners.insert(id);
            }
        }
    }
    Ok(m)
}

pub(crate) fn encode_entry(w: &mut Writer, e: &Entry) {
    w.varint(e.term);
    w.varint(e.index);
    match &e.kind {
        EntryKind::Noop => w.u8(0),
        EntryKind::Commands(cmds) => {
            w.u8(1);
            w.varint(cmds.len() as u64);
            for c in cmds {
                w.varint(c.client.0);
                w.varint(c.seq);
                encode_op(w, &c.op);
            }
        }
        EntryKind::Config(m) => {
            w.u8(2);
            encode_membership(w, m);
        }
    }
}

pub(crate) fn decode_entry(r: &mut Reader) -> Result<Entry, MsgDecodeError> {
    let term = r.varint()?;
    let index = r.varint()?;
    let kind = match r.u8()? {
        0 => EntryKind::Noop,
        1 => {
            // A command takes at least 4 bytes (client, seq, tag, key len).
            let n = r.count(4)?;
            let mut cmds = Vec::with_capacity(n.min(crate::paxos::PREALLOC));
            for _ in 0..n {
                cmds.push(Command {
                    client: ClientId(r.varint()?),
                    seq: r.varint()?,
                    op: decode_op(r)?,
                });
            }
            EntryKind::Commands(cmds)
        }
        2 => EntryKind::Config(decode_membership(r)?),
        t => return Err(MsgDecodeError::UnknownTag(t)),
    };
    Ok(Entry { term, index, kind })
}

/// The entries after the latest snapshot, in memory.
#[derive(Debug, Default)]
pub(crate) struct RaftLog {
    /// The last index the snapshot covers (0: none).
    pub(crate) snapshot_index: u64,
    /// The term of that entry.
    pub(crate) snapshot_term: u64,
    /// Entries `snapshot_index + 1 ..= last_index()`.
    entries: Vec<Entry>,
}

impl RaftLog {
    pub(crate) fn last_index(&self) -> u64 {
        self.snapshot_index + self.entries.len() as u64
    }

    pub(crate) fn last_term(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_term, |e| e.term)
    }

    /// The term of entry `index` (the snapshot's last entry included);
    /// `None` if compacted away or beyond the end.
    pub(crate) fn term_at(&self, index: u64) -> Option<u64> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.get(index).map(|e| e.term)
    }

    pub(crate) fn get(&self, index: u64) -> Option<&Entry> {
        let i = index.checked_sub(self.snapshot_index + 1)?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// Entries `from..=to` (clamped to what the log holds).
    pub(crate) fn slice(&self, from: u64, to: u64) -> &[Entry] {
        let lo = from.max(self.snapshot_index + 1);
        let hi = to.min(self.last_index());
        if lo > hi {
            return &[];
        }
        let base = self.snapshot_index + 1;
        &self.entries[(lo - base) as usize..=(hi - base) as usize]
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn push(&mut self, e: Entry) {
        debug_assert_eq!(e.index, self.last_index() + 1);
        self.entries.push(e);
    }

    /// Removes every entry from `index` on.
    pub(crate) fn truncate_from(&mut self, index: u64) {
        let keep = index.saturating_sub(self.snapshot_index + 1);
        self.entries
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }

    /// Drops the entries up to `index` (now covered by a snapshot of term
    /// `term`); if the log does not hold that entry with that term, drops
    /// everything (the snapshot replaces the log).
    pub(crate) fn compact(&mut self, index: u64, term: u64) {
        if index <= self.snapshot_index {
            return;
        }
        if self.term_at(index) == Some(term) {
            let n = (index - self.snapshot_index) as usize;
            self.entries.drain(..n);
        } else {
            self.entries.clear();
        }
        self.snapshot_index = index;
        self.snapshot_term = term;
    }

    /// The first index of the run of entries of `term` that contains
    /// `index` (for the fast-backtracking hint).
    pub(crate) fn first_of_term(&self, index: u64, term: u64) -> u64 {
        let mut i = index;
        while i > self.snapshot_index + 1 && self.term_at(i - 1) == Some(term) {
            i -= 1;
        }
        i
    }

    /// The last index holding an entry of `term`, if any.
    pub(crate) fn last_of_term(&self, term: u64) -> Option<u64> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.term == term)
            .map(|e| e.index)
    }

    /// The latest configuration entry at or before `index`.
    pub(crate) fn config_at(&self, index: u64) -> Option<(u64, &Membership)> {
        self.slice(self.snapshot_index + 1, index)
            .iter()
            .rev()
            .find_map(|e| match &e.kind {
                EntryKind::Config(m) => Some((e.index, m)),
                _ => None,
            })
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

/// Decodes a whole frame of entries (the WAL's records use it).
pub(crate) fn decode_entries(r: &mut Reader) -> Result<Vec<Entry>, MsgDecodeError> {
    let n = r.count(3)?;
    let mut v = Vec::with_capacity(n.min(crate::paxos::PREALLOC));
    for _ in 0..n {
        v.push(decode_entry(r)?);
    }
    Ok(v)
}

pub(crate) fn encode_entries(w: &mut Writer, entries: &[Entry]) {
    w.varint(entries.len() as u64);
    for e in entries {
        encode_entry(w, e);
    }
}

/// An opaque snapshot of the state machine, with where it stands.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    pub(crate) index: u64,
    pub(crate) term: u64,
    pub(crate) membership: Membership,
    pub(crate) data: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(term: u64, index: u64) -> Entry {
        Entry {
            term,
            index,
            kind: EntryKind::Noop,
        }
    }

    #[test]
    fn terms_slices_and_compaction() {
        let mut log = RaftLog::default();
        for (i, t) in [1, 1, 2, 2, 2, 3].into_iter().enumerate() {
            log.push(e(t, i as u64 + 1));
        }
        assert_eq!((log.last_index(), log.last_term()), (6, 3));
        assert_eq!(log.first_of_term(5, 2), 3);
        assert_eq!(log.last_of_term(2), Some(5));
        assert_eq!(log.slice(2, 4).len(), 3);
        log.compact(3, 2);
        assert_eq!(log.term_at(3), Some(2));
        assert_eq!(log.term_at(2), None);
        assert_eq!(log.first_of_term(5, 2), 4);
        assert_eq!(log.slice(1, 10).len(), 3);
        log.truncate_from(5);
        assert_eq!(log.last_index(), 4);
        // A snapshot beyond what the log holds replaces it.
        log.compact(9, 4);
        assert_eq!((log.last_index(), log.len()), (9, 0));
    }

    #[test]
    fn entries_round_trip_and_truncations_fail() {
        let m = Membership {
            voters: [NodeId(1), NodeId(2)].into_iter().collect(),
            learners: [NodeId(9)].into_iter().collect(),
        };
        let entries = vec![
            e(1, 1),
            Entry {
                term: 2,
                index: 2,
                kind: EntryKind::Config(m),
            },
            Entry {
                term: 2,
                index: 3,
                kind: EntryKind::Commands(vec![Command {
                    client: ClientId(4),
                    seq: 7,
                    op: crate::paxos::Op::Delete {
                        key: Bytes::from("k"),
                    },
                }]),
            },
        ];
        let mut w = Writer::new();
        encode_entries(&mut w, &entries);
        let bytes = w.finish();
        let mut r = Reader::new(bytes.clone());
        assert_eq!(decode_entries(&mut r).unwrap(), entries);
        r.finish().unwrap();
        for cut in 0..bytes.len() {
            let mut r = Reader::new(bytes.slice(..cut));
            assert!(decode_entries(&mut r).and_then(|_| r.finish()).is_err());
        }
    }
}
