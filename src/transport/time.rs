//! `Time`: the instant type of the sans-IO cores, microseconds since an
//! arbitrary origin (virtual in the simulator, the driver's start
//! instant on real networks).

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// An instant, in microseconds since the driver's origin.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct Time(u64);

impl Time {
    /// The origin.
    pub const ZERO: Time = Time(0);
    /// Later than every other instant.
    pub const MAX: Time = Time(u64::MAX);

    /// The instant `us` microseconds after the origin.
    pub const fn from_micros(us: u64) -> Self {
        Time(us)
    }

    /// The instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Time(ms * 1000)
    }

    /// Microseconds since the origin.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The elapsed time since the origin.
    pub fn since_origin(self) -> Duration {
        Duration::from_micros(self.0)
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(us))
    }
}

impl Sub for Time {
    type Output = Duration;
    fn sub(self, earlier: Time) -> Duration {
        self.saturating_since(earlier)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.0 / 1_000_000, self.0 % 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Time::from_millis(5);
        assert_eq!(t + Duration::from_micros(7), Time::from_micros(5007));
        assert_eq!(t - Time::from_millis(2), Duration::from_millis(3));
        assert_eq!(Time::from_millis(2) - t, Duration::ZERO);
        assert_eq!(Time::MAX + Duration::from_secs(1), Time::MAX);
        assert_eq!(Time::from_micros(1_500_000).to_string(), "1.500000s");
    }
}
