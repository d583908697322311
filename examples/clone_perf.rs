//! `clone_perf`: measures the Clone server end to end on loopback and prints
//! the numbers (run with `--release`).
//!
//! - updates/s: N writer clients `set()` keys, the server sequences and
//!   publishes them, M subscriber clients apply them; timed from the first
//!   set until every subscriber has applied the last sequence;
//! - snapshot time: a server preloaded with K keys streams them to a raw
//!   DEALER (server side), and to a full client (`connect` to active).
//!
//! ```sh
//! cargo run --release --example clone_perf -- --writers 2 --subscribers 4 --updates 100000
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::clone::{
    CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, KvMsg, Phase, ServerAddr,
};

/// Clone throughput and snapshot benchmark.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Writer clients.
    #[arg(long, default_value_t = 2)]
    writers: usize,
    /// Subscriber clients.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Updates per writer.
    #[arg(long, default_value_t = 50_000)]
    updates: u64,
    /// Snapshot sizes to time (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    snapshots: Vec<usize>,
    /// Use a multi-thread runtime instead of current-thread.
    #[arg(long)]
    multi_thread: bool,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let rt = if args.multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(async {
        throughput(&args).await?;
        for &k in &args.snapshots {
            snapshot(k).await?;
        }
        Ok(())
    })
}

async fn throughput(args: &Args) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token).await?;
    let addr = ServerAddr::from_endpoints(server.endpoints())?;
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        let c = CloneClient::start(CloneClientConfig::new(), &token).await?;
        c.connect(addr.clone()).await?;
        subs.push(c);
    }
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        let c = CloneClient::start(CloneClientConfig::new(), &token).await?;
        c.subtree("/nothing/").await?;
        c.connect(addr.clone()).await?;
        writers.push(c);
    }
    for c in subs.iter().chain(&writers) {
        c.wait_active().await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // publishers settle
    let total = args.updates * args.writers as u64;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (w, c) in writers.into_iter().enumerate() {
        let n = args.updates;
        tasks.spawn(async move {
            for i in 0..n {
                c.set(format!("/w{w}/{}", i % 10_000), i.to_string(), None)
                    .await?;
                if i % 256 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(c)
        });
    }
    let mut keep = Vec::new();
    while let Some(r) = tasks.join_next().await {
        keep.push(r??);
    }
    let sent = started.elapsed();
    // Wait (bounded) for the server to have sequenced what arrived and
    // every subscriber to have applied it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = u64::MAX;
    while Instant::now() < deadline {
        let seq = server.stats().sequence;
        if seq == last
            && subs
                .iter()
                .all(|s| matches!(s.phase(), Phase::Active { seq: s2, .. } if s2 >= seq))
        {
            break;
        }
        last = seq;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed() - Duration::from_millis(50);
    let applied = server.stats().sequence;
    let mut resyncs = 0;
    for s in &subs {
        let st = s.stats();
        resyncs += st.agent.gaps + st.agent.buffer_overflows;
    }
    println!(
        "throughput: {} writers x {} sets -> server -> {} subscribers: {} of {} sequenced, \
         {:.0} updates/s through the server ({:.0} deliveries/s), writers done in {:?}, {} resyncs",
        args.writers,
        args.updates,
        args.subscribers,
        applied,
        total,
        applied as f64 / elapsed.as_secs_f64(),
        (applied * args.subscribers as u64) as f64 / elapsed.as_secs_f64(),
        sent,
        resyncs
    );
    token.cancel();
    Ok(())
}

async fn snapshot(keys: usize) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let mut entries = Vec::with_capacity(keys);
    for i in 0..keys {
        entries.push(KvMsg::new(format!("/k/{i:08}"), format!("value-{i}"))?);
    }
    let server =
        CloneServer::start_preloaded(CloneServerConfig::loopback(), entries, &token).await?;
    // Server side: a raw DEALER reading to KTHXBAI.
    let mut dealer = zeromq::DealerSocket::new();
    dealer.connect(&server.endpoints().snapshot).await?;
    let started = Instant::now();
    dealer
        .send(zpatterns::frames::message([&b"ICANHAZ?"[..], b""]).expect("frames"))
        .await?;
    let mut n = 0;
    loop {
        let m = dealer.recv().await?;
        if m.get(0).is_some_and(|k| k.as_ref() == b"KTHXBAI") {
            break;
        }
        n += 1;
    }
    let raw = started.elapsed();
    // Full client: connect to active (includes waiting for the first HUGZ).
    let addr = ServerAddr::from_endpoints(server.endpoints())?;
    let client = CloneClient::start(CloneClientConfig::new(), &token).await?;
    let started = Instant::now();
    client.connect(addr).await?;
    client.wait_active().await?;
    let full = started.elapsed();
    println!(
        "snapshot: {keys} keys: raw DEALER {n} entries in {:?} ({:.0} keys/s); \
         client connect-to-active {:?} ({} keys)",
        raw,
        n as f64 / raw.as_secs_f64(),
        full,
        client.stats().keys
    );
    token.cancel();
    Ok(())
}
