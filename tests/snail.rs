//! Suicidal Snail end to end on the `zeromq` crate: a stamping publisher,
//! a checked subscriber, the abort and recover policies, loss and garbage.

mod common;
use common::*;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zeromq::PubSocket;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::snail::*;

/// A stamping publisher on loopback sending one `[tick][stamp]` per `every`
/// until `stop`; returns the endpoint.
async fn ticking_publisher(every: Duration, stop: CancellationToken) -> String {
    let (mut p, ep) = SnailPublisher::attach(&EndpointSpec::loopback(), "ticker")
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        while !stop.is_cancelled() {
            tick.tick().await;
            p.send(vec![Bytes::from_static(b"tick")]).await.unwrap();
        }
    });
    ep
}

async fn subscriber(ep: &str, config: SnailConfig) -> SnailSubscriber {
    let ep = EndpointSpec::connect(ep).unwrap();
    within(
        secs(10),
        "connect",
        SnailSubscriber::attach(&[ep], &[""], config),
    )
    .await
    .unwrap()
}

fn max_lag(ms: u64) -> DetectorConfig {
    DetectorConfig::default().max_lag(Duration::from_millis(ms))
}

#[tokio::test]
async fn a_slow_subscriber_croaks_with_the_numbers() {
    trace_init();
    let stop = CancellationToken::new();
    let ep = ticking_publisher(ms(1), stop.clone()).await;
    let hooked = Arc::new(AtomicU64::new(0));
    let h = hooked.clone();
    let policy = Policy::abort_with(move |_| {
        h.fetch_add(1, Ordering::SeqCst);
    });
    let mut sub = subscriber(
        &ep,
        SnailConfig::new().detector(max_lag(100)).policy(policy),
    )
    .await;
    let err = within(secs(20), "croak", async {
        loop {
            match sub.recv().await {
                Ok(_) => tokio::time::sleep(ms(3)).await, // 3 ms of "work" per 1 ms tick
                Err(e) => break e,
            }
        }
    })
    .await;
    stop.cancel();
    let alarm = err.alarm().expect("a croak");
    assert_eq!(
        (alarm.cause(), alarm.publisher().as_ref()),
        (Cause::Lag, &b"ticker"[..])
    );
    assert!(alarm.lag() > ms(100), "{alarm}");
    assert_eq!(
        err.exit_code(),
        std::process::ExitCode::from(CROAK_EXIT_CODE)
    );
    assert_eq!(hooked.load(Ordering::SeqCst), 1, "abort hook called once");
    assert_eq!(sub.stats().croaks, 1);
}

#[tokio::test]
async fn a_fast_subscriber_never_croaks_and_loses_nothing() {
    // The Guide's 1 s limit: a subscriber doing no work never gets near
    // it, even on a loaded test machine.
    trace_init();
    let stop = CancellationToken::new();
    let ep = ticking_publisher(ms(1), stop.clone()).await;
    let mut sub = subscriber(&ep, SnailConfig::new().detector(max_lag(1000))).await;
    let mut seqs = Vec::new();
    within(secs(20), "300 messages", async {
        while seqs.len() < 300 {
            let d = sub.recv().await.expect("no croak");
            assert_eq!(d.frames(), [Bytes::from_static(b"tick")], "stamp removed");
            assert!(d.lag().unwrap() < ms(1000));
            seqs.push(d.stamp().unwrap().seq().unwrap());
        }
    })
    .await;
    stop.cancel();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "consecutive: {seqs:?}"
    );
    let status = sub.detector().status(b"ticker").unwrap();
    assert_eq!((status.lost, status.gaps, status.received), (0, 0, 300));
}

#[tokio::test]
async fn recover_hook_skips_the_backlog_instead_of_dying() {
    trace_init();
    let stop = CancellationToken::new();
    let ep = ticking_publisher(ms(1), stop.clone()).await;
    let calls = Arc::new(AtomicU64::new(0));
    let c = calls.clone();
    let policy = Policy::recover(move |alarm| {
        let c = c.clone();
        async move {
            assert_eq!(alarm.cause(), Cause::Lag);
            c.fetch_add(1, Ordering::SeqCst);
            Recovery::SkipUntilLagBelow(Duration::from_millis(10))
        }
    });
    let mut sub = subscriber(&ep, SnailConfig::new().detector(max_lag(60)).policy(policy)).await;
    within(secs(30), "recoveries", async {
        while calls.load(Ordering::SeqCst) < 2 {
            sub.recv().await.expect("recovers, never aborts");
            tokio::time::sleep(ms(3)).await;
        }
    })
    .await;
    stop.cancel();
    let st = sub.stats();
    assert_eq!(st.recoveries, 2);
    assert!(st.skipped > 0, "{st:?}");
    assert_eq!(st.received, st.delivered + st.skipped, "{st:?}");
}

