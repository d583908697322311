//! Capture events and filters: what the Espresso tracer records about each
//! message and subscription crossing the proxy, which ones it keeps, and
//! the [`Recorder`] that numbers and timestamps them. Pure: no sockets, no
//! clock; every `now` and the wall-clock anchor are supplied by the driver
//! (`tracer.rs`).

use std::borrow::Cow;
use std::fmt;
use std::time::{Instant, SystemTime};

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
    /// Wall-clock time of capture: the wall clock read once when the
    /// capture started, plus the monotonic time elapsed since (so events
    /// are ordered even if the system clock is stepped meanwhile).
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

/// Maps the proxy's monotonic `now` to wall-clock time from one anchor
/// pair read by the driver when the capture starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeBase {
    instant: Instant,
    wall: SystemTime,
}

impl TimeBase {
    /// `instant` and `wall` read at (about) the same moment.
    pub(crate) fn new(instant: Instant, wall: SystemTime) -> Self {
        Self { instant, wall }
    }

    /// The wall-clock time of `now` (the anchor's time for a `now` before it).
    pub(crate) fn wall(&self, now: Instant) -> SystemTime {
        self.wall + now.saturating_duration_since(self.instant)
    }
}

/// The capture's state machine: filters events, numbers the kept ones in
/// capture order and stamps them from the `now` it is given.
#[derive(Debug, Clone)]
pub(crate) struct Recorder {
    filter: CaptureFilter,
    seq: u64,
    base: TimeBase,
}

impl Recorder {
    pub(crate) fn new(filter: CaptureFilter, base: TimeBase) -> Self {
        Self {
            filter,
            seq: 0,
            base,
        }
    }

    /// Would a data message with this topic be kept? (Checked before the
    /// driver reads a clock or builds anything: data is the hot path.)
    pub(crate) fn wants_message(&self, topic: &[u8]) -> bool {
        self.filter.accepts(EventKind::Message, topic)
    }

    /// A data message seen at `now`, if the filter keeps it.
    pub(crate) fn message(&mut self, frames: &[Bytes], now: Instant) -> Option<CaptureEvent> {
        let ev = CaptureEvent::message(frames, self.base.wall(now));
        self.keep(ev)
    }

    /// A subscription event from `peer` seen at `now`, if kept.
    pub(crate) fn subscription(
        &mut self,
        peer: PeerId,
        event: &SubEvent,
        now: Instant,
    ) -> Option<CaptureEvent> {
        let ev = CaptureEvent::subscription(peer, event, self.base.wall(now));
        self.keep(ev)
    }

    /// Garbage from a subscriber seen at `now`, if kept.
    pub(crate) fn malformed(&mut self, frames: &[Bytes], now: Instant) -> Option<CaptureEvent> {
        let ev = CaptureEvent::malformed(frames, self.base.wall(now));
        self.keep(ev)
    }

    fn keep(&mut self, mut ev: CaptureEvent) -> Option<CaptureEvent> {
        if !self.filter.accepts(ev.kind, &ev.topic) {
            return None;
        }
        ev.seq = self.seq;
        self.seq += 1;
        Some(ev)
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

    #[test]
    fn the_recorder_numbers_kept_events_and_stamps_them_from_the_given_now() {
        use std::time::Duration;
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let filter = CaptureFilter::all().topic_prefix("A");
        let mut rec = Recorder::new(filter, TimeBase::new(t0, wall0));
        let a = [Bytes::from("A-1"), Bytes::from("x")];
        let b = [Bytes::from("B-1"), Bytes::from("x")];
        assert!(rec.wants_message(b"A-1"));
        assert!(!rec.wants_message(b"B-1"));
        let sub = rec
            .subscription(
                3,
                &SubEvent::Subscribe(Bytes::from("A")),
                t0 + Duration::from_millis(5),
            )
            .expect("kept");
        assert_eq!((sub.seq, sub.at), (0, wall0 + Duration::from_millis(5)));
        assert_eq!(rec.message(&b, t0 + Duration::from_millis(6)), None);
        let msg = rec.message(&a, t0 + Duration::from_secs(2)).expect("kept");
        // Filtered-out events take no sequence number; kept ones are dense.
        assert_eq!((msg.seq, msg.at), (1, wall0 + Duration::from_secs(2)));
        assert_eq!(
            rec.malformed(&[Bytes::from("?")], t0),
            None,
            "topic is empty"
        );
        let all = CaptureFilter::all();
        let mut rec = Recorder::new(all, TimeBase::new(t0 + Duration::from_secs(1), wall0));
        // A `now` older than the anchor is clamped to the anchor.
        let bad = rec.malformed(&[Bytes::from("?")], t0).expect("kept");
        assert_eq!(
            (bad.seq, bad.at, bad.kind),
            (0, wall0, EventKind::Malformed)
        );
    }
}
