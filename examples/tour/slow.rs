//! Tour: one slow and one fast subscriber behind a proxy, under each
//! slow-subscriber policy: `Drop` (gaps for the slow one), `Block` (nodrop:
//! everything for both, the publisher held back) and `Disconnect` (the slow
//! one cut, nobody held back for long).
//!
//! The subscribers are libzmq SUBs (as a C or Python program would be)
//! with a small receive pipe: a `zeromq`-crate SUB reads its socket into
//! memory whatever the application's pace, so it never looks slow to the
//! proxy.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::frames::message;
use zpatterns::pubsub::{Proxy, ProxyConfig, SlowPolicy};

/// Data messages per run, of `PAYLOAD` bytes.
const N: u32 = 20_000;
const PAYLOAD: usize = 1024;
/// The proxy's per-subscriber queue.
const HWM: usize = 256;

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(tour())?
}

async fn tour() -> anyhow::Result<()> {
    println!(
        "   a publisher sends {N} messages of {PAYLOAD} B as fast as it can; subscriber queues hold {HWM};"
    );
    println!("   the slow subscriber pauses 1 ms after every 8 messages");
    let policies = [
        ("drop", SlowPolicy::Drop, "the rest dropped"),
        ("nodrop", SlowPolicy::Block, "lost"),
        (
            "disconnect 50 ms",
            SlowPolicy::Disconnect {
                after: Duration::from_millis(50),
            },
            "disconnected",
        ),
    ];
    for (name, policy, lost) in policies {
        let r = one(policy).await?;
        let s = &r.stats;
        println!(
            "   {name:17} fast {}, slow {}; proxy dropped {}, paused {} times, disconnected {} ({:.2} s)",
            describe(&r.fast, lost),
            describe(&r.slow, lost),
            s.slow_drops,
            s.slow_blocks,
            s.slow_disconnects,
            r.took.as_secs_f64()
        );
    }
    Ok(())
}

struct Outcome {
    fast: Vec<u32>,
    slow: Vec<u32>,
    stats: zpatterns::pubsub::ProxyStats,
    took: Duration,
}

/// `lost` says what became of the rest when only a prefix arrived.
fn describe(seqs: &[u32], lost: &str) -> String {
    let in_order = seqs.iter().copied().eq(0..seqs.len() as u32);
    let how = if in_order && seqs.len() == N as usize {
        "all, in order".to_owned()
    } else if in_order {
        format!("the first ones in order, then {lost}")
    } else {
        "with gaps".to_owned()
    };
    format!("{}/{N} ({how})", seqs.len())
}

async fn one(policy: SlowPolicy) -> anyhow::Result<Outcome> {
    let cancel = CancellationToken::new();
    let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback())
        .subscriber_hwm(HWM)
        .slow_subscribers(policy);
    let proxy = Proxy::start(config, (), &cancel).await?;
    let backend = proxy.backend_endpoint().to_owned();
    let warm = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let done = Arc::new(AtomicBool::new(false));
    let fast = subscriber(&backend, false, warm[0].clone())?;
    let slow = subscriber(&backend, true, warm[1].clone())?;
    let mut publisher = zeromq::PubSocket::new();
    publisher.connect(proxy.frontend_endpoint()).await?;
    let started = Instant::now();
    while !warm.iter().all(|w| w.load(Ordering::Acquire)) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(10),
            "subscriptions never reached the publisher"
        );
        publisher.send(message(["warm"]).expect("frames")).await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    let payload = vec![b'x'; PAYLOAD];
    for seq in 0..N {
        let frames = [
            b"data".to_vec(),
            seq.to_be_bytes().to_vec(),
            payload.clone(),
        ];
        publisher.send(message(frames).expect("frames")).await?;
        if seq % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    // The end marker, repeated (a PUB may drop it) until both are done.
    let end = {
        let done = done.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                if publisher
                    .send(message(["end"]).expect("frames"))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let fast = tokio::task::spawn_blocking(move || fast.join()).await?;
    let slow = tokio::task::spawn_blocking(move || slow.join()).await?;
    let (Ok(fast), Ok(slow)) = (fast, slow) else {
        anyhow::bail!("a subscriber thread panicked");
    };
    let took = t0.elapsed();
    done.store(true, Ordering::Release);
    end.await?;
    let stats = proxy.shutdown().await?;
    Ok(Outcome {
        fast,
        slow,
        stats,
        took,
    })
}

/// A libzmq SUB on its own thread, reading data messages until the end
/// marker (or 3 s of silence).
fn subscriber(
    ep: &str,
    slow: bool,
    warm: Arc<AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<Vec<u32>>> {
    let sub = zmq::Context::new().socket(zmq::SUB)?;
    sub.set_linger(0)?;
    sub.set_rcvhwm(8)?;
    sub.set_rcvtimeo(3_000)?;
    sub.set_subscribe(b"")?;
    sub.connect(ep)?;
    Ok(std::thread::spawn(move || {
        let mut seqs = Vec::new();
        while let Ok(m) = sub.recv_multipart(0) {
            match m.first().map(|f| &f[..]) {
                Some(b"warm") => warm.store(true, Ordering::Release),
                Some(b"end") => break,
                _ => {
                    let seq = m.get(1).and_then(|f| f[..].try_into().ok());
                    seqs.push(u32::from_be_bytes(seq.unwrap_or([0xff; 4])));
                    if slow && seqs.len() % 8 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        seqs
    }))
}
