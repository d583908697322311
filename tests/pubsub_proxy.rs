//! The XSUB/XPUB proxy against libzmq publishers and subscribers.

mod common;
use common::*;

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::pubsub::{self, ProxyConfig};

async fn proxy_bound_both() -> pubsub::ProxyHandle {
    let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    pubsub::start(config, (), CancellationToken::new())
        .await
        .unwrap()
}

/// A libzmq XPUB publisher (it shows what the proxy sends upstream) and a
/// proxy whose frontend connects to it.
async fn proxy_behind_libzmq_xpub() -> (Lz, pubsub::ProxyHandle) {
    let publisher = Lz::new(zmq::XPUB);
    let ep = publisher.bind_loopback();
    let config = ProxyConfig::new(
        EndpointSpec::connect(&ep).unwrap(),
        EndpointSpec::loopback(),
    );
    let proxy = pubsub::start(config, (), CancellationToken::new())
        .await
        .unwrap();
    (publisher, proxy)
}

/// Publishes `frames` from `publisher` until `sub` receives something.
async fn publish_until_received(publisher: &Lz, frames: &[&[u8]], sub: &Lz) -> Vec<u8> {
    within(secs(10), "a message through the proxy", async {
        loop {
            publisher.send(frames).await;
            if let Some(m) = sub.recv(ms(50)).await {
                return m.concat();
            }
        }
    })
    .await
}

/// The `zeromq` crate's XSUB keeps a set, not counts: in its own proxy a
/// topic dies when one of two subscribers leaves, and publishers that
/// connect later never hear of it. Ours keeps counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_survives_one_of_two_subscribers_leaving_and_reaches_late_publishers() {
    trace_init();
    let proxy = proxy_bound_both().await;
    let (sub1, sub2) = (Lz::new(zmq::SUB), Lz::new(zmq::SUB));
    for s in [&sub1, &sub2] {
        s.subscribe(b"A");
        s.connect(proxy.backend_endpoint());
    }
    eventually(secs(10), "both subscribes seen", || {
        proxy.stats().subscribes == 2
    })
    .await;
    sub1.unsubscribe(b"A");
    eventually(secs(10), "unsubscribe seen", || {
        proxy.stats().unsubscribes == 1
    })
    .await;
    // Only now does a publisher connect: it must still be asked for "A".
    let late = Lz::new(zmq::PUB);
    late.connect(proxy.frontend_endpoint());
    let got = publish_until_received(&late, &[b"A", b"still here"], &sub2).await;
    assert_eq!(got, b"Astill here".to_vec());
    assert_eq!(sub1.recv(ms(200)).await, None, "sub1 unsubscribed");
    let stats = proxy.stats();
    assert_eq!(
        stats.upstream_sent, 1,
        "one subscribe upstream, no unsubscribe"
    );
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_unsubscribe_goes_upstream_and_data_stops() {
    trace_init();
    let (publisher, proxy) = proxy_behind_libzmq_xpub().await;
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"B");
    sub.connect(proxy.backend_endpoint());
    // The libzmq XPUB sees exactly what the proxy forwards upstream.
    let first = within(secs(10), "subscribe upstream", publisher.recv(secs(10))).await;
    assert_eq!(first, Some(vec![b"\x01B".to_vec()]));
    sub.unsubscribe(b"B");
    let second = publisher.recv(secs(10)).await;
    assert_eq!(second, Some(vec![b"\x00B".to_vec()]));
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_libzmq_xsub_is_counted_and_the_proxy_keeps_serving() {
    trace_init();
    let proxy = proxy_bound_both().await;
    let vandal = Lz::new(zmq::XSUB);
    vandal.connect(proxy.backend_endpoint());
    // Not subscriptions: multi-frame, bad command byte, empty frame.
    vandal.send(&[b"\x01A", b"second frame"]).await;
    vandal.send(&[b"\x07nonsense"]).await;
    vandal.send(&[b""]).await;
    eventually(secs(10), "three malformed counted", || {
        proxy.stats().malformed == 3
    })
    .await;
    // A well-behaved pair still works through the same proxy.
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(proxy.backend_endpoint());
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(proxy.frontend_endpoint());
    let got = publish_until_received(&publisher, &[b"ok"], &sub).await;
    assert_eq!(got, b"ok".to_vec());
    assert_eq!(proxy.stats().subscribes, 1);
    proxy.shutdown().await.unwrap();
}

