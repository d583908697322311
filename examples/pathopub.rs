//! The Guide's pathological publisher: a value for each of 1000 topics at
//! start, then one update per second to a random topic. A subscriber that
//! joins later waits ~500 s on average for its topic, unless a Last Value
//! Cache sits in between (`lvcache`).
//!
//! ```text
//! cargo run --example lvcache &
//! cargo run --example pathopub -- tcp://localhost:5557
//! cargo run --example pathosub -- tcp://localhost:5558     # prints "Save Roger" at once
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use clap::Parser;
use zeromq::prelude::*;
use zpatterns::endpoint::{bind_by_default, connect_by_default, EndpointSpec};
use zpatterns::frames::message;

/// Pathological publisher (ZeroMQ Guide, chapter 5, "Last Value Caching").
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to publish. Without it, binds tcp://*:5556; with it, connects
    /// (as the Guide's prose intends), or binds if prefixed with `@`.
    #[arg(value_name = "ENDPOINT", value_parser = connect_by_default)]
    endpoint: Option<EndpointSpec>,
    /// Number of topics ("%03d").
    #[arg(long, default_value_t = 1000)]
    topics: u32,
    /// Milliseconds between random updates after the initial burst.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Milliseconds to wait after connecting before the burst (slow joiners).
    #[arg(long, default_value_t = 1000)]
    settle_ms: u64,
    /// Stop after this many random updates (default: run until ctrl-c).
    #[arg(long)]
    count: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let endpoint = match args.endpoint {
        Some(ep) => ep,
        None => bind_by_default("tcp://*:5556")?,
    };
    let mut publisher = zeromq::PubSocket::new();
    let resolved = endpoint.attach_to(&mut publisher).await?;
    eprintln!("pathopub: {} {resolved}", endpoint.attach());
    tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
    let topic = |n: u32| format!("{n:03}");
    for n in 0..args.topics {
        publisher
            .send(message([topic(n), "Save Roger".into()]).expect("two frames"))
            .await?;
        if n % 256 == 255 {
            // Let the zeromq PUB's fan-out task run, or it drops the burst.
            tokio::task::yield_now().await;
        }
    }
    let mut sent = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(args.interval_ms.max(1)));
    tick.tick().await;
    while args.count.is_none_or(|c| sent < c) {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let t = topic(fastrand::u32(0..args.topics.max(1)));
        publisher
            .send(message([t, "Off with his head!".into()]).expect("two frames"))
            .await?;
        sent += 1;
    }
    eprintln!(
        "pathopub: {} initial values and {sent} updates sent",
        args.topics
    );
    Ok(())
}
