//! Espresso between libzmq publishers and subscribers, with the capture
//! checked.

mod common;
use common::*;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{self, CaptureEvent, CaptureFilter, Direction, EventKind};
use zpatterns::pubsub::{ProxyConfig, ProxyHandle};

async fn espresso_behind(
    publisher: &Lz,
    filter: CaptureFilter,
    capacity: usize,
) -> (ProxyHandle, mpsc::Receiver<CaptureEvent>) {
    let ep = publisher.bind_loopback();
    let config = ProxyConfig::new(
        EndpointSpec::connect(&ep).unwrap(),
        EndpointSpec::loopback(),
    );
    espresso::start(config, filter, capacity, CancellationToken::new())
        .await
        .unwrap()
}

/// Publishes `frames` until `sub` receives one message; returns how many
/// were sent (the first ones may be lost while the subscription travels).
async fn warm_up(publisher: &Lz, frames: &[&[u8]], sub: &Lz) -> u64 {
    within(secs(10), "subscription to take effect", async {
        let mut sent = 0;
        loop {
            publisher.send(frames).await;
            sent += 1;
            if sub.recv(ms(50)).await.is_some() {
                return sent;
            }
        }
    })
    .await
}

async fn next_event(rx: &mut mpsc::Receiver<CaptureEvent>) -> CaptureEvent {
    within(secs(10), "a capture event", rx.recv())
        .await
        .expect("capture closed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captures_both_directions_between_libzmq_peers() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    let (proxy, mut events) = espresso_behind(&publisher, CaptureFilter::all(), 1000).await;
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"A");
    sub.connect(proxy.backend_endpoint());

    let first = next_event(&mut events).await;
    assert_eq!(
        (first.dir, first.kind),
        (Direction::Upstream, EventKind::Subscribe)
    );
    assert_eq!(first.topic_lossy(), "A");
    assert_eq!(first.frames, [bytes::Bytes::from_static(b"\x01A")]);

    warm_up(&publisher, &[b"A-00000", b"payload"], &sub).await;
    publisher.send(&[b"B-00001", b"not subscribed"]).await;
    publisher.send(&[b"A-00002", b"payload"]).await;
    assert_eq!(
        text(&sub.recv(secs(10)).await.unwrap()),
        ["A-00002", "payload"]
    );

    let mut downstream: Vec<String> = Vec::new();
    while downstream.last().is_none_or(|t| t != "A-00002") {
        let ev = next_event(&mut events).await;
        assert_eq!(ev.dir, Direction::Downstream);
        assert_eq!(ev.kind, EventKind::Message);
        assert_eq!(ev.frames.len(), 2, "multipart kept whole");
        downstream.push(ev.topic_lossy().into_owned());
    }
    // The publisher filtered B: only A messages crossed the proxy.
    assert!(
        downstream.iter().all(|t| t.starts_with("A-")),
        "{downstream:?}"
    );

    // The subscriber leaves: its subscription is cancelled and captured.
    drop(sub);
    let gone = next_event(&mut events).await;
    assert_eq!(
        (gone.dir, gone.kind),
        (Direction::Upstream, EventKind::Unsubscribe)
    );
    assert_eq!(gone.topic_lossy(), "A");
    assert!(gone.seq > first.seq);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_never_reads_costs_drops_not_forwarding() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    let (proxy, mut events) = espresso_behind(&publisher, CaptureFilter::all(), 4).await;
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(proxy.backend_endpoint());
    warm_up(&publisher, &[b"warm"], &sub).await;
    const N: usize = 300;
    for i in 0..N {
        publisher.send(&[format!("m{i}").as_bytes()]).await;
    }
    for i in 0..N {
        let m = within(secs(10), "forwarded message", sub.recv(secs(10)))
            .await
            .unwrap();
        assert_eq!(m, [format!("m{i}").into_bytes()]);
    }
    // The subscribe and every message that reached the proxy were offered
    // to the capture; the channel holds 4, the rest were dropped and counted.
    let stats = proxy.stats();
    assert!(stats.messages_in > N as u64);
    assert_eq!(stats.capture_drops, 1 + stats.messages_in - 4);
    let kept: Vec<u64> = (0..4).map(|_| events.try_recv().unwrap().seq).collect();
    assert_eq!(kept, [0, 1, 2, 3]);
    proxy.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_keep_only_what_was_asked_for() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    let filter = CaptureFilter::all()
        .subscriptions_only(true)
        .topic_prefix("B");
    let (proxy, mut events) = espresso_behind(&publisher, filter, 100).await;
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"A");
    sub.subscribe(b"B");
    sub.connect(proxy.backend_endpoint());
    warm_up(&publisher, &[b"B-1"], &sub).await;
    let ev = next_event(&mut events).await;
    assert_eq!(
        (ev.kind, ev.topic_lossy().as_ref()),
        (EventKind::Subscribe, "B")
    );
    assert!(events.try_recv().is_err(), "no data, no subscription to A");
    proxy.shutdown().await.unwrap();
}
