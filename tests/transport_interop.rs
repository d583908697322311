//! `ZmqTransport` against libzmq 4.3: a libzmq DEALER talking to a node's
//! ROUTER, and a node's DEALER talking to a libzmq ROUTER peer. The wire
//! contract: one payload frame; identities are `n<id>`.

mod common;
use common::*;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{recv, NodeId, Transport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_dealer_talks_to_a_node() {
    trace_init();
    let stop = CancellationToken::new();
    let mut node = ZmqTransport::start(ZmqConfig::new(NodeId(1)), &stop)
        .await
        .unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let dealer = Lz::new(zmq::DEALER);
    dealer.with(|s| s.set_identity(b"n42").unwrap());
    dealer.connect(&ep);
    dealer.send(&[b"ping from libzmq"]).await;
    let (from, m) = within(secs(10), "libzmq message", recv(&mut node))
        .await
        .unwrap();
    assert_eq!((from, &m[..]), (NodeId(42), &b"ping from libzmq"[..]));
    node.send(NodeId(42), Bytes::from_static(b"pong from rust"));
    let got = dealer.recv(secs(10)).await.expect("reply at libzmq");
    assert_eq!(text(&got), ["pong from rust"]);
    // A libzmq peer without a node identity is refused and counted.
    let anon = Lz::new(zmq::DEALER);
    anon.connect(&ep);
    anon.send(&[b"anonymous"]).await;
    eventually(secs(10), "garbage counted", || node.stats().garbage == 1).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talks_to_a_libzmq_router_peer() {
    trace_init();
    let stop = CancellationToken::new();
    let router = Lz::new(zmq::ROUTER);
    let ep = router.bind_loopback();
    let cfg = ZmqConfig::new(NodeId(3))
        .bind(None)
        .unwrap()
        .peer(NodeId(5), &ep)
        .unwrap();
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    let got = within(secs(15), "message at libzmq", async {
        loop {
            node.send(NodeId(5), Bytes::from_static(b"hello libzmq"));
            if let Some(m) = router.recv(ms(100)).await {
                return m;
            }
        }
    })
    .await;
    assert_eq!(text(&got), ["n3", "hello libzmq"]);
    // The libzmq ROUTER answers on the same connection.
    router.send(&[b"n3", b"hello rust"]).await;
    let (from, m) = within(secs(10), "answer", async {
        loop {
            let (from, m) = recv(&mut node).await.unwrap();
            if &m[..] == b"hello rust" {
                return (from, m);
            }
        }
    })
    .await;
    assert_eq!((from, &m[..]), (NodeId(5), &b"hello rust"[..]));
    stop.cancel();
}
