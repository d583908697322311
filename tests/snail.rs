//! Suicidal Snail end to end on the `zeromq` crate: a stamping publisher,
//! a checked subscriber, the abort and recover policies, loss and garbage,
//! and the handle shape (shutdown of one handle, drop, parent cancel).

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
    ticking("ticker", every, &stop, CancellationToken::new())
        .await
        .0
}

/// A publisher `id` under `parent` ticking every `every`, until `stop`
/// (then it shuts down) or until `parent` is cancelled; returns its
/// endpoint and the task, which returns the publisher's final stats.
async fn ticking(
    id: &str,
    every: Duration,
    parent: &CancellationToken,
    stop: CancellationToken,
) -> (String, tokio::task::JoinHandle<SnailPublisherStats>) {
    let config = SnailPublisherConfig::new(EndpointSpec::loopback(), id.to_owned());
    let mut p = SnailPublisher::start(config, parent).await.unwrap();
    let ep = p.endpoint().to_owned();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                () = stop.cancelled() => return p.shutdown().await.unwrap(),
                _ = tick.tick() => {}
            }
            match p.send(vec![Bytes::from_static(b"tick")]).await {
                Ok(()) => {}
                Err(SnailError::Stopped) => break,
                Err(e) => panic!("send: {e}"),
            }
        }
        p.stats()
    });
    (ep, task)
}

/// A subscriber config connecting to `ep`.
fn on(ep: &str) -> SnailConfig {
    SnailConfig::new([EndpointSpec::connect(ep).unwrap()])
}

async fn subscriber(config: SnailConfig) -> SnailSubscriber {
    within(
        secs(10),
        "connect",
        SnailSubscriber::start(config, &CancellationToken::new()),
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
    let mut sub = subscriber(on(&ep).detector(max_lag(100)).policy(policy)).await;
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
        (AlarmCause::Lag, &b"ticker"[..])
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
    let mut sub = subscriber(on(&ep).detector(max_lag(1000))).await;
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
            assert_eq!(alarm.cause(), AlarmCause::Lag);
            c.fetch_add(1, Ordering::SeqCst);
            Recovery::SkipUntilLagBelow(Duration::from_millis(10))
        }
    });
    let mut sub = subscriber(on(&ep).detector(max_lag(60)).policy(policy)).await;
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
    let mut sub = subscriber(on(&ep).detector(max_lag(30)).policy(policy)).await;
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
    let mut sub = subscriber(on(&ep).detector(max_lag(30)).policy(policy)).await;
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
    let mut sub = subscriber(on(&ep)).await;
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
    assert_eq!(alarm.cause(), AlarmCause::Loss);
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
    let config = SnailPublisherConfig::new(EndpointSpec::loopback(), "guard");
    let mut p = SnailPublisher::start(config, &CancellationToken::new())
        .await
        .unwrap();
    let mut sub = zsub(p.endpoint(), &[""]).await;
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

/// Receives until `n` messages from publisher `id` arrived (others are
/// skipped); panics on an error or after 20 s.
async fn recv_from(sub: &mut SnailSubscriber, id: &[u8], n: usize) {
    within(secs(20), "messages from the publisher", async {
        let mut got = 0;
        while got < n {
            let m = sub.recv().await.expect("no error");
            if m.stamp().is_some_and(|s| s.publisher().as_ref() == id) {
                got += 1;
            }
        }
    })
    .await
}

#[tokio::test]
async fn shutting_down_one_handle_leaves_the_others_under_the_same_parent_running() {
    trace_init();
    let parent = CancellationToken::new();
    let stop1 = CancellationToken::new();
    let (ep1, p1) = ticking("p1", ms(2), &parent, stop1.clone()).await;
    let (ep2, p2) = ticking("p2", ms(2), &parent, CancellationToken::new()).await;
    let both = || {
        SnailConfig::new([
            EndpointSpec::connect(&ep1).unwrap(),
            EndpointSpec::connect(&ep2).unwrap(),
        ])
        .detector(max_lag(5_000))
    };
    let start = |c| SnailSubscriber::start(c, &parent);
    let mut a = within(secs(10), "a", start(both())).await.unwrap();
    let mut b = within(secs(10), "b", start(both())).await.unwrap();
    recv_from(&mut a, b"p1", 5).await;
    recv_from(&mut b, b"p2", 5).await;
    // One subscriber stops: the other keeps receiving.
    let stats = a.shutdown().await.unwrap();
    assert!(stats.delivered >= 5, "{stats:?}");
    assert!(!parent.is_cancelled());
    recv_from(&mut b, b"p1", 20).await;
    // One publisher shuts down: the other keeps publishing.
    stop1.cancel();
    let sent1 = within(secs(10), "p1 shuts down", p1).await.unwrap().sent;
    assert!(sent1 >= 25, "{sent1}");
    assert!(!parent.is_cancelled());
    let before = b.stats().delivered;
    recv_from(&mut b, b"p2", 20).await;
    assert!(b.stats().delivered >= before + 20);
    // Cancelling the parent stops everything under it.
    parent.cancel();
    let err = within(secs(10), "stopped", async {
        loop {
            if let Err(e) = b.recv().await {
                break e;
            }
        }
    })
    .await;
    assert!(matches!(err, SnailError::Stopped), "{err}");
    let sent = within(secs(10), "publisher stops", p2).await.unwrap().sent;
    assert!(sent >= 25, "{sent}");
}

#[tokio::test]
async fn a_publisher_shuts_down_alone_and_refuses_sends_once_its_parent_is_cancelled() {
    trace_init();
    let parent = CancellationToken::new();
    let start = |id: &str| {
        let c = SnailPublisherConfig::new(EndpointSpec::loopback(), id.to_owned()).epoch(9);
        SnailPublisher::start(c, &parent)
    };
    let mut one = start("one").await.unwrap();
    let mut two = start("two").await.unwrap();
    let config = on(two.endpoint()).detector(max_lag(5_000));
    let mut sub = within(secs(10), "connect", SnailSubscriber::start(config, &parent))
        .await
        .unwrap();
    one.send(vec![Bytes::from("x")]).await.unwrap();
    assert_eq!(one.shutdown().await.unwrap().sent, 1);
    // `two` still works after its sibling's shutdown.
    let got = within(secs(10), "from two", async {
        loop {
            two.send(vec![Bytes::from("y")]).await.unwrap();
            if let Ok(Ok(m)) = tokio::time::timeout(ms(50), sub.recv()).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(got.stamp().unwrap().epoch(), 9);
    assert_eq!(got.frames(), [Bytes::from("y")]);
    parent.cancel();
    assert!(matches!(
        two.send(vec![Bytes::from("z")]).await,
        Err(SnailError::Stopped)
    ));
    assert!(matches!(
        two.send_guide_timestamp().await,
        Err(SnailError::Stopped)
    ));
    assert!(two.stats().sent >= 1);
    let stopped = within(secs(10), "recv stops", sub.recv()).await;
    assert!(matches!(stopped, Err(SnailError::Stopped)), "{stopped:?}");
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let parent = CancellationToken::new();
    let none: [EndpointSpec; 0] = [];
    assert!(matches!(
        SnailSubscriber::start(SnailConfig::new(none), &parent).await,
        Err(SnailError::NoEndpoint)
    ));
    let long = SnailPublisherConfig::new(EndpointSpec::loopback(), vec![b'x'; 256]);
    assert!(matches!(
        SnailPublisher::start(long, &parent).await,
        Err(SnailError::Envelope(EnvelopeError::IdTooLong(256)))
    ));
}
