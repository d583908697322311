//! Espresso between libzmq publishers and subscribers, with the capture
//! checked.

mod common;
use common::*;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{
    CaptureEvent, CaptureFilter, Direction, Espresso, EspressoConfig, EspressoError, EventKind,
};
use zpatterns::pubsub::ProxyConfig;

/// Espresso behind `publisher` (which binds), and its capture receiver.
async fn espresso_behind(
    publisher: &Lz,
    filter: CaptureFilter,
    capacity: usize,
) -> (Espresso, mpsc::Receiver<CaptureEvent>) {
    let ep = publisher.bind_loopback();
    let config = ProxyConfig::new(
        EndpointSpec::connect(&ep).unwrap(),
        EndpointSpec::loopback(),
    );
    let config = EspressoConfig::new(config)
        .filter(filter)
        .capacity(capacity);
    let mut espresso = Espresso::start(config, &CancellationToken::new())
        .await
        .unwrap();
    let events = espresso.take_events();
    (espresso, events)
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
    assert_eq!(stats.captured, 4);
    let stats = stats.proxy;
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

/// Polls until nothing accepts TCP connections at `ep` (`tcp://host:port`).
async fn port_closed(ep: &str) {
    let addr = ep.trim_start_matches("tcp://").to_owned();
    within(secs(10), "the port to close", async {
        while tokio::net::TcpStream::connect(&addr).await.is_ok() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await
}

/// A message from a libzmq publisher reaches a libzmq subscriber through
/// `espresso` and shows up in its capture.
async fn forwards_and_captures(espresso: &mut Espresso, topic: &[u8]) {
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(topic);
    sub.connect(espresso.backend_endpoint());
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(espresso.frontend_endpoint());
    warm_up(&publisher, &[topic, b"body"], &sub).await;
    within(secs(10), "the message in the capture", async {
        loop {
            // Skip subscriptions, and earlier rounds' warm-up copies.
            let ev = next_event(espresso.events()).await;
            if ev.kind == EventKind::Message && ev.topic == topic {
                assert_eq!(ev.dir, Direction::Downstream);
                break;
            }
        }
    })
    .await;
}

/// Shutting down one Espresso, or dropping its handle, stops that one only:
/// the parent token is not cancelled and another Espresso under it still
/// forwards and captures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_espresso_stopped_by_shutdown_or_drop_leaves_the_others_running() {
    trace_init();
    let parent = CancellationToken::new();
    let config = || {
        EspressoConfig::new(ProxyConfig::new(
            EndpointSpec::loopback(),
            EndpointSpec::loopback(),
        ))
    };
    let a = Espresso::start(config(), &parent).await.unwrap();
    let b = Espresso::start(config(), &parent).await.unwrap();
    let mut c = Espresso::start(config(), &parent).await.unwrap();
    forwards_and_captures(&mut c, b"one").await;

    let a_backend = a.backend_endpoint().to_owned();
    let last = within(secs(10), "shutdown", a.shutdown()).await.unwrap();
    assert_eq!((last.captured, last.proxy.messages_in), (0, 0));
    assert!(!parent.is_cancelled());
    port_closed(&a_backend).await;
    forwards_and_captures(&mut c, b"two").await;

    let b_backend = b.backend_endpoint().to_owned();
    drop(b);
    port_closed(&b_backend).await;
    assert!(!parent.is_cancelled());
    forwards_and_captures(&mut c, b"three").await;
    let last = c.shutdown().await.unwrap();
    assert!(last.captured >= 6, "3 subscribes, 3 messages: {last:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_zero_capacity_is_refused_with_a_clear_error() {
    let config = EspressoConfig::new(ProxyConfig::new(
        EndpointSpec::loopback(),
        EndpointSpec::loopback(),
    ))
    .capacity(0);
    let err = Espresso::start(config, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(matches!(err, EspressoError::ZeroCapacity), "{err}");
}
