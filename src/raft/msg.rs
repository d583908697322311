//! The Raft wire format: one frame per message, `[version, kind, fields]`
//! with LEB128 varints and length-prefixed byte strings, the codec of the
//! Paxos store's messages.
//!
//! Clients speak the Paxos store's client messages unchanged
//! ([`paxos::Msg::Request`](crate::paxos::Msg::Request), `Reply`,
//! `Redirect`: kinds 9-11), so one client talks to either store. The Raft
//! protocol messages use kinds from 32 on; a node tells them apart by the
//! kind byte. Decoding never panics and never allocates more than the
//! frame can hold.

use bytes::Bytes;

use super::log::{decode_entry, decode_membership, encode_entry, encode_membership};
use super::{Entry, Membership, Role};
use crate::paxos::{MsgDecodeError, Reader, Writer, PREALLOC};
use crate::transport::NodeId;

/// The codec version (the first byte of every frame; the Paxos codec's).
pub const VERSION: u8 = 1;

/// A Raft protocol message.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Msg {
    /// "Would you vote for me in `term`?" (pre-vote: changes no state).
    PreVote {
        /// The term the sender would campaign in (its term + 1).
        term: u64,
        /// The sender's last log index.
        last_index: u64,
        /// The term of that entry.
        last_term: u64,
    },
    /// The answer to a pre-vote.
    PreVoteReply {
        /// The term asked about, or the voter's if higher.
        term: u64,
        /// Whether the voter would vote.
        granted: bool,
    },
    /// RequestVote.
    Vote {
        /// The candidate's term.
        term: u64,
        /// The candidate's last log index.
        last_index: u64,
        /// The term of that entry.
        last_term: u64,
        /// Sent because the leader handed over (ignores leader stickiness).
        transfer: bool,
    },
    /// The answer to a vote request.
    VoteReply {
        /// The voter's term.
        term: u64,
        /// Whether it voted for the candidate.
        granted: bool,
    },
    /// AppendEntries (with no entries: a heartbeat).
    Append {
        /// The leader's term.
        term: u64,
        /// The index of the entry before `entries`.
        prev_index: u64,
        /// Its term.
        prev_term: u64,
        /// The leader's commit index.
        commit: u64,
        /// The leader's heartbeat round, echoed back (confirms reads).
        round: u64,
        /// Entries `prev_index + 1 ..`.
        entries: Vec<Entry>,
    },
    /// The answer to an AppendEntries.
    AppendReply {
        /// The follower's term.
        term: u64,
        /// The round echoed.
        round: u64,
        /// Whether the entries matched and were stored.
        success: bool,
        /// On success: the last index known to match the leader's log. On
        /// failure: the `prev_index` refused.
        index: u64,
        /// On failure: where the leader should resume (fast backtracking:
        /// the first index of the conflicting term, or the follower's last
        /// index + 1).
        hint_index: u64,
        /// On failure: the term of the follower's conflicting entry.
        hint_term: Option<u64>,
    },
    /// InstallSnapshot, one chunk.
    Snapshot {
        /// The leader's term.
        term: u64,
        /// The last index the snapshot covers.
        index: u64,
        /// The term of that entry.
        snap_term: u64,
        /// The configuration as of `index`.
        membership: Membership,
        /// The snapshot's total size in bytes.
        total: u64,
        /// Where this chunk starts.
        offset: u64,
        /// The chunk.
        data: Bytes,
    },
    /// The answer to a snapshot chunk.
    SnapshotReply {
        /// The follower's term.
        term: u64,
        /// The snapshot's index.
        index: u64,
        /// Bytes received so far (where the next chunk should start).
        received: u64,
        /// The snapshot is installed (or was not needed).
        done: bool,
    },
    /// "Campaign now" (leadership transfer: the leader's chosen successor).
    TimeoutNow {
        /// The leader's term.
        term: u64,
    },
    /// "What is your state?" (any node answers anyone: `raft status`).
    Status {
        /// Echoed in the reply.
        nonce: u64,
    },
    /// A node's state.
    StatusReply {
        /// The request's nonce.
        nonce: u64,
        /// The state.
        status: RaftStatus,
    },
}

