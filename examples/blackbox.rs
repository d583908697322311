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
//! padding. Workers check each key's sequence, so messages the publisher
//! dropped (the `zeromq` PUB drops silently past 100k queued) show up as
//! "lost upstream".

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zeromq::{PubSocket, ZmqMessage};
use zpatterns::blackbox::{
    BlackBox, BlackBoxConfig, BlackBoxStats, Overflow, ShardKey, WorkerThreads,
};
use zpatterns::endpoint::{Attach, EndpointSpec};

/// Black Box: a sharded high-speed subscriber under a replayed feed.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
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

const MSG_LEN: usize = 100;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let args = Args::parse();
    let stop = CancellationToken::new();
    let sent = Arc::new(AtomicU64::new(0));
    let mut endpoint = EndpointSpec::parse(&args.connect, Attach::Connect)?;
    let mut publisher = None;
    if !args.subscriber_only {
        let (thread, resolved) = start_publisher(&args, stop.clone(), sent.clone())?;
        println!(
            "publisher: {resolved}, {} keys, {MSG_LEN}-byte messages, as fast as it can",
            args.keys
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

/// The publisher: its own OS thread and `current_thread` runtime (where
/// the `zeromq` PUB is fastest), yielding every 256 sends.
fn start_publisher(
    args: &Args,
    stop: CancellationToken,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<(std::thread::JoinHandle<anyhow::Result<()>>, String)> {
    let bind = EndpointSpec::parse(&args.bind, Attach::Bind)?;
    let keys = args.keys;
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async move {
                let mut socket = PubSocket::new();
                let resolved = bind.attach_to(&mut socket).await;
                let failed = resolved.is_err();
                let _ = tx.send(resolved);
                if failed {
                    return Ok(());
                }
                let mut seqs = vec![0u64; keys as usize];
                let mut rng = fastrand::Rng::with_seed(7);
                let mut n = 0u64;
                while !stop.is_cancelled() {
                    let k = rng.u64(0..keys);
                    let seq = &mut seqs[k as usize];
                    socket.send(ZmqMessage::from(market_data(k, *seq))).await?;
                    *seq += 1;
                    n += 1;
                    if n % 256 == 0 {
                        sent.store(n, Ordering::Relaxed);
                        tokio::task::yield_now().await;
                    }
                }
                sent.store(n, Ordering::Relaxed);
                Ok(())
            })
        })?;
    let resolved = rx.recv().context("publisher thread died")??;
    Ok((thread, resolved))
}

/// One 100-byte message: key, the key's sequence number, padding.
fn market_data(k: u64, seq: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(MSG_LEN);
    b.put_slice(format!("K{}-{:05}", k % 10, k / 10).as_bytes());
    b.put_u64(seq);
    b.put_bytes(b'.', MSG_LEN - 16);
    b.freeze()
}

/// The key index and sequence number of a message, if it has the layout.
fn parse(frame: &[u8]) -> Option<(usize, u64)> {
    if frame.len() < 16 || frame[0] != b'K' || frame[2] != b'-' {
        return None;
    }
    let d = usize::from(frame[1].wrapping_sub(b'0'));
    let n = std::str::from_utf8(&frame[3..8])
        .ok()?
        .parse::<usize>()
        .ok()?;
    Some((
        n * 10 + d,
        u64::from_be_bytes(frame[8..16].try_into().ok()?),
    ))
}

async fn subscribe(
    args: &Args,
    endpoint: EndpointSpec,
    stop: CancellationToken,
    sent: &AtomicU64,
) -> anyhow::Result<()> {
    let mut config = BlackBoxConfig::new()
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
    for s in 0..args.sockets {
        let topics: Vec<String> = (0..10)
            .filter(|d| d % args.sockets == s)
            .map(|d| format!("K{d}"))
            .collect();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        config = config.socket(vec![endpoint.clone()], &topics);
    }
    let lost: Arc<Vec<AtomicU64>> =
        Arc::new((0..args.workers).map(|_| AtomicU64::new(0)).collect());
    let (keys, work) = (args.keys as usize, Duration::from_nanos(args.work_ns));
    let l = lost.clone();
    let bb = BlackBox::start(config, move |w| {
        let lost = l.clone();
        let mut next = vec![u64::MAX; keys];
        move |msg: ZmqMessage| {
            if let Some((k, seq)) = msg.get(0).and_then(|f| parse(f)) {
                if let Some(expected) = next.get_mut(k) {
                    if *expected != u64::MAX && seq > *expected {
                        lost[w].fetch_add(seq - *expected, Ordering::Relaxed);
                    }
                    *expected = seq + 1;
                }
            }
            if !work.is_zero() {
                let t = Instant::now();
                while t.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
        }
    })
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
    let lost: Vec<u64> = lost.iter().map(|l| l.load(Ordering::Relaxed)).collect();
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
            lost[w]
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
            "  publisher: {sent} sent; {} not received (sent before the subscription took effect, or dropped silently by the PUB)",
            sent.saturating_sub(stats.total_received())
        );
    }
}
