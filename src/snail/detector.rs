//! The slow-subscriber detector: fed each received stamp and the local time,
//! it reports lag (with a per-publisher clock-offset estimate), lost
//! messages (sequence gaps) and publisher restarts, and says when to croak.
//!
//! Suicidal Snail (Guide ch. 5). This module contains no networking code and
//! reads no clock: the caller passes `now` (the subscriber's wall clock).
//!
//! # Lag with clocks that disagree
//!
//! The subscriber sees `delay = now - sent_at`, which is the true lag plus
//! the difference between the two hosts' clocks plus the network transit.
//! In [`ClockSync::Estimated`] mode (the default) the detector estimates the
//! offset per publisher as the *minimum* delay seen over a sliding window
//! (the base delay of LEDBAT, RFC 6817 §3.4.2): the fastest message of the
//! window is taken as "not queued at all". It keeps one minimum per tenth of
//! [`DetectorConfig::base_window`] (default 10 minutes), so the estimate
//! follows slow clock drift and a host moving, and costs O(1) per message.
//! Lag is then `delay - offset`: a constant skew of seconds in either
//! direction is invisible, a growing backlog is not.
//!
//! What estimation cannot see, and the remedies:
//! - A subscriber that is *already* behind at its first message: that delay
//!   becomes the baseline. [`ClockSync::Bounded`] caps the offset at the
//!   skew your clock synchronisation guarantees (say 50 ms under NTP), so
//!   anything beyond is lag; [`ClockSync::Trusted`] assumes offset 0, as the
//!   Guide does.
//! - A backlog that stays roughly constant for longer than the window is
//!   absorbed into the baseline; a backlog that keeps growing is always
//!   seen while it grows by `max_lag` within one window.
//! - Loss is only visible with sequence numbers (the toolkit envelope), and
//!   only for unfiltered streams: a subscriber with a topic filter sees gaps
//!   by design (set [`DetectorConfig::max_lost`] to `None`, or give each
//!   topic its own publisher id and stamper).

use std::fmt;
use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::envelope::{unix_micros, Stamp};
use super::table::Table;

/// Number of sub-windows the base-delay window is split into.
const BUCKETS: usize = 10;

/// How the detector relates the publisher's clock to the subscriber's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClockSync {
    /// The clocks agree (same host, or tight NTP/PTP): offset 0, as the Guide.
    Trusted,
    /// Estimate the offset from the minimum observed delay (default).
    #[default]
    Estimated,
    /// Estimate, but never believe an offset beyond this bound: a larger
    /// minimum delay counts as lag.
    Bounded(Duration),
}

/// What the detector tolerates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorConfig {
    max_lag: Duration,
    sustain: Duration,
    clock: ClockSync,
    base_window: Duration,
    max_lost: Option<u64>,
    max_publishers: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            max_lag: Duration::from_secs(1),
            sustain: Duration::ZERO,
            clock: ClockSync::Estimated,
            base_window: Duration::from_secs(600),
            max_lost: Some(0),
            max_publishers: 1024,
        }
    }
}

impl DetectorConfig {
    /// The largest lag tolerated (the Guide's `MAX_ALLOWED_DELAY`, 1 s).
    pub fn max_lag(mut self, d: Duration) -> Self {
        self.max_lag = d;
        self
    }

    /// How long the lag must stay above `max_lag` before croaking; 0 (the
    /// default, the Guide's behaviour) croaks on the first late message. A
    /// subscriber that recovers from a pause within `sustain` is spared.
    pub fn sustain(mut self, d: Duration) -> Self {
        self.sustain = d;
        self
    }

    /// How publisher and subscriber clocks relate (default: estimated).
    pub fn clock(mut self, c: ClockSync) -> Self {
        self.clock = c;
        self
    }

    /// The window over which the minimum delay is taken (default 10 min).
    pub fn base_window(mut self, d: Duration) -> Self {
        self.base_window = d.max(Duration::from_micros(BUCKETS as u64));
        self
    }

    /// Croak once more than `n` messages from one publisher were lost since
    /// the last reset; `None` counts losses but never croaks on them
    /// (needed with topic filters). Default `Some(0)`: any loss croaks.
    pub fn max_lost(mut self, n: Option<u64>) -> Self {
        self.max_lost = n;
        self
    }

