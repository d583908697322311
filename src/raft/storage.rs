//! What a Raft node writes to its WAL, and how it is read back.
//!
//! Records: the hard state (term and vote), appended entries (an append
//! whose first index is at or below the last one truncates the rest first,
//! on replay exactly as when it was written), a snapshot (it replaces the
//! log up to its index), and the bootstrap configuration. After a
//! snapshot the WAL is rewritten as `[hard state, snapshot, entries after
//! it]`, so it stays bounded by the snapshot interval.

use bytes::Bytes;

use super::log::{
    decode_entries, decode_membership, encode_entries, encode_membership, Entry, Membership,
    RaftLog, Snapshot,
};
use crate::durable::DurableError;
use crate::paxos::{KvStore, MsgDecodeError, Reader, Writer};
use crate::transport::NodeId;

#[derive(Debug)]
pub(crate) enum Record {
    /// The current term and the vote cast in it.
    HardState { term: u64, vote: Option<NodeId> },
    /// Entries from `entries[0].index` on (truncating what was there).
    Entries(Vec<Entry>),
    /// The state machine as of `index`.
    Snapshot(Snapshot),
    /// The initial configuration of a node bootstrapped with it.
    Bootstrap(Membership),
}

impl Record {
    pub(crate) fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        match self {
            Record::HardState { term, vote } => {
                w.u8(1);
                w.varint(*term);
                match vote {
                    None => w.u8(0),
                    Some(v) => {
                        w.u8(1);
                        w.varint(u64::from(v.0));
                    }
                }
            }
            Record::Entries(entries) => {
                w.u8(2);
                encode_entries(&mut w, entries);
            }
            Record::Snapshot(s) => {
                w.u8(3);
                w.varint(s.index);
                w.varint(s.term);
                encode_membership(&mut w, &s.membership);
                w.bytes(&s.data);
            }
            Record::Bootstrap(m) => {
                w.u8(4);
                encode_membership(&mut w, m);
            }
        }
        w.finish()
    }

    pub(crate) fn decode(data: Bytes) -> Result<Record, MsgDecodeError> {
        let mut r = Reader::new(data);
        let rec = match r.u8()? {
            1 => Record::HardState {
                term: r.varint()?,
                vote: match r.u8()? {
                    0 => None,
                    1 => Some(NodeId(r.u32()?)),
                    t => return Err(MsgDecodeError::UnknownTag(t)),
                },
            },
            2 => Record::Entries(decode_entries(&mut r)?),
            3 => Record::Snapshot(Snapshot {
                index: r.varint()?,
                term: r.varint()?,
                membership: decode_membership(&mut r)?,
                data: r.bytes()?,
            }),
            4 => Record::Bootstrap(decode_membership(&mut r)?),
            t => return Err(MsgDecodeError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(rec)
    }
}

/// A node's durable state, rebuilt from its WAL.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    pub(crate) term: u64,
    pub(crate) vote: Option<NodeId>,
    pub(crate) log: RaftLog,
    pub(crate) snapshot: Option<Snapshot>,
    pub(crate) bootstrap: Option<Membership>,
    pub(crate) records: usize,
}

fn corrupt(what: impl std::fmt::Display) -> DurableError {
    DurableError::Corrupt(what.to_string())
}

/// Replays `records` in order.
pub(crate) fn replay(records: Vec<Bytes>) -> Result<Recovered, DurableError> {
    let mut st = Recovered {
        records: records.len(),
        ..Recovered::default()
    };
    for (i, data) in records.into_iter().enumerate() {
        let rec = Record::decode(data).map_err(|e| corrupt(format!("record {i}: {e}")))?;
        match rec {
            Record::HardState { term, vote } => {
                st.term = term;
                st.vote = vote;
            }
            Record::Entries(entries) => {
                let Some(first) = entries.first().map(|e| e.index) else {
                    continue;
                };
                if first > st.log.last_index() + 1 {
                    return Err(corrupt(format!(
                        "record {i}: entries from {first} after a log ending at {}",
                        st.log.last_index()
                    )));
                }
                st.log.truncate_from(first);
                for e in entries {
                    // Entries the snapshot already covers are skipped.
                    if e.index > st.log.snapshot_index {
                        if e.index != st.log.last_index() + 1 {
                            return Err(corrupt(format!(
                                "record {i}: entry {} out of order",
                                e.index
                            )));
                        }
                        st.log.push(e);
                    }
                }
            }
            Record::Snapshot(s) => {
                if s.index >= st.log.snapshot_index {
                    KvStore::decode_snapshot(s.data.clone())
                        .map_err(|e| corrupt(format!("record {i}: snapshot: {e}")))?;
                    st.log.compact(s.index, s.term);
                    st.snapshot = Some(s);
                }
            }
            Record::Bootstrap(m) => st.bootstrap = Some(m),
        }
    }
    Ok(st)
}
