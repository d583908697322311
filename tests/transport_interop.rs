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

/// Held by every test here: some measure the process's RSS and the others
/// (200 clients, floods) would move it, so they run one at a time (the
/// whole file takes about a second).
static RSS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_dealer_talks_to_a_node() {
    trace_init();
    let _rss = RSS.lock().await;
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
    let _rss = RSS.lock().await;
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

/// A libzmq DEALER with routing id `n<id>` (and `rcvhwm`, if given),
/// connected to `node` and seen by it (its `hello` arrived).
async fn client(node: &mut ZmqTransport, id: u32, rcvhwm: Option<i32>) -> Lz {
    let d = Lz::new(zmq::DEALER);
    d.with(|s| {
        s.set_identity(format!("n{id}").as_bytes()).unwrap();
        if let Some(h) = rcvhwm {
            s.set_rcvhwm(h).unwrap();
        }
    });
    d.connect(node.endpoint().unwrap());
    d.send(&[b"hello"]).await;
    recv_until(node, NodeId(id), b"hello").await;
    d
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
    let _rss = RSS.lock().await;
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
    let _rss = RSS.lock().await;
    const ANSWERS: u64 = 4_000;
    const SHARE: usize = 1 << 20;
    let stop = CancellationToken::new();
    let cfg = ZmqConfig::new(NodeId(1)).unsent_bytes(8 << 20, SHARE);
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    let good = client(&mut node, 42, None).await;
    let _deaf = client(&mut node, 66, Some(1)).await;

    // 250 MiB of answers, each its own 64 KiB allocation, to a client that
    // reads none: the node must neither wait for it nor keep more than its
    // share of unsent bytes (without the limit the connection's queue of
    // 4,096 messages would hold 256 MiB).
    let before = rss_kib();
    let mut issued = 0;
    let mut peak = 0;
    while issued < ANSWERS {
        for i in 0..100 {
            node.send(NodeId(66), Bytes::from(vec![i as u8; 64 << 10]));
        }
        issued += 100;
        eventually(secs(10), "every answer handled (sent or dropped)", || {
            let s = node.stats();
            s.sent + s.dropped == issued
        })
        .await;
        let s = node.stats();
        peak = peak.max(s.unsent_bytes);
        assert!(s.unsent_bytes <= SHARE as u64, "{s:?}");
        tokio::task::yield_now().await;
    }
    let grown = rss_kib().saturating_sub(before);
    let s = node.stats();
    eprintln!("{ANSWERS} answers of 64 KiB to a client that does not read: {s:?}, peak unsent {peak} B, RSS +{grown} KiB");
    assert!(s.dropped > ANSWERS / 2, "{s:?}");
    assert!(s.sent > 0, "{s:?}");
    assert!(grown < 48 << 10, "RSS grew by {grown} KiB");

    // The good client is answered at once.
    node.send(NodeId(42), Bytes::from_static(b"yes"));
    let got = good.recv(secs(5)).await.expect("the good client's answer");
    assert_eq!(text(&got), ["yes"]);
    stop.cancel();
}

/// A ZMTP 3.0 DEALER handshake with routing id `identity` over a plain TCP
/// stream (this crate's codec writes the greeting and READY), so the test
/// can then write raw frames.
fn raw_dealer(ep: &str, identity: &[u8]) -> std::net::TcpStream {
    use std::io::{Read, Write};
    use zpatterns::zmtp::codec;
    let mut s = std::net::TcpStream::connect(ep.strip_prefix("tcp://").unwrap()).unwrap();
    s.write_all(&codec::greeting()).unwrap();
    let mut theirs = [0u8; codec::GREETING_LEN];
    s.read_exact(&mut theirs).unwrap();
    let mut ready = bytes::BytesMut::new();
    codec::encode_ready(
        &[("Socket-Type", b"DEALER"), ("Identity", identity)],
        &mut ready,
    );
    s.write_all(&ready).unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_header_announcing_a_terabyte_costs_nothing_and_the_good_client_is_served() {
    trace_init();
    let _rss = RSS.lock().await;
    let stop = CancellationToken::new();
    let mut node = ZmqTransport::start(ZmqConfig::new(NodeId(1)), &stop)
        .await
        .unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let good = client(&mut node, 42, None).await;
    let before = rss_kib();
    // The `zeromq` crate reserves a frame's announced length when it reads
    // the header: 1 TiB aborts the process ("memory allocation failed").
    // This transport sees the header is over its limit and skips the body
    // as it comes, unbuffered.
    let ep2 = ep.clone();
    let sent = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = raw_dealer(&ep2, b"n9");
        let mut header = vec![0x02u8];
        header.extend_from_slice(&(1u64 << 40).to_be_bytes());
        s.write_all(&header).unwrap();
        let junk = vec![0u8; 1 << 20];
        for _ in 0..32 {
            s.write_all(&junk).unwrap();
        }
        s
    })
    .await
    .unwrap();
    node.send(NodeId(42), Bytes::from_static(b"still here"));
    let got = good.recv(secs(10)).await.expect("the good client's answer");
    assert_eq!(text(&got), ["still here"]);
    good.send(&[b"and you?"]).await;
    recv_until(&mut node, NodeId(42), b"and you?").await;
    let grown = rss_kib().saturating_sub(before);
    eprintln!(
        "after a 1 TiB header and 32 MiB of its body: RSS +{grown} KiB, {:?}",
        node.stats()
    );
    assert!(grown < 16 << 10, "RSS grew by {grown} KiB");
    drop(sent);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_max_connections_are_refused_while_a_connected_client_is_served() {
    trace_init();
    let _rss = RSS.lock().await;
    let stop = CancellationToken::new();
    let cfg = ZmqConfig::new(NodeId(1)).max_connections(4);
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let good = client(&mut node, 42, None).await;
    // Ten more libzmq clients: three fit, the others are closed at accept
    // (libzmq keeps reconnecting them, and each attempt is refused).
    let others: Vec<Lz> = (0..10)
        .map(|i| {
            let d = Lz::new(zmq::DEALER);
            d.with(|s| s.set_identity(format!("n{}", 100 + i).as_bytes()).unwrap());
            d.connect(&ep);
            d
        })
        .collect();
    eventually(secs(10), "connections refused", || {
        node.stats().refused >= 7
    })
    .await;
    for d in &others {
        d.send(&[b"me too"]).await;
    }
    let mut heard = std::collections::BTreeSet::new();
    within(secs(10), "the three admitted clients", async {
        while heard.len() < 3 {
            let (from, m) = recv(&mut node).await.unwrap();
            assert_eq!(&m[..], b"me too");
            heard.insert(from);
        }
    })
    .await;
    node.send(NodeId(42), Bytes::from_static(b"served"));
    let got = good.recv(secs(10)).await.expect("the good client's answer");
    assert_eq!(text(&got), ["served"]);
    eprintln!(
        "max_connections 4: {:?}, admitted besides the good one: {heard:?}",
        node.stats()
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_router_peer_that_never_reads_holds_only_its_unsent_share() {
    trace_init();
    let _rss = RSS.lock().await;
    const SHARE: usize = 1 << 20;
    let stop = CancellationToken::new();
    let deaf = Lz::new(zmq::ROUTER);
    deaf.with(|s| s.set_rcvhwm(1).unwrap());
    let deaf_ep = deaf.bind_loopback();
    let good = Lz::new(zmq::ROUTER);
    let good_ep = good.bind_loopback();
    let cfg = ZmqConfig::new(NodeId(3))
        .bind(None)
        .unwrap()
        .peer(NodeId(5), &deaf_ep)
        .unwrap()
        .peer(NodeId(6), &good_ep)
        .unwrap()
        .unsent_bytes(8 << 20, SHARE);
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    within(secs(15), "both peers connected", async {
        while node.stats().connects < 2 {
            tokio::time::sleep(ms(5)).await; // poll the counter
        }
    })
    .await;
    // 250 MiB to the peer that reads nothing, each message its own
    // allocation: only its 1 MiB share is held; every other send drops.
    let before = rss_kib();
    for batch in 0..40 {
        for i in 0..100 {
            node.send(NodeId(5), Bytes::from(vec![i as u8; 64 << 10]));
        }
        let s = node.stats();
        assert!(s.unsent_bytes <= SHARE as u64, "batch {batch}: {s:?}");
        tokio::task::yield_now().await;
    }
    let grown = rss_kib().saturating_sub(before);
    let s = node.stats();
    eprintln!("4000 x 64 KiB to a libzmq ROUTER peer that does not read: {s:?}, RSS +{grown} KiB");
    assert!(s.dropped > 2_000, "{s:?}");
    assert!(grown < 48 << 10, "RSS grew by {grown} KiB");
    // The other peer is served.
    node.send(NodeId(6), Bytes::from_static(b"for you"));
    let got = good.recv(secs(10)).await.expect("the good peer's message");
    assert_eq!(text(&got), ["n3", "for you"]);
    stop.cancel();
}

/// The transport answers ZMTP 3.1 PINGs (the `zeromq` crate treated them
/// as a protocol error), so a libzmq client with heartbeats on keeps its
/// connection: libzmq drops one that hears nothing for the 300 ms timeout,
/// and three such spans pass without a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_client_with_heartbeats_stays_connected() {
    trace_init();
    let _rss = RSS.lock().await;
    let stop = CancellationToken::new();
    let mut node = ZmqTransport::start(ZmqConfig::new(NodeId(1)), &stop)
        .await
        .unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let dealer = Lz::new(zmq::DEALER);
    dealer.with(|s| {
        s.set_identity(b"n42").unwrap();
        s.set_heartbeat_ivl(50).unwrap();
        s.set_heartbeat_timeout(300).unwrap();
    });
    let monitor = dealer.monitor(zmq::SocketEvent::DISCONNECTED as i32);
    dealer.connect(&ep);
    dealer.send(&[b"hello"]).await;
    recv_until(&mut node, NodeId(42), b"hello").await;
    assert_eq!(
        monitor.event(ms(900)).await,
        None,
        "libzmq dropped the connection"
    );
    node.send(NodeId(42), Bytes::from_static(b"still here"));
    let got = dealer.recv(secs(10)).await.expect("the answer");
    assert_eq!(text(&got), ["still here"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_disconnected_and_can_be_added_again() {
    trace_init();
    let _rss = RSS.lock().await;
    let stop = CancellationToken::new();
    let router = Lz::new(zmq::ROUTER);
    // A libzmq ROUTER without ROUTER_HANDOVER ignores, for as long as it
    // stays up, a new connection with the routing id of one whose end it
    // has not processed yet (it reads the id, refuses it as a duplicate,
    // and never looks at the pipe again): libzmq peers of nodes should set
    // it, as a node's own ROUTER hands over.
    router.with(|s| s.set_router_handover(true).unwrap());
    let ep = router.bind_loopback();
    let monitor = router.monitor(zmq::SocketEvent::DISCONNECTED as i32);
    let cfg = ZmqConfig::new(NodeId(3))
        .bind(None)
        .unwrap()
        .peer(NodeId(5), &ep)
        .unwrap();
    let mut node = ZmqTransport::start(cfg, &stop).await.unwrap();
    let deliver = |node: &mut ZmqTransport, what: &'static [u8]| {
        node.send(NodeId(5), Bytes::from_static(what));
    };
    let got = within(secs(15), "message at libzmq", async {
        loop {
            deliver(&mut node, b"one");
            if let Some(m) = router.recv(ms(100)).await {
                return m;
            }
        }
    })
    .await;
    assert_eq!(text(&got), ["n3", "one"]);
    assert!(node.remove_peer(NodeId(5)));
    assert!(!node.remove_peer(NodeId(5)));
    assert!(
        monitor.event(secs(10)).await.is_some(),
        "the libzmq ROUTER saw the disconnect"
    );
    let dropped = node.stats().dropped;
    deliver(&mut node, b"lost");
    assert_eq!(node.stats().dropped, dropped + 1);
    node.add_peer(NodeId(5), &ep).unwrap();
    let got = within(secs(15), "message after re-adding", async {
        loop {
            deliver(&mut node, b"two");
            if let Some(m) = router.recv(ms(100)).await {
                return m;
            }
        }
    })
    .await;
    assert_eq!(text(&got), ["n3", "two"]);
    stop.cancel();
}

/// Each of 200 new libzmq clients sends at once on connecting and is
/// answered at once: an answer never overtakes the ROUTER's news of its
/// client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_that_speaks_first_thing_is_answered() {
    trace_init();
    let _rss = RSS.lock().await;
    const CLIENTS: u32 = 200;
    let stop = CancellationToken::new();
    let mut node = ZmqTransport::start(ZmqConfig::new(NodeId(1)), &stop)
        .await
        .unwrap();
    let ep = node.endpoint().unwrap().to_owned();
    let clients: Vec<Lz> = (0..CLIENTS)
        .map(|i| {
            let d = Lz::new(zmq::DEALER);
            d.with(|s| s.set_identity(format!("n{}", 1000 + i).as_bytes()).unwrap());
            d.connect(&ep);
            // Queued by libzmq until the handshake is done, then sent first.
            d.with(|s| s.send(&b"first"[..], zmq::DONTWAIT).unwrap());
            d
        })
        .collect();
    within(secs(30), "every request answered on arrival", async {
        for _ in 0..CLIENTS {
            let (from, m) = recv(&mut node).await.unwrap();
            assert_eq!(&m[..], b"first");
            node.send(from, Bytes::from_static(b"answer"));
        }
    })
    .await;
    eventually(secs(10), "every answer routed or dropped", || {
        let s = node.stats();
        s.sent + s.dropped == u64::from(CLIENTS)
    })
    .await;
    assert_eq!(node.stats().dropped, 0, "{:?}", node.stats());
    for (i, c) in clients.iter().enumerate() {
        let got = c.recv(secs(10)).await;
        assert!(
            got.is_some(),
            "client {i} got no answer: {:?}",
            node.stats()
        );
    }
    stop.cancel();
}
