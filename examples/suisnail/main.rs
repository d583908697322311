//! Suicidal Snail (ZeroMQ Guide ch. 5, `suisnail`): a publisher sends a
//! timestamp every 1 ms; a subscriber doing 1-2 ms of work per message
//! falls behind and, once a message is more than `--max-delay-ms` late,
//! logs `E: subscriber cannot keep up, aborting` and exits non-zero.
//!
//! ```sh
//! cargo run --example suisnail                       # both halves, like the Guide
//! cargo run --example suisnail -- --publisher-only --bind 'tcp://*:5556' --guide-format
//! cargo run --example suisnail -- --subscriber-only --connect tcp://localhost:5556
//! ```
//!
//! The subscriber accepts the toolkit envelope and the Guide's C format
//! (decimal ASCII ms), so it can watch the Guide's C publisher on libzmq.
//! Exit status: 0 if stopped (ctrl-c), 3 if it croaked, 1 on other errors.

#[path = "../common/mod.rs"]
mod common;

mod subscriber;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::{Attach, EndpointSpec};
use zpatterns::snail::{ClockSync, SnailError, SnailPublisher, SnailPublisherConfig};

use subscriber::{run_subscriber, SubOptions};

/// Suicidal Snail: a too-slow subscriber detects it and croaks.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Croak once a message is more than this many ms late (the Guide's
    /// MAX_ALLOWED_DELAY).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    max_delay_ms: u64,
    /// Simulated work per message: a random 1..=N ms (the Guide: 1-2 ms).
    /// 0 does no work (the subscriber keeps up).
    #[arg(long, default_value_t = 2)]
    work_ms: u64,
    /// Publish every N ms.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    interval_ms: u64,
    /// Run only the publisher.
    #[arg(long, conflicts_with = "subscriber_only")]
    publisher_only: bool,
    /// Run only the subscriber.
    #[arg(long)]
    subscriber_only: bool,
    /// Publisher endpoint; a bare endpoint binds.
    #[arg(long, default_value = "tcp://*:5556")]
    bind: String,
    /// Subscriber endpoint; a bare endpoint connects. Ignored when both
    /// halves run (the subscriber then connects to the publisher's port).
    #[arg(long, default_value = "tcp://localhost:5556")]
    connect: String,
    /// Publish the Guide's C format (decimal ASCII ms) instead of the
    /// toolkit envelope.
    #[arg(long)]
    guide_format: bool,
    /// How the subscriber treats the publisher's clock: `estimated`
    /// (offset from the minimum delay), `trusted` (offset 0, the Guide) or
    /// a bound in ms (`50`: estimate, but never more than ±50 ms).
    #[arg(long, default_value = "estimated", value_parser = parse_clock)]
    clock: ClockSync,
    /// Print every message, as the Guide's subscriber does.
    #[arg(long)]
    verbose: bool,
}

fn parse_clock(s: &str) -> Result<ClockSync, String> {
    match s {
        "estimated" => Ok(ClockSync::Estimated),
        "trusted" => Ok(ClockSync::Trusted),
        ms => ms
            .parse::<u64>()
            .map(|ms| ClockSync::Bounded(Duration::from_millis(ms)))
            .map_err(|_| format!("expected estimated, trusted or a bound in ms, got {ms:?}")),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    common::init_logging("warn");
    let args = Args::parse();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
        }
    });
    let mut publisher = None;
    let mut endpoint = EndpointSpec::parse(&args.connect, Attach::Connect)?;
    if !args.subscriber_only {
        let bind = EndpointSpec::parse(&args.bind, Attach::Bind)?;
        let p = SnailPublisher::start(SnailPublisherConfig::new(bind, "suisnail"), &stop).await?;
        let resolved = p.endpoint().to_owned();
        println!(
            "publisher on {resolved}, one {} timestamp every {} ms",
            if args.guide_format {
                "Guide-format"
            } else {
                "stamped"
            },
            args.interval_ms
        );
        endpoint = EndpointSpec::connect(&resolved.replace("0.0.0.0", "127.0.0.1"))?;
        let task = tokio::spawn(publish(p, args.interval_ms, args.guide_format));
        publisher = Some(task);
    }
    if args.publisher_only {
        let sent = publisher.expect("publisher started").await??;
        println!("publisher stopped after {sent} messages");
        return Ok(ExitCode::SUCCESS);
    }
    let opts = SubOptions {
        endpoint,
        max_delay: Duration::from_millis(args.max_delay_ms),
        work_ms: args.work_ms,
        clock: args.clock,
        verbose: args.verbose,
        limit: None,
    };
    println!(
        "subscriber: {}, croak beyond {} ms",
        match args.work_ms {
            0 => "no work".to_owned(),
            n => format!("work 1..={n} ms per message"),
        },
        args.max_delay_ms
    );
    let report = run_subscriber(&opts, stop.child_token())
        .await
        .context("subscriber failed")?;
    // Like the Guide's main: tell the publisher to stop, give it 100 ms.
    stop.cancel();
    if let Some(p) = publisher {
        let _ = tokio::time::timeout(Duration::from_millis(100), p).await;
    }
    match report.croak {
        Some(croak) => {
            let why = croak
                .alarm()
                .map_or_else(|| croak.to_string(), ToString::to_string);
            println!(
                "croaked after {:.2} s and {} messages: {why}",
                report.elapsed.as_secs_f64(),
                report.received
            );
            Ok(croak.exit_code())
        }
        None => {
            println!(
                "stopped after {:.2} s and {} messages, never behind",
                report.elapsed.as_secs_f64(),
                report.received
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Sends one timestamp per `interval_ms` until the publisher's parent token
/// is cancelled; returns the count.
async fn publish(
    mut publisher: SnailPublisher,
    interval_ms: u64,
    guide_format: bool,
) -> anyhow::Result<u64> {
    // tokio's timer ticks in whole ms; Burst catches up missed ticks, so the
    // average rate is one per interval even when a tick comes late.
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let started = Instant::now();
    loop {
        tick.tick().await;
        let sent = if guide_format {
            publisher.send_guide_timestamp().await
        } else {
            publisher
                .send(vec![bytes::Bytes::from_static(b"tick")])
                .await
        };
        match sent {
            Ok(()) => {}
            Err(SnailError::Stopped) => break,
            Err(e) => return Err(e.into()),
        }
    }
    let sent = publisher.shutdown().await?.sent;
    tracing::info!(
        sent,
        secs = started.elapsed().as_secs_f64(),
        "publisher stopped"
    );
    Ok(sent)
}
