//! The Suicidal Snail subscriber's pure core: each received message and the
//! local time go in, a [`SnailStep`] comes out (deliver, deliver with a
//! warning, skip, drop as oversized, or croak), and the policy's answer to
//! a croak goes back in ([`SnailCore::abort`], [`SnailCore::recover`]).
//!
//! Suicidal Snail (Guide ch. 5), subscriber side. This module contains no
//! networking code and reads no clock: [`SnailSubscriber`](super::SnailSubscriber)
//! owns the SUB socket, runs the policy's hooks and logs; everything it
//! decides about a message is decided here, so it is unit-tested with
//! virtual time.

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::detector::{Alarm, Detector, DetectorConfig, Verdict};
use super::envelope::{self, EnvelopeError, Stamp, WireFormat};

/// What a recovery hook asks the subscriber to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// Deliver the message that fired and carry on; the publisher's alarm
    /// state is reset (e.g. after resyncing from a Last Value Cache or a
    /// Clone snapshot).
    Resume,
    /// Discard this publisher's messages (counted in
    /// [`SnailStats::skipped`]) until one arrives with a lag below this,
    /// then reset and carry on: drop the backlog instead of working through
    /// it. Other publishers' messages are checked as usual.
    SkipUntilLagBelow(Duration),
    /// Give up: `recv` returns [`SnailError::CannotKeepUp`](super::SnailError::CannotKeepUp).
    Abort,
}

/// One received message, checked.
#[derive(Debug, Clone)]
pub struct SnailMessage {
    frames: Vec<Bytes>,
    stamp: Option<Stamp>,
    lag: Option<Duration>,
}

impl SnailMessage {
    /// The user's frames: the stamp frame is removed for the toolkit
    /// envelope; a Guide-format message is its one timestamp frame.
    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }
    /// Takes the frames.
    pub fn into_frames(self) -> Vec<Bytes> {
        self.frames
    }
    /// The stamp, or `None` for a message that carried none (counted in
    /// [`SnailStats::unstamped`] and delivered unchecked).
    pub fn stamp(&self) -> Option<&Stamp> {
        self.stamp.as_ref()
    }
    /// The offset-corrected lag, for stamped messages.
    pub fn lag(&self) -> Option<Duration> {
        self.lag
    }
}

/// Counters of a Suicidal Snail subscriber.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnailStats {
    /// Messages taken from the socket (oversized ones included).
    pub received: u64,
    /// Messages returned to the caller.
    pub delivered: u64,
    /// Messages without a valid stamp (delivered unchecked).
    pub unstamped: u64,
    /// Messages larger than [`SnailConfig::max_message_bytes`](super::SnailConfig::max_message_bytes),
    /// dropped unread.
    pub oversized: u64,
    /// Times the detector croaked.
    pub croaks: u64,
    /// Times a recovery hook ran.
    pub recoveries: u64,
    /// Messages discarded by [`Recovery::SkipUntilLagBelow`].
    pub skipped: u64,
    /// Receive errors from the socket (logged and skipped).
    pub socket_errors: u64,
    /// Publishers tracked now (at most [`DetectorConfig::max_publishers`]).
    pub publishers: u64,
    /// Publishers forgotten to make room for a new publisher id.
    pub publishers_evicted: u64,
}

/// A croak waiting for the policy's answer: pass it to
/// [`SnailCore::abort`] or [`SnailCore::recover`].
#[derive(Debug)]
pub struct Croak {
    alarm: Box<Alarm>,
    message: SnailMessage,
}

impl Croak {
    /// The numbers behind the croak.
    pub fn alarm(&self) -> &Alarm {
        &self.alarm
    }
}

