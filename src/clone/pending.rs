//! Two bounded memories of the Clone server pair (Guide ch. 5, `clonesrv6`),
//! pure data structures used by the [`Store`](super::Store):
//!
//! - [`PendingList`]: the passive server's FIFO of client updates it has
//!   not yet seen republished by the active, cancelled by UUID when the
//!   active's copy arrives (and superseded by key when the active's write
//!   of the key was sent after them, see
//!   [`supersede_before`](PendingList::supersede_before)), so that at
//!   promotion only updates the active never applied are applied;
//! - [`RecentUuids`]: the UUIDs of the most recently applied updates, so
//!   that a client's re-sent update is applied exactly once;
//! - [`Awaited`]: per key, the last client write the passive applied from
//!   the active before its own client copy arrived, so that a late client
//!   copy of an *older* write of that key is recognised.
//!
//! No networking, no clock: arrival times are passed in.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::kvmsg::{KvMsg, Uuid};
use super::store::ENTRY_OVERHEAD;

/// One client update waiting on the passive server.
#[derive(Debug, Clone)]
pub(crate) struct Pending {
    /// The KVSET as the client sent it (relative `ttl` and all).
    pub(crate) msg: KvMsg,
    /// When it arrived (its ttl counts from here).
    pub(crate) arrived: Instant,
    cost: usize,
}

/// What [`PendingList::push`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pushed {
    /// `false` if an entry with the same UUID was already pending (the new
    /// copy is dropped).
    pub(crate) added: bool,
    /// Oldest entries dropped to stay within the bounds (the new entry
    /// itself counts if it alone exceeds the byte bound).
    pub(crate) evicted: usize,
}

/// The passive server's pending list: FIFO, keyed by UUID (an update
/// without a UUID is kept but never matches one), indexed by key, bounded
/// in entries and bytes (oldest dropped first).
#[derive(Debug, Default)]
pub(crate) struct PendingList {
    fifo: BTreeMap<u64, Pending>,
    by_uuid: HashMap<Uuid, u64>,
    by_key: HashMap<Bytes, Vec<u64>>,
    next: u64,
    bytes: usize,
}

impl PendingList {
    /// What one entry counts against the byte bound: key, body and
    /// properties plus [`ENTRY_OVERHEAD`].
    pub(crate) fn cost(msg: &KvMsg) -> usize {
        msg.key().len() + msg.body().len() + msg.props().encoded_len() + ENTRY_OVERHEAD
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    /// Bytes held (see [`cost`](Self::cost)).
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// `true` if an entry with this UUID is pending.
    #[cfg(test)]
    pub(crate) fn contains(&self, uuid: &Uuid) -> bool {
        self.by_uuid.contains_key(uuid)
    }

    /// Appends `msg` (arrived at `arrived`), unless its UUID is already
    /// pending; then drops the oldest entries until at most `max` entries
    /// and `max_bytes` bytes are held.
    pub(crate) fn push(
        &mut self,
        msg: KvMsg,
        arrived: Instant,
        max: usize,
        max_bytes: usize,
    ) -> Pushed {
        if msg.uuid().is_some_and(|u| self.by_uuid.contains_key(u)) {
            return Pushed {
                added: false,
                evicted: 0,
            };
        }
        let cost = Self::cost(&msg);
        let tick = self.next;
        self.next += 1;
        if let Some(u) = msg.uuid() {
            self.by_uuid.insert(*u, tick);
        }
        self.by_key.entry(msg.key().clone()).or_default().push(tick);
        self.bytes += cost;
        self.fifo.insert(tick, Pending { msg, arrived, cost });
        let mut evicted = 0;
        while self.fifo.len() > max || self.bytes > max_bytes {
            let Some((&oldest, _)) = self.fifo.first_key_value() else {
                break;
            };
            self.remove(oldest);
            evicted += 1;
        }
        Pushed {
            added: true,
            evicted,
        }
    }

    /// Removes the entry with this UUID; returns its place in the queue
    /// (for [`supersede_before`](Self::supersede_before)) if there was one.
    pub(crate) fn cancel(&mut self, uuid: &Uuid) -> Option<u64> {
        let tick = self.by_uuid.get(uuid).copied()?;
        self.remove(tick).map(|_| tick)
    }

    /// Removes the entries for `key` queued before place `before` (what
    /// [`cancel`](Self::cancel) returned; `u64::MAX` for all); returns how
    /// many.
    pub(crate) fn supersede_before(&mut self, key: &[u8], before: u64) -> usize {
        let Some(ticks) = self.by_key.get(key).cloned() else {
            return 0;
        };
        ticks
            .into_iter()
            .filter(|t| *t < before)
            .filter_map(|t| self.remove(t))
            .count()
    }

    /// Removes everything; returns how many entries there were.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.fifo.len();
        *self = Self {
            next: self.next,
            ..Self::default()
        };
        n
    }

