//! Tour section: Black Box. A publisher thread replays 100-byte messages
//! over 10,000 keys as fast as it can; the sharded subscriber runs with 1
//! worker, then 2, and reports the throughput of each.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zpatterns::blackbox::{BlackBox, BlackBoxConfig, ShardKey};
use zpatterns::endpoint::EndpointSpec;

#[allow(dead_code)]
#[path = "../blackbox/feed.rs"]
mod feed;

const KEYS: usize = 10_000;
const RUN: Duration = Duration::from_millis(1500);
const WORK: Duration = Duration::from_nanos(500);

pub(crate) fn run() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "   feed: {} B messages, {KEYS} keys; work {} ns per message; {cores} cores; I/O on a current_thread runtime, one thread per worker",
        feed::MSG_LEN,
        WORK.as_nanos()
    );
    for workers in [1, 2] {
        once(workers)?;
    }
    Ok(())
}

fn once(workers: usize) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let (publisher, ep) = feed::start_publisher(
        EndpointSpec::loopback(),
        KEYS as u64,
        stop.clone(),
        sent.clone(),
    )?;
    let result = crate::block_on(async {
        let config = BlackBoxConfig::new(vec![EndpointSpec::connect(&ep)?], &[""])
            .workers(workers)
            .key(ShardKey::Prefix(8));
        let lost = feed::LossCounters::new(workers);
        let l = lost.clone();
        let bb = BlackBox::start(
            config,
            move |w| feed::checking_worker(w, KEYS, WORK, l.clone()),
            &CancellationToken::new(),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(200)).await; // past the slow-joiner start
        let before = bb.stats();
        tokio::time::sleep(RUN).await;
        let after = bb.stats();
        let stats = bb.shutdown().await?;
        stop.cancel(); // after the subscriber, so it sees no disconnect
        let rates = after.rates_since(&before);
        let per: Vec<String> = rates.iter().map(|r| format!("{:.0}k", r / 1e3)).collect();
        println!(
            "   {workers} worker(s): {:>4.0}k msg/s total [{}], {} delivered, {} dropped, {} lost upstream",
            rates.iter().sum::<f64>() / 1e3,
            per.join(", "),
            stats.total_delivered(),
            stats.total_dropped(),
            lost.snapshot().iter().sum::<u64>().saturating_sub(stats.total_dropped())
        );
        anyhow::Ok(())
    })
    .and_then(|r| r); // the runtime's error or the run's
    stop.cancel();
    publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    result
}
