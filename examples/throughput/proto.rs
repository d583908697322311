//! The child side of the orchestrator protocol: control lines on stdin,
//! report lines on stdout, message markers, the receiver's meter and CPU
//! time.
//!
//! ```text
//!  orchestrator ──stdin──▶ child:  GO (start measuring)  STOP (finish and exit)
//!  orchestrator ◀─stdout── child:  READY <endpoint...>  WARM  RESULT <json>
//! ```
//!
//! Every message's last frame says what it is: empty = end marker, one byte =
//! warm-up, `size` bytes = data. A child exits by itself: after STOP, when
//! stdin closes (the orchestrator died) or when its deadline passes.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// What a message is, from the length of its last frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Empty last frame: the sender has finished.
    End,
    /// One byte: a warm-up message (the path is up, measuring has not begun).
    Warm,
    /// Anything longer: measured data.
    Data,
}

/// Classifies a message by the length of its last frame.
pub(crate) fn classify(last_frame_len: usize) -> Kind {
    match last_frame_len {
        0 => Kind::End,
        1 => Kind::Warm,
        _ => Kind::Data,
    }
}

/// Number of distinct topics publishers cycle through (pub-sub messages
/// are `[topic][payload]`; the Last Value Cache keeps one value per topic).
pub(crate) const TOPICS: usize = 1000;

/// The topics publishers cycle through, made once (`T000`..`T999`).
#[derive(Debug, Clone)]
pub(crate) struct Topics(Vec<String>);

impl Topics {
    pub(crate) fn new() -> Self {
        Self((0..TOPICS).map(|i| format!("T{i:03}")).collect())
    }

    /// The topic of the `n`th message.
    pub(crate) fn get(&self, n: u64) -> &[u8] {
        self.0[(n % TOPICS as u64) as usize].as_bytes()
    }
}

/// What a child reports in its `RESULT` line.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub(crate) struct Report {
    /// Data messages sent, received or answered.
    pub(crate) count: u64,
    /// Payload bytes of those messages (last frames only).
    pub(crate) bytes: u64,
    /// The measuring window in seconds.
    pub(crate) elapsed_s: f64,
    /// Round-trip percentiles in microseconds (latency roles only).
    pub(crate) p50_us: Option<f64>,
    /// 99th percentile.
    pub(crate) p99_us: Option<f64>,
    /// 99.9th percentile.
    pub(crate) p999_us: Option<f64>,
    /// Capture events a tracing proxy's listener received.
    pub(crate) captured: Option<u64>,
    /// Capture events dropped (listener too slow), where counted.
    pub(crate) capture_drops: Option<u64>,
    /// Messages a proxy dropped for a slow subscriber, where counted.
    pub(crate) proxy_drops: Option<u64>,
}

/// Prints one protocol line to stdout and flushes it.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // The orchestrator reads our stdout; if it is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `RESULT <json>`.
pub(crate) fn emit_result(report: &Report) {
    let json = serde_json::to_string(report).expect("a report always serialises");
    emit(&format!("RESULT {json}"));
}

/// The orchestrator's commands, read from stdin by a background thread.
#[derive(Debug, Default)]
pub(crate) struct Control {
    go: AtomicBool,
    stop: AtomicBool,
}

