//! Tour: how long a late subscriber waits for its first value, without and
//! with a Last Value Cache in front of the Guide's pathological publisher.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::frames::message;
use zpatterns::lvc::{Lvc, LvcConfig};
use zpatterns::pubsub::ProxyConfig;

const TOPICS: u32 = 1000;
const UPDATE_EVERY: Duration = Duration::from_millis(50);
const PATIENCE: Duration = Duration::from_secs(3);

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(tour())?
}

async fn tour() -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    // The cache listens first; the publisher binds and the cache connects.
    let mut publisher = zeromq::PubSocket::new();
    let pub_ep = publisher.bind("tcp://127.0.0.1:0").await?.to_string();
    let config = LvcConfig::new(ProxyConfig::new(
        EndpointSpec::connect(&pub_ep)?,
        EndpointSpec::loopback(),
    ));
    let cache = Lvc::start(config, &cancel).await?;
    let t0 = Instant::now();
    while cache.stats().proxy.upstream_sent == 0 || t0.elapsed() < Duration::from_millis(300) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The pathological publisher: every topic once, then one random topic per tick.
    for n in 0..TOPICS {
        publisher
            .send(message([format!("{n:03}"), "Save Roger".into()]).expect("frames"))
            .await?;
        if n % 256 == 255 {
            tokio::task::yield_now().await;
        }
    }
    let pub_cancel = cancel.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPDATE_EVERY);
        while !pub_cancel.is_cancelled() {
            tick.tick().await;
            let t = format!("{:03}", fastrand::u32(0..TOPICS));
            let _ = publisher
                .send(message([t, "Off with his head!".into()]).expect("frames"))
                .await;
        }
    });
    while cache.stats().cache.topics < u64::from(TOPICS) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "   publisher sent {TOPICS} topics once, then one random update every {} ms",
        UPDATE_EVERY.as_millis()
    );
    let topic = format!("{:03}", fastrand::u32(0..TOPICS));
    let direct = first_value(&pub_ep, &topic).await?;
    let expected = UPDATE_EVERY * TOPICS / 2;
    match direct {
        Some(d) => println!("   late subscriber to {topic}, direct to the publisher: first value after {:.1} ms (lucky)", ms(d)),
        None => println!(
            "   late subscriber to {topic}, direct to the publisher: nothing within {} s (expected wait ~{} s; ~500 s at the Guide's 1 update/s)",
            PATIENCE.as_secs(),
            expected.as_secs()
        ),
    }
    let cached = first_value(cache.backend_endpoint(), &topic)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no cached value"))?;
    println!(
        "   late subscriber to {topic}, through the cache: first value after {:.1} ms",
        ms(cached)
    );
    let (n, all) = count_values(cache.backend_endpoint(), "").await?;
    println!(
        "   a subscriber to \"\" got all {n} cached topics in key order in {:.1} ms",
        ms(all)
    );
    let s = cache.stats();
    println!(
        "   cache: {} topics, {} KiB, {} replays, {} evictions",
        s.cache.topics,
        s.cache.bytes / 1024,
        s.replays,
        s.cache.evictions
    );
    cache.shutdown().await?;
    cancel.cancel();
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn first_value(ep: &str, topic: &str) -> anyhow::Result<Option<Duration>> {
    let mut sub = zeromq::SubSocket::new();
    sub.connect(ep).await?;
    let started = Instant::now();
    sub.subscribe(topic).await?;
    Ok(tokio::time::timeout(PATIENCE, sub.recv())
        .await
        .ok()
        .transpose()?
        .map(|_| started.elapsed()))
}

async fn count_values(ep: &str, prefix: &str) -> anyhow::Result<(usize, Duration)> {
    let mut sub = zeromq::SubSocket::new();
    sub.connect(ep).await?;
    let started = Instant::now();
    sub.subscribe(prefix).await?;
    let mut n = 0;
    let mut last = String::new();
    let mut elapsed = Duration::ZERO;
    while let Ok(m) = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await {
        let topic = String::from_utf8_lossy(&m?.into_vec()[0]).into_owned();
        // Count the replay: it arrives first, in key order.
        if topic <= last {
            break;
        }
        last = topic;
        n += 1;
        elapsed = started.elapsed();
    }
    Ok((n, elapsed))
}