#[tokio::test]
async fn recovery_may_resume_or_abort() {
    trace_init();
    // Resume: the late message is delivered and the alarm cleared.
    let stop = CancellationToken::new();
    let ep = ticking_publisher(ms(1), stop.clone()).await;
    let policy = Policy::recover(|_| async { Recovery::Resume });
    let mut sub = subscriber(&ep, SnailConfig::new().detector(max_lag(30)).policy(policy)).await;
    within(secs(20), "a resume", async {
        while sub.stats().recoveries == 0 {
            sub.recv().await.expect("resumes");
            tokio::time::sleep(ms(3)).await;
        }
    })
    .await;
    assert_eq!(sub.stats().received, sub.stats().delivered);
    // Abort from the hook: the croak error.
    let policy = Policy::recover(|_| async { Recovery::Abort });
    let mut sub = subscriber(&ep, SnailConfig::new().detector(max_lag(30)).policy(policy)).await;
    let err = within(secs(20), "abort", async {
        loop {
            if let Err(e) = sub.recv().await {
                break e;
            }
            tokio::time::sleep(ms(3)).await;
        }
    })
    .await;
    stop.cancel();
    assert!(matches!(err, SnailError::CannotKeepUp(_)), "{err}");
}

#[tokio::test]
async fn lost_messages_croak_with_the_gap_and_garbage_is_delivered_unchecked() {
    trace_init();
    let mut publisher = PubSocket::new();
    let ep = EndpointSpec::loopback()
        .attach_to(&mut publisher)
        .await
        .unwrap();
    let mut sub = subscriber(&ep, SnailConfig::new()).await;
    let mut stamper = Stamper::with_epoch("p", 1).unwrap();
    // Publish seq 0 until the subscription is through.
    let first = within(secs(10), "subscription", async {
        loop {
            let mut f = vec![Bytes::from("warm-up")];
            stamper.stamp(&mut f, SystemTime::now());
            publisher
                .send(zpatterns::frames::message(f).unwrap())
                .await
                .unwrap();
            if let Ok(Ok(d)) = tokio::time::timeout(ms(50), sub.recv()).await {
                break d;
            }
        }
    })
    .await;
    assert_eq!(first.frames(), [Bytes::from("warm-up")]);
    // Drain any warm-up duplicates still in flight.
    while let Ok(Ok(_)) = tokio::time::timeout(ms(100), sub.recv()).await {}
    for frames in [vec!["garbage"], vec!["t", "SNL\x01short"]] {
        publisher
            .send(zpatterns::frames::message(frames).unwrap())
            .await
            .unwrap();
        let d = within(secs(5), "garbage", async {
            loop {
                let d = sub.recv().await.unwrap();
                if d.frames() != [Bytes::from("warm-up")] {
                    break d; // late warm-ups are skipped
                }
            }
        })
        .await;
        assert!(d.stamp().is_none());
    }
    assert_eq!(sub.stats().unstamped, 2);
    // Skip one sequence number: a lost message.
    let next = stamper.next_seq();
    let _lost = stamper.next_stamp(SystemTime::now());
    let mut f = vec![Bytes::from("after-gap")];
    stamper.stamp(&mut f, SystemTime::now());
    publisher
        .send(zpatterns::frames::message(f).unwrap())
        .await
        .unwrap();
    let err = within(secs(5), "gap croak", sub.recv()).await.unwrap_err();
    let alarm = err.alarm().unwrap();
    assert_eq!(alarm.cause(), Cause::Loss);
    assert_eq!(
        alarm.gap(),
        Some(Gap {
            expected: next,
            got: next + 1
        })
    );
    assert_eq!(alarm.lost(), 1);
}

/// Guard on the `zeromq` 0.7 PUB, which the snail's docs rely on: it clones
/// its per-subscriber queue's sender for every message (`pub.rs`,
/// `send_to_subscriber`), and a fresh `futures` sender may always add one
/// message, so that queue never fills. A stalled subscriber loses nothing;
/// the publisher's memory grows instead, and only lag reveals the problem.
/// A bounded queue would hold at most 100k messages plus the 2 × 4 MiB of
/// socket buffers (~60k of these): this sends 400k. If this test fails,
/// the crate now drops for slow subscribers: update `patterns/snail.md`.
#[tokio::test]
async fn zeromq_pub_queues_for_a_stalled_subscriber_without_bound() {
    trace_init();
    const N: u64 = 400_000;
    let (mut p, ep) = SnailPublisher::attach(&EndpointSpec::loopback(), "guard")
        .await
        .unwrap();
    let mut sub = zsub(&ep, &[""]).await;
    let body = Bytes::from(vec![b'.'; 100]);
    within(secs(10), "subscription", async {
        loop {
            p.send(vec![Bytes::from_static(b"warm-up")]).await.unwrap();
            if zrecv(&mut sub, ms(20)).await.is_some() {
                break;
            }
        }
    })
    .await;
    while zrecv(&mut sub, ms(100)).await.is_some() {}
    let first = p.stamper().next_seq();
    for _ in 0..N {
        p.send(vec![Bytes::from_static(b"data"), body.clone()])
            .await
            .unwrap();
    }
    // Only now does the subscriber read.
    let mut next = first;
    within(secs(120), "drain", async {
        while next < first + N {
            let frames = zrecv(&mut sub, secs(5)).await.expect("the rest never came");
            let stamp = zpatterns::snail::envelope::decode(&frames, WireFormat::Toolkit).unwrap();
            assert_eq!(stamp.seq(), Some(next), "a gap: the PUB dropped");
            next += 1;
        }
    })
    .await;
}
