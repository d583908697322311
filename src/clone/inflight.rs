//! The Clone client's in-flight updates: the KVSETs it published and has not
//! yet seen republished by the active server (their UUID on a KVPUB or a
//! KVSYNC), kept FIFO and bounded so that the [`Agent`](super::Agent) can
//! re-send them after a failover. A pure data structure, no networking.

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;

use super::kvmsg::{KvMsg, Uuid};

/// What an acknowledgement removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Acked {
    /// Older in-flight updates of the same key, removed with it (superseded
    /// by this later, acknowledged write; never re-sent).
    pub(crate) superseded: usize,
}

/// In-flight KVSETs: FIFO, keyed by UUID, indexed by key, bounded in
/// entries and bytes (oldest evicted first).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    fifo: BTreeMap<u64, (KvMsg, usize)>,
    by_uuid: HashMap<Uuid, u64>,
    by_key: HashMap<Bytes, VecDeque<u64>>,
    next: u64,
    bytes: usize,
}

impl InFlight {
    /// What one update counts against the byte bound: key, value and
    /// properties plus 64 bytes of bookkeeping.
    pub(crate) fn cost(msg: &KvMsg) -> usize {
        msg.key().len() + msg.body().len() + msg.props().encoded_len() + 64
    }

    /// Updates held.
    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    /// Bytes held (see [`cost`](Self::cost)).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// `true` if `uuid` is in flight.
    pub(crate) fn contains(&self, uuid: &Uuid) -> bool {
        self.by_uuid.contains_key(uuid)
    }

    /// Tracks `msg` (which must carry `uuid`; a UUID already in flight is
    /// replaced), then evicts the oldest until at most `max` updates and
    /// `max_bytes` bytes are held; returns how many were evicted (the new
    /// update counts if it alone exceeds the byte bound).
    pub(crate) fn push(&mut self, uuid: Uuid, msg: KvMsg, max: usize, max_bytes: usize) -> usize {
        if let Some(old) = self.by_uuid.get(&uuid).copied() {
            self.remove(old);
        }
        let cost = Self::cost(&msg);
        let tick = self.next;
        self.next += 1;
        self.by_uuid.insert(uuid, tick);
        self.by_key
            .entry(msg.key().clone())
            .or_default()
            .push_back(tick);
        self.bytes += cost;
        self.fifo.insert(tick, (msg, cost));
        let mut evicted = 0;
        while self.fifo.len() > max || self.bytes > max_bytes {
            let Some((&oldest, _)) = self.fifo.first_key_value() else {
                break;
            };
            self.remove(oldest);
            evicted += 1;
        }
        evicted
    }

    /// `uuid` came back from the active: removes it and every older
    /// in-flight update of the same key; `None` if it was not in flight.
    pub(crate) fn ack(&mut self, uuid: &Uuid) -> Option<Acked> {
        let tick = *self.by_uuid.get(uuid)?;
        let key = self.fifo.get(&tick)?.0.key().clone();
        let older: Vec<u64> = self
            .by_key
            .get(&key)
            .map(|ticks| ticks.iter().copied().filter(|t| *t < tick).collect())
            .unwrap_or_default();
        self.remove(tick);
        for t in &older {
            self.remove(*t);
        }
        Some(Acked {
            superseded: older.len(),
        })
    }

    /// The UUIDs and keys of the in-flight deletes.
    pub(crate) fn deletes(&self) -> Vec<(Uuid, Bytes)> {
        self.fifo
            .values()
            .filter(|(m, _)| m.is_delete())
            .filter_map(|(m, _)| Some((*m.uuid()?, m.key().clone())))
            .collect()
    }

    /// For re-sending: drops every in-flight update that a later one of the
    /// same key follows (re-sent, the older one could land after the newer
    /// one's first copy and undo it), and returns copies of the rest, oldest
    /// first, with the number dropped.
    pub(crate) fn latest_per_key(&mut self) -> (Vec<KvMsg>, usize) {
        let older: Vec<u64> = self
            .by_key
            .values()
            .flat_map(|ticks| ticks.iter().rev().skip(1).copied())
            .collect();
        for t in &older {
            self.remove(*t);
        }
        let msgs = self.fifo.values().map(|(m, _)| m.clone()).collect();
        (msgs, older.len())
    }

    fn remove(&mut self, tick: u64) {
        let Some((msg, cost)) = self.fifo.remove(&tick) else {
            return;
        };
        self.bytes -= cost;
        if let Some(u) = msg.uuid() {
            if self.by_uuid.get(u) == Some(&tick) {
                self.by_uuid.remove(u);
            }
        }
        if let Some(ticks) = self.by_key.get_mut(msg.key()) {
            ticks.retain(|t| *t != tick);
            if ticks.is_empty() {
                self.by_key.remove(msg.key());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str, u: u8) -> (Uuid, KvMsg) {
        let mut m = KvMsg::new(key.to_owned(), value.to_owned()).unwrap();
        m.set_uuid(Some([u; 16]));
        ([u; 16], m)
    }

    #[test]
    fn ack_removes_the_update_and_older_ones_of_its_key_only() {
        let mut f = InFlight::default();
        for (k, v, u) in [("a", "1", 1), ("b", "1", 2), ("a", "2", 3), ("a", "3", 4)] {
            let (uuid, m) = set(k, v, u);
            assert_eq!(f.push(uuid, m, 10, usize::MAX), 0);
        }
        assert_eq!(f.ack(&[3; 16]), Some(Acked { superseded: 1 }));
        assert_eq!(f.ack(&[1; 16]), None, "superseded with it");
        assert!(f.contains(&[4; 16]) && !f.contains(&[3; 16]));
        let (uuid, m) = set("b", "2", 5);
        f.push(uuid, m, 10, usize::MAX);
        let (left, dropped) = f.latest_per_key();
        let left: Vec<_> = left.iter().map(|m| m.body().clone()).collect();
        assert_eq!(left, ["3", "2"], "the newest of each key, oldest first");
        assert_eq!((dropped, f.len()), (1, 2));
    }

    #[test]
    fn bounds_evict_the_oldest() {
        let mut f = InFlight::default();
        let (u1, m1) = set("k", "v", 1);
        let one = InFlight::cost(&m1);
        f.push(u1, m1, 2, 2 * one);
        let (u2, m2) = set("k", "v", 2);
        f.push(u2, m2, 2, 2 * one);
        let (u3, m3) = set("k", "v", 3);
        assert_eq!(f.push(u3, m3, 2, 2 * one), 1);
        assert!(!f.contains(&u1));
        assert_eq!((f.len(), f.bytes()), (2, 2 * one));
        let (u4, m4) = set("k", &"x".repeat(3 * one), 4);
        assert_eq!(f.push(u4, m4, 10, 2 * one), 3, "too big alone: all go");
        assert_eq!((f.len(), f.bytes()), (0, 0));
    }
}
