//! Tour section: Multi-Paxos over ZeroMQ on loopback, with a leader killed
//! halfway, then every learner's history compared.

#[allow(dead_code, unused_imports)] // the tour runs the ZeroMQ scenario only
#[path = "../paxos_demo/mod.rs"]
mod demo;

use demo::{run_zmq, DemoConfig, Storage};
use tokio_util::sync::CancellationToken;

pub(crate) fn run() -> anyhow::Result<()> {
    let cfg = DemoConfig {
        acceptors: 5,
        leaders: 2,
        failed: 1,
        proposals: 400,
        sessions: 8,
        kill_leader_after: Some(200),
        storage: Storage::Memory,
    };
    println!(
        "   {} acceptors (1 failed from the start), {} leaders, {} proposals from {} sessions; the leader is killed after {}",
        cfg.acceptors, cfg.leaders, cfg.proposals, cfg.sessions, 200
    );
    let report = crate::block_on(run_zmq(&cfg, &CancellationToken::new()))??;
    print!("{report}");
    println!(
        "   {:.0} commits/s, latency p50 {:.2} ms, p99 {:.2} ms (including the failover)",
        report.commits_per_sec(),
        report.latency(0.5).as_secs_f64() * 1e3,
        report.latency(0.99).as_secs_f64() * 1e3
    );
    anyhow::ensure!(report.agree(), "the learners' histories do not agree");
    Ok(())
}