    /// Removes and returns every entry, oldest first.
    pub(crate) fn drain(&mut self) -> Vec<Pending> {
        let fifo = std::mem::take(&mut self.fifo);
        self.clear();
        fifo.into_values().collect()
    }

    fn remove(&mut self, tick: u64) -> Option<Pending> {
        let entry = self.fifo.remove(&tick)?;
        self.bytes -= entry.cost;
        if let Some(u) = entry.msg.uuid() {
            self.by_uuid.remove(u);
        }
        if let Some(ticks) = self.by_key.get_mut(entry.msg.key()) {
            ticks.retain(|t| *t != tick);
            if ticks.is_empty() {
                self.by_key.remove(entry.msg.key());
            }
        }
        Some(entry)
    }
}

/// The UUIDs of the last `capacity` updates applied, oldest forgotten
/// first. About 50 bytes per UUID (a hash set plus a FIFO of 16-byte
/// UUIDs).
#[derive(Debug, Default)]
pub(crate) struct RecentUuids {
    pub(crate) set: HashSet<Uuid>,
    order: VecDeque<Uuid>,
    capacity: usize,
}

impl RecentUuids {
    /// Remembers at most `capacity` UUIDs (0: none, no de-duplication).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// `true` if `uuid` is remembered.
    pub(crate) fn contains(&self, uuid: &Uuid) -> bool {
        self.set.contains(uuid)
    }

    /// Remembers `uuid`, forgetting the oldest beyond the capacity.
    pub(crate) fn insert(&mut self, uuid: Uuid) {
        if self.capacity == 0 || !self.set.insert(uuid) {
            return;
        }
        self.order.push_back(uuid);
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// UUIDs remembered.
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }
}

/// Per key, the latest client write learned from the active (by its
/// sequence), and whether its own client copy has arrived: at most
/// `capacity` keys, each for at most `window`.
#[derive(Debug, Default)]
pub(crate) struct Awaited {
    by_key: HashMap<Bytes, AwaitedWrite>,
    fifo: BTreeMap<u64, Bytes>,
    next: u64,
    capacity: usize,
    window: Duration,
}

#[derive(Debug, Clone, Copy)]
struct AwaitedWrite {
    uuid: Uuid,
    seq: u64,
    delete: bool,
    arrived: bool,
    place: u64,
    since: Instant,
}

impl Awaited {
    /// At most `capacity` keys, each awaited for `window`.
    pub(crate) fn new(capacity: usize, window: Duration) -> Self {
        Self {
            capacity,
            window,
            ..Self::default()
        }
    }

    /// `uuid`, the write of `key` the active sequenced `seq`, was learned
    /// from the active at `now`; its client copy has `arrived` already or
    /// not (ignored if a write of `key` at or after `seq` is known: then
    /// returns `false`; dropping expired keys and, beyond the capacity, the
    /// oldest).
    pub(crate) fn insert(
        &mut self,
        key: &Bytes,
        uuid: Uuid,
        seq: u64,
        (delete, arrived): (bool, bool),
        now: Instant,
    ) -> bool {
        if let Some(known) = self.by_key.get(key) {
            if known.seq >= seq {
                return false;
            }
            let place = known.place;
            self.by_key.remove(key);
            self.fifo.remove(&place);
        }
        while let Some((&place, k)) = self.fifo.first_key_value() {
            let expired = self
                .by_key
                .get(k)
                .is_none_or(|w| now.saturating_duration_since(w.since) >= self.window);
            if !expired && self.fifo.len() < self.capacity {
                break;
            }
            let k = k.clone();
            self.fifo.remove(&place);
            self.by_key.remove(&k);
        }
        if self.capacity == 0 {
            return true;
        }
        let write = AwaitedWrite {
            uuid,
            seq,
            delete,
            arrived,
            place: self.next,
            since: now,
        };
        self.by_key.insert(key.clone(), write);
        self.fifo.insert(self.next, key.clone());
        self.next += 1;
        true
    }

    /// `true` if a client copy of `key` carrying `uuid` is older than the
    /// write still awaited for `key` at `now` (one client's updates reach
    /// both servers in order, so copies before the awaited one's are of
    /// earlier writes).
    pub(crate) fn is_older(&self, key: &[u8], uuid: &Uuid, now: Instant) -> bool {
        self.by_key.get(key).is_some_and(|w| {
            !w.arrived && w.uuid != *uuid && now.saturating_duration_since(w.since) < self.window
        })
    }

    /// A client copy of `key` carrying `uuid` arrived: if it is the awaited
    /// one, the key is awaited no longer (its sequence stays known).
    pub(crate) fn arrived(&mut self, key: &[u8], uuid: &Uuid) {
        if let Some(w) = self.by_key.get_mut(key) {
            if w.uuid == *uuid {
                w.arrived = true;
            }
        }
    }

