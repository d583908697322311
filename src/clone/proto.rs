//! The Clustered Hashmap Protocol (CHP, ZeroMQ RFC 12) commands, decoded
//! per socket: what a server's ROUTER, a client's DEALER and a client's SUB
//! may receive.
//!
//! Strict where CHP is strict (frame counts, sequence and UUID sizes), and
//! lenient where the Guide's reference programs deviate from it:
//! - `ICANHAZ?` without a subtree frame (model 2 clients) means subtree `""`;
//! - KVSYNC may carry a UUID and properties (the C and Python servers do);
//! - KTHXBAI's body may be the subtree (CHP, Python) or empty (C);
//! - HUGZ may carry the server's current sequence (C, Python) or 0 (CHP),
//!   and a UUID (Python);
//! - KTHXBAI's sequence may exceed the highest KVSYNC sequence (both).

use bytes::Bytes;

use super::error::KvMsgError;
use super::kvmsg::{decode_seq, decode_uuid, KvMsg, Properties, KEY_MAX};

/// The snapshot request command.
pub const ICANHAZ: &[u8] = b"ICANHAZ?";
/// The end-of-snapshot command.
pub const KTHXBAI: &[u8] = b"KTHXBAI";
/// The heartbeat command.
pub const HUGZ: &[u8] = b"HUGZ";
/// Property on this crate's HUGZ and KTHXBAI naming the server instance (16
/// hex digits, random per server start). An extension: CHP leaves these
/// properties empty and the Guide's programs ignore them; a client that
/// sees the instance change knows the server restarted and lost its state.
pub const INSTANCE: &str = "instance";
/// Property on the KVPUB, HUGZ and KTHXBAI of a Clone server pair's active
/// server (Guide ch. 5, `clonesrv6`, extended): its epoch, a decimal number
/// that increases on every promotion. An extension CHP allows (extra
/// properties); receivers refuse a server presenting an epoch lower than
/// one they have seen (fencing). Absent on a single server (epoch 0) and on
/// the Guide's programs, which are never fenced. Stored entries never keep
/// it.
pub const EPOCH: &str = "epoch";

/// A snapshot request as the server's ROUTER sees it (identity removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Icanhaz {
    /// The key prefix wanted; empty for everything.
    pub subtree: Bytes,
}

impl Icanhaz {
    /// `["ICANHAZ?"][subtree]`.
    pub fn encode(subtree: &Bytes) -> [Bytes; 2] {
        [Bytes::from_static(ICANHAZ), subtree.clone()]
    }

    /// Parses `["ICANHAZ?"]` or `["ICANHAZ?"][subtree]`.
    pub fn decode(frames: &[Bytes]) -> Result<Self, KvMsgError> {
        let (cmd, subtree) = match frames {
            [cmd] => (cmd, Bytes::new()),
            [cmd, subtree] => (cmd, subtree.clone()),
            _ => {
                return Err(KvMsgError::FrameCount {
                    expected: "1 or 2",
                    got: frames.len(),
                })
            }
        };
        if cmd != ICANHAZ {
            return Err(unknown(cmd));
        }
        if subtree.len() > KEY_MAX {
            return Err(KvMsgError::KeyTooLong(subtree.len()));
        }
        Ok(Self { subtree })
    }
}

/// What a client's snapshot DEALER receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotReply {
    /// One entry of the snapshot.
    Kvsync(KvMsg),
    /// The end of the snapshot.
    Kthxbai {
        /// Live updates at or below this sequence are already included.
        seq: u64,
        /// The subtree, or empty (the C servers send it empty).
        subtree: Bytes,
        /// The server instance, if the server names it ([`INSTANCE`]).
        instance: Option<u64>,
        /// The server's epoch, if it presents one ([`EPOCH`]).
        epoch: Option<u64>,
    },
}

impl SnapshotReply {
    /// Parses five frames: KTHXBAI if the key is `KTHXBAI`, else KVSYNC.
    pub fn decode(frames: &[Bytes]) -> Result<Self, KvMsgError> {
        if frames.first().is_some_and(|k| k == KTHXBAI) {
            let (seq, subtree, instance, epoch) = decode_marker(frames)?;
            return Ok(Self::Kthxbai {
                seq,
                subtree,
                instance,
                epoch,
            });
        }
        KvMsg::decode(frames).map(Self::Kvsync)
    }

    /// `["KTHXBAI"][seq][""][props][subtree]`, as CHP specifies (props
    /// empty unless `instance` or `epoch` is given).
    pub fn encode_kthxbai(
        seq: u64,
        subtree: &Bytes,
        instance: Option<u64>,
        epoch: Option<u64>,
    ) -> [Bytes; 5] {
        marker(KTHXBAI, seq, instance, epoch, subtree.clone())
    }
}

/// What a client's SUB receives from the server's publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A sequenced change (an empty body deletes the key).
    Kvpub(KvMsg),
    /// A heartbeat; `seq` is the server's current sequence or 0.
    Hugz {
        /// The sequence the heartbeat carried.
        seq: u64,
        /// The server instance, if the server names it ([`INSTANCE`]).
        instance: Option<u64>,
        /// The server's epoch, if it presents one ([`EPOCH`]).
        epoch: Option<u64>,
    },
}

