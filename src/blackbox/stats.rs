//! Counters of a running Black Box: messages received and refused as
//! oversized per subscriber socket, delivered and dropped per worker, and
//! rates between snapshots.
//!
//! Each counter sits on its own cache line and is written by one task
//! only (relaxed atomics), so counting costs the hot path almost nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One counter on its own cache line (no false sharing between the I/O
/// task and the workers).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    /// For counters written by one task only: a load + store is cheaper
    /// than a locked add.
    #[inline]
    pub(crate) fn add_single_writer(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    /// For counters several tasks write (drops: any I/O task may drop).
    #[inline]
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counters shared by the I/O tasks, the workers and the handle.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) received: Vec<Counter>,
    pub(crate) oversized: Vec<Counter>,
    pub(crate) socket_errors: Vec<Counter>,
    pub(crate) delivered: Vec<Counter>,
    pub(crate) dropped: Vec<Counter>,
    pub(crate) started: Instant,
}

impl Counters {
    pub(crate) fn new(sockets: usize, workers: usize) -> Self {
        let v = |n| (0..n).map(|_| Counter::default()).collect();
        Self {
            received: v(sockets),
            oversized: v(sockets),
            socket_errors: v(sockets),
            delivered: v(workers),
            dropped: v(workers),
            started: Instant::now(),
        }
    }

    pub(crate) fn snapshot(&self) -> BlackBoxStats {
        let all = |v: &[Counter]| v.iter().map(Counter::get).collect();
        BlackBoxStats {
            received: all(&self.received),
            oversized: all(&self.oversized),
            socket_errors: all(&self.socket_errors),
            delivered: all(&self.delivered),
            dropped: all(&self.dropped),
            elapsed: self.started.elapsed(),
        }
    }
}

/// A snapshot of a Black Box's counters.
///
/// Accounting: every message an I/O task read is either refused as
/// oversized, delivered to a worker's handler, dropped at a full worker
/// queue ([`Overflow::DropNewest`](super::Overflow::DropNewest)), or still
/// in flight; after [`shutdown`](super::BlackBox::shutdown) nothing is in
/// flight, so `received == oversized + delivered + dropped`. Messages the *publisher*
/// dropped never arrive and are not counted here: the `zeromq` PUB drops
/// silently, so detect that with sequence numbers (see [`crate::snail`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlackBoxStats {
    /// Messages read, per subscriber socket (oversized ones included).
    pub received: Vec<u64>,
    /// Messages refused for exceeding
    /// [`BlackBoxConfig::max_message_bytes`](super::BlackBoxConfig::max_message_bytes),
    /// per subscriber socket.
    pub oversized: Vec<u64>,
    /// Receive errors, per subscriber socket (logged, then carried on).
    pub socket_errors: Vec<u64>,
    /// Messages handled, per worker.
    pub delivered: Vec<u64>,
    /// Messages dropped at a full queue, per worker.
    pub dropped: Vec<u64>,
    /// Time since the Black Box started.
    pub elapsed: Duration,
}

impl BlackBoxStats {
    /// Messages read by all sockets.
    pub fn total_received(&self) -> u64 {
        self.received.iter().sum()
    }
    /// Messages handled by all workers.
    pub fn total_delivered(&self) -> u64 {
        self.delivered.iter().sum()
    }
    /// Messages dropped at full worker queues.
    pub fn total_dropped(&self) -> u64 {
        self.dropped.iter().sum()
    }
    /// Messages refused as oversized, all sockets.
    pub fn total_oversized(&self) -> u64 {
        self.oversized.iter().sum()
    }
    /// Messages read but neither refused, handled nor dropped yet (queued).
    pub fn in_flight(&self) -> u64 {
        self.total_received()
            .saturating_sub(self.total_oversized() + self.total_delivered() + self.total_dropped())
    }

    /// Delivered messages per second, per worker, between `earlier` and
    /// this snapshot.
    pub fn rates_since(&self, earlier: &BlackBoxStats) -> Vec<f64> {
        let secs = self
            .elapsed
            .saturating_sub(earlier.elapsed)
            .as_secs_f64()
            .max(1e-9);
        self.delivered
            .iter()
            .zip(earlier.delivered.iter().chain(std::iter::repeat(&0)))
            .map(|(now, then)| now.saturating_sub(*then) as f64 / secs)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_and_rates() {
        let c = Counters::new(1, 2);
        let before = c.snapshot();
        c.received[0].add(11);
        c.oversized[0].add(1);
        c.delivered[0].add(4);
        c.delivered[1].add(3);
        c.dropped[1].add(1);
        let mut s = c.snapshot();
        assert_eq!(
            (
                s.total_received() - s.total_oversized(),
                s.total_delivered(),
                s.total_dropped(),
                s.in_flight()
            ),
            (10, 7, 1, 2)
        );
        s.elapsed = before.elapsed + Duration::from_millis(500);
        assert_eq!(s.rates_since(&before), [8.0, 6.0]);
    }
}
