//! `clone_failover`: measures the Clone pair (Guide ch. 5, model 6) on
//! loopback and prints the numbers (run with `--release`).
//!
//! - failover: `--runs` times, a fresh pair with writer clients; the primary
//!   is killed mid-stream; prints the time from the kill to the backup's
//!   promotion, to the first update it accepted, and to every client active
//!   on it (min / median / p90 / max), and the acknowledged updates lost
//!   (must be 0) and re-sent;
//! - throughput: one writer client sets `--updates` keys as fast as it can,
//!   through a single server and through a settled pair (whose passive keeps
//!   the pending list), timed until every update is acknowledged.
//!
//! ```sh
//! cargo run --release --example clone_failover -- --runs 20      # the Guide's timers
//! cargo run --release --example clone_failover -- --heartbeat-ms 200 --server-ttl-ms 1000
//! ```

#[path = "common/mod.rs"]
mod common;
#[path = "common/failover.rs"]
mod failover;

use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zpatterns::clone::{CloneClient, CloneServer, CloneServerConfig, ServerAddr, StoreConfig};

use failover::{client_config, failover_once, settled_pair, wait, Timers};

/// Clone pair failover and throughput measurement.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Failovers to measure (0 = none).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Writer clients during a failover run.
    #[arg(long, default_value_t = 3)]
    writers: usize,
    /// Milliseconds between one writer's sets.
    #[arg(long, default_value_t = 10)]
    every_ms: u64,
    /// Binary Star heartbeat and HUGZ period in ms (Guide: 1000).
    #[arg(long, default_value_t = 1000)]
    heartbeat_ms: u64,
    /// The clients' server ttl in ms (Guide: 5000).
    #[arg(long, default_value_t = 5000)]
    server_ttl_ms: u64,
    /// Updates for the throughput comparison (0 = skip it).
    #[arg(long, default_value_t = 50_000)]
    updates: u64,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let timers = Timers {
        heartbeat: Duration::from_millis(args.heartbeat_ms.max(1)),
        server_ttl: Duration::from_millis(args.server_ttl_ms.max(1)),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if args.runs > 0 {
            failovers(&args, timers).await?;
        }
        if args.updates > 0 {
            throughput(args.updates, timers).await?;
        }
        Ok(())
    })
}

async fn failovers(args: &Args, timers: Timers) -> anyhow::Result<()> {
    println!(
        "failover: {} runs, {} writers (one set per {} ms each), heartbeat {:?}, client server ttl {:?}",
        args.runs, args.writers, args.every_ms, timers.heartbeat, timers.server_ttl
    );
    let (mut promoted, mut first, mut moved) = (Vec::new(), Vec::new(), Vec::new());
    let (mut lost, mut resent, mut dups, mut sent, mut diverged) = (0, 0, 0, 0, 0);
    for run in 0..args.runs {
        let every = Duration::from_millis(args.every_ms.max(1));
        let o = failover_once(timers, args.writers, every, (50, 50)).await?;
        println!(
            "  run {run:2}: promoted {:7.3} s, first update {:7.3} s, all clients moved {:7.3} s, {} lost, {} re-sent",
            o.promoted.as_secs_f64(),
            o.first_update.as_secs_f64(),
            o.all_moved.as_secs_f64(),
            o.lost,
            o.resent
        );
        promoted.push(o.promoted);
        first.push(o.first_update);
        moved.push(o.all_moved);
        lost += o.lost;
        resent += o.resent;
        dups += o.duplicates;
        sent += o.sent;
        diverged += o.digests.iter().filter(|(a, b)| a != b).count();
    }
    for (what, v) in [
        ("kill -> backup promoted", &mut promoted),
        ("kill -> first update accepted", &mut first),
        ("kill -> every client on backup", &mut moved),
    ] {
        println!("  {what:32} {}", spread(v));
    }
    println!(
        "  {sent} updates sent, acknowledged lost {lost}, re-sent {resent} ({dups} dropped as duplicates), clients diverged {diverged}"
    );
    anyhow::ensure!(
        lost == 0 && diverged == 0,
        "acknowledged updates lost or clients diverged"
    );
    Ok(())
}

fn spread(v: &mut [Duration]) -> String {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64();
    format!(
        "min {:.3} s, median {:.3} s, p90 {:.3} s, max {:.3} s",
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

/// One writer, as fast as it goes, until every update is acknowledged.
async fn timed_writes(client: &CloneClient, updates: u64) -> anyhow::Result<Duration> {
    let mut acks = client.acks();
    let started = Instant::now();
    let mut acked = 0;
    let mut sent = 0;
    while acked < updates {
        tokio::select! {
            biased;
            a = acks.recv() => { a?; acked += 1; }
            r = client.set(format!("/perf/{}", sent % 10_000), sent.to_string(), None), if sent < updates => {
                r?;
                sent += 1;
            }
        }
    }
    Ok(started.elapsed())
}

async fn throughput(updates: u64, timers: Timers) -> anyhow::Result<()> {
    println!("throughput: one writer client, {updates} sets, until all acknowledged");
    let token = CancellationToken::new();
    let config = client_config(timers);
    // A single server.
    let server = CloneServer::start(
        CloneServerConfig::loopback().store(StoreConfig::new().hugz_interval(timers.heartbeat)),
        &token,
    )
    .await?;
    let client = CloneClient::start(config.clone(), &token).await?;
    client.subtree("/perf/").await?;
    client
        .connect(ServerAddr::from_endpoints(server.endpoints())?)
        .await?;
    client.wait_active().await?;
    let single = timed_writes(&client, updates).await?;
    client.shutdown().await?;
    server.shutdown().await?;
    // A settled pair.
    let pair = settled_pair(timers, &token).await?;
    let client = CloneClient::start(config, &token).await?;
    client.subtree("/perf/").await?;
    for s in &pair.servers {
        client.connect(s.clone()).await?;
    }
    client.wait_active().await?;
    let paired = timed_writes(&client, updates).await?;
    let backup = &pair.backup;
    wait(Duration::from_secs(30), || async {
        Ok(
            backup.stats().store.pending_cancelled + backup.stats().store.pending_dropped
                >= updates,
        )
    })
    .await
    .ok();
    let b = backup.stats();
    let rate = |d: Duration| updates as f64 / d.as_secs_f64();
    println!(
        "  single server: {:8.0} updates/s ({:.2} s)",
        rate(single),
        single.as_secs_f64()
    );
    println!(
        "  pair:          {:8.0} updates/s ({:.2} s); the passive cancelled {} pending entries, {} left, {} dropped",
        rate(paired),
        paired.as_secs_f64(),
        b.store.pending_cancelled,
        b.store.pending_added.saturating_sub(b.store.pending_cancelled),
        b.store.pending_dropped
    );
    token.cancel();
    Ok(())
}
