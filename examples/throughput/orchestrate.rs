//! The orchestrator side: spawns this binary as receiver, sender and proxy
//! processes, steers them through one run over their stdin/stdout, kills
//! them on timeout, and turns their reports into a [`Row`].
//!
//! ```text
//!  [proxy]    READY <front> <back>                 (proxied patterns only)
//!  receiver   READY <ep>          binds, or connects to <back>
//!  sender     connects to <ep> or <front>, sends warm-ups
//!  receiver   WARM                first warm-up arrived: the path is up
//!  all        <- GO               sender measures for --secs
//!  receiver   RESULT {..}         end marker arrived
//!  all        <- STOP             sender and proxy report, everyone exits
//! ```

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cases::{Case, Mode, Topology};
use crate::machine::{self, Sample};
use crate::proto::Report;
use crate::report::Row;
use crate::Runtime;

/// How every run is made.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) secs: f64,
    pub(crate) rt: Runtime,
    pub(crate) yield_every: u64,
    pub(crate) max_mb: u64,
    /// Wait for, and insist on, a machine where other programs use less
    /// than this percentage of one core.
    pub(crate) guard: Option<f64>,
}

/// One child process and its protocol lines.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[String]) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("cannot find my own executable")?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawning the {name}"))?;
        let (tx, lines) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().expect("piped"));
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        let tail = stderr.clone();
        let err = BufReader::new(child.stderr.take().expect("piped"));
        std::thread::spawn(move || {
            for line in err.lines().map_while(Result::ok) {
                let mut t = tail.lock().unwrap();
                if t.len() == 5 {
                    t.pop_front();
                }
                t.push_back(line);
            }
        });
        Ok(Proc {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        })
    }

    /// The rest of the next line starting with `tag`, waiting until `deadline`.
    fn expect(&mut self, tag: &str, deadline: Instant) -> anyhow::Result<String> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(tag) {
                        return Ok(rest.trim().to_owned());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!("{}: no {tag} in time{}", self.name, self.stderr_tail())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    // Give the stderr reader a moment to collect the reason.
                    std::thread::sleep(Duration::from_millis(50));
                    bail!("{}: exited before {tag}{}", self.name, self.stderr_tail())
                }
            }
        }
    }

    fn result(&mut self, deadline: Instant) -> anyhow::Result<Report> {
        let json = self.expect("RESULT", deadline)?;
        serde_json::from_str(&json).with_context(|| format!("{}: bad RESULT {json}", self.name))
    }

    fn tell(&mut self, line: &str) {
        if let Some(stdin) = &mut self.stdin {
            // A child that already exited cannot be told anything; fine.
            let _ = writeln!(stdin, "{line}").and_then(|()| stdin.flush());
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr_tail(&self) -> String {
        let t = self.stderr.lock().unwrap();
        if t.is_empty() {
            String::new()
        } else {
            format!(
                " (stderr: {})",
                t.iter().cloned().collect::<Vec<_>>().join(" | ")
            )
        }
    }
}

impl Drop for Proc {
    /// Closes stdin (the child exits soon after), waits briefly, kills if
    /// it is still there.
    fn drop(&mut self) {
        self.stdin.take();
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn role_args(role: &str, case: &Case, s: &Settings, connect: Option<&str>) -> Vec<String> {
    // Sender and receiver run the peers' stack, the proxy the middle's.
    let imp = if role == "proxy" {
        case.imp
    } else {
        case.peers
    };
    let mut a: Vec<String> = [
        "--orchestrated",
        "--role",
        role,
        "--impl",
        imp.name(),
        "--pattern",
        case.pattern.name(),
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    a.extend([
        "--size".into(),
        case.size.to_string(),
        "--secs".into(),
        s.secs.to_string(),
        "--rt".into(),
        s.rt.name().into(),
        "--yield-every".into(),
        s.yield_every.to_string(),
        "--max-mb".into(),
        s.max_mb.to_string(),
        // Every child ends by itself, whatever happens to us; lossless
        // runs drain the publisher's queue after it stopped sending.
        "--deadline".into(),
        (s.secs * 10.0 + 60.0).to_string(),
    ]);
    if case.mode == Mode::Lossy {
        a.push("--lossy".into());
    }
    if let Some(ep) = connect {
        a.extend(["--connect".into(), ep.to_owned()]);
    }
    a
}

/// Makes one run (with `--guard`: on a quiet machine, retried up to twice
/// when other programs got busy during it, keeping the quietest attempt).
pub(crate) fn run_case(case: &Case, s: &Settings) -> Row {
    let Some(limit) = s.guard else {
        return attempt(case, s);
    };
    let mut best: Option<Row> = None;
    for _ in 0..3 {
        if !machine::wait_quiet(limit, Duration::from_secs(30)) {
            eprint!("(not quiet after 30 s) ");
        }
        let row = attempt(case, s);
        let others = row.other_cpu_pct.unwrap_or(0.0);
        let noisy = others > limit;
        let better = match &best {
            None => true,
            Some(b) => !b.ok() || (row.ok() && row.other_cpu_pct < b.other_cpu_pct),
        };
        if better {
            best = Some(row);
        }
        if !noisy && best.as_ref().is_some_and(Row::ok) {
            break;
        }
        eprint!("(others used {others:.0}%, again) ");
    }
    best.expect("at least one attempt")
}

/// Makes one run; a failure becomes a row whose status says why.
fn attempt(case: &Case, s: &Settings) -> Row {
    match try_case(case, s) {
        Ok(row) => row,
        Err(e) => Row {
            imp: case.imp.name().into(),
            peers: case.peers.name().into(),
            mode: case.mode.name().into(),
            pattern: case.pattern.name().into(),
            size: case.size,
            status: format!("failed: {e:#}"),
            ..Row::default()
        },
    }
}

fn try_case(case: &Case, s: &Settings) -> anyhow::Result<Row> {
    let soon = || Instant::now() + Duration::from_secs(15);
    let mut proxy = None;
    let mut front = None;
    let mut back = None;
    if case.pattern.topology() == Topology::Proxied {
        let mut p = Proc::spawn("proxy", &role_args("proxy", case, s, None))?;
        let eps = p.expect("READY", soon())?;
        let (f, b) = eps
            .split_once(' ')
            .context("proxy READY needs two endpoints")?;
        (front, back) = (Some(f.to_owned()), Some(b.to_owned()));
        proxy = Some(p);
    }
    let mut recv = Proc::spawn("receiver", &role_args("recv", case, s, back.as_deref()))?;
    let ep = recv.expect("READY", soon())?;
    let target = front.unwrap_or(ep);
    let mut send = Proc::spawn("sender", &role_args("send", case, s, Some(&target)))?;
    recv.expect("WARM", soon())?;
    let mut pids = vec![send.pid(), recv.pid()];
    pids.extend(proxy.as_ref().map(Proc::pid));
    let before = Sample::take(&pids);
    if let Some(p) = &mut proxy {
        p.tell("GO");
    }
    send.tell("GO");
    // Lossless libzmq publishers (HWM 0) queue what the path cannot take
    // yet: the receiver drains it after the sender stopped.
    let drain = Duration::from_secs_f64(s.secs * 10.0 + 30.0);
    let r = recv.result(Instant::now() + drain)?;
    let after = Sample::take(&pids);
    let cpu = Cpu {
        each: after.cpu_pct_since(&before),
        others: after.others_pct_since(&before),
        secs: after.secs_since(&before),
        rss: pids.iter().map(|&p| machine::peak_rss_mb(p)).collect(),
    };
    for p in [Some(&mut send), Some(&mut recv), proxy.as_mut()]
        .into_iter()
        .flatten()
    {
        p.tell("STOP");
    }
    let snd = send.result(soon())?;
    let prx = match &mut proxy {
        Some(p) => Some(p.result(soon())?),
        None => None,
    };
    Ok(row(case, &r, &snd, prx.as_ref(), &cpu))
}

/// CPU over the run (GO to the receiver's end marker), 100 = one core:
/// `each` is sender, receiver, [proxy,] orchestrator.
struct Cpu {
    each: Vec<f64>,
    others: f64,
    secs: f64,
    /// Peak RSS in MB of sender, receiver, [proxy] at the end marker.
    rss: Vec<Option<f64>>,
}

impl Cpu {
    /// CPU microseconds per message of process `i`: a cost that other
    /// programs' load hardly changes, unlike msgs/s.
    fn us_per(&self, i: usize, msgs: u64) -> Option<f64> {
        let pct = self.each.get(i)?;
        (msgs > 0).then(|| pct / 100.0 * self.secs / msgs as f64 * 1e6)
    }
}

/// The row from the three reports.
fn row(case: &Case, recv: &Report, send: &Report, proxy: Option<&Report>, cpu: &Cpu) -> Row {
    let measured = if case.pattern.sender_measures() {
        send
    } else {
        recv
    };
    let per_s = |x: u64| {
        if measured.elapsed_s > 0.0 {
            x as f64 / measured.elapsed_s
        } else {
            0.0
        }
    };
    let status = if measured.count == 0 {
        "failed: no data arrived".to_owned()
    } else {
        "ok".to_owned()
    };
    Row {
        imp: case.imp.name().into(),
        peers: case.peers.name().into(),
        mode: case.mode.name().into(),
        pattern: case.pattern.name().into(),
        size: case.size,
        msgs_per_s: per_s(measured.count),
        mb_per_s: per_s(measured.bytes) / 1e6,
        sent: send.count,
        received: recv.count,
        delivered_pct: (!case.pattern.sender_measures() && send.count > 0)
            .then(|| 100.0 * recv.count as f64 / send.count as f64),
        elapsed_s: measured.elapsed_s,
        p50_us: send.p50_us,
        p99_us: send.p99_us,
        p999_us: send.p999_us,
        cpu_send_pct: cpu.each.first().copied(),
        cpu_recv_pct: cpu.each.get(1).copied(),
        cpu_proxy_pct: proxy.and(cpu.each.get(2).copied()),
        other_cpu_pct: Some(cpu.others),
        cpu_send_us: cpu.us_per(0, measured.count),
        cpu_recv_us: cpu.us_per(1, measured.count),
        cpu_proxy_us: proxy.and(cpu.us_per(2, measured.count)),
        rss_send_mb: cpu.rss.first().copied().flatten(),
        rss_recv_mb: cpu.rss.get(1).copied().flatten(),
        rss_proxy_mb: proxy.and(cpu.rss.get(2).copied().flatten()),
        captured: proxy.and_then(|p| p.captured),
        capture_drops: proxy.and_then(|p| p.capture_drops),
        proxy_drops: proxy.and_then(|p| p.proxy_drops),
        proxy_blocks: proxy.and_then(|p| p.proxy_blocks),
        ratio: None,
        vs_direct: None,
        proxy_cpu_vs_zmq_proxy: None,
        runs: vec![],
        status,
    }
}
