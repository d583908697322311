//! Tour: Espresso traces a publisher and a subscriber through a proxy.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{Espresso, EspressoConfig, EventKind};
use zpatterns::frames::render;
use zpatterns::pubsub::ProxyConfig;

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(tour())?
}

async fn tour() -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let pub_ep =
        crate::common::spawn_letter_publisher(Duration::from_millis(20), cancel.clone()).await?;
    let config = ProxyConfig::new(EndpointSpec::connect(&pub_ep)?, EndpointSpec::loopback());
    let mut proxy = Espresso::start(EspressoConfig::new(config).capacity(1024), &cancel).await?;
    println!(
        "   publisher {pub_ep} -> espresso -> subscriber on {}",
        proxy.backend_endpoint()
    );
    println!("   a subscriber takes 5 messages on A and B, then disconnects; the capture shows:");
    let backend = proxy.backend_endpoint().to_owned();
    let started = Instant::now();
    let subscriber = tokio::spawn(async move {
        let mut sub = zeromq::SubSocket::new();
        sub.connect(&backend).await?;
        sub.subscribe("A").await?;
        sub.subscribe("B").await?;
        for _ in 0..5 {
            sub.recv().await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    let mut unsubscribes = 0;
    while unsubscribes < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), proxy.events().recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("capture closed"))?;
        unsubscribes += usize::from(ev.kind == EventKind::Unsubscribe);
        let frames: Vec<_> = ev.frames.iter().map(|f| render(f)).collect();
        println!(
            "   {:>6.1} ms  {:<4} {:<11} {}",
            started.elapsed().as_secs_f64() * 1e3,
            ev.dir,
            ev.kind,
            frames.join(" ")
        );
    }
    subscriber.await??;
    let s = proxy.stats().proxy;
    println!(
        "   proxy counters: {} messages in, {} delivered, {} subscribes, {} unsubscribes (the disconnect cancelled them), {} capture drops",
        s.messages_in, s.deliveries, s.subscribes, s.unsubscribes, s.capture_drops
    );
    proxy.shutdown().await?;
    cancel.cancel();
    Ok(())
}
