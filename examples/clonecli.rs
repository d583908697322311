//! `clonecli`: a Clone client (Guide ch. 5, `clonecli5` and `clonecli6`): keeps a copy of one
//! subtree, sets a random key in it with a random ttl every second, and
//! prints every change it sees.
//!
//! ```sh
//! cargo run --example clonecli -- --server tcp://localhost:5556 --subtree /client/
//! cargo run --example clonecli -- --server tcp://localhost:5556 --server tcp://localhost:5566
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use zpatterns::clone::{CloneClient, CloneClientConfig, ServerAddr};

/// Clone client: subscribes to a subtree, writes random ephemeral values.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// A server as tcp://HOST:P (P+1 and P+2 implied); give it twice for a
    /// primary and a backup.
    #[arg(long = "server", default_value = "tcp://localhost:5556")]
    servers: Vec<ServerAddr>,
    /// The subtree (key prefix) to follow and write under.
    #[arg(long, default_value = "/client/")]
    subtree: String,
    /// Seconds between random updates (0 = only watch).
    #[arg(long, default_value_t = 1.0)]
    interval: f64,
    /// Exit after printing this many changes (default: until ctrl-c).
    #[arg(long)]
    count: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("info");
    let args = Args::parse();
    let usage = |kind, msg: &str| Args::command().error(kind, msg).exit();
    if args.servers.len() > 2 {
        usage(ErrorKind::TooManyValues, "too many servers (max. 2)");
    }
    if !(args.interval.is_finite() && args.interval >= 0.0) {
        usage(
            ErrorKind::ValueValidation,
            "--interval must be a non-negative number of seconds",
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let client = CloneClient::start(CloneClientConfig::new(), &token).await?;
    client.subtree(&args.subtree).await?;
    for server in args.servers {
        client.connect(server).await?;
    }
    let mut changes = client.changes();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(args.interval.max(0.001)));
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = tick.tick(), if args.interval > 0.0 => {
                let key = format!("{}{}", args.subtree, fastrand::u32(0..10_000));
                let value = fastrand::u32(0..1_000_000).to_string();
                let ttl = fastrand::u64(0..30);
                client.set(key, value, Some(Duration::from_secs(ttl))).await?;
            }
            change = changes.recv() => match change {
                Ok(c) => {
                    left -= 1;
                    let key = String::from_utf8_lossy(c.key());
                    let seq = c.seq().map_or("local".to_owned(), |s| s.to_string());
                    match c.value() {
                        Some(v) => println!("I: {:?} update={seq} {key}={}", c.cause(), String::from_utf8_lossy(v)),
                        None => println!("I: {:?} delete={seq} {key}", c.cause()),
                    }
                }
                Err(RecvError::Lagged(n)) => println!("W: missed {n} change events"),
                Err(RecvError::Closed) => anyhow::bail!("client stopped"),
            },
        }
    }
    let stats = client.shutdown().await?;
    println!("{} keys, {:?}", stats.keys, stats.agent);
    Ok(())
}
