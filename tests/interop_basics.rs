//! Baseline wire compatibility between the `zeromq` crate and libzmq 4.3,
//! the facts every pattern in this crate relies on, plus a guard that fails
//! loudly if the crate's known incompatibility (ZMTP heartbeats) changes.

mod common;
use common::*;

use std::time::Instant;
use zeromq::prelude::*;
use zeromq::{PubSocket, RouterSocket, SocketEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_pub_to_zeromq_sub_keeps_multipart_and_filters() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    let ep = publisher.bind_loopback();
    let mut sub = zsub(&ep, &["A"]).await;
    // The subscription travels asynchronously; publish until one arrives.
    let got = within(secs(10), "first message", async {
        loop {
            publisher.send(&[b"B", b"not for us"]).await;
            publisher.send(&[b"A", b"payload"]).await;
            if let Some(m) = zrecv(&mut sub, ms(50)).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(text(&got), ["A", "payload"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeromq_pub_to_libzmq_sub() {
    trace_init();
    let mut publisher = PubSocket::new();
    let ep = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"A");
    sub.connect(&ep);
    let got = within(secs(10), "first message", async {
        loop {
            let m = zpatterns::frames::message([&b"A"[..], b"x"]).unwrap();
            publisher.send(m).await.unwrap();
            publisher.send("B-skip".into()).await.unwrap();
            if let Some(m) = sub.recv(ms(50)).await {
                break m;
            }
        }
    })
    .await;
    assert_eq!(text(&got), ["A", "x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_dealer_identity_reaches_zeromq_router() {
    trace_init();
    let mut router = RouterSocket::new();
    let ep = router.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    let dealer = Lz::new(zmq::DEALER);
    dealer.with(|s| s.set_identity(b"dealer-1").unwrap());
    dealer.connect(&ep);
    dealer.send(&[b"ICANHAZ?", b""]).await;
    let got = within(secs(10), "router recv", router.recv())
        .await
        .unwrap();
    assert_eq!(text(&got.into_vec()), ["dealer-1", "ICANHAZ?", ""]);
    let reply = zpatterns::frames::message([&b"dealer-1"[..], b"KTHXBAI"]).unwrap();
    router.send(reply).await.unwrap();
    assert_eq!(text(&dealer.recv(secs(10)).await.unwrap()), ["KTHXBAI"]);
}

/// The `zeromq` crate does not implement ZMTP 3.1 PING/PONG: a libzmq peer
/// with `ZMQ_HEARTBEAT_IVL` set gets disconnected over and over. The README
/// tells users never to enable it. If this test starts failing, the crate
/// has learned heartbeats: update the README and the patterns' docs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_libzmq_heartbeats_break_zeromq_connections() {
    trace_init();
    let mut publisher = PubSocket::new();
    let mut monitor = publisher.monitor();
    let ep = publisher
        .bind("tcp://127.0.0.1:0")
        .await
        .unwrap()
        .to_string();
    let sub = Lz::new(zmq::SUB);
    sub.with(|s| s.set_heartbeat_ivl(100).unwrap());
    sub.subscribe(b"");
    sub.connect(&ep);
    let started = Instant::now();
    let mut disconnects = 0;
    use futures::StreamExt;
    while started.elapsed() < secs(5) && disconnects < 2 {
        match tokio::time::timeout(ms(200), monitor.next()).await {
            Ok(Some(SocketEvent::Disconnected(_))) => disconnects += 1,
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    assert!(
        disconnects >= 2,
        "libzmq heartbeats no longer break the zeromq crate ({disconnects} disconnects in 5 s): update the README's limits"
    );
}