    /// A snapshot at `seq` lacks the keys for which `present` is `false`:
    /// a set awaited for such a key at or below `seq` was deleted by a
    /// later write (not known here), so it is awaited no longer (an awaited
    /// delete stays).
    pub(crate) fn forget_deleted(&mut self, seq: u64, present: impl Fn(&[u8]) -> bool) {
        for (k, w) in &mut self.by_key {
            if w.seq <= seq && !w.delete && !present(k) {
                w.arrived = true;
            }
        }
    }

    /// Keys held (expired ones included until pruned).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(key: &str, value: &str, uuid: Option<u8>) -> KvMsg {
        let mut m = KvMsg::new(key.to_owned(), value.to_owned()).unwrap();
        m.set_uuid(uuid.map(|u| [u; 16]));
        m
    }

    #[test]
    fn fifo_with_uuid_cancel_key_supersede_and_bounds() {
        let t = Instant::now();
        let mut p = PendingList::default();
        let big = usize::MAX;
        assert!(p.push(msg("a", "1", Some(1)), t, 3, big).added);
        assert!(
            !p.push(msg("a", "1", Some(1)), t, 3, big).added,
            "same UUID"
        );
        p.push(msg("a", "2", None), t, 3, big);
        p.push(msg("b", "1", Some(2)), t, 3, big);
        assert_eq!(p.len(), 3);
        let pushed = p.push(msg("c", "1", Some(3)), t, 3, big);
        assert_eq!(pushed.evicted, 1, "the oldest is dropped");
        assert!(!p.contains(&[1; 16]));
        assert_eq!(p.cancel(&[2; 16]), Some(2));
        assert_eq!(p.cancel(&[2; 16]), None);
        assert_eq!(p.supersede_before(b"a", 1), 0, "only older ones");
        assert_eq!(p.supersede_before(b"a", u64::MAX), 1, "a UUID-less one too");
        let left: Vec<_> = p.drain().into_iter().map(|e| e.msg).collect();
        assert_eq!(left, [msg("c", "1", Some(3))]);
        assert_eq!((p.len(), p.bytes()), (0, 0));

        let one = PendingList::cost(&msg("k", "v", Some(9)));
        p.push(msg("k", "v", Some(9)), t, 10, 2 * one);
        p.push(msg("k", "w", Some(8)), t, 10, 2 * one);
        assert_eq!(p.push(msg("k", "x", Some(7)), t, 10, 2 * one).evicted, 1);
        assert_eq!(p.bytes(), 2 * one);
        assert_eq!(p.clear(), 2);
    }

    #[test]
    fn awaited_keys_are_bounded_in_number_and_time() {
        let t = Instant::now();
        let k = |n: u8| Bytes::from(vec![b'k', n]);
        let mut a = Awaited::new(2, Duration::from_secs(5));
        a.insert(&k(1), [1; 16], 1, (false, false), t);
        a.insert(&k(2), [2; 16], 2, (false, false), t);
        a.insert(&k(2), [3; 16], 3, (false, false), t);
        assert!(
            !a.insert(&k(2), [8; 16], 1, (false, false), t),
            "an older write"
        );
        assert!(a.is_older(&k(2), &[2; 16], t), "an earlier write of k2");
        assert!(!a.is_older(&k(2), &[3; 16], t), "the awaited one itself");
        a.insert(&k(3), [4; 16], 4, (false, false), t);
        assert_eq!(a.len(), 2);
        assert!(!a.is_older(&k(1), &[9; 16], t), "k1 evicted");
        a.arrived(&k(2), &[2; 16]);
        assert!(a.is_older(&k(2), &[9; 16], t), "not the awaited copy");
        a.arrived(&k(2), &[3; 16]);
        assert!(!a.is_older(&k(2), &[9; 16], t));
        assert!(
            !a.is_older(&k(3), &[9; 16], t + Duration::from_secs(5)),
            "expired"
        );
        a.insert(
            &k(4),
            [5; 16],
            5,
            (false, false),
            t + Duration::from_secs(5),
        );
        assert_eq!(a.len(), 1, "expired ones pruned");
    }

    #[test]
    fn recent_uuids_forget_the_oldest() {
        let mut r = RecentUuids::new(2);
        r.insert([1; 16]);
        r.insert([2; 16]);
        r.insert([2; 16]);
        assert_eq!(r.len(), 2);
        r.insert([3; 16]);
        assert!(!r.contains(&[1; 16]));
        assert!(r.contains(&[2; 16]) && r.contains(&[3; 16]));
        let mut none = RecentUuids::new(0);
        none.insert([1; 16]);
        assert!(!none.contains(&[1; 16]));
    }
}