/// A node's state as [`Msg::StatusReply`] carries it (the Raft diary's
/// `getinfo`).
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct RaftStatus {
    /// The node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its current term.
    pub term: u64,
    /// The leader it believes in.
    pub leader: Option<NodeId>,
    /// Its commit index.
    pub commit: u64,
    /// The last index applied to its state machine.
    pub applied: u64,
    /// Its last log index.
    pub last_index: u64,
    /// The last index its snapshot covers.
    pub snapshot_index: u64,
    /// Entries held in its log (after the snapshot).
    pub log_entries: u64,
    /// Size of its snapshot in bytes.
    pub snapshot_bytes: u64,
    /// The voters of its latest configuration.
    pub voters: Vec<NodeId>,
    /// The learners of its latest configuration.
    pub learners: Vec<NodeId>,
}

/// The kind byte of each message.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
#[allow(missing_docs)]
#[non_exhaustive]
pub enum MsgKind {
    PreVote = 32,
    PreVoteReply = 33,
    Vote = 34,
    VoteReply = 35,
    Append = 36,
    AppendReply = 37,
    Snapshot = 38,
    SnapshotReply = 39,
    TimeoutNow = 40,
    Status = 41,
    StatusReply = 42,
}

/// The first Raft kind byte: lower ones are the Paxos store's (clients).
pub const FIRST_KIND: u8 = 32;

fn role_byte(r: Role) -> u8 {
    match r {
        Role::Follower => 0,
        Role::PreCandidate => 1,
        Role::Candidate => 2,
        Role::Leader => 3,
        Role::Learner => 4,
    }
}

fn read_role(r: &mut Reader) -> Result<Role, MsgDecodeError> {
    Ok(match r.u8()? {
        0 => Role::Follower,
        1 => Role::PreCandidate,
        2 => Role::Candidate,
        3 => Role::Leader,
        4 => Role::Learner,
        t => return Err(MsgDecodeError::UnknownTag(t)),
    })
}

fn opt(w: &mut Writer, v: Option<u64>) {
    match v {
        None => w.u8(0),
        Some(v) => {
            w.u8(1);
            w.varint(v);
        }
    }
}

fn read_opt(r: &mut Reader) -> Result<Option<u64>, MsgDecodeError> {
    match r.u8()? {
        0 => Ok(None),
        1 => Ok(Some(r.varint()?)),
        t => Err(MsgDecodeError::UnknownTag(t)),
    }
}

fn read_bool(r: &mut Reader) -> Result<bool, MsgDecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        t => Err(MsgDecodeError::UnknownTag(t)),
    }
}

fn nodes(w: &mut Writer, v: &[NodeId]) {
    w.varint(v.len() as u64);
    for n in v {
        w.varint(u64::from(n.0));
    }
}

fn read_nodes(r: &mut Reader) -> Result<Vec<NodeId>, MsgDecodeError> {
    let n = r.count(1)?;
    let mut v = Vec::with_capacity(n.min(PREALLOC));
    for _ in 0..n {
        v.push(NodeId(r.u32()?));
    }
    Ok(v)
}

impl Msg {
    /// The message's kind.
    pub fn kind(&self) -> MsgKind {
        match self {
            Msg::PreVote { .. } => MsgKind::PreVote,
            Msg::PreVoteReply { .. } => MsgKind::PreVoteReply,
            Msg::Vote { .. } => MsgKind::Vote,
            Msg::VoteReply { .. } => MsgKind::VoteReply,
            Msg::Append { .. } => MsgKind::Append,
            Msg::AppendReply { .. } => MsgKind::AppendReply,
            Msg::Snapshot { .. } => MsgKind::Snapshot,
            Msg::SnapshotReply { .. } => MsgKind::SnapshotReply,
            Msg::TimeoutNow { .. } => MsgKind::TimeoutNow,
            Msg::Status { .. } => MsgKind::Status,
            Msg::StatusReply { .. } => MsgKind::StatusReply,
        }
    }

