//! Suicidal Snail's limits against a hostile libzmq 4.3 publisher while a
//! well-behaved one is served. In its own test binary (its own process and
//! libzmq context): run in parallel with the other libzmq tests, its
//! multi-megabyte multipart traffic made libzmq 4.3.4 abort in
//! `session_base.cpp:260` (a half-read message when a pipe is cleaned up).

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::snail::envelope::Stamper;
use zpatterns::snail::*;

fn connect(ep: &str) -> EndpointSpec {
    EndpointSpec::connect(ep).unwrap()
}

/// A hostile libzmq publisher sends frames far over the size limit, then
/// a flood of stamps under 20,000 distinct publisher ids (each with a
/// 16 KiB body), while a well-behaved publisher keeps ticking. The
/// subscriber drops and counts the oversized messages, tracks at most
/// `max_publishers` ids (evicting the least recently heard), never
/// croaks, keeps delivering the good publisher's messages, and its memory
/// stays bounded (the table holds copied ids, not receive buffers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_libzmq_publisher_is_held_to_the_limits_while_a_good_one_is_served() {
    const IDS: u64 = 20_000;
    const BIG: u64 = 40;
    const MAX_PUBLISHERS: usize = 32;
    trace_init();
    let parent = CancellationToken::new();
    let good = SnailPublisherConfig::new(EndpointSpec::loopback(), "good");
    let mut good = SnailPublisher::start(good, &parent).await.unwrap();
    let good_ep = good.endpoint().to_owned();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            if good.send(vec![Bytes::from_static(b"good")]).await.is_err() {
                break;
            }
        }
    });
    let hostile = Lz::new(zmq::PUB);
    hostile.with(|s| s.set_sndhwm(0).unwrap()); // libzmq drops nothing
    let hostile_ep = hostile.bind_loopback();
    let config = SnailConfig::new([connect(&good_ep), connect(&hostile_ep)])
        .max_message_bytes(64 << 10)
        // Lag is not under test: a loaded CI machine must not croak here.
        .detector(
            DetectorConfig::default()
                .max_publishers(MAX_PUBLISHERS)
                .max_lag(Duration::from_secs(30)),
        );
    let mut sub = SnailSubscriber::start(config, &parent).await.unwrap();
    // Warm up: the good publisher is heard and the hostile one's
    // subscription is through.
    let mut probe = Stamper::with_epoch("probe", 1).unwrap();
    within(secs(10), "both publishers heard", async {
        let (mut good_seen, mut probe_seen) = (false, false);
        while !(good_seen && probe_seen) {
            let mut f = vec![Bytes::from_static(b"probe")];
            probe.stamp(&mut f, SystemTime::now());
            hostile
                .send_owned(f.iter().map(|b| b.to_vec()).collect())
                .await;
            let m = sub.recv().await.expect("no croak");
            match m.stamp().map(|s| s.publisher().as_ref().to_vec()) {
                Some(id) if id == b"good" => good_seen = true,
                Some(id) if id == b"probe" => probe_seen = true,
                _ => {}
            }
        }
    })
    .await;
    let rss_before = rss_kib();
    // The flood runs on a thread, paced by what the subscriber has taken
    // so that libzmq's own queue stays small (the subscriber's memory is
    // what is measured).
    let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let (t, d, h) = (taken.clone(), done.clone(), hostile.clone());
    let flood = std::thread::spawn(move || {
        let base = t.load(Ordering::Relaxed);
        let wait_for = |sent: u64, slack: u64| {
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while t.load(Ordering::Relaxed) + slack < base + sent {
                assert!(std::time::Instant::now() < deadline, "subscriber stalled");
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        let big = vec![b'x'; 4 << 20];
        for i in 0..BIG {
            h.with(|s| s.send_multipart([b"big".to_vec(), big.clone()], 0).unwrap());
            wait_for(i + 1, 2);
        }
        let body = vec![b'.'; 16 << 10];
        for i in 0..IDS {
            let mut st = Stamper::with_epoch(format!("evil-{i:05}"), 1).unwrap();
            let mut f = vec![Bytes::from_static(b"evil"), Bytes::from(body.clone())];
            st.stamp(&mut f, SystemTime::now());
            h.with(|s| s.send_multipart(f.iter().map(|b| b.to_vec()), 0).unwrap());
            wait_for(BIG + i + 1, 500);
        }
        d.store(true, Ordering::Relaxed);
    });
    // Read until the whole flood has been taken; count the good messages.
    let (mut good_during, mut max_tracked) = (0u64, 0u64);
    let received_before = sub.stats().received;
    let hostile_before = |s: &SnailStats| s.received - received_before;
    within(secs(120), "the flood is taken", async {
        loop {
            let m = sub.recv().await.expect("never croaks");
            let st = sub.stats();
            // Good messages are received too: count only the hostile ones
            // for pacing (oversized + evil stamps).
            if m.stamp().is_some_and(|s| s.publisher().as_ref() == b"good") {
                good_during += 1;
            }
            taken.store(hostile_before(&st) - good_during, Ordering::Relaxed);
            max_tracked = max_tracked.max(st.publishers);
            if done.load(Ordering::Relaxed)
                && st.oversized >= BIG
                && st.publishers_evicted >= IDS - MAX_PUBLISHERS as u64
            {
                break;
            }
        }
    })
    .await;
    flood.join().unwrap();
    let rss_after = rss_kib();
    let st = sub.stats();
    eprintln!(
        "hostile snail publisher: RSS {rss_before} KiB -> {rss_after} KiB; {} oversized, {} evicted, at most {max_tracked} tracked, {good_during} good messages during the flood",
        st.oversized, st.publishers_evicted
    );
    assert_eq!(st.oversized, BIG, "{st:?}");
    assert!(max_tracked <= MAX_PUBLISHERS as u64, "{max_tracked}");
    assert!(
        st.publishers_evicted >= IDS - MAX_PUBLISHERS as u64,
        "{st:?}"
    );
    assert!(
        good_during > 0,
        "the good publisher was heard during the flood"
    );
    // 40 × 4 MiB and 20,000 × 16 KiB went through; what stays is a table
    // of 32 small entries. A table keeping every id, or the buffers the
    // ids were sliced from, would hold at least 20,000 × 16 KiB = 312 MiB;
    // 256 MiB leaves room for what libzmq and the allocator keep in this
    // same process.
    assert!(
        rss_after < rss_before + 256 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
    // And the good publisher is still served afterwards.
    let before = sub.stats().delivered;
    within(secs(10), "good messages after the flood", async {
        let mut n = 0;
        while n < 20 {
            let m = sub.recv().await.expect("never croaks");
            if m.stamp().is_some_and(|s| s.publisher().as_ref() == b"good") {
                n += 1;
            }
        }
    })
    .await;
    assert!(sub.stats().delivered >= before + 20);
    parent.cancel();
}
