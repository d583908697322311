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
//!
//! Started by hand (no `--orchestrated`), a process reads no stdin: a
//! sender sends warm-ups for `--warmup` seconds, then data for `--count`
//! messages or `--secs`, then end markers, and exits; a receiver prints its
//! result (msgs/s, MB/s, CPU us/msg) at the end marker or after `--count`
//! messages and exits; a proxy prints its counters every second until
//! killed or its `--deadline`.

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
    /// Times a proxy paused reading publishers for a full subscriber queue.
    #[serde(default)]
    pub(crate) proxy_blocks: Option<u64>,
    /// CPU seconds this process used over `elapsed_s` (all threads).
    #[serde(default)]
    pub(crate) cpu_s: Option<f64>,
}

/// The one-line result a process started by hand prints:
/// `recv libzmq pubsub 16 B: 1000000 msgs in 0.812 s = 1.23M msgs/s, 19.7 MB/s, CPU 0.81 us/msg (99 % of a core)`.
pub(crate) fn summary(label: &str, r: &Report) -> String {
    let rate = |x: u64| {
        if r.elapsed_s > 0.0 {
            x as f64 / r.elapsed_s
        } else {
            0.0
        }
    };
    let mut s = format!(
        "{label}: {} msgs in {:.3} s = {} msgs/s, {:.1} MB/s",
        r.count,
        r.elapsed_s,
        crate::report::fmt_rate(rate(r.count)),
        rate(r.bytes) / 1e6
    );
    if let Some(cpu) = r.cpu_s.filter(|_| r.count > 0 && r.elapsed_s > 0.0) {
        s.push_str(&format!(
            ", CPU {:.2} us/msg ({:.0} % of a core)",
            cpu / r.count as f64 * 1e6,
            100.0 * cpu / r.elapsed_s
        ));
    }
    if let (Some(p50), Some(p99)) = (r.p50_us, r.p99_us) {
        s.push_str(&format!(", round trip p50 {p50:.1} us, p99 {p99:.1} us"));
    }
    s
}

/// A wall clock and this process's CPU clock, started together.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stopwatch {
    at: Instant,
    cpu: Duration,
}

impl Stopwatch {
    pub(crate) fn start() -> Self {
        Self {
            at: Instant::now(),
            cpu: crate::machine::process_cpu(std::process::id()),
        }
    }

    /// Wall seconds since the start.
    pub(crate) fn secs(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }

    /// CPU seconds of this process since the start.
    pub(crate) fn cpu_secs(&self) -> f64 {
        crate::machine::process_cpu(std::process::id())
            .saturating_sub(self.cpu)
            .as_secs_f64()
    }
}

/// Prints one protocol line to stdout and flushes it.
pub(crate) fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    // The orchestrator reads our stdout; if it is gone there is no one to tell.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Prints `RESULT <json>`.
fn emit_result(report: &Report) {
    let json = serde_json::to_string(report).expect("a report always serialises");
    emit(&format!("RESULT {json}"));
}

/// The orchestrator's commands, read from stdin by a background thread;
/// or, for a process started by hand, a timer.
#[derive(Debug, Default)]
pub(crate) struct Control {
    go: AtomicBool,
    stop: AtomicBool,
    /// Started by hand: the label of its summary line (no stdin protocol).
    manual: Option<String>,
}

impl Control {
    /// Starts the stdin reader and a watchdog that ends the process after
    /// `deadline` whatever happens.
    pub(crate) fn start(deadline: Option<Duration>) -> Arc<Control> {
        let ctl = Arc::new(Control::default());
        let reader = ctl.clone();
        std::thread::spawn(move || reader.read_stdin());
        watchdog(deadline);
        ctl
    }

    /// A process started by hand: GO after `warmup`, never STOP (it ends
    /// when its work is done), `label` heads its summary line.
    pub(crate) fn manual(
        label: String,
        warmup: Duration,
        deadline: Option<Duration>,
    ) -> Arc<Control> {
        let ctl = Arc::new(Control {
            manual: Some(label),
            ..Control::default()
        });
        let timer = ctl.clone();
        std::thread::spawn(move || {
            std::thread::sleep(warmup);
            timer.go.store(true, Ordering::Release);
        });
        watchdog(deadline);
        ctl
    }

    /// True if started by hand.
    pub(crate) fn is_manual(&self) -> bool {
        self.manual.is_some()
    }

    /// How long a publisher repeats its end marker at most (until STOP).
    pub(crate) fn marker_time(&self) -> Duration {
        Duration::from_secs(if self.is_manual() { 1 } else { 10 })
    }

