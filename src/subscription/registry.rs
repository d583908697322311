//! A reference-counted subscription registry: which topic prefixes the
//! downstream subscribers want, and which subscribe/unsubscribe frames a
//! proxy must therefore send upstream. Pure: no sockets, no clock.
//!
//! libzmq's XSUB/XPUB pair forwards the first subscribe and the last
//! unsubscribe of each topic. The `zeromq` crate's XPUB is always verbose
//! (it reports every duplicate) while its XSUB keeps a plain set, so a proxy
//! that forwarded everything would forget a topic as soon as one of two
//! subscribers left, and would never replay it to publishers that connect
//! later. This registry restores libzmq's behaviour: [`Registry::subscribe`]
//! says "forward" only for the first subscriber of a prefix and
//! [`Registry::unsubscribe`] only for the last.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::frame::{prefix_matches, SubEvent};

/// What a proxy should do upstream after a subscription event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// Send this frame upstream (first subscribe / last unsubscribe).
    Forward(SubEvent),
    /// Nothing to send: the prefix was already (or is still) subscribed.
    Absorbed,
    /// An unsubscribe for a prefix nobody subscribed to; ignore it.
    Unmatched,
}

/// Reference counts of subscribed topic prefixes.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    counts: BTreeMap<Bytes, u64>,
    /// (length, how many distinct prefixes have it), sorted by length:
    /// [`Registry::matches`] looks up only lengths that exist (usually a
    /// handful), not every prefix of the topic.
    lengths: Vec<(usize, usize)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one event and says what to send upstream.
    pub fn apply(&mut self, event: &SubEvent) -> Upstream {
        match event {
            SubEvent::Subscribe(t) => self.subscribe(t.clone()),
            SubEvent::Unsubscribe(t) => self.unsubscribe(t),
        }
    }

    /// Counts one subscriber of `topic`; `Forward` if it is the first.
    pub fn subscribe(&mut self, topic: Bytes) -> Upstream {
        let count = self.counts.entry(topic.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            match self.lengths.binary_search_by_key(&topic.len(), |&(l, _)| l) {
                Ok(i) => self.lengths[i].1 += 1,
                Err(i) => self.lengths.insert(i, (topic.len(), 1)),
            }
            Upstream::Forward(SubEvent::Subscribe(topic))
        } else {
            Upstream::Absorbed
        }
    }

    /// Removes one subscriber of `topic`; `Forward` if it was the last.
    pub fn unsubscribe(&mut self, topic: &Bytes) -> Upstream {
        match self.counts.get_mut(topic) {
            None => Upstream::Unmatched,
            Some(count) if *count > 1 => {
                *count -= 1;
                Upstream::Absorbed
            }
            Some(_) => {
                self.counts.remove(topic);
                if let Ok(i) = self.lengths.binary_search_by_key(&topic.len(), |&(l, _)| l) {
                    self.lengths[i].1 -= 1;
                    if self.lengths[i].1 == 0 {
                        self.lengths.remove(i);
                    }
                }
                Upstream::Forward(SubEvent::Unsubscribe(topic.clone()))
            }
        }
    }

    /// How many subscribers hold `topic` (exactly this prefix).
    pub fn count(&self, topic: &[u8]) -> u64 {
        self.counts.get(topic).copied().unwrap_or(0)
    }

    /// True if any subscribed prefix matches the message topic `topic`.
    pub fn matches(&self, topic: &[u8]) -> bool {
        // A subscribed prefix of `topic` has one of the subscribed lengths:
        // one lookup per distinct length, O(lengths * log n). The only
        // prefix of length 0 is "" (everything): no lookup needed.
        self.lengths
            .iter()
            .take_while(|&&(n, _)| n <= topic.len())
            .any(|&(n, _)| n == 0 || self.counts.contains_key(&topic[..n]))
    }

    /// Each subscribed prefix with its count.
    pub fn counts(&self) -> impl Iterator<Item = (&Bytes, u64)> {
        self.counts.iter().map(|(t, &c)| (t, c))
    }

    /// The distinct subscribed prefixes, in byte order.
    pub fn topics(&self) -> impl Iterator<Item = &Bytes> {
        self.counts.keys()
    }

    /// Number of distinct subscribed prefixes.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True if nothing is subscribed.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The subscribe frames that recreate this registry upstream (used when
    /// a fresh upstream socket must learn the current interest).
    pub fn replay(&self) -> impl Iterator<Item = SubEvent> + '_ {
        self.counts.keys().cloned().map(SubEvent::Subscribe)
    }
}