impl Control {
    /// Starts the stdin reader and a watchdog that ends the process after
    /// `deadline` whatever happens.
    pub(crate) fn start(deadline: Duration) -> Arc<Control> {
        let ctl = Arc::new(Control::default());
        let reader = ctl.clone();
        std::thread::spawn(move || reader.read_stdin());
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            eprintln!("throughput child: deadline of {deadline:?} passed; exiting");
            std::process::exit(3);
        });
        ctl
    }

    fn read_stdin(&self) {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            match line.trim() {
                "GO" => self.go.store(true, Ordering::Release),
                "STOP" => self.stop.store(true, Ordering::Release),
                other => eprintln!("throughput child: ignoring control line {other:?}"),
            }
        }
        // Stdin closed: the orchestrator is gone (or done). Finish soon.
        self.stop.store(true, Ordering::Release);
        std::thread::sleep(Duration::from_secs(3));
        std::process::exit(0);
    }

    /// True once GO arrived.
    pub(crate) fn go(&self) -> bool {
        self.go.load(Ordering::Acquire)
    }

    /// True once STOP arrived (or stdin closed).
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Blocks until STOP (for threads outside any runtime), at most `limit`.
    pub(crate) fn wait_stop_blocking(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Awaits STOP, at most `limit`, letting the runtime run meanwhile.
    pub(crate) async fn wait_stop(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.stopped() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// Reports, waits for STOP, exits: how receivers end (blocking roles).
pub(crate) fn finish_now_blocking(ctl: &Control, report: &Report) -> ! {
    emit_result(report);
    ctl.wait_stop_blocking(Duration::from_secs(30));
    std::process::exit(0);
}

/// Waits for STOP, reports, exits: how senders and proxies end (blocking).
pub(crate) fn finish_after_stop_blocking(ctl: &Control, report: impl FnOnce() -> Report) -> ! {
    ctl.wait_stop_blocking(Duration::from_secs(30));
    emit_result(&report());
    std::process::exit(0);
}

/// Counts what a receiver gets and times the window from the first data
/// message to the end marker.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    warm: bool,
    first: Option<Instant>,
    count: u64,
    bytes: u64,
}

/// What a receiver should do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Keep receiving.
    More,
    /// The first warm-up arrived: tell the orchestrator (`WARM`), keep going.
    Warmed,
    /// The end marker arrived: report.
    Done,
}

impl Meter {
    /// Accounts one message whose last frame has `last_len` bytes.
    pub(crate) fn on_message(&mut self, last_len: usize) -> Flow {
        match classify(last_len) {
            Kind::Data => {
                if self.first.is_none() {
                    self.first = Some(Instant::now());
                }
                self.count += 1;
                self.bytes += last_len as u64;
                Flow::More
            }
            Kind::Warm if !self.warm => {
                self.warm = true;
                Flow::Warmed
            }
            Kind::Warm => Flow::More,
            // An end marker before any data (a repeat of a previous run's
            // marker cannot happen: every run has fresh processes) still ends.
            Kind::End => Flow::Done,
        }
    }

    /// Handles a message and the protocol side effects (`WARM`).
    pub(crate) fn observe(&mut self, last_len: usize) -> bool {
        match self.on_message(last_len) {
            Flow::Warmed => {
                emit("WARM");
                false
            }
            Flow::More => false,
            Flow::Done => true,
        }
    }

    /// The report at the end marker.
    pub(crate) fn report(&self) -> Report {
        Report {
            count: self.count,
            bytes: self.bytes,
            elapsed_s: self.first.map_or(0.0, |f| f.elapsed().as_secs_f64()),
            ..Report::default()
        }
    }
}

/// The sender's clock: run for `secs`, or until `max_bytes` of payload.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub(crate) secs: f64,
    pub(crate) max_msgs: u64,
}

impl Budget {
    pub(crate) fn new(secs: f64, size: usize, max_bytes: u64) -> Self {
        Self {
            secs,
            max_msgs: (max_bytes / size.max(1) as u64).max(1),
        }
    }

    /// True when a sender that started at `start` and sent `sent` is done.
    pub(crate) fn done(&self, start: Instant, sent: u64) -> bool {
        sent >= self.max_msgs || start.elapsed().as_secs_f64() >= self.secs
    }
}

/// A sender's report: what it sent, and for how long.
pub(crate) fn sender_report(sent: u64, size: usize, elapsed_s: f64) -> Report {
    Report {
        count: sent,
        bytes: sent * size as u64,
        elapsed_s,
        ..Report::default()
    }
}

/// A histogram of round-trip times in nanoseconds (1 ns .. 60 s, 3 digits).
fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid bounds")
}

/// Adds the percentiles (in µs) of `hist` to `report`.
fn with_percentiles(mut report: Report, hist: &Histogram<u64>) -> Report {
    let us = |q: f64| Some(hist.value_at_quantile(q) as f64 / 1000.0);
    report.p50_us = us(0.5);
    report.p99_us = us(0.99);
    report.p999_us = us(0.999);
    report
}

/// The measured phase of a latency run: round trips for the budget, each
/// timed into a histogram.
#[derive(Debug)]
pub(crate) struct RoundTrips {
    pub(crate) payload: Vec<u8>,
    budget: Budget,
    hist: Histogram<u64>,
    start: Instant,
    pub(crate) n: u64,
}

