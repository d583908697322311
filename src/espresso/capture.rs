//! Capture events and filters: what the Espresso tracer records about each
//! message and subscription crossing the proxy, and which ones it keeps.
//! Pure: no sockets; timestamps are supplied by the caller.

use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

use bytes::Bytes;

use crate::subscription::SubEvent;
use crate::zmtp::PeerId;

/// Which way a captured message flowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Publishers to subscribers: data.
    Downstream,
    /// Subscribers to publishers: subscriptions (and garbage).
    Upstream,
}

impl Direction {
    /// `"down"` or `"up"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Downstream => "down",
            Direction::Upstream => "up",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// What a captured message was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A subscribe frame (`\x01` + prefix).
    Subscribe,
    /// An unsubscribe frame, or a subscription cancelled because its
    /// subscriber disconnected.
    Unsubscribe,
    /// A data message from a publisher.
    Message,
    /// Something a subscriber sent that is not a subscription (dropped).
    Malformed,
}

impl EventKind {
    /// `"subscribe"`, `"unsubscribe"`, `"message"` or `"malformed"`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Subscribe => "subscribe",
            EventKind::Unsubscribe => "unsubscribe",
            EventKind::Message => "message",
            EventKind::Malformed => "malformed",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One captured message, with its context.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureEvent {
    /// Capture order, from 0, counting events dropped by a slow listener
    /// (a gap in `seq` shows where events were lost).
    pub seq: u64,
    /// Wall-clock time of capture.
    pub at: SystemTime,
    /// Which way it flowed.
    pub dir: Direction,
    /// What it was.
    pub kind: EventKind,
    /// The subscriber it came from (upstream events only).
    pub peer: Option<PeerId>,
    /// The topic: the first frame of a message, the prefix of a subscription,
    /// empty for malformed input.
    pub topic: Bytes,
    /// The frames exactly as they crossed the proxy.
    pub frames: Vec<Bytes>,
}

impl CaptureEvent {
    /// A data message.
    pub fn message(frames: &[Bytes], at: SystemTime) -> Self {
        Self {
            seq: 0,
            at,
            dir: Direction::Downstream,
            kind: EventKind::Message,
            peer: None,
            topic: frames.first().cloned().unwrap_or_default(),
            frames: frames.to_vec(),
        }
    }

    /// A subscription event from `peer`.
    pub fn subscription(peer: PeerId, event: &SubEvent, at: SystemTime) -> Self {
        let kind = if event.is_subscribe() {
            EventKind::Subscribe
        } else {
            EventKind::Unsubscribe
        };
        Self {
            seq: 0,
            at,
            dir: Direction::Upstream,
            kind,
            peer: Some(peer),
            topic: event.topic().clone(),
            frames: vec![event.encode()],
        }
    }

    /// Garbage from a subscriber.
    pub fn malformed(frames: &[Bytes], at: SystemTime) -> Self {
        Self {
            seq: 0,
            at,
            dir: Direction::Upstream,
            kind: EventKind::Malformed,
            peer: None,
            topic: Bytes::new(),
            frames: frames.to_vec(),
        }
    }

    /// The topic as text (lossy UTF-8 for binary topics).
    pub fn topic_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.topic)
    }
}

/// Which events the tracer keeps. The default keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    prefixes: Vec<Bytes>,
    subscriptions_only: bool,
}

impl CaptureFilter {
    /// Keeps everything.
    pub fn all() -> Self {
        Self::default()
    }

    /// Also require the topic to start with `prefix` (several prefixes:
    /// any one of them). For subscriptions, the subscribed prefix is the
    /// topic that is tested.
    pub fn topic_prefix(mut self, prefix: impl Into<Bytes>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Keep only subscribe and unsubscribe events.
    pub fn subscriptions_only(mut self, yes: bool) -> Self {
        self.subscriptions_only = yes;
        self
    }

    /// Does the filter keep an event of this kind and topic?
    pub fn accepts(&self, kind: EventKind, topic: &[u8]) -> bool {
        let kind_ok = !self.subscriptions_only
            || matches!(kind, EventKind::Subscribe | EventKind::Unsubscribe);
        let topic_ok =
            self.prefixes.is_empty() || self.prefixes.iter().any(|p| topic.starts_with(p));
        kind_ok && topic_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_combine_kind_and_prefix() {
        let all = CaptureFilter::all();
        assert!(all.accepts(EventKind::Message, b"anything"));
        assert!(all.accepts(EventKind::Malformed, b""));
        let subs = CaptureFilter::all().subscriptions_only(true);
        assert!(subs.accepts(EventKind::Subscribe, b"A"));
        assert!(subs.accepts(EventKind::Unsubscribe, b"A"));
        assert!(!subs.accepts(EventKind::Message, b"A"));
        let ab = CaptureFilter::all().topic_prefix("A").topic_prefix("B");
        assert!(ab.accepts(EventKind::Message, b"A-00001"));
        assert!(ab.accepts(EventKind::Message, b"B-00001"));
        assert!(!ab.accepts(EventKind::Message, b"C-00001"));
        assert!(!ab.accepts(EventKind::Malformed, b""));
        let both = CaptureFilter::all()
            .topic_prefix("A")
            .subscriptions_only(true);
        assert!(both.accepts(EventKind::Subscribe, b"A"));
        assert!(!both.accepts(EventKind::Subscribe, b"B"));
        assert!(!both.accepts(EventKind::Message, b"A-1"));
    }

    #[test]
    fn events_carry_topic_and_wire_frames() {
        let at = SystemTime::UNIX_EPOCH;
        let sub = CaptureEvent::subscription(7, &SubEvent::Subscribe(Bytes::from("A")), at);
        assert_eq!(
            (sub.dir, sub.kind, sub.peer),
            (Direction::Upstream, EventKind::Subscribe, Some(7))
        );
        assert_eq!(sub.frames, [Bytes::from_static(b"\x01A")]);
        let msg = CaptureEvent::message(&[Bytes::from("B-1"), Bytes::from("body")], at);
        assert_eq!(msg.topic_lossy(), "B-1");
        assert_eq!(msg.frames.len(), 2);
        let bin = CaptureEvent::message(&[Bytes::from_static(&[0xff, b'x'])], at);
        assert_eq!(bin.topic_lossy(), "\u{fffd}x");
    }
}