/// Naive reference: does any of `prefixes` match `topic`? Used by tests and
/// benches to check [`Registry::matches`].
pub fn matches_any<'a>(prefixes: impl IntoIterator<Item = &'a [u8]>, topic: &[u8]) -> bool {
    prefixes.into_iter().any(|p| prefix_matches(p, topic))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn first_subscribe_and_last_unsubscribe_are_forwarded() {
        let mut r = Registry::new();
        assert_eq!(
            r.subscribe(t("A")),
            Upstream::Forward(SubEvent::Subscribe(t("A")))
        );
        assert_eq!(r.subscribe(t("A")), Upstream::Absorbed);
        assert_eq!(r.count(b"A"), 2);
        assert_eq!(r.unsubscribe(&t("A")), Upstream::Absorbed);
        // One subscriber left: the topic survives (the zeromq XSUB bug).
        assert!(r.matches(b"A-1"));
        assert_eq!(
            r.unsubscribe(&t("A")),
            Upstream::Forward(SubEvent::Unsubscribe(t("A")))
        );
        assert!(!r.matches(b"A-1"));
        assert!(r.is_empty());
    }

    #[test]
    fn unmatched_unsubscribes_change_nothing() {
        let mut r = Registry::new();
        r.subscribe(t("B"));
        assert_eq!(r.unsubscribe(&t("A")), Upstream::Unmatched);
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn empty_prefix_matches_everything_and_replays() {
        let mut r = Registry::new();
        r.apply(&SubEvent::Subscribe(t("")));
        r.apply(&SubEvent::Subscribe(t("04")));
        assert!(r.matches(b"999"));
        let replay: Vec<_> = r.replay().collect();
        assert_eq!(
            replay,
            [SubEvent::Subscribe(t("")), SubEvent::Subscribe(t("04"))]
        );
    }

    proptest! {
        /// After any sequence of events, `matches` agrees with the naive
        /// scan, and counts equal subscribes minus matched unsubscribes.
        #[test]
        fn matches_agrees_with_naive_scan(
            ops in proptest::collection::vec((any::<bool>(), "[ab]{0,3}"), 0..60),
            probe in "[ab]{0,4}",
        ) {
            let mut r = Registry::new();
            let mut model: BTreeMap<String, u64> = BTreeMap::new();
            for (sub, topic) in &ops {
                if *sub {
                    r.subscribe(t(topic));
                    *model.entry(topic.clone()).or_default() += 1;
                } else {
                    r.unsubscribe(&t(topic));
                    if let Some(c) = model.get_mut(topic) {
                        *c -= 1;
                        if *c == 0 { model.remove(topic); }
                    }
                }
            }
            let naive = matches_any(model.keys().map(|k| k.as_bytes()), probe.as_bytes());
            prop_assert_eq!(r.matches(probe.as_bytes()), naive);
            let lengths: std::collections::BTreeSet<usize> = model.keys().map(String::len).collect();
            prop_assert_eq!(r.lengths.iter().map(|&(l, _)| l).collect::<std::collections::BTreeSet<_>>(), lengths);
            prop_assert!(r.lengths.windows(2).all(|w| w[0].0 < w[1].0));
            for (k, c) in &model {
                prop_assert_eq!(r.count(k.as_bytes()), *c);
            }
            prop_assert_eq!(r.len(), model.len());
        }
    }
}