/// What to do with one received message.
#[derive(Debug)]
#[non_exhaustive]
pub enum SnailStep {
    /// Hand the message to the caller.
    Deliver(SnailMessage),
    /// Hand the message to the caller, and tell the operator the subscriber
    /// is falling behind: the first warning of a lagging streak, or a
    /// tolerated sequence gap.
    Behind(SnailMessage, Box<Alarm>),
    /// Hand the message to the caller: the first one of the skipped
    /// publisher below the threshold, which ends the skipping.
    CaughtUp(SnailMessage),
    /// Hand the message to the caller unchecked: it carries no valid stamp.
    Unstamped(SnailMessage, EnvelopeError),
    /// Drop the message: part of a backlog being skipped.
    Skipped,
    /// Drop the message: `bytes` (all frames) exceed the limit.
    Oversized {
        /// The message's size, all frames.
        bytes: usize,
    },
    /// The detector croaked: apply the policy, then hand its answer back.
    Croak(Croak),
}

/// The pure subscriber: detector, skip state and counters.
#[derive(Debug, Clone)]
pub struct SnailCore {
    detector: Detector,
    format: WireFormat,
    max_message_bytes: usize,
    /// The publisher whose backlog is being skipped, and until what lag.
    skipping: Option<(Bytes, Duration)>,
    lagging: bool,
    stats: SnailStats,
}

impl SnailCore {
    /// A core checking `format` stamps with `detector`, dropping messages
    /// larger than `max_message_bytes` (all frames).
    pub fn new(detector: DetectorConfig, format: WireFormat, max_message_bytes: usize) -> Self {
        Self {
            detector: Detector::new(detector),
            format,
            max_message_bytes,
            skipping: None,
            lagging: false,
            stats: SnailStats::default(),
        }
    }

    /// The detector (per-publisher counters and clock estimates).
    pub fn detector(&self) -> &Detector {
        &self.detector
    }

    /// The counters.
    pub fn stats(&self) -> SnailStats {
        let mut s = self.stats;
        s.publishers = self.detector.tracked() as u64;
        s.publishers_evicted = self.detector.evicted();
        s
    }

    /// Counts one receive error of the socket.
    pub fn on_socket_error(&mut self) {
        self.stats.socket_errors += 1;
    }

    /// Checks one received message (its frames) at local time `now`.
    pub fn on_message(&mut self, mut frames: Vec<Bytes>, now: SystemTime) -> SnailStep {
        self.stats.received += 1;
        let bytes: usize = frames.iter().map(Bytes::len).sum();
        if bytes > self.max_message_bytes {
            self.stats.oversized += 1;
            return SnailStep::Oversized { bytes };
        }
        let stamp = match envelope::take_stamp(&mut frames, self.format) {
            Ok(stamp) => stamp,
            Err(cause) => {
                self.stats.unstamped += 1;
                self.stats.delivered += 1;
                let msg = SnailMessage {
                    frames,
                    stamp: None,
                    lag: None,
                };
                return SnailStep::Unstamped(msg, cause);
            }
        };
        let verdict = self.detector.handle_message(&stamp, now);
        let lag = verdict.lag();
        let msg = SnailMessage {
            frames,
            stamp: Some(stamp),
            lag: Some(lag),
        };
        let publisher = msg.stamp.as_ref().map(Stamp::publisher).expect("stamped");
        if let Some((p, threshold)) = &self.skipping {
            if p == publisher {
                if lag >= *threshold {
                    self.stats.skipped += 1;
                    return SnailStep::Skipped;
                }
                self.skipping = None;
                self.detector.reset(publisher);
                self.stats.delivered += 1;
                return SnailStep::CaughtUp(msg);
            }
        }
        match verdict {
            Verdict::Healthy { .. } => {
                self.lagging = false;
                self.stats.delivered += 1;
                SnailStep::Deliver(msg)
            }
            Verdict::Warning(alarm) => {
                self.stats.delivered += 1;
                if !std::mem::replace(&mut self.lagging, true) || alarm.gap().is_some() {
                    SnailStep::Behind(msg, alarm)
                } else {
                    SnailStep::Deliver(msg)
                }
            }
            Verdict::Croak(alarm) => {
                self.stats.croaks += 1;
                SnailStep::Croak(Croak {
                    alarm,
                    message: msg,
                })
            }
        }
    }