impl Update {
    /// Parses five frames: HUGZ if the key is `HUGZ`, else KVPUB.
    pub fn decode(frames: &[Bytes]) -> Result<Self, KvMsgError> {
        if frames.first().is_some_and(|k| k == HUGZ) {
            let (seq, _, instance, epoch) = decode_marker(frames)?;
            return Ok(Self::Hugz {
                seq,
                instance,
                epoch,
            });
        }
        KvMsg::decode(frames).map(Self::Kvpub)
    }

    /// `["HUGZ"][seq][""][""][""]`. CHP says `seq` 0; the reference servers
    /// (and this crate's) send their current sequence, which lets clients
    /// detect restarts and gaps. The properties name the instance and the
    /// epoch when given.
    pub fn encode_hugz(seq: u64, instance: Option<u64>, epoch: Option<u64>) -> [Bytes; 5] {
        marker(HUGZ, seq, instance, epoch, Bytes::new())
    }

    /// The epoch the message presents ([`EPOCH`]): the HUGZ field or the
    /// KVPUB property.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Self::Kvpub(msg) => msg.epoch(),
            Self::Hugz { epoch, .. } => *epoch,
        }
    }
}

/// Parses a client's KVSET as the server's collector receives it: a kvmsg
/// whose key is not a CHP command name.
pub(crate) fn decode_kvset(frames: &[Bytes]) -> Result<KvMsg, KvMsgError> {
    let msg = KvMsg::decode(frames)?;
    let key = msg.key();
    if key == HUGZ || key == KTHXBAI || key == ICANHAZ {
        return Err(KvMsgError::ReservedKey(
            String::from_utf8_lossy(key).into_owned(),
        ));
    }
    Ok(msg)
}

/// The [`EPOCH`] property, if present and a decimal number (anything else
/// is ignored: lenient).
pub(crate) fn epoch_of(props: &Properties) -> Option<u64> {
    props.get(EPOCH).and_then(|v| v.trim().parse().ok())
}

/// `true` if `key` is in `subtree` (a plain prefix; empty matches all).
pub(crate) fn in_subtree(key: &[u8], subtree: &[u8]) -> bool {
    key.starts_with(subtree)
}

fn marker(
    name: &'static [u8],
    seq: u64,
    instance: Option<u64>,
    epoch: Option<u64>,
    body: Bytes,
) -> [Bytes; 5] {
    let mut props = String::new();
    if let Some(id) = instance {
        props.push_str(&format!("{INSTANCE}={id:016x}\n"));
    }
    if let Some(epoch) = epoch {
        props.push_str(&format!("{EPOCH}={epoch}\n"));
    }
    let props = if props.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(props)
    };
    [
        Bytes::from_static(name),
        Bytes::copy_from_slice(&seq.to_be_bytes()),
        Bytes::new(),
        props,
        body,
    ]
}

/// What a KTHXBAI or HUGZ carries: sequence, body, instance, epoch.
type Marker = (u64, Bytes, Option<u64>, Option<u64>);

/// A KTHXBAI or HUGZ: five frames, a valid sequence and UUID frame; of the
/// properties only a well-formed [`INSTANCE`] and [`EPOCH`] are read,
/// anything else there is ignored (lenient).
fn decode_marker(frames: &[Bytes]) -> Result<Marker, KvMsgError> {
    let [_, seq, uuid, props, body] = frames else {
        return Err(KvMsgError::FrameCount {
            expected: "5",
            got: frames.len(),
        });
    };
    decode_uuid(uuid)?;
    let props = Properties::decode(props).ok();
    let instance = props.as_ref().and_then(|p| {
        p.get(INSTANCE)
            .and_then(|v| u64::from_str_radix(v, 16).ok())
    });
    let epoch = props.as_ref().and_then(epoch_of);
    Ok((decode_seq(seq)?, body.clone(), instance, epoch))
}

