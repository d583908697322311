//! Rate limiting for log lines a remote peer can trigger (garbage, refused
//! subscriptions, limits hit): one line per interval per call site, with
//! the number of events suppressed since the last line. Pure: the caller
//! passes `now`.

use std::time::{Duration, Instant};

/// One log call site's budget: at most one line per `every`.
#[derive(Debug, Clone)]
pub(crate) struct LogLimiter {
    every: Duration,
    next: Option<Instant>,
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new(Duration::from_secs(1))
    }
}

impl LogLimiter {
    /// A limiter that lets one line through per `every`.
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            next: None,
            suppressed: 0,
        }
    }

    /// `Some(suppressed)` if a line may be written at `now` (with the number
    /// of events swallowed since the previous line), `None` to stay quiet.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        match self.next {
            Some(next) if now < next => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.next = Some(now + self.every);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_suppressed_count() {
        let t0 = Instant::now();
        let mut l = LogLimiter::new(Duration::from_secs(1));
        assert_eq!(l.check(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(l.check(t0 + Duration::from_millis(i * 100)), None);
        }
        assert_eq!(l.check(t0 + Duration::from_millis(1000)), Some(5));
        assert_eq!(l.check(t0 + Duration::from_millis(1500)), None);
        assert_eq!(l.check(t0 + Duration::from_millis(2500)), Some(1));
    }
}