    /// The sender's term, for the messages that carry one.
    pub fn term(&self) -> Option<u64> {
        match self {
            Msg::PreVote { term, .. }
            | Msg::PreVoteReply { term, .. }
            | Msg::Vote { term, .. }
            | Msg::VoteReply { term, .. }
            | Msg::Append { term, .. }
            | Msg::AppendReply { term, .. }
            | Msg::Snapshot { term, .. }
            | Msg::SnapshotReply { term, .. }
            | Msg::TimeoutNow { term } => Some(*term),
            Msg::Status { .. } | Msg::StatusReply { .. } => None,
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Bytes {
        let mut w = Writer::new();
        w.u8(VERSION);
        w.u8(self.kind() as u8);
        match self {
            Msg::PreVote {
                term,
                last_index,
                last_term,
            } => {
                w.varint(*term);
                w.varint(*last_index);
                w.varint(*last_term);
            }
            Msg::PreVoteReply { term, granted } | Msg::VoteReply { term, granted } => {
                w.varint(*term);
                w.u8(u8::from(*granted));
            }
            Msg::Vote {
                term,
                last_index,
                last_term,
                transfer,
            } => {
                w.varint(*term);
                w.varint(*last_index);
                w.varint(*last_term);
                w.u8(u8::from(*transfer));
            }
            Msg::Append {
                term,
                prev_index,
                prev_term,
                commit,
                round,
                entries,
            } => {
                w.varint(*term);
                w.varint(*prev_index);
                w.varint(*prev_term);
                w.varint(*commit);
                w.varint(*round);
                w.varint(entries.len() as u64);
                for e in entries {
                    encode_entry(&mut w, e);
                }
            }
            Msg::AppendReply {
                term,
                round,
                success,
                index,
                hint_index,
                hint_term,
            } => {
                w.varint(*term);
                w.varint(*round);
                w.u8(u8::from(*success));
                w.varint(*index);
                w.varint(*hint_index);
                opt(&mut w, *hint_term);
            }
            Msg::Snapshot {
                term,
                index,
                snap_term,
                membership,
                total,
                offset,
                data,
            } => {
                w.varint(*term);
                w.varint(*index);
                w.varint(*snap_term);
                encode_membership(&mut w, membership);
                w.varint(*total);
                w.varint(*offset);
                w.bytes(data);
            }
            Msg::SnapshotReply {
                term,
                index,
                received,
                done,
            } => {
                w.varint(*term);
                w.varint(*index);
                w.varint(*received);
                w.u8(u8::from(*done));
            }
            Msg::TimeoutNow { term } => w.varint(*term),
            Msg::Status { nonce } => w.varint(*nonce),
            Msg::StatusReply { nonce, status: s } => {
                w.varint(*nonce);
                w.varint(u64::from(s.id.0));
                w.u8(role_byte(s.role));
                w.varint(s.term);
                opt(&mut w, s.leader.map(|l| u64::from(l.0)));
                for v in [
                    s.commit,
                    s.applied,
                    s.last_index,
                    s.snapshot_index,
                    s.log_entries,
                    s.snapshot_bytes,
                ] {
                    w.varint(v);
                }
                nodes(&mut w, &s.voters);
                nodes(&mut w, &s.learners);
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
            32 => Msg::PreVote {
                term: r.varint()?,
                last_index: r.varint()?,
                last_term: r.varint()?,
            },
            33 => Msg::PreVoteReply {
                term: r.varint()?,
                granted: read_bool(&mut r)?,
            },
            34 => Msg::Vote {
                term: r.varint()?,
                last_index: r.varint()?,
                last_term: r.varint()?,
                transfer: read_bool(&mut r)?,
            },
            35 => Msg::VoteReply {
                term: r.varint()?,
                granted: read_bool(&mut r)?,
            },
            36 => {
                let term = r.varint()?;
                let prev_index = r.varint()?;
                let prev_term = r.varint()?;
                let commit = r.varint()?;
                let round = r.varint()?;
                let n = r.count(3)?;
                let mut entries = Vec::with_capacity(n.min(PREALLOC));
                for _ in 0..n {
                    entries.push(decode_entry(&mut r)?);
                }
                // Entries must follow `prev_index` one by one.
                for (i, e) in entries.iter().enumerate() {
                    if Some(e.index) != prev_index.checked_add(i as u64 + 1) {
                        return Err(MsgDecodeError::OutOfRange);
                    }
                }
                Msg::Append {
                    term,
                    prev_index,
                    prev_term,
                    commit,
                    round,
                    entries,
                }
            }
            37 => Msg::AppendReply {
                term: r.varint()?,
                round: r.varint()?,
                success: read_bool(&mut r)?,
                index: r.varint()?,
                hint_index: r.varint()?,
                hint_term: read_opt(&mut r)?,
            },
            38 => Msg::Snapshot {
                term: r.varint()?,
                index: r.varint()?,
                snap_term: r.varint()?,
                membership: decode_membership(&mut r)?,
                total: r.varint()?,
                offset: r.varint()?,
                data: r.bytes()?,
            },
            39 => Msg::SnapshotReply {
                term: r.varint()?,
                index: r.varint()?,
                received: r.varint()?,
                done: read_bool(&mut r)?,
            },
            40 => Msg::TimeoutNow { term: r.varint()? },
            41 => Msg::Status { nonce: r.varint()? },
            42 => {
                let nonce = r.varint()?;
                let id = NodeId(r.u32()?);
                let role = read_role(&mut r)?;
                let term = r.varint()?;
                let leader = read_opt(&mut r)?
                    .map(|l| u32::try_from(l).map(NodeId))
                    .transpose()
                    .map_err(|_| MsgDecodeError::OutOfRange)?;
                let mut v = [0u64; 6];
                for x in &mut v {
                    *x = r.varint()?;
                }
                let [commit, applied, last_index, snapshot_index, log_entries, snapshot_bytes] = v;
                Msg::StatusReply {
                    nonce,
                    status: RaftStatus {
                        id,
                        role,
                        term,
                        leader,
                        commit,
                        applied,
                        last_index,
                        snapshot_index,
                        log_entries,
                        snapshot_bytes,
                        voters: read_nodes(&mut r)?,
                        learners: read_nodes(&mut r)?,
                    },
                }
            }
            k => return Err(MsgDecodeError::UnknownKind(k)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::{ClientId, Command, Op};
    use crate::raft::EntryKind;

    fn samples() -> Vec<Msg> {
        let m = Membership::of(&[NodeId(1), NodeId(2), NodeId(3)]);
        vec![
            Msg::PreVote {
                term: 4,
                last_index: 10,
                last_term: 3,
            },
            Msg::PreVoteReply {
                term: 4,
                granted: true,
            },
            Msg::Vote {
                term: 5,
                last_index: 10,
                last_term: 3,
                transfer: true,
            },
            Msg::VoteReply {
                term: 5,
                granted: false,
            },
            Msg::Append {
                term: 5,
                prev_index: 10,
                prev_term: 3,
                commit: 9,
                round: 77,
                entries: vec![
                    Entry {
                        term: 5,
                        index: 11,
                        kind: EntryKind::Noop,
                    },
                    Entry {
                        term: 5,
                        index: 12,
                        kind: EntryKind::Commands(vec![Command {
                            client: ClientId(3),
                            seq: 1,
                            op: Op::Put {
                                key: Bytes::from("k"),
                                value: Bytes::from("v"),
                            },
                        }]),
                    },
                    Entry {
                        term: 5,
                        index: 13,
                        kind: EntryKind::Config(m.clone()),
                    },
                ],
            },
            Msg::AppendReply {
                term: 5,
                round: 77,
                success: false,
                index: 10,
                hint_index: 7,
                hint_term: Some(2),
            },
            Msg::Snapshot {
                term: 5,
                index: 100,
                snap_term: 4,
                membership: m,
                total: 3,
                offset: 0,
                data: Bytes::from("abc"),
            },
            Msg::SnapshotReply {
                term: 5,
                index: 100,
                received: 3,
                done: true,
            },
            Msg::TimeoutNow { term: 5 },
            Msg::Status { nonce: 9 },
            Msg::StatusReply {
                nonce: 9,
                status: RaftStatus {
                    id: NodeId(2),
                    role: Role::Leader,
                    term: 5,
                    leader: Some(NodeId(2)),
                    commit: 12,
                    applied: 12,
                    last_index: 13,
                    snapshot_index: 10,
                    log_entries: 3,
                    snapshot_bytes: 400,
                    voters: vec![NodeId(1), NodeId(2)],
                    learners: vec![NodeId(7)],
                },
            },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_fails() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(Msg::decode(bytes.clone()).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(
                    Msg::decode(bytes.slice(..cut)).is_err(),
                    "{m:?} cut at {cut}"
                );
            }
            let mut longer = bytes.to_vec();
            longer.push(0);
            assert!(Msg::decode(Bytes::from(longer)).is_err());
        }
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        assert_eq!(
            Msg::decode(Bytes::from_static(&[VERSION, 99])),
            Err(MsgDecodeError::UnknownKind(99))
        );
        assert_eq!(
            Msg::decode(Bytes::from_static(&[7, 32])),
            Err(MsgDecodeError::Version(7))
        );
        // Entries that do not follow prev_index.
        let bad = Msg::Append {
            term: 1,
            prev_index: 3,
            prev_term: 1,
            commit: 0,
            round: 0,
            entries: vec![Entry {
                term: 1,
                index: 9,
                kind: EntryKind::Noop,
            }],
        };
        assert!(Msg::decode(bad.encode()).is_err());
        let mut rng = crate::det::Rng::new(5);
        for _ in 0..2000 {
            let n = rng.index(40);
            let mut v: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            if v.len() > 1 {
                v[0] = VERSION;
                v[1] = 32 + rng.below(12) as u8;
            }
            let _ = Msg::decode(Bytes::from(v));
        }
    }
}