impl RoundTrips {
    /// Starts the clock.
    pub(crate) fn start(size: usize, secs: f64, max_bytes: u64) -> Self {
        Self {
            payload: vec![b'x'; size],
            budget: Budget::new(secs, size, max_bytes),
            hist: rtt_histogram(),
            start: Instant::now(),
            n: 0,
        }
    }

    /// True while the budget lasts.
    pub(crate) fn more(&self) -> bool {
        !self.budget.done(self.start, self.n)
    }

    /// Records the round trip that began at `sent` and brought back
    /// `reply_len` bytes.
    pub(crate) fn record(&mut self, sent: Instant, reply_len: usize) -> anyhow::Result<()> {
        self.hist
            .saturating_record(sent.elapsed().as_nanos() as u64);
        anyhow::ensure!(reply_len == self.payload.len(), "echo changed the message");
        self.n += 1;
        Ok(())
    }

    /// Stops the clock: the report with percentiles.
    pub(crate) fn finish(self) -> Report {
        let elapsed = self.start.elapsed().as_secs_f64();
        with_percentiles(
            sender_report(self.n, self.payload.len(), elapsed),
            &self.hist,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_told_apart_by_last_frame_length() {
        assert_eq!(classify(0), Kind::End);
        assert_eq!(classify(1), Kind::Warm);
        assert_eq!(classify(16), Kind::Data);
        let mut m = Meter::default();
        assert_eq!(m.on_message(1), Flow::Warmed);
        assert_eq!(m.on_message(1), Flow::More);
        assert_eq!(m.on_message(16), Flow::More);
        assert_eq!(m.on_message(16), Flow::More);
        assert_eq!(m.on_message(0), Flow::Done);
        let r = m.report();
        assert_eq!((r.count, r.bytes), (2, 32));
    }

    #[test]
    fn budget_caps_bytes() {
        let b = Budget::new(1000.0, 65536, 1 << 30);
        assert_eq!(b.max_msgs, 16384);
        assert!(b.done(Instant::now(), 16384));
        assert!(!b.done(Instant::now(), 10));
    }
}

/// One worker's counts, on a cache line of its own (no false sharing
/// between workers on different cores).
#[derive(Debug, Default)]
#[repr(align(64))]
pub(crate) struct WorkerCount {
    count: std::sync::atomic::AtomicU64,
    bytes: std::sync::atomic::AtomicU64,
}

/// A meter fed by several worker threads (the Black Box rows): each worker
/// counts into its own [`WorkerCount`]; the first data message starts the
/// window; the end marker, seen by whichever worker gets it, ends it.
#[derive(Debug, Default)]
pub(crate) struct SharedMeter {
    warm: AtomicBool,
    first: std::sync::OnceLock<Instant>,
    done: AtomicBool,
    workers: std::sync::Mutex<Vec<Arc<WorkerCount>>>,
}

impl SharedMeter {
    /// A counter for one more worker.
    pub(crate) fn worker(&self) -> Arc<WorkerCount> {
        let w = Arc::new(WorkerCount::default());
        self.workers.lock().expect("not poisoned").push(w.clone());
        w
    }

    /// Accounts one message at worker `w`; true at the end marker.
    pub(crate) fn observe(&self, w: &WorkerCount, last_len: usize) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        match classify(last_len) {
            Kind::Data => {
                self.first.get_or_init(Instant::now);
                w.count.store(w.count.load(Relaxed) + 1, Relaxed);
                w.bytes
                    .store(w.bytes.load(Relaxed) + last_len as u64, Relaxed);
                false
            }
            Kind::Warm => {
                if !self.warm.swap(true, Relaxed) {
                    emit("WARM");
                }
                false
            }
            Kind::End => {
                self.done.store(true, Relaxed);
                true
            }
        }
    }

    /// True once a worker saw the end marker.
    pub(crate) fn done(&self) -> bool {
        self.done.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The report, once every worker has drained its queue.
    pub(crate) fn report(&self) -> Report {
        use std::sync::atomic::Ordering::Relaxed;
        let workers = self.workers.lock().expect("not poisoned");
        Report {
            count: workers.iter().map(|w| w.count.load(Relaxed)).sum(),
            bytes: workers.iter().map(|w| w.bytes.load(Relaxed)).sum(),
            elapsed_s: self.first.get().map_or(0.0, |f| f.elapsed().as_secs_f64()),
            ..Report::default()
        }
    }
}
