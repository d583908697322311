//! `clonesrv`: the Clone server (Guide ch. 5, speaking CHP): snapshots on
//! ROUTER `P`, updates and HUGZ on PUB `P+1`, client KVSETs on `P+2`.
//!
//! Alone it is the model-5 server (`clonesrv5`). With `-p` or `-b` it is one
//! server of the model-6 Binary Star pair (`clonesrv6 -p | -b`), on the
//! Guide's ports unless flags say otherwise:
//!
//! | | `-p` (primary) | `-b` (backup) |
//! |---|---|---|
//! | Binary Star state PUB (bind) | 5003 | 5004 |
//! | peer's state (connect) | localhost:5004 | localhost:5003 |
//! | snapshots / updates / collector (bind) | 5556 / 5557 / 5558 | 5566 / 5567 / 5568 |
//! | peer's snapshots and updates (connect) | localhost:5566 / 5567 | localhost:5556 / 5557 |
//!
//! ```sh
//! cargo run --example clonesrv -- -p        # in one terminal
//! cargo run --example clonesrv -- -b        # in another
//! cargo run --example clonecli -- --server tcp://localhost:5556 --server tcp://localhost:5566
//! cargo run --example clonesrv -- --port 5556   # a single model-5 server
//! ```
//!
//! `-p` and `-b` together, or a pair flag without either, print the usage
//! line and exit with status 2.

#[path = "common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{FsmConfig, Side};
use zpatterns::clone::{
    ClonePairConfig, CloneServer, CloneServerConfig, CloneServerStats, ServerAddr, StoreConfig,
};
use zpatterns::endpoint::{bind_by_default, connect_by_default, EndpointSpec};

/// Clone server: a sequenced key-value store with snapshots, subtrees and
/// ephemeral values, compatible with the Guide's CHP clients; with -p or -b,
/// one server of a Binary Star pair.
#[derive(Parser, Debug)]
#[command(version, override_usage = "clonesrv [ -p | -b ] [OPTIONS]")]
struct Args {
    /// Primary server of a Binary Star pair (Guide `clonesrv6 -p`).
    #[arg(short = 'p', long = "primary")]
    primary: bool,
    /// Backup server of a Binary Star pair (Guide `clonesrv6 -b`).
    #[arg(short = 'b', long = "backup")]
    backup: bool,
    /// Base port P: binds P (snapshots), P+1 (updates), P+2 (collector).
    /// Default 5556, or 5566 for -b.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=65533))]
    port: Option<u16>,
    /// Interface to bind, `*` for all.
    #[arg(long, default_value = "*")]
    host: String,
    /// The snapshot ROUTER's endpoint, overriding `P` (e.g. @tcp://127.0.0.1:0).
    #[arg(long, value_parser = bind_by_default)]
    snapshot: Option<EndpointSpec>,
    /// The update PUB's endpoint, overriding `P+1`.
    #[arg(long, value_parser = bind_by_default)]
    updates: Option<EndpointSpec>,
    /// The collector's endpoint, overriding `P+2`.
    #[arg(long, value_parser = bind_by_default)]
    collector: Option<EndpointSpec>,
    /// Pair: where this server publishes its Binary Star state (default
    /// @tcp://*:5003, or 5004 for -b).
    #[arg(long, value_parser = bind_by_default)]
    state_local: Option<EndpointSpec>,
    /// Pair: the peer's Binary Star state (default >tcp://localhost:5004, or
    /// 5003 for -b).
    #[arg(long, value_parser = connect_by_default)]
    state_remote: Option<EndpointSpec>,
    /// Pair: the peer's Clone server as tcp://HOST:P (default
    /// tcp://localhost:5566, or 5556 for -b).
    #[arg(long)]
    peer: Option<ServerAddr>,
    /// Pair: the peer's snapshot endpoint, overriding the one `--peer` implies.
    #[arg(long, value_parser = connect_by_default)]
    peer_snapshot: Option<EndpointSpec>,
    /// Pair: the peer's update endpoint, overriding the one `--peer` implies.
    #[arg(long, value_parser = connect_by_default)]
    peer_updates: Option<EndpointSpec>,
    /// Pair: file holding the epoch across restarts (created if missing).
    #[arg(long)]
    epoch_file: Option<PathBuf>,
    /// Pair: Binary Star heartbeat in milliseconds (the peer is dead after
    /// two).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    heartbeat_ms: u64,
    /// HUGZ period in milliseconds.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=60_000))]
    hugz_ms: u64,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("info");
    let args = Args::parse();
    let pair_flags = args.state_local.is_some()
        || args.state_remote.is_some()
        || args.peer.is_some()
        || args.peer_snapshot.is_some()
        || args.peer_updates.is_some()
        || args.epoch_file.is_some();
    let side = match (args.primary, args.backup) {
        (true, false) => Some(Side::Primary),
        (false, true) => Some(Side::Backup),
        (false, false) if !pair_flags => None,
        _ => Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                "give exactly one of -p (primary) or -b (backup) for a pair, or neither for a single server",
            )
            .exit(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(args, side))
}

