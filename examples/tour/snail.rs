//! Tour section: Suicidal Snail. The Guide's too-slow subscriber croaks
//! (how long it took, and why); the same subscriber with a recovery policy
//! survives by skipping its backlog; and a ±2 s clock skew raises no alarm.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::snail::envelope::Stamp;
use zpatterns::snail::*;

const MAX_LAG: Duration = Duration::from_millis(300);

pub(crate) fn run() -> anyhow::Result<()> {
    crate::block_on(async {
        let stop = CancellationToken::new();
        let ep = publisher(stop.clone()).await?;
        println!(
            "   publisher: one stamped message per 1 ms; subscriber: 1-2 ms of work per message"
        );
        croak(&ep).await?;
        recover(&ep).await?;
        stop.cancel();
        anyhow::Ok(())
    })??;
    skew();
    Ok(())
}

async fn publisher(stop: CancellationToken) -> anyhow::Result<String> {
    let config = SnailPublisherConfig::new(EndpointSpec::loopback(), "tour");
    let mut p = SnailPublisher::start(config, &stop).await?;
    let ep = p.endpoint().to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            // Fails with `Stopped` once `stop` is cancelled.
            if p.send(vec![Bytes::from_static(b"tick")]).await.is_err() {
                break;
            }
        }
    });
    Ok(ep)
}

async fn subscriber(ep: &str, policy: Policy) -> anyhow::Result<SnailSubscriber> {
    let config = SnailConfig::new([EndpointSpec::connect(ep)?])
        .detector(DetectorConfig::default().max_lag(MAX_LAG))
        .policy(policy);
    Ok(SnailSubscriber::start(config, &CancellationToken::new()).await?)
}

async fn work() {
    tokio::time::sleep(Duration::from_millis(fastrand::u64(1..=2))).await;
}

async fn croak(ep: &str) -> anyhow::Result<()> {
    let mut sub = subscriber(ep, Policy::abort()).await?;
    let started = Instant::now();
    let err = loop {
        match sub.recv().await {
            Ok(_) => work().await,
            Err(e) => break e,
        }
    };
    let alarm = err
        .alarm()
        .ok_or_else(|| anyhow::anyhow!("not a croak: {err}"))?;
    println!(
        "   abort policy: croaked after {:.2} s and {} messages: lag {:.0} ms > max {:.0} ms (exit status {CROAK_EXIT_CODE})",
        started.elapsed().as_secs_f64(),
        sub.stats().received,
        alarm.lag().as_secs_f64() * 1e3,
        MAX_LAG.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn recover(ep: &str) -> anyhow::Result<()> {
    let resyncs = Arc::new(AtomicU64::new(0));
    let r = resyncs.clone();
    let policy = Policy::recover(move |_alarm| {
        r.fetch_add(1, Ordering::Relaxed);
        async { Recovery::SkipUntilLagBelow(Duration::from_millis(5)) }
    });
    let mut sub = subscriber(ep, policy).await?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        sub.recv().await?;
        work().await;
    }
    let s = sub.stats();
    println!(
        "   recover policy (skip the backlog): alive after 1.5 s; {} recoveries, {} delivered, {} skipped",
        resyncs.load(Ordering::Relaxed),
        s.delivered,
        s.skipped
    );
    Ok(())
}

/// The pure detector against a publisher whose clock is 2 s off.
fn skew() {
    for skew_ms in [2000i64, -2000] {
        let mut det = Detector::new(DetectorConfig::default());
        let mut trusted = Detector::new(DetectorConfig::default().clock(ClockSync::Trusted));
        let (mut alarms, mut trusted_alarms) = (0, 0);
        for seq in 0..10_000u64 {
            let now = UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + seq);
            let sent = (1_700_000_000_000 + seq) as i64 * 1000 + skew_ms * 1000
                - 300
                - fastrand::i64(0..1000);
            let stamp = Stamp::new(
                Bytes::from_static(b"p"),
                1,
                seq,
                UNIX_EPOCH + Duration::from_micros(sent as u64),
            );
            alarms += u32::from(det.handle_message(&stamp, now).is_croak());
            trusted_alarms += u32::from(trusted.handle_message(&stamp, now).is_croak());
        }
        let st = det.status(b"p").expect("tracked");
        println!(
            "   clock skew {skew_ms:+} ms, 10k messages: estimated offset {:+.1} ms, max lag {:.2} ms, {alarms} alarms (trusted clock: {trusted_alarms})",
            st.clock_offset_micros as f64 / 1e3,
            st.max_lag.as_secs_f64() * 1e3
        );
    }
}
