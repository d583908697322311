//! The Raft demo: a replicated key-value store on `zpatterns::raft`.
//!
//! With no subcommand, a self-contained scenario over real ZeroMQ sockets
//! on loopback (or, with `--sim SEED`, on the deterministic simulator): 5
//! nodes with fsynced WALs, a client writing from 8 sessions, the leader
//! killed and restarted from its WAL, a follower held back until the
//! leader has compacted its log past it (so it is caught up by
//! InstallSnapshot). Prints whether all state machines agree, the time
//! taken and commits/s; exits non-zero if they do not agree.
//!
//! With a subcommand, a real multi-process cluster from a JSON
//! configuration file:
//!
//! ```sh
//! cargo run --release --example raft
//! cargo run --release --example raft -- --sim 42
//! cargo run --example raft -- config --nodes 3 --base-port 7100 > raft.json
//! cargo run --example raft -- serve --config raft.json --node 1   # and 2, 3
//! cargo run --example raft -- put --config raft.json greeting hello
//! cargo run --example raft -- get --config raft.json greeting
//! cargo run --example raft -- status --config raft.json
//! ```

#[path = "raft_demo/cli.rs"]
mod cli;
#[path = "raft_demo/cluster.rs"]
mod cluster;
#[path = "common/mod.rs"]
mod common;
#[path = "raft_demo/mod.rs"]
mod demo;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use cluster::{Cluster, ClusterFile};
use demo::{run_sim, run_zmq, DemoConfig, DemoReport, Storage};
use tokio_util::sync::CancellationToken;
use zpatterns::paxos::Op;

/// Raft replicated key-value store: the demo scenario, or a cluster.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    scenario: Scenario,
}

