//! The Guide's Last Value Cache proxy: publishers connect to the frontend,
//! subscribers to the backend, and every new subscription is answered at
//! once with the cached values of the topics it matches.

#[path = "common/mod.rs"]
mod common;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::{bind_by_default, EndpointSpec};
use zpatterns::lvc::{CacheLimits, Lvc, LvcConfig};
use zpatterns::pubsub::ProxyConfig;

/// Last Value Cache proxy (ZeroMQ Guide, chapter 5). Endpoints bind unless
/// prefixed with `>` (e.g. `--frontend '>tcp://localhost:5556'` sits behind a
/// publisher that binds).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Publisher side.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://*:5557", value_parser = bind_by_default)]
    frontend: EndpointSpec,
    /// Subscriber side.
    #[arg(long, value_name = "ENDPOINT", default_value = "tcp://*:5558", value_parser = bind_by_default)]
    backend: EndpointSpec,
    /// Most topics cached; the least recently updated are evicted beyond it.
    #[arg(long, default_value_t = 1_000_000)]
    max_topics: usize,
    /// Most MiB cached (payload plus per-entry overhead).
    #[arg(long, default_value_t = 256)]
    max_mib: usize,
    /// Messages queued per subscriber before it counts as full (then its
    /// new messages are dropped, unless --nodrop or --disconnect-slow).
    #[arg(long, default_value_t = 10_000)]
    hwm: usize,
    #[command(flatten)]
    slow: common::SlowArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    common::init_logging("zpatterns=info,warn");
    let args = Args::parse();
    let proxy = ProxyConfig::new(args.frontend, args.backend)
        .subscriber_hwm(args.hwm)
        .slow_subscribers(args.slow.policy());
    let config =
        LvcConfig::new(proxy).limits(CacheLimits::new(args.max_topics, args.max_mib << 20));
    let cache = Lvc::start(config, &CancellationToken::new()).await?;
    eprintln!(
        "lvcache: publishers at {}, subscribers at {}; ctrl-c to stop",
        cache.frontend_endpoint(),
        cache.backend_endpoint()
    );
    tokio::signal::ctrl_c().await?;
    let s = cache.stats();
    eprintln!(
        "lvcache: {} topics ({} B) cached, {} evicted; {} messages in, {} replays; {} malformed, {} unsubscribes ignored; slow subscribers: {} drops, {} pauses, {} disconnected",
        s.cache.topics, s.cache.bytes, s.cache.evictions, s.proxy.messages_in, s.replays, s.proxy.malformed, s.proxy.unsubscribes,
        s.proxy.slow_drops, s.proxy.slow_blocks, s.proxy.slow_disconnects
    );
    cache.shutdown().await?;
    Ok(())
}
