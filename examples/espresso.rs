//! Espresso: the ZeroMQ Guide's pub-sub tracing proxy.
//!
//! With no endpoints it reproduces the Guide's run in one process: a
//! publisher of random `A-xxxxx`..`J-xxxxx` messages every 100 ms, a
//! subscriber to `A` and `B` that takes 5 messages and leaves, and the
//! listener printing two subscribes, the data, and two unsubscribes.
//!
//! With `--frontend` / `--backend` it is a standalone tracing proxy:
//!
//! ```text
//! cargo run --example espresso -- --frontend tcp://localhost:6000 --backend 'tcp://*:6001' --json
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::endpoint::{bind_by_default, connect_by_default, EndpointSpec};
use zpatterns::espresso::EspressoStats;
use zpatterns::espresso::{CaptureEvent, CaptureFilter, Espresso, EspressoConfig, EventKind};
use zpatterns::frames::render;
use zpatterns::pubsub::ProxyConfig;

/// Espresso: a pub-sub tracing proxy (ZeroMQ Guide, chapter 5).
///
/// Endpoints follow CZMQ: `@` binds, `>` connects, a bare endpoint takes the
/// flag's default. Without --frontend/--backend, runs the Guide's demo.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Publisher side (XSUB); connects by default [default: tcp://localhost:6000].
    #[arg(long, value_name = "ENDPOINT", value_parser = connect_by_default)]
    frontend: Option<EndpointSpec>,
    /// Subscriber side (XPUB); binds by default [default: tcp://*:6001].
    #[arg(long, value_name = "ENDPOINT", value_parser = bind_by_default)]
    backend: Option<EndpointSpec>,
    /// Print one JSON object per captured event, one per line.
    #[arg(long)]
    json: bool,
    /// Keep only events whose topic starts with PREFIX (repeatable).
    #[arg(long = "topic", value_name = "PREFIX")]
    topics: Vec<String>,
    /// Keep only subscribe and unsubscribe events.
    #[arg(long)]
    subscriptions_only: bool,
    /// Capture buffer; events beyond it are dropped and counted.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    capacity: u32,
    /// Demo only: messages the subscriber takes before it leaves.
    #[arg(long, default_value_t = 5)]
    take: usize,
    #[command(flatten)]
    slow: common::SlowArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let mut filter = CaptureFilter::all().subscriptions_only(args.subscriptions_only);
    for t in &args.topics {
        filter = filter.topic_prefix(t.clone().into_bytes());
    }
    if args.frontend.is_none() && args.backend.is_none() {
        demo(&args, filter).await
    } else {
        standalone(&args, filter).await
    }
}

async fn standalone(args: &Args, filter: CaptureFilter) -> anyhow::Result<()> {
    let frontend = match &args.frontend {
        Some(ep) => ep.clone(),
        None => connect_by_default("tcp://localhost:6000")?,
    };
    let backend = match &args.backend {
        Some(ep) => ep.clone(),
        None => bind_by_default("tcp://*:6001")?,
    };
    let proxy = ProxyConfig::new(frontend, backend).slow_subscribers(args.slow.policy());
    let config = EspressoConfig::new(proxy)
        .filter(filter)
        .capacity(args.capacity as usize);
    let mut proxy = Espresso::start(config, &CancellationToken::new()).await?;
    eprintln!(
        "espresso: publishers at {}, subscribers at {}; ctrl-c to stop",
        proxy.frontend_endpoint(),
        proxy.backend_endpoint()
    );
    loop {
        tokio::select! {
            ev = proxy.events().recv() => match ev {
                Some(ev) => print_event(&ev, args.json),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    print_stats(&proxy.stats());
    proxy.shutdown().await?;
    Ok(())
}

async fn demo(args: &Args, filter: CaptureFilter) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // Publisher: one random "%c-%05d" every 100 ms, as in the Guide.
    let pub_ep = common::spawn_letter_publisher(Duration::from_millis(100), cancel.clone()).await?;
    let config = ProxyConfig::new(EndpointSpec::connect(&pub_ep)?, EndpointSpec::loopback())
        .slow_subscribers(args.slow.policy());
    let config = EspressoConfig::new(config)
        .filter(filter)
        .capacity(args.capacity as usize);
    let mut proxy = Espresso::start(config, &cancel).await?;
    eprintln!(
        "publisher at {pub_ep}; espresso backend at {}",
        proxy.backend_endpoint()
    );

    // Subscriber: A and B, takes `take` messages and leaves (disconnects).
    let backend = proxy.backend_endpoint().to_owned();
    let take = args.take;
    let subscriber = tokio::spawn(async move {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&backend).await?;
        sub.subscribe("A").await?;
        sub.subscribe("B").await?;
        for n in 1..=take {
            sub.recv().await?;
            eprintln!("subscriber received {n} messages");
        }
        Ok::<_, anyhow::Error>(())
    });

    // Listener: print until both unsubscribes arrived after the subscriber left.
    let mut unsubscribes = 0;
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    while unsubscribes < 2 {
        tokio::select! {
            ev = proxy.events().recv() => {
                let Some(ev) = ev else { break };
                unsubscribes += usize::from(ev.kind == EventKind::Unsubscribe);
                print_event(&ev, args.json);
            }
            _ = &mut deadline => anyhow::bail!("demo did not finish in 20 s"),
        }
    }
    subscriber.await??;
    print_stats(&proxy.stats());
    proxy.shutdown().await?;
    cancel.cancel();
    Ok(())
}

fn print_event(ev: &CaptureEvent, json: bool) {
    let ms = ev
        .at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    if json {
        let frames: Vec<_> = ev
            .frames
            .iter()
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect();
        let line = serde_json::json!({
            "seq": ev.seq,
            "ts_ms": ms as u64,
            "dir": ev.dir.as_str(),
            "kind": ev.kind.as_str(),
            "topic": ev.topic_lossy(),
            "peer": ev.peer,
            "size": ev.frames.iter().map(|f| f.len()).sum::<usize>(),
            "frames": frames,
        });
        println!("{line}");
    } else {
        let secs = (ms / 1000) % 86_400;
        let frames: Vec<_> = ev.frames.iter().map(|f| render(f)).collect();
        println!(
            "{:02}:{:02}:{:02}.{:03} {:<4} {:<11} {}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            ms % 1000,
            ev.dir,
            ev.kind,
            frames.join(" ")
        );
    }
}

fn print_stats(stats: &EspressoStats) {
    let s = &stats.proxy;
    eprintln!(
        "stats: {} msgs / {} B in, {} delivered; slow subscribers: {} dropped, {} pauses, {} disconnected; {} subscribes, {} unsubscribes, {} malformed; capture drops {}",
        s.messages_in, s.bytes_in, s.deliveries, s.slow_drops, s.slow_blocks, s.slow_disconnects, s.subscribes, s.unsubscribes, s.malformed, s.capture_drops
    );
}