    /// Reports: `RESULT <json>`, and by hand also the summary line.
    pub(crate) fn report(&self, report: &Report) {
        emit_result(report);
        if let Some(label) = &self.manual {
            emit(&summary(label, report));
        }
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

    /// Blocks until STOP (for threads outside any runtime), at most `limit`;
    /// by hand not at all.
    pub(crate) fn wait_stop_blocking(&self, limit: Duration) {
        if self.is_manual() {
            return;
        }
        let until = Instant::now() + limit;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Awaits STOP, at most `limit`, letting the runtime run meanwhile; by
    /// hand not at all.
    pub(crate) async fn wait_stop(&self, limit: Duration) {
        if self.is_manual() {
            return;
        }
        let until = Instant::now() + limit;
        while !self.stopped() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// A proxy started by hand: prints, every second and forever, its CPU and
/// (where `count` knows it) the messages it forwarded. Blocking.
pub(crate) fn print_every_second(count: impl Fn() -> Option<u64>) -> ! {
    let mut clock = Stopwatch::start();
    let mut last = count().unwrap_or(0);
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (secs, cpu) = (clock.secs(), clock.cpu_secs());
        let now = count();
        let mut line = format!("proxy: CPU {:.0} % of a core", 100.0 * cpu / secs);
        if let Some(n) = now {
            let d = n.saturating_sub(last);
            line.push_str(&format!(
                ", {} msgs/s, {n} msgs in all",
                crate::report::fmt_rate(d as f64 / secs)
            ));
            if d > 0 {
                line.push_str(&format!(", CPU {:.2} us/msg", cpu / d as f64 * 1e6));
            }
            last = n;
        }
        emit(&line);
        clock = Stopwatch::start();
    }
}

/// Ends the process after `deadline`, if there is one.
fn watchdog(deadline: Option<Duration>) {
    if let Some(deadline) = deadline {
        std::thread::spawn(move || {
            std::thread::sleep(deadline);
            eprintln!("throughput: deadline of {deadline:?} passed; exiting");
            std::process::exit(3);
        });
    }
}

/// Reports, waits for STOP, exits: how receivers end (blocking roles).
pub(crate) fn finish_now_blocking(ctl: &Control, report: &Report) -> ! {
    ctl.report(report);
    ctl.wait_stop_blocking(Duration::from_secs(30));
    std::process::exit(0);
}

/// Waits for STOP, reports, exits: how senders and proxies end (blocking).
pub(crate) fn finish_after_stop_blocking(ctl: &Control, report: impl FnOnce() -> Report) -> ! {
    ctl.wait_stop_blocking(Duration::from_secs(30));
    ctl.report(&report());
    std::process::exit(0);
}

/// Counts what a receiver gets and times the window from the first data
/// message to the end marker.
#[derive(Debug, Default)]
pub(crate) struct Meter {
    warm: bool,
    first: Option<Stopwatch>,
    count: u64,
    bytes: u64,
    /// Done after this many data messages (by hand: `--count`).
    limit: Option<u64>,
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
    /// A meter that is done after `limit` data messages, or at the end marker.
    pub(crate) fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            ..Self::default()
        }
    }

    /// Accounts one message whose last frame has `last_len` bytes.
    pub(crate) fn on_message(&mut self, last_len: usize) -> Flow {
        match classify(last_len) {
            Kind::Data => {
                if self.first.is_none() {
                    self.first = Some(Stopwatch::start());
                }
                self.count += 1;
                self.bytes += last_len as u64;
                if self.limit == Some(self.count) {
                    Flow::Done
                } else {
                    Flow::More
                }
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
            elapsed_s: self.first.map_or(0.0, |f| f.secs()),
            cpu_s: self.first.map(|f| f.cpu_secs()),
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

    /// A sender's budget: `count` messages if given (and `secs` if given
    /// too, whichever ends first), else `secs` capped at `max_bytes`.
    pub(crate) fn of(a: &crate::RoleArgs) -> Self {
        match a.count {
            Some(n) => Self {
                secs: a.secs,
                max_msgs: n,
            },
            None => Self::new(a.secs, a.size, a.max_bytes),
        }
    }

    /// True when a sender that started at `start` and sent `sent` is done.
    pub(crate) fn done(&self, start: Instant, sent: u64) -> bool {
        sent >= self.max_msgs || start.elapsed().as_secs_f64() >= self.secs
    }
}

/// A sender's report: what it sent, for how long, at what CPU cost.
pub(crate) fn sender_report(sent: u64, size: usize, elapsed_s: f64) -> Report {
    Report {
        count: sent,
        bytes: sent * size as u64,
        elapsed_s,
        ..Report::default()
    }
}

/// [`sender_report`] timed by `clock` (wall and CPU since it started).
pub(crate) fn timed_report(sent: u64, size: usize, clock: &Stopwatch) -> Report {
    Report {
        cpu_s: Some(clock.cpu_secs()),
        ..sender_report(sent, size, clock.secs())
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
    pub(crate) fn start(size: usize, budget: Budget) -> Self {
        Self {
            payload: vec![b'x'; size],
            budget,
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
    fn a_meter_with_a_limit_ends_at_it() {
        let mut m = Meter::new(Some(2));
        assert_eq!(m.on_message(16), Flow::More);
        assert_eq!(m.on_message(16), Flow::Done);
        assert!(m.report().cpu_s.is_some());
    }

    #[test]
    fn summary_line_reads_well() {
        let r = Report {
            count: 1_000_000,
            bytes: 16_000_000,
            elapsed_s: 0.5,
            cpu_s: Some(0.4),
            ..Report::default()
        };
        assert_eq!(
            summary("recv libzmq pubsub 16 B", &r),
            "recv libzmq pubsub 16 B: 1000000 msgs in 0.500 s = 2.00M msgs/s, 32.0 MB/s, CPU 0.40 us/msg (80 % of a core)"
        );
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
