//! The cache of a Last Value Cache: the last message of each topic, prefix
//! lookups in key order, and bounded memory with least-recently-updated
//! eviction. Pure: no sockets, no clock.
//!
//! A message is `[topic][value...]`: the first frame is the topic and the
//! rest (one or more frames) is the value. The whole message is kept as one
//! shared frame list, so a replay costs a reference count, not a copy.
//! One-frame messages have no value and are not cached (keying them by their
//! whole content would grow the cache by one entry per distinct message).

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::zmtp::Shared;

/// Estimated bookkeeping bytes per entry (tree nodes, shared list, index),
/// added to the payload size when enforcing [`CacheLimits::max_bytes`].
pub const ENTRY_OVERHEAD: usize = 128;

/// Bounds on what the cache may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheLimits {
    /// Most topics kept; beyond it the least recently updated is evicted.
    pub max_topics: usize,
    /// Most bytes kept (payload plus [`ENTRY_OVERHEAD`] per entry).
    pub max_bytes: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        Self {
            max_topics: 1_000_000,
            max_bytes: 256 << 20,
        }
    }
}

impl CacheLimits {
    /// Limits with the given topic and byte caps.
    pub fn new(max_topics: usize, max_bytes: usize) -> Self {
        Self {
            max_topics,
            max_bytes,
        }
    }
}

/// What [`LastValueCache::update`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// A new topic.
    Inserted,
    /// A newer value for a known topic.
    Replaced,
    /// One frame only: a topic with no value; not cached.
    NoValue,
    /// Larger than the whole byte budget; not cached.
    TooLarge,
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Topics currently cached.
    pub topics: u64,
    /// Bytes currently accounted (payload plus overhead).
    pub bytes: u64,
    /// Messages cached (inserted or replaced).
    pub updates: u64,
    /// Entries evicted to stay within the limits.
    pub evictions: u64,
    /// One-frame messages not cached.
    pub no_value: u64,
    /// Messages too large to cache.
    pub too_large: u64,
}

#[derive(Debug)]
struct Entry {
    msg: Shared,
    stamp: u64,
    size: usize,
}

/// The last message per topic.
#[derive(Debug, Default)]
pub struct LastValueCache {
    entries: BTreeMap<Bytes, Entry>,
    /// Update stamp -> topic: the eviction order (oldest update first).
    order: BTreeMap<u64, Bytes>,
    next_stamp: u64,
    limits: CacheLimits,
    stats: CacheStats,
}

impl LastValueCache {
    /// An empty cache with `limits`.
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Keeps `msg` as the last value of its topic (its first frame).
    pub fn update(&mut self, msg: &Shared) -> Stored {
        let [topic, value @ ..] = &msg[..] else {
            self.stats.no_value += 1;
            return Stored::NoValue;
        };
        if value.is_empty() {
            self.stats.no_value += 1;
            return Stored::NoValue;
        }
        let size = ENTRY_OVERHEAD + msg.iter().map(Bytes::len).sum::<usize>();
        if size > self.limits.max_bytes {
            self.stats.too_large += 1;
            return Stored::TooLarge;
        }
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.order.insert(stamp, topic.clone());
        let entry = Entry {
            msg: msg.clone(),
            stamp,
            size,
        };
        self.stats.updates += 1;
        self.stats.bytes += size as u64;
        let stored = match self.entries.insert(topic.clone(), entry) {
            Some(old) => {
                self.order.remove(&old.stamp);
                self.stats.bytes -= old.size as u64;
                Stored::Replaced
            }
            None => Stored::Inserted,
        };
        self.stats.topics = self.entries.len() as u64;
        self.evict();
        stored
    }

    fn evict(&mut self) {
        while self.entries.len() > self.limits.max_topics
            || self.stats.bytes > self.limits.max_bytes as u64
        {
            let Some((_, topic)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.entries.remove(&topic) {
                self.stats.bytes -= old.size as u64;
                self.stats.evictions += 1;
            }
        }
        self.stats.topics = self.entries.len() as u64;
    }

    /// The cached messages whose topic starts with `prefix`, in key order
    /// (`""` yields everything).
    pub fn matching<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = &'a Shared> + 'a {
        self.entries
            .range::<[u8], _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(_, e)| &e.msg)
    }

    /// The cached message of exactly `topic`.
    pub fn get(&self, topic: &[u8]) -> Option<&Shared> {
        self.entries.get(topic).map(|e| &e.msg)
    }

