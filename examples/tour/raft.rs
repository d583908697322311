//! Tour section: Raft over ZeroMQ on loopback: the leader killed and
//! restarted from its WAL, a follower held back until it can only catch up
//! through InstallSnapshot, then every node's state machine compared.

#[allow(dead_code, unused_imports)] // the tour runs the ZeroMQ scenario only
#[path = "../raft_demo/mod.rs"]
mod demo;

use demo::{run_zmq, DemoConfig, Storage};
use tokio_util::sync::CancellationToken;

pub(crate) fn run() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("zpatterns-tour-raft-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cfg = DemoConfig {
        nodes: 5,
        ops: 1000,
        sessions: 8,
        snapshot_every: 40,
        kill_leader: true,
        hold_back: true,
        storage: Storage::Files(dir.clone()),
    };
    println!(
        "   {} nodes with fsynced WALs, {} operations from {} sessions, a snapshot every {} entries;",
        cfg.nodes, cfg.ops, cfg.sessions, cfg.snapshot_every
    );
    println!("   the leader is killed at 30 % and restarted at 50 %; a follower is stopped at 10 % and comes back behind the leader's snapshot");
    let report = crate::block_on(run_zmq(&cfg, &CancellationToken::new()));
    let _ = std::fs::remove_dir_all(&dir);
    let report = report??;
    print!("{report}");
    println!(
        "   {:.0} commits/s, latency p50 {:.2} ms, p99 {:.2} ms (including the failover)",
        report.commits_per_sec(),
        report.latency(0.5).as_secs_f64() * 1e3,
        report.latency(0.99).as_secs_f64() * 1e3
    );
    anyhow::ensure!(report.agree(), "the state machines do not agree");
    anyhow::ensure!(
        report.snapshot_catch_up(),
        "the held-back follower was not caught up by a snapshot"
    );
    Ok(())
}