    /// The policy aborts (no recovery hook ran): the alarm to fail with.
    pub fn abort(&mut self, croak: Croak) -> Box<Alarm> {
        croak.alarm
    }

    /// A recovery hook ran and answered `recovery`: `Ok(Some(message))` to
    /// deliver the message that fired ([`Recovery::Resume`]), `Ok(None)` to
    /// drop it and skip the backlog ([`Recovery::SkipUntilLagBelow`]),
    /// `Err(alarm)` to fail ([`Recovery::Abort`]).
    pub fn recover(
        &mut self,
        croak: Croak,
        recovery: Recovery,
    ) -> Result<Option<SnailMessage>, Box<Alarm>> {
        self.stats.recoveries += 1;
        let Croak { alarm, message } = croak;
        match recovery {
            Recovery::Resume => {
                self.detector.reset(alarm.publisher());
                self.stats.delivered += 1;
                Ok(Some(message))
            }
            Recovery::SkipUntilLagBelow(t) => {
                self.detector.reset(alarm.publisher());
                self.skipping = Some((Bytes::copy_from_slice(alarm.publisher()), t));
                self.stats.skipped += 1;
                Ok(None)
            }
            Recovery::Abort => Err(alarm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::detector::AlarmCause;
    use super::super::envelope::Stamper;
    use super::*;
    use std::time::UNIX_EPOCH;

    const T0_MS: u64 = 1_700_000_000_000;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(T0_MS + ms)
    }

    fn core(max_lag_ms: u64) -> SnailCore {
        let det = DetectorConfig::default()
            .max_lag(Duration::from_millis(max_lag_ms))
            .clock(super::super::detector::ClockSync::Trusted);
        SnailCore::new(det, WireFormat::Auto, 1024)
    }

    /// A `[body][stamp]` message from `stamper`, sent at `sent` ms.
    fn msg(stamper: &mut Stamper, body: &str, sent: u64) -> Vec<Bytes> {
        let mut f = vec![Bytes::from(body.to_owned())];
        stamper.stamp(&mut f, at(sent));
        f
    }

    fn delivered(step: SnailStep) -> SnailMessage {
        match step {
            SnailStep::Deliver(m) | SnailStep::CaughtUp(m) | SnailStep::Behind(m, _) => m,
            other => panic!("not delivered: {other:?}"),
        }
    }

    #[test]
    fn healthy_messages_are_delivered_without_their_stamp() {
        let mut c = core(100);
        let mut p = Stamper::with_epoch("p", 1).unwrap();
        let m = delivered(c.on_message(msg(&mut p, "a", 0), at(5)));
        assert_eq!(m.frames(), [Bytes::from("a")]);
        assert_eq!(m.lag(), Some(Duration::from_millis(5)));
        assert_eq!(m.stamp().unwrap().seq(), Some(0));
        let s = c.stats();
        assert_eq!((s.received, s.delivered, s.publishers), (1, 1, 1));
    }

    #[test]
    fn a_croak_then_skip_until_caught_up() {
        let mut c = core(100);
        let mut p = Stamper::with_epoch("p", 1).unwrap();
        let mut q = Stamper::with_epoch("q", 1).unwrap();
        delivered(c.on_message(msg(&mut p, "a", 0), at(1)));
        let SnailStep::Croak(croak) = c.on_message(msg(&mut p, "late", 10), at(500)) else {
            panic!("expected a croak")
        };
        assert_eq!(croak.alarm().cause(), AlarmCause::Lag);
        let answer = c.recover(
            croak,
            Recovery::SkipUntilLagBelow(Duration::from_millis(20)),
        );
        assert!(matches!(answer, Ok(None)));
        // Still late: skipped, even though under the croak threshold.
        assert!(matches!(
            c.on_message(msg(&mut p, "b", 460), at(510)),
            SnailStep::Skipped
        ));
        // Another publisher is checked as usual meanwhile.
        delivered(c.on_message(msg(&mut q, "q", 505), at(511)));
        // Caught up: delivered, skipping over.
        let m = c.on_message(msg(&mut p, "c", 505), at(512));
        assert!(matches!(m, SnailStep::CaughtUp(_)), "{m:?}");
        delivered(c.on_message(msg(&mut p, "d", 510), at(513)));
        let s = c.stats();
        assert_eq!((s.croaks, s.recoveries, s.skipped), (1, 1, 2));
        assert_eq!(s.received, s.delivered + s.skipped);
    }

    #[test]
    fn resume_delivers_the_late_message_and_abort_fails() {
        let mut c = core(100);
        let mut p = Stamper::with_epoch("p", 1).unwrap();
        let SnailStep::Croak(croak) = c.on_message(msg(&mut p, "late", 0), at(200)) else {
            panic!("expected a croak")
        };
        let m = c.recover(croak, Recovery::Resume).unwrap().unwrap();
        assert_eq!(m.frames(), [Bytes::from("late")]);
        let SnailStep::Croak(croak) = c.on_message(msg(&mut p, "late", 0), at(300)) else {
            panic!("expected a croak")
        };
        let alarm = c.recover(croak, Recovery::Abort).unwrap_err();
        assert_eq!(alarm.publisher().as_ref(), b"p");
        let SnailStep::Croak(croak) = c.on_message(msg(&mut p, "late", 0), at(400)) else {
            panic!("expected a croak")
        };
        assert_eq!(c.abort(croak).cause(), AlarmCause::Lag);
        let s = c.stats();
        assert_eq!((s.croaks, s.recoveries, s.delivered), (3, 2, 1));
    }

    #[test]
    fn the_first_warning_of_a_streak_and_every_gap_are_reported() {
        let det = DetectorConfig::default()
            .max_lag(Duration::from_millis(100))
            .sustain(Duration::from_secs(10))
            .max_lost(None)
            .clock(super::super::detector::ClockSync::Trusted);
        let mut c = SnailCore::new(det, WireFormat::Toolkit, 1024);
        let mut p = Stamper::with_epoch("p", 1).unwrap();
        assert!(matches!(
            c.on_message(msg(&mut p, "late", 0), at(200)),
            SnailStep::Behind(..)
        ));
        assert!(matches!(
            c.on_message(msg(&mut p, "late", 1), at(201)),
            SnailStep::Deliver(_)
        ));
        let _lost = p.next_stamp(at(2));
        let SnailStep::Behind(_, alarm) = c.on_message(msg(&mut p, "gap", 3), at(202)) else {
            panic!("a gap is reported")
        };
        assert_eq!(alarm.lost(), 1);
        assert!(matches!(
            c.on_message(msg(&mut p, "ok", 200), at(202)),
            SnailStep::Deliver(_)
        ));
    }

    #[test]
    fn oversized_and_unstamped_messages() {
        let mut c = core(100);
        let big = vec![Bytes::from(vec![0u8; 600]), Bytes::from(vec![0u8; 600])];
        assert!(matches!(
            c.on_message(big, at(0)),
            SnailStep::Oversized { bytes: 1200 }
        ));
        let m = c.on_message(vec![Bytes::from("garbage")], at(0));
        let SnailStep::Unstamped(m, _) = m else {
            panic!("{m:?}")
        };
        assert!(m.stamp().is_none() && m.lag().is_none());
        let s = c.stats();
        assert_eq!(
            (s.received, s.oversized, s.unstamped, s.delivered),
            (2, 1, 1, 1)
        );
    }

    #[test]
    fn publisher_ids_are_bounded_and_evictions_counted() {
        let det = DetectorConfig::default().max_publishers(4);
        let mut c = SnailCore::new(det, WireFormat::Toolkit, 1024);
        for i in 0..10 {
            let mut p = Stamper::with_epoch(format!("p{i}"), 1).unwrap();
            delivered(c.on_message(msg(&mut p, "x", i), at(i)));
        }
        let s = c.stats();
        assert_eq!((s.publishers, s.publishers_evicted), (4, 6));
    }
}