fn unknown(cmd: &[u8]) -> KvMsgError {
    let shown = &cmd[..cmd.len().min(32)];
    KvMsgError::UnknownCommand(String::from_utf8_lossy(shown).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(parts: &[&[u8]]) -> Vec<Bytes> {
        parts.iter().map(|p| Bytes::copy_from_slice(p)).collect()
    }

    #[test]
    fn icanhaz_with_or_without_subtree() {
        assert_eq!(
            Icanhaz::decode(&f(&[b"ICANHAZ?", b"/client/"])).unwrap(),
            Icanhaz {
                subtree: Bytes::from("/client/")
            }
        );
        assert_eq!(
            Icanhaz::decode(&f(&[b"ICANHAZ?"])).unwrap().subtree,
            Bytes::new()
        );
        assert!(matches!(
            Icanhaz::decode(&f(&[b"GIMME", b""])),
            Err(KvMsgError::UnknownCommand(_))
        ));
        assert!(Icanhaz::decode(&f(&[b"ICANHAZ?", b"", b""])).is_err());
        assert!(Icanhaz::decode(&Icanhaz::encode(&Bytes::from("/a/"))).is_ok());
    }

    #[test]
    fn kthxbai_with_subtree_or_empty_body_and_hugz_with_any_seq() {
        let k = SnapshotReply::encode_kthxbai(42, &Bytes::from("/a/"), Some(0xabc), Some(7));
        assert_eq!(&k[3][..], b"instance=0000000000000abc\nepoch=7\n");
        assert_eq!(
            SnapshotReply::decode(&k).unwrap(),
            SnapshotReply::Kthxbai {
                seq: 42,
                subtree: Bytes::from("/a/"),
                instance: Some(0xabc),
                epoch: Some(7),
            }
        );
        // Python's HUGZ carries a random UUID: accepted.
        let h = f(&[b"HUGZ", &7u64.to_be_bytes(), &[9; 16], b"", b""]);
        let hugz = Update::Hugz {
            seq: 7,
            instance: None,
            epoch: None,
        };
        assert_eq!(Update::decode(&h).unwrap(), hugz);
        let h = f(&[b"HUGZ", &7u64.to_be_bytes(), b"", b"\xff", b""]);
        assert_eq!(Update::decode(&h).unwrap(), hugz, "bad props ignored");
        assert!(Update::decode(&f(&[b"HUGZ", &[0; 8]])).is_err());
        let kv = f(&[b"/a/1", &[0, 0, 0, 0, 0, 0, 0, 3], b"", b"ttl=5\n", b"v"]);
        assert!(
            matches!(SnapshotReply::decode(&kv).unwrap(), SnapshotReply::Kvsync(m) if m.seq() == 3)
        );
        assert!(matches!(Update::decode(&kv).unwrap(), Update::Kvpub(m) if m.body() == "v"));
    }

    #[test]
    fn the_epoch_is_read_leniently_from_hugz_kthxbai_and_kvpub() {
        let h = Update::encode_hugz(3, None, Some(12));
        assert_eq!(&h[3][..], b"epoch=12\n");
        let u = Update::decode(&h).unwrap();
        assert_eq!(u.epoch(), Some(12));
        assert_eq!(Update::encode_hugz(3, None, None)[3].len(), 0);
        let bad = f(&[b"HUGZ", &[0; 8], b"", b"epoch=x\n", b""]);
        assert_eq!(Update::decode(&bad).unwrap().epoch(), None);
        let kv = f(&[b"k", &[0; 8], b"", b"ttl=5\nepoch=4\n", b"v"]);
        assert_eq!(Update::decode(&kv).unwrap().epoch(), Some(4));
        let kv = f(&[b"k", &[0; 8], b"", b"epoch=-1\n", b"v"]);
        assert_eq!(Update::decode(&kv).unwrap().epoch(), None);
    }

    #[test]
    fn kvset_refuses_command_names_as_keys() {
        let bad = f(&[b"HUGZ", &[0; 8], b"", b"", b"x"]);
        assert!(matches!(
            decode_kvset(&bad),
            Err(KvMsgError::ReservedKey(_))
        ));
        let ok = f(&[b"HUGZY", &[0; 8], b"", b"", b"x"]);
        assert!(decode_kvset(&ok).is_ok());
    }
}

#[cfg(test)]
mod proptests {
    use super::*;
    use crate::clone::kvmsg::KvMsg;
    use proptest::prelude::*;

    fn frame() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 8..=8),
            prop::collection::vec(any::<u8>(), 16..=16),
            Just(b"HUGZ".to_vec()),
            Just(b"KTHXBAI".to_vec()),
            Just(b"ICANHAZ?".to_vec()),
            Just(b"ttl=5\n".to_vec()),
        ]
    }

    fn msg() -> impl Strategy<Value = KvMsg> {
        let props = prop::collection::btree_map("[a-z]{1,8}", "[^\n]{0,16}", 0..4);
        (
            prop::collection::vec(any::<u8>(), 1..=255),
            any::<u64>(),
            prop::option::of(any::<[u8; 16]>()),
            props,
            prop::collection::vec(any::<u8>(), 0..64),
        )
            .prop_map(|(key, seq, uuid, props, body)| {
                let mut m = KvMsg::new(key, body).unwrap();
                m.set_seq(seq);
                m.set_uuid(uuid);
                for (n, v) in props {
                    m.props_mut().set(&n, &v).unwrap();
                }
                m
            })
    }

    proptest! {
        #[test]
        fn kvmsg_round_trips(m in msg()) {
            prop_assert_eq!(KvMsg::decode(&m.encode()).unwrap(), m);
        }

        #[test]
        fn decoding_arbitrary_frames_never_panics_and_accepted_input_round_trips(
            frames in prop::collection::vec(frame(), 0..7)
        ) {
            let frames: Vec<Bytes> = frames.into_iter().map(Bytes::from).collect();
            if let Ok(m) = KvMsg::decode(&frames) {
                prop_assert_eq!(KvMsg::decode(&m.encode()).unwrap(), m);
            }
            let _ = KvMsg::decode_kvsimple(&frames);
            let _ = Icanhaz::decode(&frames);
            let _ = SnapshotReply::decode(&frames);
            let _ = Update::decode(&frames);
            let _ = decode_kvset(&frames);
        }
    }
}
