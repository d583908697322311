//! `bstarsrv`: one server of a Binary Star pair that echoes every request
//! it accepts (Guide ch. 4, `bstarsrv` / `bstarsrv2`), wire-compatible with
//! the Guide's: its state PUB, state SUB and voter speak the same frames,
//! so either server of a pair may be the Guide's program.
//!
//! ```sh
//! cargo run --example bstarsrv -- -p     # state :5003, peer :5004, voter :5001
//! cargo run --example bstarsrv -- -b     # state :5004, peer :5003, voter :5002
//! cargo run --example bstarcli           # votes, fails over between 5001 and 5002
//! ```
//!
//! On start it prints its bound endpoints (`I: state publisher bound at
//! tcp://...`, `I: voter bound at tcp://...`), so it may be given port 0.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{BinaryStar, BinaryStarConfig, FsmConfig, Side};
use zpatterns::endpoint::{Attach, EndpointError, EndpointSpec};

const USAGE: &str = "Usage: bstarsrv { -p | -b }";

/// Binary Star server: exactly one of -p (primary) or -b (backup).
#[derive(Parser, Debug)]
#[command(version, override_usage = "bstarsrv { -p | -b } [OPTIONS]")]
struct Args {
    /// Run as the primary (state PUB tcp://*:5003, peer tcp://localhost:5004, voter tcp://*:5001).
    #[arg(short = 'p')]
    primary: bool,
    /// Run as the backup (state PUB tcp://*:5004, peer tcp://localhost:5003, voter tcp://*:5002).
    #[arg(short = 'b')]
    backup: bool,
    /// This server's state PUB (binds).
    #[arg(long, value_parser = bind_spec)]
    local: Option<EndpointSpec>,
    /// The peer's state PUB (the state SUB connects to it).
    #[arg(long, value_parser = connect_spec)]
    remote: Option<EndpointSpec>,
    /// The client-facing voter ROUTER (binds).
    #[arg(long, value_parser = bind_spec)]
    voter: Option<EndpointSpec>,
    /// Keep the promotion epoch in this file (default: in memory).
    #[arg(long)]
    epoch_file: Option<PathBuf>,
    /// State heartbeat in milliseconds (the peer is dead after two).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: u64,
}

fn bind_spec(s: &str) -> Result<EndpointSpec, EndpointError> {
    EndpointSpec::parse(s, Attach::Bind)
}

fn connect_spec(s: &str) -> Result<EndpointSpec, EndpointError> {
    EndpointSpec::parse(s, Attach::Connect)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let side = match (args.primary, args.backup) {
        (true, false) => Side::Primary,
        (false, true) => Side::Backup,
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    common::init_logging("info,zeromq=error");
    let (local, remote, voter) = match side {
        Side::Primary => ("tcp://*:5003", "tcp://localhost:5004", "tcp://*:5001"),
        Side::Backup => ("tcp://*:5004", "tcp://localhost:5003", "tcp://*:5002"),
    };
    let local = args.local.map_or_else(|| EndpointSpec::bind(local), Ok)?;
    let remote = args
        .remote
        .map_or_else(|| EndpointSpec::connect(remote), Ok)?;
    let voter = args.voter.map_or_else(|| EndpointSpec::bind(voter), Ok)?;
    let mut config = BinaryStarConfig::new(side, local, remote, voter)
        .fsm(FsmConfig::new().heartbeat(Duration::from_millis(args.heartbeat_ms)));
    if let Some(path) = args.epoch_file {
        config = config.epoch_file(path);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let token = CancellationToken::new();
        let mut server = BinaryStar::start(config, &token).await?;
        // The bound endpoints (real ports, also when given port 0).
        let bound = server.endpoints();
        println!("I: state publisher bound at {}", bound.state);
        println!("I: voter bound at {}", bound.voter);
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; break; }
                req = server.recv() => match req {
                    // Echo, as the Guide's bstarsrv does.
                    Some(req) => {
                        let frames = req.frames().to_vec();
                        if let Err(e) = req.reply(frames).await {
                            tracing::warn!(cause = %e, "reply failed");
                        }
                    }
                    None => break,
                },
            }
        }
        let stats = server.shutdown().await?;
        println!(
            " Interrupted\n{} requests answered ({} votes rejected), ended {}, epoch {}",
            stats.replies_sent, stats.fsm.votes_rejected, stats.state, stats.epoch
        );
        Ok(())
    })
}
