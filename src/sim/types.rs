//! The simulator's vocabulary: messages in flight, link and pump profiles,
//! steps and counters.

use std::time::Duration;

use bytes::Bytes;

use crate::transport::{NodeId, Time};

/// A message in flight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Destination.
    pub to: NodeId,
    /// The bytes, exactly as a transport would carry them.
    pub msg: Bytes,
}

/// What a test filter decides for a message at the moment it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Let the link profile decide (delay, drop, duplicate).
    Pass,
    /// Drop it.
    Drop,
}

/// How one directed link behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct LinkProfile {
    /// Smallest one-way delay.
    pub min_delay: Duration,
    /// Largest one-way delay (uniform between min and max).
    pub max_delay: Duration,
    /// Probability that a message also gets a long extra delay (reordering,
    /// as 6.824's "long reordering").
    pub slow_chance: f64,
    /// The extra delay of a slow message is uniform in `0..=slow_extra`.
    pub slow_extra: Duration,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
}

impl LinkProfile {
    /// A reliable link with a fixed delay.
    pub fn reliable(delay: Duration) -> Self {
        LinkProfile {
            min_delay: delay,
            max_delay: delay,
            slow_chance: 0.0,
            slow_extra: Duration::ZERO,
            drop: 0.0,
            duplicate: 0.0,
        }
    }

    /// A reliable link with a delay uniform in `min..=max` (reorders when
    /// the spread exceeds the gap between messages).
    pub fn uniform(min: Duration, max: Duration) -> Self {
        LinkProfile {
            max_delay: max,
            ..LinkProfile::reliable(min)
        }
    }

    /// This profile with loss and duplication rates.
    pub fn lossy(self, drop: f64, duplicate: f64) -> Self {
        LinkProfile {
            drop,
            duplicate,
            ..self
        }
    }

    /// This profile with a slow tail: probability `chance` of up to `extra`
    /// more delay.
    pub fn slow_tail(self, chance: f64, extra: Duration) -> Self {
        LinkProfile {
            slow_chance: chance,
            slow_extra: extra,
            ..self
        }
    }
}

impl Default for LinkProfile {
    /// 0.5-2 ms, reliable: a LAN.
    fn default() -> Self {
        LinkProfile::uniform(Duration::from_micros(500), Duration::from_millis(2))
    }
}

/// An adversarial message pump: every inbound message is held in a
/// set; every `poll` the node's pump delivers one held message chosen at
/// random with probability `deliver_chance`, else idles.
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub struct PumpProfile {
    /// Interval between pump polls.
    pub poll: Duration,
    /// Probability that a poll delivers a message (0.95 in
    /// [`PumpProfile::adversarial`]).
    pub deliver_chance: f64,
}

impl PumpProfile {
    /// The adversarial pump: 0.95 per poll, polling every `poll`.
    pub fn adversarial(poll: Duration) -> Self {
        PumpProfile {
            poll,
            deliver_chance: 0.95,
        }
    }
}

/// What one [`Sim::step`](super::Sim::step) did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// When.
    pub at: Time,
    /// The node concerned.
    pub node: NodeId,
    /// What happened to it.
    pub kind: StepKind,
}

/// The kinds of [`Step`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepKind {
    /// A message from `from` was handled.
    Delivered {
        /// The sender.
        from: NodeId,
    },
    /// A message was lost because the node was down or the link cut.
    Lost {
        /// The sender.
        from: NodeId,
    },
    /// The node's timer fired.
    Timer,
    /// The pump polled and chose to idle (or moved a message into its set).
    Pump,
    /// The node crashed between handling an event and persisting.
    CrashedMidStep,
    /// A stale timer (cancelled or of a crashed node) was discarded.
    Stale,
}

/// Counters of a simulation run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SimStats {
    /// Messages produced by processes.
    pub sent: u64,
    /// Messages handled by processes.
    pub delivered: u64,
    /// Messages lost to the link's drop rate or a test filter.
    pub dropped: u64,
    /// Extra copies produced by the duplicate rate.
    pub duplicated: u64,
    /// Messages lost to a partition or a cut link.
    pub cut: u64,
    /// Messages lost because the destination was down (or unknown).
    pub to_down: u64,
    /// Timer firings.
    pub timers: u64,
    /// Crashes (including mid-step ones).
    pub crashes: u64,
    /// Crashes between a step and its fsync.
    pub mid_step_crashes: u64,
    /// Restarts.
    pub restarts: u64,
    /// Steps whose `persist` failed (their messages were discarded).
    pub persist_failures: u64,
}
