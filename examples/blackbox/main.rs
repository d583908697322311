//! Black Box (ZeroMQ Guide ch. 5, high-speed subscribers): a publisher
//! replays a market-data-like stream (100-byte messages, many keys) as fast
//! as it can; a sharded subscriber spreads the messages over `--workers`
//! workers by key and does `--work-ns` of busy work per message. Prints
//! msgs/s per worker and in total, every second and at the end.
//!
//! ```sh
//! cargo run --release --example blackbox -- --seconds 5 --workers 2
//! cargo run --release --example blackbox -- --publisher-only --bind 'tcp://*:5558'
//! cargo run --release --example blackbox -- --subscriber-only --connect tcp://localhost:5558
//! ```
//!
//! Message layout (one 100-byte frame): bytes 0..8 the key `K<d>-<nnnnn>`
//! (the sharding key, and the SUB prefix: `K3` is a tenth of the keys),
//! bytes 8..16 the key's own sequence number (u64 big-endian), then
//! padding. Workers check each key's sequence, so messages a publisher
//! dropped show up as "lost upstream" (a libzmq PUB drops at its HWM; the
//! `zeromq` PUB queues without bound for a slow subscriber and drops only
//! when its own fan-out falls behind, so expect the publisher's memory to
//! grow instead when the workers are slower than the feed).

#[path = "../common/mod.rs"]
mod common;

mod feed;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use zpatterns::blackbox::{
    BlackBox, BlackBoxConfig, BlackBoxStats, Overflow, ShardKey, WorkerThreads,
};
use zpatterns::endpoint::{Attach, EndpointSpec};

/// Black Box: a sharded high-speed subscriber under a replayed feed.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Run for this many seconds of publishing.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    seconds: u64,
    /// Number of workers (shards).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=1024))]
    workers: u64,
    /// Busy work per message, in nanoseconds.
    #[arg(long, default_value_t = 200)]
    work_ns: u64,
    /// Number of distinct keys in the feed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(10..=1_000_000))]
    keys: u64,
    /// Subscriber sockets; each subscribes to a disjoint share of the keys.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=10))]
    sockets: u64,
    /// Messages each worker queue holds.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(1..))]
    queue_depth: u64,
    /// What to do when a worker falls behind.
    #[arg(long, value_enum, default_value_t = OverflowArg::Block)]
    overflow: OverflowArg,
    /// The subscriber's tokio runtime (the I/O tasks run there).
    #[arg(long, value_enum, default_value_t = RuntimeArg::Current)]
    runtime: RuntimeArg,
    /// Where workers run: their own threads, or tasks on the runtime.
    #[arg(long, value_enum, default_value_t = ThreadsArg::Dedicated)]
    worker_threads: ThreadsArg,
    /// Run only the publisher.
    #[arg(long, conflicts_with = "subscriber_only")]
    publisher_only: bool,
    /// Run only the subscriber.
    #[arg(long)]
    subscriber_only: bool,
    /// Publisher endpoint; a bare endpoint binds.
    #[arg(long, default_value = "tcp://*:5558")]
    bind: String,
    /// Subscriber endpoint; a bare endpoint connects (ignored when both
    /// halves run).
    #[arg(long, default_value = "tcp://localhost:5558")]
    connect: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OverflowArg {
    /// Backpressure: the I/O task waits for room.
    Block,
    /// Drop the new message and count it.
    Drop,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RuntimeArg {
    /// `current_thread`: one thread for all I/O tasks.
    Current,
    /// `multi_thread` with 2 worker threads.
    Multi,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum ThreadsArg {
    /// One OS thread per worker.
    Dedicated,
    /// Workers are tasks on the subscriber's runtime.
    Runtime,
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let mut endpoint = EndpointSpec::parse(&args.connect, Attach::Connect)?;
    let mut publisher = None;
    if !args.subscriber_only {
        let bind = EndpointSpec::parse(&args.bind, Attach::Bind)?;
        let (thread, resolved) =
            feed::start_publisher(bind, args.keys, stop.clone(), sent.clone())?;
        println!(
            "publisher: {resolved}, {} keys, {}-byte messages, as fast as it can",
            args.keys,
            feed::MSG_LEN
        );
        endpoint = EndpointSpec::connect(&resolved.replace("0.0.0.0", "127.0.0.1"))?;
        publisher = Some(thread);
    }
    let ctrlc_stop = stop.clone();
    if args.publisher_only {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => ctrlc_stop.cancel(),
                () = tokio::time::sleep(Duration::from_secs(args.seconds)) => ctrlc_stop.cancel(),
            }
        });
        publisher
            .expect("started")
            .join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
        println!("publisher sent {}", sent.load(Ordering::Relaxed));
        return Ok(());
    }
    let rt = match args.runtime {
        RuntimeArg::Current => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        RuntimeArg::Multi => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    let result = rt.block_on(subscribe(&args, endpoint, stop.clone(), &sent));
    stop.cancel();
    if let Some(p) = publisher {
        p.join()
            .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    }
    result
}

