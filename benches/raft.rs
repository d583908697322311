//! Raft beside Multi-Paxos in the same run: commits/s, latency percentiles
//! (hdrhistogram) and CPU per commit, with 1 client session and with 64
//! (batching, group commit of the WAL), over ZeroMQ on loopback (fsynced
//! `FileWal`s) and on the simulator (virtual time; its CPU figure is the
//! whole cluster's protocol, codec and simulated network on one thread).
//!
//! Both stores run the same workload shape from their demo runners
//! (`examples/paxos_demo`, `examples/raft_demo`): 3 replicas (Paxos: 3
//! acceptors and 1 leader; Raft: 3 voters), no failures, every operation a
//! write. `cargo bench --bench raft`; `RAFT_BENCH_OPS=N` scales the
//! 64-session runs (default 20 000; the 1-session runs do a tenth).

#[allow(dead_code, unused_imports)] // the bench runs the plain scenarios only
#[path = "../examples/paxos_demo/mod.rs"]
mod paxos_demo;
#[allow(dead_code, unused_imports)]
#[path = "../examples/raft_demo/mod.rs"]
mod raft_demo;

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// One measured run.
struct Row {
    store: &'static str,
    net: &'static str,
    sessions: usize,
    ops: usize,
    commits_per_sec: f64,
    latencies: Vec<Duration>,
    cpu_us_per_commit: f64,
}

/// User + system CPU seconds of this process so far (Linux
/// `/proc/self/stat`, in clock ticks of 1/100 s); `None` elsewhere.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(fut)
}

fn paxos(net: &'static str, sessions: usize, ops: usize, dir: &Path) -> Row {
    use paxos_demo::{DemoConfig, Storage};
    let cfg = DemoConfig {
        acceptors: 3,
        leaders: 1,
        failed: 0,
        proposals: ops,
        sessions,
        kill_leader_after: None,
        // A fresh directory per run: a WAL left by an earlier run would be
        // replayed.
        storage: if net == "sim" {
            Storage::Memory
        } else {
            Storage::Files(dir.join(format!("paxos-{sessions}")))
        },
    };
    if let Storage::Files(d) = &cfg.storage {
        std::fs::create_dir_all(d).expect("a WAL directory");
    }
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let r = if net == "sim" {
        paxos_demo::run_sim(&cfg, 1, Duration::from_secs(3600))
    } else {
        block_on(paxos_demo::run_zmq(&cfg, &CancellationToken::new())).expect("the Paxos run")
    };
    let cpu = used(cpu, wall, net);
    assert!(
        r.agree(),
        "Paxos {net} {sessions}: the learners disagree\n{r}"
    );
    Row {
        store: "Multi-Paxos",
        net,
        sessions,
        ops,
        commits_per_sec: r.commits_per_sec(),
        cpu_us_per_commit: cpu * 1e6 / r.completed.max(1) as f64,
        latencies: r.latencies,
    }
}

fn raft(net: &'static str, sessions: usize, ops: usize, dir: &Path) -> Row {
    use raft_demo::{DemoConfig, Storage};
    let cfg = DemoConfig {
        nodes: 3,
        ops,
        sessions,
        snapshot_every: 1000,
        kill_leader: false,
        hold_back: false,
        // A fresh directory per run: a WAL left by an earlier run would be
        // replayed.
        storage: if net == "sim" {
            Storage::Memory
        } else {
            Storage::Files(dir.join(format!("raft-{sessions}")))
        },
    };
    if let Storage::Files(d) = &cfg.storage {
        std::fs::create_dir_all(d).expect("a WAL directory");
    }
    let (cpu, wall) = (cpu_seconds(), Instant::now());
    let r = if net == "sim" {
        raft_demo::run_sim(&cfg, 1, Duration::from_secs(3600))
    } else {
        block_on(raft_demo::run_zmq(&cfg, &CancellationToken::new())).expect("the Raft run")
    };
    let cpu = used(cpu, wall, net);
    assert!(r.agree(), "Raft {net} {sessions}: the nodes disagree\n{r}");
    Row {
        store: "Raft",
        net,
        sessions,
        ops,
        commits_per_sec: r.commits_per_sec(),
        cpu_us_per_commit: cpu * 1e6 / r.completed.max(1) as f64,
        latencies: r.latencies,
    }
}

/// CPU seconds since `cpu` (the simulator is one thread doing nothing but
/// the run: its wall time is its CPU time).
fn used(cpu: Option<f64>, wall: Instant, net: &str) -> f64 {
    match (net, cpu, cpu_seconds()) {
        ("sim", _, _) | (_, None, _) | (_, _, None) => wall.elapsed().as_secs_f64(),
        (_, Some(a), Some(b)) => b - a,
    }
}

fn print(row: &Row) {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    for l in &row.latencies {
        let _ = h.record((l.as_micros() as u64).max(1));
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
    println!(
        "| {:11} | {:6} | {:3} | {:6} | {:9.0} | {:7.2} | {:7.2} | {:7.2} | {:6.1} |",
        row.store,
        row.net,
        row.sessions,
        row.ops,
        row.commits_per_sec,
        ms(0.5),
        ms(0.99),
        ms(0.999),
        row.cpu_us_per_commit
    );
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe a filter); this harness
    // runs everything.
    let many: usize = std::env::var("RAFT_BENCH_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let dir = std::env::temp_dir().join(format!("zpatterns-bench-raft-{}", std::process::id()));
    println!("3 replicas, writes only; ZeroMQ on 127.0.0.1 with fsynced WALs, sim on LAN-like links (0.5-2 ms, virtual time)");
    println!("| store       | net    | ses | ops    | commits/s | p50 ms  | p99 ms  | p99.9ms | CPU us/commit |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for net in ["zeromq", "sim"] {
        for sessions in [1usize, 64] {
            let ops = if sessions == 1 { many / 10 } else { many }.max(100);
            print(&paxos(net, sessions, ops, &dir));
            print(&raft(net, sessions, ops, &dir));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