    /// How many publishers are tracked (default 1024, at least 1). A
    /// publisher id is chosen by the peer, so this bounds the table: a new
    /// id beyond it evicts the least recently heard publisher (counted in
    /// [`Detector::evicted`]), which loses its clock estimate and sequence
    /// tracking and starts afresh if it is heard again (a gap across the
    /// eviction is not seen). One entry costs at most about 600 bytes (an
    /// id is at most 255 bytes, copied out of the message).
    pub fn max_publishers(mut self, n: usize) -> Self {
        self.max_publishers = n.max(1);
        self
    }

    /// The configured lag limit.
    pub fn max_lag_limit(&self) -> Duration {
        self.max_lag
    }

    /// The configured bound on tracked publishers.
    pub fn max_publishers_limit(&self) -> usize {
        self.max_publishers
    }
}

/// What fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AlarmCause {
    /// The message was older than allowed (after clock-offset correction).
    Lag,
    /// Messages were lost (a sequence gap) beyond the allowed count.
    Loss,
}

/// A sequence gap: the publisher sent messages this subscriber never got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// The sequence number that was due.
    pub expected: u64,
    /// The sequence number that arrived.
    pub got: u64,
}

impl Gap {
    /// How many messages are missing.
    pub fn lost(&self) -> u64 {
        self.got - self.expected
    }
}

/// The numbers behind a warning or a croak.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    publisher: Bytes,
    cause: AlarmCause,
    lag: Duration,
    max_lag: Duration,
    lagging_for: Duration,
    clock_offset_us: i64,
    gap: Option<Gap>,
    lost: u64,
}

impl Alarm {
    /// The publisher whose stream fired.
    pub fn publisher(&self) -> &Bytes {
        &self.publisher
    }
    /// Lag or loss.
    pub fn cause(&self) -> AlarmCause {
        self.cause
    }
    /// The lag of the message that fired (offset-corrected).
    pub fn lag(&self) -> Duration {
        self.lag
    }
    /// The configured maximum lag.
    pub fn max_lag(&self) -> Duration {
        self.max_lag
    }
    /// How long (local time) the lag has been above the maximum.
    pub fn lagging_for(&self) -> Duration {
        self.lagging_for
    }
    /// The estimated subscriber-minus-publisher clock offset plus minimal
    /// transit, in microseconds (0 in trusted mode).
    pub fn clock_offset_micros(&self) -> i64 {
        self.clock_offset_us
    }
    /// The gap seen on this message, if any.
    pub fn gap(&self) -> Option<Gap> {
        self.gap
    }
    /// Messages lost from this publisher since the last reset.
    pub fn lost(&self) -> u64 {
        self.lost
    }
}

impl fmt::Display for Alarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = String::from_utf8_lossy(&self.publisher);
        match self.cause {
            AlarmCause::Lag => {
                write!(
                    f,
                    "publisher {id:?}: lag {:?} > max {:?}",
                    self.lag, self.max_lag
                )?;
                if !self.lagging_for.is_zero() {
                    write!(f, " for {:?}", self.lagging_for)?;
                }
            }
            AlarmCause::Loss => write!(f, "publisher {id:?}: {} message(s) lost", self.lost)?,
        }
        if let Some(g) = self.gap {
            write!(
                f,
                ", gap of {} (expected #{}, got #{})",
                g.lost(),
                g.expected,
                g.got
            )?;
        }
        write!(
            f,
            ", clock offset {:+.3} ms",
            self.clock_offset_us as f64 / 1000.0
        )
    }
}

/// The detector's answer for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Within limits.
    Healthy {
        /// The message's lag (offset-corrected).
        lag: Duration,
    },
    /// Over a limit but tolerated: lag not yet sustained, or a loss when
    /// losses do not croak. (Boxed: alarms are rare, and a small verdict
    /// keeps the healthy path cheap.)
    Warning(Box<Alarm>),
    /// Too slow or too lossy: apply the policy (abort or recover).
    Croak(Box<Alarm>),
}

impl Verdict {
    /// The message's lag (offset-corrected).
    pub fn lag(&self) -> Duration {
        match self {
            Verdict::Healthy { lag } => *lag,
            Verdict::Warning(a) | Verdict::Croak(a) => a.lag,
        }
    }
    /// Whether the policy must act.
    pub fn is_croak(&self) -> bool {
        matches!(self, Verdict::Croak(_))
    }
}