    /// Number of cached topics.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The counters.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(frames: &[&str]) -> Shared {
        frames
            .iter()
            .map(|f| Bytes::copy_from_slice(f.as_bytes()))
            .collect::<Vec<_>>()
            .into()
    }

    fn topics(c: &LastValueCache, prefix: &str) -> Vec<String> {
        c.matching(prefix.as_bytes())
            .map(|m| String::from_utf8_lossy(&m[0]).into_owned())
            .collect()
    }

    #[test]
    fn keeps_the_last_value_and_replays_prefixes_in_key_order() {
        let mut c = LastValueCache::new(CacheLimits::default());
        for t in (0..1000).rev() {
            assert_eq!(
                c.update(&msg(&[&format!("{t:03}"), "Save Roger"])),
                Stored::Inserted
            );
        }
        assert_eq!(
            c.update(&msg(&["042", "Off with his head!"])),
            Stored::Replaced
        );
        assert_eq!(c.len(), 1000);
        assert_eq!(&c.get(b"042").unwrap()[1][..], b"Off with his head!");
        assert_eq!(topics(&c, "").len(), 1000);
        assert_eq!(topics(&c, "")[..3], ["000", "001", "002"]);
        let t04 = topics(&c, "04");
        assert_eq!(t04, (40..50).map(|i| format!("{i:03}")).collect::<Vec<_>>());
        assert_eq!(topics(&c, "042"), ["042"]);
        assert!(topics(&c, "0420").is_empty());
        assert!(topics(&c, "x").is_empty());
    }

    #[test]
    fn multipart_values_are_kept_whole_and_one_frame_messages_are_not() {
        let mut c = LastValueCache::new(CacheLimits::default());
        assert_eq!(c.update(&msg(&["k", "a", "b", "c"])), Stored::Inserted);
        assert_eq!(c.get(b"k").unwrap().len(), 4);
        assert_eq!(c.update(&msg(&["lonely"])), Stored::NoValue);
        assert_eq!(c.stats().no_value, 1);
        assert!(c.get(b"lonely").is_none());
    }

    #[test]
    fn topic_cap_evicts_the_least_recently_updated() {
        let mut c = LastValueCache::new(CacheLimits::new(3, usize::MAX));
        for t in ["a", "b", "c"] {
            c.update(&msg(&[t, "1"]));
        }
        c.update(&msg(&["a", "2"])); // a is now the newest
        c.update(&msg(&["d", "1"])); // evicts b
        assert_eq!(topics(&c, ""), ["a", "c", "d"]);
        assert_eq!(c.stats().evictions, 1);
        assert_eq!(c.stats().topics, 3);
    }

    #[test]
    fn byte_cap_is_enforced_and_oversized_values_are_refused() {
        let budget = 3 * (ENTRY_OVERHEAD + 11);
        let mut c = LastValueCache::new(CacheLimits::new(usize::MAX, budget));
        for t in ["t1", "t2", "t3", "t4"] {
            c.update(&msg(&[t, "123456789"]));
        }
        assert_eq!(topics(&c, ""), ["t2", "t3", "t4"]);
        assert!(c.stats().bytes <= budget as u64);
        let huge = "x".repeat(budget);
        assert_eq!(c.update(&msg(&["big", &huge])), Stored::TooLarge);
        assert_eq!(c.len(), 3, "a refused value evicts nothing");
    }

    proptest! {
        /// Whatever the updates, the cache holds exactly the last value of
        /// each of the most recently updated topics, within its limits.
        #[test]
        fn agrees_with_a_model(
            ops in proptest::collection::vec(("[a-d]{1,2}", "[0-9]{1,4}"), 1..80),
            cap in 1usize..6,
        ) {
            let mut c = LastValueCache::new(CacheLimits::new(cap, usize::MAX));
            let mut last: Vec<(String, String)> = Vec::new();
            for (t, v) in &ops {
                c.update(&msg(&[t, v]));
                last.retain(|(k, _)| k != t);
                last.push((t.clone(), v.clone()));
            }
            let keep: Vec<_> = last.iter().rev().take(cap).collect();
            prop_assert_eq!(c.len(), keep.len());
            for (t, v) in keep {
                let m = c.get(t.as_bytes()).expect("recent topic cached");
                prop_assert_eq!(&m[1][..], v.as_bytes());
            }
            let stats = c.stats();
            let bytes: usize = c.matching(b"").map(|m| ENTRY_OVERHEAD + m.iter().map(Bytes::len).sum::<usize>()).sum();
            prop_assert_eq!(stats.bytes, bytes as u64);
        }
    }
}