/// A subscriber that stops reading loses its own messages (its queue is
/// bounded, libzmq's HWM semantics) and freezes nobody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_loses_only_its_own_messages() {
    trace_init();
    let config =
        ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback()).subscriber_hwm(1000);
    let proxy = pubsub::start(config, (), CancellationToken::new())
        .await
        .unwrap();
    // A zeromq-crate SUB that is never polled: nothing reads its stream.
    let _stalled = zsub(proxy.backend_endpoint(), &[""]).await;
    let reader = Lz::new(zmq::SUB);
    reader.subscribe(b"");
    reader.with(|s| s.set_rcvhwm(0).unwrap());
    reader.connect(proxy.backend_endpoint());
    eventually(secs(10), "both subscribed", || {
        proxy.stats().subscribes == 2
    })
    .await;
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_sndhwm(0).unwrap());
    publisher.connect(proxy.frontend_endpoint());
    eventually(secs(10), "publisher connected", || {
        proxy.stats().upstream_sent == 1
    })
    .await;
    tokio::time::sleep(ms(200)).await;
    // Enough 1 KiB messages to fill the stalled subscriber's kernel buffers
    // (a few MiB each side) and its queue many times over.
    const N: u32 = 30_000;
    let p = publisher.clone();
    let sender = tokio::task::spawn_blocking(move || {
        p.with(|s| {
            for i in 0..N {
                let mut m = i.to_be_bytes().to_vec();
                m.resize(1024, b'x');
                s.send(m, 0).unwrap();
            }
        })
    });
    let mut received = 0u32;
    let mut last = None;
    within(secs(60), "the reading subscriber keeps receiving", async {
        loop {
            if sender.is_finished() {
                publisher.send(&[b"END"]).await;
            }
            let Some(m) = reader.recv(ms(100)).await else {
                continue;
            };
            if m[0] == b"END" {
                break;
            }
            let seq = u32::from_be_bytes(m[0][..4].try_into().unwrap());
            assert!(
                last.is_none_or(|l| seq > l),
                "out of order: {seq} after {last:?}"
            );
            last = Some(seq);
            received += 1;
        }
    })
    .await;
    let stats = proxy.stats();
    assert_eq!(
        last,
        Some(N - 1),
        "the reader must see the end of the stream: {stats:?}"
    );
    assert!(
        stats.slow_drops > 0,
        "the stalled subscriber should have overflowed: {stats:?}"
    );
    // Every copy is accounted for: queued for a subscriber or dropped.
    assert_eq!(stats.deliveries + stats.slow_drops, 2 * stats.messages_out);
    tracing::info!(received, ?stats, "stalled-subscriber run");
    proxy.shutdown().await.unwrap();
}

/// libzmq's XPUB cancels a vanished subscriber's subscriptions; so do we,
/// and the last one goes upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnecting_subscriber_cancels_its_subscriptions_upstream() {
    trace_init();
    let (publisher, proxy) = proxy_behind_libzmq_xpub().await;
    let sub = zsub(proxy.backend_endpoint(), &["B", "C"]).await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(publisher.recv(secs(10)).await.expect("subscribe upstream"));
    }
    seen.sort();
    assert_eq!(seen, [vec![b"\x01B".to_vec()], vec![b"\x01C".to_vec()]]);
    drop(sub);
    let mut gone = Vec::new();
    for _ in 0..2 {
        gone.push(
            publisher
                .recv(secs(10))
                .await
                .expect("unsubscribe upstream"),
        );
    }
    gone.sort();
    assert_eq!(gone, [vec![b"\x00B".to_vec()], vec![b"\x00C".to_vec()]]);
    assert_eq!(proxy.stats().disconnects, 1);
    proxy.shutdown().await.unwrap();
}

/// Unlike the `zeromq` crate, the proxy backend answers ZMTP 3.1 PINGs, so a
/// libzmq subscriber with heartbeats enabled stays connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_subscribers_with_heartbeats_stay_connected() {
    trace_init();
    let proxy = proxy_bound_both().await;
    let sub = Lz::new(zmq::SUB);
    sub.with(|s| {
        s.set_heartbeat_ivl(50).unwrap();
        s.set_heartbeat_timeout(500).unwrap();
    });
    sub.subscribe(b"");
    sub.connect(proxy.backend_endpoint());
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(proxy.frontend_endpoint());
    publish_until_received(&publisher, &[b"hello"], &sub).await;
    // Several heartbeat intervals later the connection is the same one.
    tokio::time::sleep(ms(1500)).await;
    publish_until_received(&publisher, &[b"still"], &sub).await;
    let stats = proxy.stats();
    assert_eq!((stats.connects, stats.disconnects), (1, 0), "{stats:?}");
    proxy.shutdown().await.unwrap();
}
