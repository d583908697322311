//! The XSUB/XPUB proxy against libzmq publishers and subscribers.

mod common;
use common::*;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::pubsub::{Proxy, ProxyConfig};

async fn proxy_bound_both() -> Proxy {
    let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    Proxy::start(config, (), &CancellationToken::new())
        .await
        .unwrap()
}

/// A libzmq XPUB publisher (it shows what the proxy sends upstream) and a
/// proxy whose frontend connects to it.
async fn proxy_behind_libzmq_xpub() -> (Lz, Proxy) {
    let publisher = Lz::new(zmq::XPUB);
    let ep = publisher.bind_loopback();
    let config = ProxyConfig::new(
        EndpointSpec::connect(&ep).unwrap(),
        EndpointSpec::loopback(),
    );
    let proxy = Proxy::start(config, (), &CancellationToken::new())
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
    let proxy = Proxy::start(config, (), &CancellationToken::new())
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
    // The subscription has reached the libzmq publisher once a probe gets
    // through (probes are skipped below).
    publish_until_received(&publisher, &[b"WARM"], &reader).await;
    // Enough 1 KiB messages to fill the stalled subscriber's kernel buffers
    // (a few MiB each side) and its queue many times over.
    // The publisher stays at most WINDOW messages ahead of the reader,
    // well inside the reader's own queue (1000): the reader is a
    // well-behaved subscriber however slowly this test runs, while the
    // stalled one falls behind without bound.
    const N: u32 = 30_000;
    const WINDOW: u32 = 400;
    let read = Arc::new(AtomicUsize::new(0));
    let p = publisher.clone();
    let r = read.clone();
    let sender = tokio::task::spawn_blocking(move || {
        for i in 0..N {
            while i as usize >= r.load(Ordering::Relaxed) + WINDOW as usize {
                std::thread::sleep(std::time::Duration::from_millis(1)); // until the reader catches up
            }
            let mut m = i.to_be_bytes().to_vec();
            m.resize(1024, b'x');
            p.with(|s| s.send(m, 0).unwrap());
        }
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
            if m[0] == b"WARM" {
                continue;
            }
            let seq = u32::from_be_bytes(m[0][..4].try_into().unwrap());
            assert!(
                last.is_none_or(|l| seq > l),
                "out of order: {seq} after {last:?}"
            );
            last = Some(seq);
            received += 1;
            read.store(received as usize, Ordering::Relaxed);
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
    // Every copy is accounted for: queued for a subscriber or dropped. The
    // snapshot is not a transaction and the last `END`s may still be going
    // through the proxy, so wait for the counters to settle.
    eventually(secs(10), "every copy queued or dropped", || {
        let s = proxy.stats();
        s.deliveries + s.slow_drops == 2 * s.messages_out
    })
    .await;
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
    // Through a relay that counts the proxy's PONGs.
    let (relay, pongs) = pong_counting_relay(proxy.backend_endpoint()).await;
    sub.connect(&relay);
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(proxy.frontend_endpoint());
    publish_until_received(&publisher, &[b"hello"], &sub).await;
    // A quiet spell: only heartbeats cross, and libzmq drops a connection
    // that hears nothing for 500 ms. 20 PONGs at one per 50 ms PING span
    // two such timeouts.
    let before = pongs.load(Ordering::Relaxed);
    eventually(secs(20), "20 PONGs from the proxy", || {
        pongs.load(Ordering::Relaxed) >= before + 20
    })
    .await;
    publish_until_received(&publisher, &[b"still"], &sub).await;
    // The connection is the same one.
    let stats = proxy.stats();
    assert_eq!((stats.connects, stats.disconnects), (1, 0), "{stats:?}");
    proxy.shutdown().await.unwrap();
}

/// A TCP relay in front of `target` (`tcp://host:port`): returns its own
/// endpoint and a count of the ZMTP PONG commands `target` sent back
/// through it (the command name, length-prefixed: `\x04PONG`).
async fn pong_counting_relay(target: &str) -> (String, Arc<AtomicUsize>) {
    let target = target.trim_start_matches("tcp://").to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ep = format!("tcp://{}", listener.local_addr().unwrap());
    let pongs = Arc::new(AtomicUsize::new(0));
    let count = pongs.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let count = count.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        let n = match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        tail.extend_from_slice(&buf[..n]);
                        let found = tail.windows(5).filter(|w| w == b"\x04PONG").count();
                        count.fetch_add(found, Ordering::Relaxed);
                        // Keep 4 bytes: a match split across reads.
                        tail.drain(..tail.len().saturating_sub(4));
                        if cw.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                };
                // Either side closing ends both.
                tokio::select! {
                    _ = up => {}
                    _ = down => {}
                }
            });
        }
    });
    (ep, pongs)
}

/// The host:port of a `tcp://` endpoint.
fn addr(ep: &str) -> String {
    ep.trim_start_matches("tcp://").to_owned()
}

/// Polls until nothing accepts TCP connections at `ep` any more.
async fn port_closed(ep: &str) {
    let addr = addr(ep);
    within(secs(10), "the port to close", async {
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await
}

/// Shutting down one proxy stops it alone; dropping another's handle stops
/// that one (its port closes); the parent token is never cancelled and a
/// third proxy under it keeps forwarding between libzmq peers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_proxy_stopped_by_shutdown_or_drop_leaves_the_others_on_the_parent_running() {
    trace_init();
    let parent = CancellationToken::new();
    let config = || ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    let a = Proxy::start(config(), (), &parent).await.unwrap();
    let b = Proxy::start(config(), (), &parent).await.unwrap();
    let c = Proxy::start(config(), (), &parent).await.unwrap();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(c.backend_endpoint());
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(c.frontend_endpoint());
    assert_eq!(
        publish_until_received(&publisher, &[b"before"], &sub).await,
        b"before"
    );

    let a_backend = a.backend_endpoint().to_owned();
    assert!(tokio::net::TcpStream::connect(addr(&a_backend))
        .await
        .is_ok());
    let last = within(secs(10), "shutdown", a.shutdown()).await.unwrap();
    assert_eq!(last.messages_in, 0, "{last:?}");
    assert!(!parent.is_cancelled());
    port_closed(&a_backend).await;
    assert_eq!(
        publish_until_received(&publisher, &[b"after shutdown"], &sub).await,
        b"after shutdown"
    );

    let b_backend = b.backend_endpoint().to_owned();
    assert!(tokio::net::TcpStream::connect(addr(&b_backend))
        .await
        .is_ok());
    drop(b);
    port_closed(&b_backend).await;
    assert!(!parent.is_cancelled());
    assert_eq!(
        publish_until_received(&publisher, &[b"after drop"], &sub).await,
        b"after drop"
    );
    let last = c.shutdown().await.unwrap();
    assert!(last.messages_out >= 3, "{last:?}");
}
