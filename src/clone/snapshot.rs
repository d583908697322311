//! A snapshot stream as a pure cursor over a point-in-time copy of the
//! server map: it yields KVSYNC messages in key order, chunk by chunk, then
//! one KTHXBAI.
//!
//! This module contains no networking code and reads no clock. The server
//! task drives one cursor per snapshot in its own task, so a slow or large
//! snapshot never holds up updates or other clients.

use std::ops::Bound;
use std::time::Instant;

use bytes::Bytes;

use super::proto::{in_subtree, SnapshotReply};
use super::store::StoreMap;

/// The state of one snapshot stream.
#[derive(Debug)]
pub struct SnapshotCursor {
    peer: Bytes,
    subtree: Bytes,
    map: StoreMap,
    seq: u64,
    after: Option<Bytes>,
    sent: u64,
    finished: bool,
    started: Instant,
    instance: Option<u64>,
    epoch: Option<u64>,
}

impl SnapshotCursor {
    /// A cursor over `map` (taken when the store's sequence was `seq`) for
    /// the keys in `subtree`, to be sent to `peer`.
    pub fn new(peer: Bytes, subtree: Bytes, map: StoreMap, seq: u64, now: Instant) -> Self {
        Self {
            peer,
            subtree,
            map,
            seq,
            after: None,
            sent: 0,
            finished: false,
            started: now,
            instance: None,
            epoch: None,
        }
    }

    /// Names the server instance in KTHXBAI (see
    /// [`INSTANCE`](super::proto::INSTANCE)).
    pub fn with_instance(mut self, instance: Option<u64>) -> Self {
        self.instance = instance;
        self
    }

    /// Presents the server's epoch in KTHXBAI (see
    /// [`EPOCH`](super::proto::EPOCH)).
    pub fn with_epoch(mut self, epoch: Option<u64>) -> Self {
        self.epoch = epoch;
        self
    }

    /// The ROUTER identity of the requester.
    pub fn peer(&self) -> &Bytes {
        &self.peer
    }
    /// The subtree requested.
    pub fn subtree(&self) -> &Bytes {
        &self.subtree
    }
    /// The sequence KTHXBAI carries: the store's sequence at request time.
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// KVSYNC messages produced so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }
    /// When the request was accepted.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Appends up to `max` KVSYNC messages to `out` (ttl as remaining
    /// seconds at `now`); when the subtree is exhausted, appends KTHXBAI and
    /// returns `true`. Calls after that append nothing and return `true`.
    pub fn next_chunk(&mut self, now: Instant, max: usize, out: &mut Vec<[Bytes; 5]>) -> bool {
        if self.finished {
            return true;
        }
        let lower = match &self.after {
            Some(k) => Bound::Excluded(k.clone()),
            None => Bound::Included(self.subtree.clone()),
        };
        let range = self.map.range((lower, Bound::Unbounded));
        for (taken, (key, entry)) in range.enumerate() {
            if !in_subtree(key, &self.subtree) {
                break;
            }
            if taken == max {
                return false;
            }
            out.push(entry.to_kvsync(key, now).encode());
            self.after = Some(key.clone());
            self.sent += 1;
        }
        // Nothing left: release the copy and close the stream.
        self.map = StoreMap::new();
        self.finished = true;
        out.push(SnapshotReply::encode_kthxbai(
            self.seq,
            &self.subtree,
            self.instance,
            self.epoch,
        ));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone::KvMsg;
    use crate::clone::{Store, StoreConfig};

    fn store_with(keys: &[&str]) -> Store {
        let now = Instant::now();
        let mut s = Store::new(StoreConfig::default(), now);
        for k in keys {
            s.handle_kvset(KvMsg::new(k.to_string(), "v").unwrap(), now);
        }
        s
    }

    fn keys(frames: &[[Bytes; 5]]) -> Vec<String> {
        frames
            .iter()
            .map(|f| String::from_utf8_lossy(&f[0]).into_owned())
            .collect()
    }

    #[test]
    fn chunks_cover_the_subtree_exactly_once_then_kthxbai() {
        let s = store_with(&["/a", "/a/1", "/a/2", "/a/3", "/a0", "/b/1", "/"]);
        let now = Instant::now();
        let mut c =
            SnapshotCursor::new(Bytes::new(), Bytes::from("/a/"), s.map(), s.sequence(), now);
        let mut out = Vec::new();
        assert!(!c.next_chunk(now, 2, &mut out));
        assert_eq!(keys(&out), ["/a/1", "/a/2"]);
        assert!(c.next_chunk(now, 2, &mut out));
        assert_eq!(keys(&out), ["/a/1", "/a/2", "/a/3", "KTHXBAI"]);
        assert_eq!(&out[3][4][..], b"/a/");
        assert!(c.next_chunk(now, 2, &mut out));
        assert_eq!(out.len(), 4, "nothing after KTHXBAI");
        assert_eq!(c.sent(), 3);
    }

    #[test]
    fn empty_subtree_is_everything_and_empty_map_is_just_kthxbai() {
        let s = store_with(&["x", "y"]);
        let now = Instant::now();
        let mut c = SnapshotCursor::new(Bytes::new(), Bytes::new(), s.map(), 2, now);
        let mut out = Vec::new();
        assert!(c.next_chunk(now, 100, &mut out));
        assert_eq!(keys(&out), ["x", "y", "KTHXBAI"]);
        let mut c = SnapshotCursor::new(Bytes::new(), Bytes::new(), StoreMap::new(), 0, now);
        out.clear();
        assert!(c.next_chunk(now, 0, &mut out));
        assert_eq!(keys(&out), ["KTHXBAI"]);
    }
}
