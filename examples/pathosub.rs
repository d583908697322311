//! The Guide's pathological subscriber: subscribes to one topic (random
//! unless given) and prints each value on its own line.

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use zeromq::prelude::*;
use zpatterns::endpoint::{connect_by_default, EndpointSpec};

/// Pathological subscriber (ZeroMQ Guide, chapter 5, "Last Value Caching").
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Where to subscribe; connects unless prefixed with `@` [default: tcp://localhost:5556].
    #[arg(value_name = "ENDPOINT", value_parser = connect_by_default)]
    endpoint: Option<EndpointSpec>,
    /// Topic (prefix) to subscribe to [default: a random "%03d"].
    #[arg(long)]
    topic: Option<String>,
    /// Exit after this many values (default: run until ctrl-c).
    #[arg(long)]
    count: Option<u64>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let endpoint = match args.endpoint {
        Some(ep) => ep,
        None => connect_by_default("tcp://localhost:5556")?,
    };
    let topic = args
        .topic
        .unwrap_or_else(|| format!("{:03}", fastrand::u32(0..1000)));
    let mut sub = zeromq::SubSocket::new();
    endpoint.attach_to(&mut sub).await?;
    sub.subscribe(&topic).await?;
    eprintln!(
        "pathosub: subscribed to {topic:?} at {}",
        endpoint.endpoint()
    );
    let mut received = 0;
    while args.count.is_none_or(|c| received < c) {
        let msg = tokio::select! {
            m = sub.recv() => m?.into_vec(),
            _ = tokio::signal::ctrl_c() => break,
        };
        // The zeromq crate's SUB does not filter locally: check, as the Guide asserts.
        let got = msg.first().map(|t| t.as_ref()).unwrap_or_default();
        if !got.starts_with(topic.as_bytes()) {
            anyhow::bail!(
                "received topic {:?}, subscribed to {topic:?}",
                String::from_utf8_lossy(got)
            );
        }
        let value: Vec<_> = msg[1..]
            .iter()
            .map(|f| String::from_utf8_lossy(f))
            .collect();
        println!("{}", value.join(" "));
        received += 1;
    }
    Ok(())
}
