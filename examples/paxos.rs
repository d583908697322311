//! The Paxos demo: a Multi-Paxos replicated key-value store with 5
//! acceptors, 2 leaders, 2 acceptors failed from the start and 1000
//! proposals, over real ZeroMQ sockets on loopback
//! (or, with `--sim SEED`, on the deterministic simulator). Prints whether
//! all learners' histories agree (identical, complete, in order), the time
//! taken and commits/s; exits non-zero if they do not agree.
//!
//! ```sh
//! cargo run --release --example paxos
//! cargo run --release --example paxos -- --clients 64 --proposals 100000
//! cargo run --release --example paxos -- --kill-leader-after 500
//! cargo run --release --example paxos -- --sim 42
//! ```

#[path = "common/mod.rs"]
mod common;
#[path = "paxos_demo/mod.rs"]
mod demo;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use demo::{run_sim, run_zmq, DemoConfig, DemoReport, Storage};
use tokio_util::sync::CancellationToken;

/// Multi-Paxos replicated key-value store: the demo scenario.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Acceptors.
    #[arg(long, default_value_t = 5)]
    acceptors: u32,
    /// Leaders (proposers; they are learners too).
    #[arg(long, default_value_t = 2)]
    leaders: u32,
    /// Acceptors failed from the start.
    #[arg(long, default_value_t = 2)]
    fail: u32,
    /// Proposals to commit.
    #[arg(long, default_value_t = 1000)]
    proposals: usize,
    /// Client sessions proposing concurrently (the leader batches them).
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Kill the leader once this many proposals are acknowledged.
    #[arg(long)]
    kill_leader_after: Option<usize>,
    /// Run on the deterministic simulator with this seed instead of ZeroMQ.
    #[arg(long, value_name = "SEED")]
    sim: Option<u64>,
    /// Directory for the acceptors' fsynced WALs (default: a fresh
    /// temporary directory).
    #[arg(long, conflicts_with = "no_wal")]
    wal_dir: Option<PathBuf>,
    /// Keep acceptor state in memory only (no fsync).
    #[arg(long)]
    no_wal: bool,
}

fn check(args: &Args) -> anyhow::Result<()> {
    if args.acceptors == 0 || args.leaders == 0 || args.proposals == 0 || args.clients == 0 {
        bail!("--acceptors, --leaders, --proposals and --clients must be at least 1");
    }
    let quorum = args.acceptors / 2 + 1;
    if args.acceptors.saturating_sub(args.fail) < quorum {
        bail!(
            "--fail {} leaves {} of {} acceptors: no majority of {quorum}, nothing could ever commit",
            args.fail,
            args.acceptors.saturating_sub(args.fail),
            args.acceptors
        );
    }
    if args.kill_leader_after.is_some() && args.leaders < 2 {
        bail!("--kill-leader-after needs at least 2 leaders");
    }
    Ok(())
}

fn storage(args: &Args) -> anyhow::Result<Storage> {
    if args.no_wal || args.sim.is_some() {
        return Ok(Storage::Memory);
    }
    let dir = match &args.wal_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("zpatterns-paxos-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Storage::Files(dir))
}

fn print_times(r: &DemoReport, clock: &str) {
    println!(
        "{clock}: {:.3} s, {:.0} commits/s, latency p50 {:.2} ms, p99 {:.2} ms",
        r.elapsed.as_secs_f64(),
        r.commits_per_sec(),
        r.latency(0.5).as_secs_f64() * 1e3,
        r.latency(0.99).as_secs_f64() * 1e3,
    );
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    check(&args)?;
    let storage = storage(&args)?;
    let cfg = DemoConfig {
        acceptors: args.acceptors,
        leaders: args.leaders,
        failed: args.fail,
        proposals: args.proposals,
        sessions: args.clients,
        kill_leader_after: args.kill_leader_after,
        storage: storage.clone(),
    };
    let how = match args.sim {
        Some(seed) => format!("on the simulator, seed {seed}"),
        None => match &storage {
            Storage::Files(d) => {
                format!("over ZeroMQ on 127.0.0.1, fsynced WALs in {}", d.display())
            }
            _ => "over ZeroMQ on 127.0.0.1, acceptor state in memory".to_owned(),
        },
    };
    println!(
        "Paxos: {} acceptors ({} failed), {} leaders, {} proposals from {} client session(s), {how}",
        args.acceptors, args.fail, args.leaders, args.proposals, args.clients
    );
    let wall = Instant::now();
    let report = match args.sim {
        Some(seed) => run_sim(&cfg, seed, Duration::from_secs(3600)),
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                let on_ctrl_c = shutdown.clone();
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    on_ctrl_c.cancel();
                });
                run_zmq(&cfg, &shutdown).await
            })?
        }
    };
    print!("{report}");
    if args.sim.is_some() {
        print_times(&report, "virtual time");
        println!("(wall clock: {:.3} s)", wall.elapsed().as_secs_f64());
    } else {
        print_times(&report, "wall clock");
    }
    if let (Storage::Files(dir), None) = (&storage, &args.wal_dir) {
        let _ = std::fs::remove_dir_all(dir);
    }
    if report.agree() {
        println!("result: all live learners agree");
        Ok(())
    } else {
        bail!("the learners' histories do NOT agree")
    }
}