async fn run(args: Args, side: Option<Side>) -> anyhow::Result<()> {
    let token = CancellationToken::new();
    let hugz = Duration::from_millis(args.hugz_ms);
    let port = args.port.unwrap_or(match side {
        Some(Side::Backup) => 5566,
        _ => 5556,
    });
    let derived = CloneServerConfig::on_port(&args.host, port)?;
    let (snapshot, updates, collector) = (
        args.snapshot.clone(),
        args.updates.clone(),
        args.collector.clone(),
    );
    let server_config = match (snapshot, updates, collector) {
        (None, None, None) => derived,
        (s, u, c) => {
            let at = |ep: Option<EndpointSpec>, p: u16| match ep {
                Some(ep) => Ok(ep),
                None => EndpointSpec::bind(&format!("tcp://{}:{p}", args.host)),
            };
            CloneServerConfig::new(at(s, port)?, at(u, port + 1)?, at(c, port + 2)?)
        }
    }
    .store(StoreConfig::new().hugz_interval(hugz));
    let server = match side {
        None => CloneServer::start(server_config, &token).await?,
        Some(side) => {
            let mut config = ClonePairConfig::guide(side, "localhost")?
                .server(server_config)
                .fsm(FsmConfig::new().heartbeat(Duration::from_millis(args.heartbeat_ms)));
            if let Some(ep) = args.state_local {
                config = config.state_local(ep);
            }
            if let Some(ep) = args.state_remote {
                config = config.state_remote(ep);
            }
            if let Some(peer) = args.peer {
                config = config.peer(peer);
            }
            if args.peer_snapshot.is_some() || args.peer_updates.is_some() {
                let peer = config.peer_addr().clone();
                let or = |ep: Option<EndpointSpec>, d: &str| {
                    ep.map_or_else(|| d.to_owned(), |e| e.endpoint().to_owned())
                };
                config = config.peer(ServerAddr::new(
                    &or(args.peer_snapshot, peer.snapshot()),
                    &or(args.peer_updates, peer.updates()),
                    peer.collector(),
                )?);
            }
            if let Some(path) = args.epoch_file {
                config = config.epoch_file(path);
            }
            CloneServer::start_pair(config, &token).await?
        }
    };
    let ep = server.endpoints().clone();
    println!(
        "I: clone server on {} / {} / {}",
        ep.snapshot, ep.publisher, ep.collector
    );
    if let Some(state) = &ep.state {
        println!("I: Binary Star state on {state}");
    }
    let mut server = server;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        () = server.stopped() => {}
    }
    let stats = server
        .shutdown()
        .await
        .map_err(|e| anyhow::anyhow!("server stopped: {e}"))?;
    report(&stats);
    Ok(())
}

fn report(stats: &CloneServerStats) {
    println!(
        " Interrupted\n{} messages handled ({} keys, {} expired, {} snapshots)",
        stats.store.updates, stats.keys, stats.store.expired, stats.snapshots_completed
    );
    if let Some(pair) = &stats.pair {
        println!(
            "Binary Star: {:?}, epoch {}, {} pending applied",
            pair.state, pair.epoch, stats.store.pending_applied
        );
    }
}