/// The self-contained scenario (no subcommand).
#[derive(clap::Args, Debug)]
struct Scenario {
    /// Raft nodes (at least 5: the leader and a follower are down at once).
    #[arg(long, default_value_t = 5)]
    nodes: u32,
    /// Client operations (puts, and every tenth a delete).
    #[arg(long, default_value_t = 2000)]
    ops: usize,
    /// Client sessions writing concurrently (the leader batches them).
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Snapshot the state machine every this many log entries.
    #[arg(long, default_value_t = 50)]
    snapshot_every: u64,
    /// Run on the deterministic simulator with this seed instead of ZeroMQ.
    #[arg(long, value_name = "SEED")]
    sim: Option<u64>,
    /// Directory for the nodes' fsynced WALs (default: a fresh temporary
    /// directory, removed afterwards).
    #[arg(long)]
    wal_dir: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print a valid configuration for N nodes on this machine.
    Config {
        /// Nodes (ids 1..=N).
        #[arg(long)]
        nodes: u16,
        /// Port of node 1; node i listens on base-port + i - 1.
        #[arg(long)]
        base_port: u16,
        /// Directory of the nodes' WALs.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Address every node listens on and is reached at.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
    },
    /// Run one node of the cluster until Ctrl-C.
    Serve {
        /// The cluster's JSON configuration (see `raft config`).
        #[arg(long)]
        config: PathBuf,
        /// This node's id in the configuration.
        #[arg(long)]
        node: u64,
    },
    /// Write KEY = VALUE through the leader.
    Put {
        /// The cluster's JSON configuration (see `raft config`).
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
        /// The value.
        value: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Read KEY (linearizable).
    Get {
        /// The cluster's JSON configuration (see `raft config`).
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Delete KEY.
    Delete {
        /// The cluster's JSON configuration (see `raft config`).
        #[arg(long)]
        config: PathBuf,
        /// The key.
        key: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Every node's role, term, commit and applied index, leader, log and
    /// snapshot sizes (the diary's `getinfo`).
    Status {
        /// The cluster's JSON configuration (see `raft config`).
        #[arg(long)]
        config: PathBuf,
        /// Seconds to wait for the nodes' answers.
        #[arg(long, default_value_t = 2.0)]
        timeout: f64,
    },
}

#[derive(clap::Args, Debug)]
struct Wait {
    /// Seconds to wait for a leader's answer.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
}

fn seconds(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("--timeout {s}: give a positive number of seconds"))
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

fn scenario(args: &Scenario) -> anyhow::Result<()> {
    if args.nodes < 5 {
        bail!("--nodes {}: the scenario needs at least 5 nodes (the leader and a follower are down at the same time, and a majority must remain)", args.nodes);
    }
    if args.ops < 10 || args.clients == 0 {
        bail!("--ops must be at least 10 and --clients at least 1");
    }
    let (storage, temp) = match (&args.wal_dir, args.sim) {
        (_, Some(_)) => (Storage::Memory, None),
        (Some(d), None) => (Storage::Files(d.clone()), None),
        (None, None) => {
            let d = std::env::temp_dir().join(format!("zpatterns-raft-{}", std::process::id()));
            (Storage::Files(d.clone()), Some(d))
        }
    };
    if let Storage::Files(d) = &storage {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let cfg = DemoConfig {
        nodes: args.nodes,
        ops: args.ops,
        sessions: args.clients,
        snapshot_every: args.snapshot_every,
        kill_leader: true,
        hold_back: true,
        storage: storage.clone(),
    };
    let how = match (args.sim, &storage) {
        (Some(seed), _) => format!("on the simulator, seed {seed}, simulated disks"),
        (None, Storage::Files(d)) => {
            format!("over ZeroMQ on 127.0.0.1, fsynced WALs in {}", d.display())
        }
        (None, _) => "over ZeroMQ on 127.0.0.1".to_owned(),
    };
    println!(
        "Raft: {} nodes, {} operations from {} client session(s), a snapshot every {} entries, {how}",
        cfg.nodes, cfg.ops, cfg.sessions, cfg.snapshot_every
    );
    println!("   the leader is killed at 30 % and restarted from its WAL at 50 %; a follower is stopped at 10 % and restarted once the leader's log no longer has its next entry");
    let wall = Instant::now();
    let report = match args.sim {
        Some(seed) => run_sim(&cfg, seed, Duration::from_secs(3600)),
        None => {
            let shutdown = CancellationToken::new();
            cli::block_on(&shutdown, run_zmq(&cfg, &shutdown))??
        }
    };
    print!("{report}");
    if args.sim.is_some() {
        print_times(&report, "virtual time");
        println!("(wall clock: {:.3} s)", wall.elapsed().as_secs_f64());
    } else {
        print_times(&report, "wall clock");
    }
    if let Some(d) = temp {
        let _ = std::fs::remove_dir_all(d);
    }
    if !report.agree() {
        bail!("the state machines do NOT agree");
    }
    if cfg.snapshot_every > 0 && !report.snapshot_catch_up() {
        bail!("the state machines agree, but the held-back follower was not caught up by InstallSnapshot");
    }
    println!("result: all state machines agree");
    Ok(())
}

fn config(nodes: u16, base_port: u16, dir: Option<PathBuf>, host: &str) -> anyhow::Result<()> {
    if nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    if base_port == 0 || u32::from(base_port) + u32::from(nodes) - 1 > 65535 {
        bail!(
            "--base-port {base_port} with {nodes} nodes needs ports {base_port}..{}: give a base port from 1 to {}",
            u32::from(base_port) + u32::from(nodes) - 1,
            65536 - u32::from(nodes)
        );
    }
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join("zpatterns-raft"));
    let file = ClusterFile::generate(nodes, base_port, host, &dir);
    // What we print must be accepted.
    Cluster::check(file.clone())?;
    println!("{}", serde_json::to_string_pretty(&file)?);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(cmd) = args.cmd else {
        common::init_logging("warn");
        return scenario(&args.scenario);
    };
    common::init_logging(if matches!(cmd, Cmd::Serve { .. }) {
        "info"
    } else {
        "warn"
    });
    let stop = CancellationToken::new();
    let op = |config: &PathBuf, op: Op, wait: &Wait| -> anyhow::Result<()> {
        let cluster = Cluster::load(config)?;
        let limit = seconds(wait.timeout)?;
        let outcome = cli::block_on(&stop, cli::request(&cluster, op, limit, &stop))??;
        println!("{}", cli::show(&outcome));
        Ok(())
    };
    let key = |k: &str| Bytes::from(k.to_owned());
    match &cmd {
        Cmd::Config {
            nodes,
            base_port,
            dir,
            host,
        } => config(*nodes, *base_port, dir.clone(), host),
        Cmd::Serve { config, node } => {
            let cluster = Cluster::load(config)?;
            cluster
                .node(*node)
                .with_context(|| format!("--node {node} in {}", config.display()))?;
            cli::block_on(&stop, cli::serve(&cluster, *node, &stop))?
        }
        Cmd::Put {
            config,
            key: k,
            value,
            wait,
        } => op(
            config,
            Op::Put {
                key: key(k),
                value: Bytes::from(value.clone()),
            },
            wait,
        ),
        Cmd::Get {
            config,
            key: k,
            wait,
        } => op(config, Op::Get { key: key(k) }, wait),
        Cmd::Delete {
            config,
            key: k,
            wait,
        } => op(config, Op::Delete { key: key(k) }, wait),
        Cmd::Status { config, timeout } => {
            let cluster = Cluster::load(config)?;
            let limit = seconds(*timeout)?;
            cli::block_on(&stop, cli::status(&cluster, limit, &stop))?
        }
    }
}
