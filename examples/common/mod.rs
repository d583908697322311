//! Set-up shared by the examples (each includes this file with `#[path]`).

/// Logs to stderr (stdout is the example's output), filtered by `RUST_LOG`
/// or else by `default` (e.g. `"warn"`, `"zpatterns=info,warn"`).
pub(crate) fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// The Guide's Espresso publisher: binds `tcp://127.0.0.1:0` and sends one
/// random `"%c-%05d"` (`A-00000`..`J-99999`) every `every` until `stop`.
/// Returns the bound endpoint.
#[allow(dead_code)] // used by the Espresso example and the tour only
pub(crate) async fn spawn_letter_publisher(
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<String> {
    use zeromq::prelude::*;
    let mut publisher = zeromq::PubSocket::new();
    let endpoint = publisher.bind("tcp://127.0.0.1:0").await?.to_string();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stop.is_cancelled() {
            tick.tick().await;
            let letter = (b'A' + fastrand::u8(0..10)) as char;
            let msg = format!("{letter}-{:05}", fastrand::u32(0..100_000));
            let _ = publisher.send(msg.into()).await;
        }
    });
    Ok(endpoint)
}

/// The slow-subscriber flags of the proxy examples (`lvcache`, `espresso`):
/// `--nodrop` or `--disconnect-slow MS`; neither keeps libzmq's drop.
#[allow(dead_code)] // used by the proxy examples only
#[derive(clap::Args, Debug, Clone, Copy)]
pub(crate) struct SlowArgs {
    /// Lossless: when a subscriber's queue is full, stop reading the
    /// publishers until it has room (like libzmq's ZMQ_XPUB_NODROP); one
    /// subscriber that stops reading stops the publishers. Default: drop
    /// that subscriber's new messages.
    #[arg(long)]
    pub(crate) nodrop: bool,
    /// Like --nodrop, but disconnect a subscriber that stays behind for
    /// longer than MS milliseconds (0: as soon as its queue overflows).
    #[arg(long, value_name = "MS", conflicts_with = "nodrop")]
    pub(crate) disconnect_slow: Option<u64>,
}

#[allow(dead_code)] // used by the proxy examples only
impl SlowArgs {
    /// The policy the flags ask for.
    pub(crate) fn policy(self) -> zpatterns::pubsub::SlowPolicy {
        use zpatterns::pubsub::SlowPolicy;
        match (self.nodrop, self.disconnect_slow) {
            (_, Some(ms)) => SlowPolicy::Disconnect {
                after: std::time::Duration::from_millis(ms),
            },
            (true, None) => SlowPolicy::Block,
            (false, None) => SlowPolicy::Drop,
        }
    }
}