/// Topic strings as the `&[&str]` the config takes.
fn refs(t: &[String]) -> Vec<&str> {
    t.iter().map(String::as_str).collect()
}

async fn subscribe(
    args: &Args,
    endpoint: EndpointSpec,
    stop: CancellationToken,
    sent: &AtomicU64,
) -> anyhow::Result<()> {
    let topics_of = |s: u64| -> Vec<String> {
        (0..10)
            .filter(|d| d % args.sockets == s)
            .map(|d| format!("K{d}"))
            .collect()
    };
    let first = topics_of(0);
    let mut config = BlackBoxConfig::new(vec![endpoint.clone()], &refs(&first))
        .workers(args.workers as usize)
        .queue_depth(args.queue_depth as usize)
        .key(ShardKey::Prefix(8))
        .overflow(match args.overflow {
            OverflowArg::Block => Overflow::Block,
            OverflowArg::Drop => Overflow::DropNewest,
        })
        .worker_threads(match args.worker_threads {
            ThreadsArg::Dedicated => WorkerThreads::Dedicated,
            ThreadsArg::Runtime => WorkerThreads::Runtime,
        });
    for s in 1..args.sockets {
        config = config.socket(vec![endpoint.clone()], &refs(&topics_of(s)));
    }
    let lost = feed::LossCounters::new(args.workers as usize);
    let (keys, work) = (args.keys as usize, Duration::from_nanos(args.work_ns));
    let l = lost.clone();
    let bb = BlackBox::start(
        config,
        move |w| feed::checking_worker(w, keys, work, l.clone()),
        // Not under `stop`: that stops the publisher, and the Black Box
        // drains after it.
        &CancellationToken::new(),
    )
    .await?;
    print_threads(args);
    let publishing = !args.subscriber_only;
    let mut last = bb.stats();
    let started = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let now = bb.stats();
        print_rates(&now, &last);
        last = now;
        if started.elapsed() >= Duration::from_secs(args.seconds) {
            break;
        }
    }
    stop.cancel();
    if publishing {
        // Let the subscriber drain what is still queued, until quiet.
        let mut before = bb.stats().total_received();
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = bb.stats().total_received();
            if now == before {
                break;
            }
            before = now;
        }
    }
    let stats = bb.shutdown().await?;
    let lost = lost.snapshot();
    summary(
        &stats,
        &lost,
        publishing.then(|| sent.load(Ordering::Relaxed)),
    );
    Ok(())
}

fn print_threads(args: &Args) {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let io = match args.runtime {
        RuntimeArg::Current => "1 thread (current_thread runtime)",
        RuntimeArg::Multi => "2 threads (multi_thread runtime)",
    };
    let workers = match args.worker_threads {
        ThreadsArg::Dedicated => format!("{} dedicated threads", args.workers),
        ThreadsArg::Runtime => format!("{} tasks on the subscriber runtime", args.workers),
    };
    let publisher = if args.subscriber_only {
        "none"
    } else {
        "1 thread"
    };
    println!("threads: publisher {publisher}; {} I/O task(s) on {io}; workers: {workers}; {cores} cores, placed by the OS", args.sockets);
}

fn print_rates(now: &BlackBoxStats, last: &BlackBoxStats) {
    let rates = now.rates_since(last);
    let total: f64 = rates.iter().sum();
    let per: Vec<String> = rates.iter().map(|r| format!("{:.0}k", r / 1e3)).collect();
    println!(
        "  t={:>4.1}s  total {:>7.0}k msg/s  per worker [{}]  dropped {}  queued {}",
        now.elapsed.as_secs_f64(),
        total / 1e3,
        per.join(", "),
        now.total_dropped(),
        now.in_flight()
    );
}

fn summary(stats: &BlackBoxStats, lost: &[u64], sent: Option<u64>) {
    let secs = stats.elapsed.as_secs_f64();
    println!("summary over {secs:.1} s:");
    for (w, d) in stats.delivered.iter().enumerate() {
        println!(
            "  worker {w}: {d} delivered ({:.0}k msg/s), {} dropped at its queue, {} lost upstream",
            *d as f64 / secs / 1e3,
            stats.dropped[w],
            lost[w].saturating_sub(stats.dropped[w])
        );
    }
    println!(
        "  total: {} received, {} delivered ({:.0}k msg/s), {} dropped",
        stats.total_received(),
        stats.total_delivered(),
        stats.total_delivered() as f64 / secs / 1e3,
        stats.total_dropped()
    );
    if let Some(sent) = sent {
        println!(
            "  publisher: {sent} sent; {} not received (sent before the subscription took effect, still queued in the publisher, or dropped by it)",
            sent.saturating_sub(stats.total_received())
        );
    }
}
