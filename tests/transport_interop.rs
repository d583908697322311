//! `ZmqTransport` against libzmq 4.3: a libzmq DEALER talking to a node's
//! ROUTER, a node's DEALER talking to a libzmq ROUTER peer, and a hostile
//! libzmq DEALER (oversized frames, garbage, a flood) contained while a
//! well-behaved one is served; a libzmq client that never reads does not
//! hold up the answers to another. The wire contract: one payload frame;
//! identities are `n<id>`.

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

/// Receives from `node` until `want` arrives from `from`; returns how many
/// other messages were taken first.
async fn recv_until(node: &mut ZmqTransport, from: NodeId, want: &[u8]) -> usize {
    within(secs(20), "the good peer's message", async {
        let mut others = 0;
        loop {
            let (f, m) = recv(node).await.expect("transport open");
            if f == from && &m[..] == want {
                return others;
            }
            others += 1;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_libzmq_dealer_is_contained_while_a_good_one_is_served() {
    trace_init();
    const LIMIT: usize = 64 * 1024;
    const BUDGET: usize = 1 << 20;
    const BIG: usize = 1 << 20;
    const BIGS: u64 = 128;
    const MEDIUM: usize = 32 * 1024;
    const FLOOD: u64 = 256;
    let stop = CancellationToken::new();
    let cfg = ZmqConfig::new(NodeId(1))
        .max_message(LIMIT)
        .inbound_bytes(BUDGET);
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let good = Lz::new(zmq::DEALER);
    good.with(|s| s.set_identity(b"n42").unwrap());
    good.connect(&ep);
    good.send(&[b"hello"]).await;
    assert_eq!(recv_until(&mut node, NodeId(42), b"hello").await, 0);

    let hostile = Lz::new(zmq::DEALER);
    hostile.with(|s| s.set_identity(b"n66").unwrap());
    hostile.connect(&ep);
    let rss_before = rss_kib();
    // 1. 128 MiB in 1 MiB frames, each over the 64 KiB limit, and 100
    //    messages with a wrong frame count.
    let big = vec![0xAB_u8; BIG];
    for _ in 0..BIGS {
        hostile.send_owned(vec![big.clone()]).await;
    }
    for _ in 0..100 {
        hostile.send(&[b"two", b"frames"]).await;
    }
    eventually(secs(60), "oversized frames and garbage counted", || {
        let s = node.stats();
        s.oversized == BIGS && s.garbage == 100
    })
    .await;
    let rss_after = rss_kib();
    eprintln!(
        "VmRSS before {rss_before} KiB, after {BIGS} x {} KiB oversized frames {rss_after} KiB",
        BIG / 1024
    );
    // Nothing of them was kept: no queued bytes, and RSS grew by far less
    // than the 128 MiB sent.
    assert_eq!(node.stats().queued_bytes, 0);
    assert!(
        rss_after < rss_before + 48 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );

    // 2. A flood of acceptable 32 KiB messages the node does not read: only
    //    the hostile peer's share (half of the 1 MiB inbound budget) is
    //    kept, the rest is dropped, and room is left for the good peer.
    let medium = vec![1_u8; MEDIUM];
    for _ in 0..FLOOD {
        hostile.send_owned(vec![medium.clone()]).await;
    }
    eventually(secs(60), "the flood to arrive", || {
        let s = node.stats();
        s.dropped + s.queued_bytes / MEDIUM as u64 == FLOOD
    })
    .await;
    let s = node.stats();
    assert!(s.queued_bytes <= BUDGET as u64 / 2, "{s:?}");
    assert!(s.dropped >= FLOOD - (BUDGET / 2 / MEDIUM) as u64, "{s:?}");

    // 3. The good peer is still served, both ways.
    good.send(&[b"still there"]).await;
    let before = recv_until(&mut node, NodeId(42), b"still there").await;
    assert!(before as u64 <= (BUDGET / MEDIUM) as u64, "{before}");
    node.send(NodeId(42), Bytes::from_static(b"yes"));
    let got = good.recv(secs(10)).await.expect("reply at the good peer");
    assert_eq!(text(&got), ["yes"]);
    assert_eq!(node.stats().queued_bytes, 0);
    stop.cancel();
}

/// A libzmq client that never reads its answers: once the `zeromq` crate's
/// queue for it is full, the node's ROUTER drops answers to it (after
/// waiting at most `stall`) instead of holding up the answers to every
/// other client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_client_that_never_reads_does_not_hold_up_answers_to_others() {
    trace_init();
    const ANSWERS: u64 = 150_000;
    let stop = CancellationToken::new();
    let mut node = ZmqTransport::start(ZmqConfig::new(NodeId(1)).stall(ms(200)), &stop)
        .await
        .unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let good = Lz::new(zmq::DEALER);
    good.with(|s| s.set_identity(b"n42").unwrap());
    good.connect(&ep);
    good.send(&[b"hello"]).await;
    recv_until(&mut node, NodeId(42), b"hello").await;
    let deaf = Lz::new(zmq::DEALER);
    deaf.with(|s| {
        s.set_identity(b"n66").unwrap();
        s.set_rcvhwm(1).unwrap();
    });
    deaf.connect(&ep);
    deaf.send(&[b"hello"]).await;
    recv_until(&mut node, NodeId(66), b"hello").await;

    // More answers than the `zeromq` crate queues for one peer (100,000),
    // in batches the node's own queue (4,096) takes; each batch must be
    // handled (sent or dropped) before the next. Without the stall limit
    // the ROUTER's writer would wait for the deaf client forever.
    let payload = Bytes::from(vec![7u8; 256]);
    let mut issued = 0;
    while issued < ANSWERS {
        for _ in 0..1000 {
            node.send(NodeId(66), payload.clone());
        }
        issued += 1000;
        let handled = |node: &ZmqTransport| {
            let s = node.stats();
            s.sent + s.dropped >= issued
        };
        within(
            secs(10),
            "the ROUTER's writer handles every answer",
            async {
                while !handled(&node) {
                    tokio::time::sleep(ms(2)).await; // poll the counters
                }
            },
        )
        .await;
    }
    let s = node.stats();
    eprintln!("{ANSWERS} answers to a client that does not read: {s:?}");
    assert!(s.dropped > 0, "{s:?}");
    assert!(s.sent >= 100_000, "{s:?}");

    // The good client is answered at once.
    node.send(NodeId(42), Bytes::from_static(b"yes"));
    let got = good.recv(secs(5)).await.expect("the good client's answer");
    assert_eq!(text(&got), ["yes"]);
    stop.cancel();
}
