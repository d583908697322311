//! `clonesrv`: the Clone server (Guide ch. 5, `clonesrv3` to `clonesrv5`,
//! speaking CHP): snapshots
//! on ROUTER `P`, updates and HUGZ on PUB `P+1`, client KVSETs on SUB `P+2`.
//!
//! ```sh
//! cargo run --example clonesrv -- --port 5556
//! RUST_LOG=debug cargo run --example clonesrv   # every update, like the Guide
//! ```

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zpatterns::clone::{CloneServer, CloneServerConfig};

/// Clone server: a sequenced key-value store with snapshots, subtrees and
/// ephemeral values, compatible with the Guide's CHP clients.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Base port P: binds P (snapshots), P+1 (updates), P+2 (collector).
    #[arg(long, default_value_t = 5556, value_parser = clap::value_parser!(u16).range(1..=65533))]
    port: u16,
    /// Interface to bind, `*` for all.
    #[arg(long, default_value = "*")]
    host: String,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("info");
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let token = CancellationToken::new();
        let config = CloneServerConfig::on_port(&args.host, args.port)?;
        let server = CloneServer::start(config, &token).await?;
        println!(
            "I: clone server on {} / {} / {}",
            server.endpoints().snapshot,
            server.endpoints().publisher,
            server.endpoints().collector
        );
        tokio::signal::ctrl_c().await?;
        let stats = server.shutdown().await?;
        println!(
            " Interrupted\n{} messages handled ({} keys, {} expired, {} snapshots)",
            stats.store.updates, stats.keys, stats.store.expired, stats.snapshots_completed
        );
        Ok(())
    })
}