/// Counters and estimates for one publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublisherStatus {
    /// Messages received.
    pub received: u64,
    /// Messages lost (sum of all gaps).
    pub lost: u64,
    /// Number of gaps.
    pub gaps: u64,
    /// Duplicate sequence numbers (dropped by no one, only counted).
    pub duplicates: u64,
    /// Restarts seen (new epoch, or the sequence going back).
    pub restarts: u64,
    /// Lag of the last message.
    pub last_lag: Duration,
    /// Largest lag seen.
    pub max_lag: Duration,
    /// Estimated subscriber-minus-publisher clock offset plus minimal
    /// transit, microseconds (0 in trusted mode).
    pub clock_offset_micros: i64,
}

/// The pure slow-subscriber detector (one per subscriber).
#[derive(Debug, Clone)]
pub struct Detector {
    config: DetectorConfig,
    publishers: Table<PubState>,
    evicted: u64,
}

#[derive(Debug, Clone)]
struct PubState {
    epoch: u32,
    next_seq: Option<u64>,
    base: BaseDelay,
    over_since: Option<i64>,
    lost_since_reset: u64,
    last_seen: i64,
    status: PublisherStatus,
}

impl Detector {
    /// A detector with `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            publishers: Table::default(),
            evicted: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Checks one received message's stamp at local time `now`.
    pub fn handle_message(&mut self, stamp: &Stamp, now: SystemTime) -> Verdict {
        let now_us = unix_micros(now) as i64;
        let delay = now_us.saturating_sub(stamp.sent_at_micros() as i64);
        let slot = match self.publishers.find(stamp.publisher()) {
            Some(i) => i,
            None => {
                self.make_room();
                let fresh = PubState::new(stamp.epoch(), now_us);
                // Copied: a decoded id is a slice of the whole receive
                // buffer, which the table must not keep alive.
                let id = Bytes::copy_from_slice(stamp.publisher());
                self.publishers.insert(id, fresh)
            }
        };
        let cfg = &self.config;
        let (publisher, st) = self.publishers.slot_mut(slot);
        st.last_seen = now_us;
        st.status.received += 1;
        let gap = stamp.seq().and_then(|seq| st.track_seq(stamp.epoch(), seq));
        let bucket_us = (cfg.base_window.as_micros() / BUCKETS as u128) as i64;
        st.base.observe(now_us, delay, bucket_us);
        let offset = match cfg.clock {
            ClockSync::Trusted => 0,
            ClockSync::Estimated => st.base.min,
            ClockSync::Bounded(b) => {
                let b = b.as_micros().min(i64::MAX as u128) as i64;
                st.base.min.clamp(-b, b)
            }
        };
        st.status.clock_offset_micros = offset;
        let lag = Duration::from_micros(delay.saturating_sub(offset).max(0) as u64);
        st.status.last_lag = lag;
        st.status.max_lag = st.status.max_lag.max(lag);
        st.judge(cfg, publisher, lag, now_us, gap)
    }

    /// Clears the alarm state of one publisher after a recovery: the
    /// sustained-lag timer, the loss count and the expected sequence number
    /// (the next message is taken as the new start). Counters and the clock
    /// estimate are kept.
    pub fn reset(&mut self, publisher: &[u8]) {
        if let Some(st) = self.publishers.get_mut(publisher) {
            st.reset();
        }
    }

    /// [`reset`](Self::reset) for every publisher.
    pub fn reset_all(&mut self) {
        for st in self.publishers.iter_mut() {
            st.reset();
        }
    }

    /// Forgets a publisher entirely (its clock estimate too).
    pub fn forget(&mut self, publisher: &[u8]) {
        self.publishers.remove(publisher);
    }

    /// Counters and estimates for one publisher.
    pub fn status(&self, publisher: &[u8]) -> Option<PublisherStatus> {
        self.publishers.get(publisher).map(|s| s.status)
    }

    /// How many publishers are tracked now (at most
    /// [`DetectorConfig::max_publishers`]).
    pub fn tracked(&self) -> usize {
        self.publishers.len()
    }

    /// How many publishers were forgotten to make room for a new one.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// All tracked publishers and their status.
    pub fn publishers(&self) -> impl Iterator<Item = (&Bytes, &PublisherStatus)> {
        self.publishers.iter().map(|(k, v)| (k, &v.status))
    }

    fn make_room(&mut self) {
        if self.publishers.len() < self.config.max_publishers {
            return;
        }
        let oldest = self
            .publishers
            .iter()
            .min_by_key(|(_, s)| s.last_seen)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.publishers.remove(&k);
            self.evicted += 1;
        }
    }
}

impl PubState {
    fn reset(&mut self) {
        self.over_since = None;
        self.lost_since_reset = 0;
        self.next_seq = None;
    }

    fn new(epoch: u32, now_us: i64) -> Self {
        Self {
            epoch,
            next_seq: None,
            base: BaseDelay::default(),
            over_since: None,
            lost_since_reset: 0,
            last_seen: now_us,
            status: PublisherStatus::default(),
        }
    }

    /// Updates sequence tracking; returns the gap this message revealed.
    fn track_seq(&mut self, epoch: u32, seq: u64) -> Option<Gap> {
        if epoch != self.epoch {
            self.restart(epoch);
        }
        let Some(expected) = self.next_seq else {
            self.next_seq = Some(seq.wrapping_add(1));
            return None;
        };
        if seq == expected {
            self.next_seq = Some(seq.wrapping_add(1));
            None
        } else if seq > expected {
            let gap = Gap { expected, got: seq };
            self.status.gaps += 1;
            self.status.lost += gap.lost();
            self.lost_since_reset += gap.lost();
            self.next_seq = Some(seq.wrapping_add(1));
            Some(gap)
        } else if seq.wrapping_add(1) == expected {
            self.status.duplicates += 1;
            None
        } else {
            // Went back further: a restarted publisher reusing its epoch.
            self.restart(epoch);
            self.next_seq = Some(seq.wrapping_add(1));
            None
        }
    }

    /// A new publisher instance: it may run elsewhere, with another clock.
    fn restart(&mut self, epoch: u32) {
        self.epoch = epoch;
        self.next_seq = None;
        self.base = BaseDelay::default();
        self.over_since = None;
        self.lost_since_reset = 0;
        self.status.restarts += 1;
    }

    fn judge(
        &mut self,
        cfg: &DetectorConfig,
        publisher: &Bytes,
        lag: Duration,
        now_us: i64,
        gap: Option<Gap>,
    ) -> Verdict {
        let lagging_for = if lag > cfg.max_lag {
            let since = *self.over_since.get_or_insert(now_us);
            Some(Duration::from_micros((now_us - since).max(0) as u64))
        } else {
            self.over_since = None;
            None
        };
        let lag_croak = lagging_for.is_some_and(|d| d >= cfg.sustain);
        let loss_croak = cfg.max_lost.is_some_and(|m| self.lost_since_reset > m);
        if lagging_for.is_none() && gap.is_none() && !loss_croak {
            return Verdict::Healthy { lag };
        }
        let alarm = Box::new(Alarm {
            publisher: publisher.clone(),
            cause: if lag_croak || !loss_croak && lagging_for.is_some() {
                AlarmCause::Lag
            } else {
                AlarmCause::Loss
            },
            lag,
            max_lag: cfg.max_lag,
            lagging_for: lagging_for.unwrap_or_default(),
            clock_offset_us: self.status.clock_offset_micros,
            gap,
            lost: self.lost_since_reset,
        });
        if lag_croak || loss_croak {
            Verdict::Croak(alarm)
        } else {
            Verdict::Warning(alarm)
        }
    }
}

/// The minimum delay over a sliding window, kept as per-bucket minima.
#[derive(Debug, Clone)]
struct BaseDelay {
    buckets: [i64; BUCKETS],
    head: usize,
    bucket_start: i64,
    started: bool,
    min: i64,
}

impl Default for BaseDelay {
    fn default() -> Self {
        Self {
            buckets: [i64::MAX; BUCKETS],
            head: 0,
            bucket_start: 0,
            started: false,
            min: i64::MAX,
        }
    }
}

impl BaseDelay {
    fn observe(&mut self, now_us: i64, delay: i64, bucket_us: i64) {
        if !self.started {
            self.started = true;
            self.bucket_start = now_us;
        } else if now_us - self.bucket_start >= bucket_us {
            self.rotate(now_us, bucket_us);
        }
        let slot = &mut self.buckets[self.head];
        *slot = (*slot).min(delay);
        self.min = self.min.min(delay);
    }

    fn rotate(&mut self, now_us: i64, bucket_us: i64) {
        let elapsed = ((now_us - self.bucket_start) / bucket_us.max(1)) as usize;
        for _ in 0..elapsed.min(BUCKETS) {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = i64::MAX;
        }
        self.bucket_start += elapsed as i64 * bucket_us;
        self.min = self.buckets.iter().copied().min().unwrap_or(i64::MAX);
    }
}

#[cfg(test)]
#[path = "detector_tests.rs"]
mod tests;
