//! `ZmqTransport` on loopback: messages between nodes, a peer that
//! restarts, a dead peer that must not block the node, and garbage that is
//! counted, not fatal.

mod common;
use common::*;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zeromq::prelude::*;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{recv, NodeId, Transport};

async fn node(id: u32, bind: Option<&str>, shutdown: &CancellationToken) -> ZmqTransport {
    let cfg = ZmqConfig::new(NodeId(id))
        .backoff(ms(20), ms(200))
        .connect_timeout(ms(500))
        .bind(bind)
        .unwrap();
    ZmqTransport::start(cfg, shutdown).await.unwrap()
}

/// Sends `msg` from `a` every 50 ms until `b` receives something.
async fn until_received(
    a: &mut ZmqTransport,
    to: NodeId,
    b: &mut ZmqTransport,
    msg: &'static [u8],
) -> (NodeId, Bytes) {
    within(secs(15), "message to arrive", async {
        loop {
            a.send(to, Bytes::from_static(msg));
            if let Ok(Some(got)) = tokio::time::timeout(ms(50), recv(b)).await {
                return got;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn nodes_exchange_messages_both_ways() {
    trace_init();
    let stop = CancellationToken::new();
    let mut a = node(1, Some("tcp://127.0.0.1:0"), &stop).await;
    let mut b = node(2, Some("tcp://127.0.0.1:0"), &stop).await;
    a.add_peer(NodeId(2), b.endpoint().unwrap()).unwrap();
    b.add_peer(NodeId(1), a.endpoint().unwrap()).unwrap();
    assert!(
        a.add_peer(NodeId(2), b.endpoint().unwrap()).is_err(),
        "duplicate peer"
    );
    let own = a.endpoint().unwrap().to_owned();
    assert!(a.add_peer(NodeId(1), &own).is_err(), "self as peer");
    let (from, _) = until_received(&mut a, NodeId(2), &mut b, b"hello").await;
    assert_eq!(from, NodeId(1));
    // Once connected, a burst arrives complete and in order.
    for i in 0..1000u32 {
        b.send(NodeId(1), Bytes::from(i.to_be_bytes().to_vec()));
    }
    let mut next = 0u32;
    within(secs(10), "burst", async {
        while next < 1000 {
            let (from, m) = recv(&mut a).await.unwrap();
            if m.len() == 4 {
                assert_eq!(from, NodeId(2));
                assert_eq!(u32::from_be_bytes(m[..].try_into().unwrap()), next);
                next += 1;
            }
        }
    })
    .await;
    assert!(b.stats().sent >= 1000);
    stop.cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn a_restarted_peer_is_reconnected() {
    trace_init();
    let stop = CancellationToken::new();
    let mut a = node(1, Some("tcp://127.0.0.1:0"), &stop).await;
    let mut b = node(2, Some("tcp://127.0.0.1:0"), &stop).await;
    let b_ep = b.endpoint().unwrap().to_owned();
    a.add_peer(NodeId(2), &b_ep).unwrap();
    b.add_peer(NodeId(1), a.endpoint().unwrap()).unwrap();
    until_received(&mut a, NodeId(2), &mut b, b"before").await;
    let connects = a.stats().connects;
    // B dies and comes back on the same port.
    b.shutdown().await.unwrap();
    let mut b = within(secs(10), "rebind", async {
        loop {
            let cfg = ZmqConfig::new(NodeId(2)).bind(Some(&b_ep)).unwrap();
            match ZmqTransport::start(cfg, &stop).await {
                Ok(t) => return t,
                Err(_) => tokio::time::sleep(ms(50)).await,
            }
        }
    })
    .await;
    b.add_peer(NodeId(1), a.endpoint().unwrap()).unwrap();
    let (from, _) = until_received(&mut a, NodeId(2), &mut b, b"after").await;
    assert_eq!(from, NodeId(1));
    assert!(
        a.stats().connects > connects,
        "A must have reconnected: {:?}",
        a.stats()
    );
    let (from, _) = until_received(&mut b, NodeId(1), &mut a, b"and back").await;
    assert_eq!(from, NodeId(2));
    stop.cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_peer_never_blocks_the_node() {
    trace_init();
    let stop = CancellationToken::new();
    // An endpoint where nobody listens.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let cfg = ZmqConfig::new(NodeId(1))
        .queue(64)
        .peer(NodeId(9), &dead)
        .unwrap();
    let mut a = ZmqTransport::start(cfg, &stop).await.unwrap();
    let mut b = node(2, Some("tcp://127.0.0.1:0"), &stop).await;
    a.add_peer(NodeId(2), b.endpoint().unwrap()).unwrap();
    let started = std::time::Instant::now();
    for _ in 0..10_000 {
        a.send(NodeId(9), Bytes::from_static(b"into the void"));
    }
    // Sends return at once (a hang guard, not a speed assertion).
    assert!(started.elapsed() < secs(5));
    assert!(a.stats().dropped >= 10_000 - 64, "{:?}", a.stats());
    until_received(&mut a, NodeId(2), &mut b, b"still alive").await;
    stop.cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn garbage_senders_are_counted_and_ignored() {
    trace_init();
    let stop = CancellationToken::new();
    let mut a = node(1, Some("tcp://127.0.0.1:0"), &stop).await;
    let ep = a.endpoint().unwrap().to_owned();
    // A DEALER without a node identity, then one with a bad frame count.
    let mut anon = zeromq::DealerSocket::new();
    anon.connect(&ep).await.unwrap();
    anon.send("who am I".into()).await.unwrap();
    let mut opts = zeromq::SocketOptions::default();
    opts.peer_identity(zeromq::util::PeerIdentity::try_from(&b"n7"[..]).unwrap());
    let mut named = zeromq::DealerSocket::with_options(opts);
    named.connect(&ep).await.unwrap();
    named
        .send(zpatterns::frames::message([&b"two"[..], b"frames"]).unwrap())
        .await
        .unwrap();
    eventually(secs(10), "garbage counted", || a.stats().garbage == 2).await;
    // The node carries on: a well-formed message still arrives, and the
    // answer goes back through the ROUTER to the sender's identity.
    named.send("fine".into()).await.unwrap();
    let (from, m) = within(secs(10), "good message", recv(&mut a))
        .await
        .unwrap();
    assert_eq!((from, &m[..]), (NodeId(7), &b"fine"[..]));
    a.send(NodeId(7), Bytes::from_static(b"reply"));
    let got = zrecv(&mut named, secs(10)).await.expect("reply");
    assert_eq!(text(&got), ["reply"]);
    stop.cancel();
}

/// Binds a new node on `ep` as soon as the port is free (within 10 s).
async fn rebind(id: u32, ep: &str, parent: &CancellationToken) -> ZmqTransport {
    within(secs(10), "the port to come free", async {
        loop {
            let cfg = ZmqConfig::new(NodeId(id)).bind(Some(ep)).unwrap();
            match ZmqTransport::start(cfg, parent).await {
                Ok(t) => return t,
                Err(_) => tokio::time::sleep(ms(20)).await,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "current_thread")]
async fn shutting_down_one_transport_leaves_its_siblings_running() {
    trace_init();
    let parent = CancellationToken::new();
    let mut a = node(1, Some("tcp://127.0.0.1:0"), &parent).await;
    let mut b = node(2, Some("tcp://127.0.0.1:0"), &parent).await;
    let mut c = node(3, Some("tcp://127.0.0.1:0"), &parent).await;
    let a_ep = a.endpoint().unwrap().to_owned();
    a.add_peer(NodeId(2), b.endpoint().unwrap()).unwrap();
    b.add_peer(NodeId(3), c.endpoint().unwrap()).unwrap();
    c.add_peer(NodeId(2), b.endpoint().unwrap()).unwrap();
    until_received(&mut a, NodeId(2), &mut b, b"a to b").await;
    until_received(&mut b, NodeId(3), &mut c, b"b to c").await;
    // Stop A: it reports its final counters and frees its port ...
    let stats = a.shutdown().await.expect("clean shutdown");
    assert!(stats.sent >= 1, "{stats:?}");
    assert!(!parent.is_cancelled(), "the parent token is untouched");
    let again = rebind(1, &a_ep, &parent).await;
    // ... while B and C, under the same parent, keep talking.
    let (from, _) = until_received(&mut c, NodeId(2), &mut b, b"c to b").await;
    assert_eq!(from, NodeId(3));
    let (from, _) = until_received(&mut b, NodeId(3), &mut c, b"b to c again").await;
    assert_eq!(from, NodeId(2));
    drop(again);
    parent.cancel();
}

#[tokio::test(flavor = "current_thread")]
async fn dropping_a_transport_stops_it() {
    trace_init();
    let parent = CancellationToken::new();
    let mut a = node(1, Some("tcp://127.0.0.1:0"), &parent).await;
    let mut b = node(2, Some("tcp://127.0.0.1:0"), &parent).await;
    let b_ep = b.endpoint().unwrap().to_owned();
    a.add_peer(NodeId(2), &b_ep).unwrap();
    until_received(&mut a, NodeId(2), &mut b, b"hello").await;
    // Dropping B cancels its tasks: its ROUTER goes away and the port can
    // be bound again (it could not while B's tasks ran); A and the parent
    // token are untouched.
    drop(b);
    let mut b = rebind(2, &b_ep, &parent).await;
    assert!(!parent.is_cancelled());
    let (from, _) = until_received(&mut a, NodeId(2), &mut b, b"hello again").await;
    assert_eq!(from, NodeId(1));
    parent.cancel();
}

#[test]
fn endpoints_other_than_tcp_are_refused_up_front() {
    use zpatterns::transport::TransportError;
    let cfg = ZmqConfig::new(NodeId(1));
    assert!(matches!(
        cfg.clone().peer(NodeId(2), "ipc:///tmp/zpatterns-peer"),
        Err(TransportError::TcpOnly(_))
    ));
    assert!(matches!(
        cfg.clone().bind(Some("ipc:///tmp/zpatterns-node")),
        Err(TransportError::TcpOnly(_))
    ));
    assert!(cfg.peer(NodeId(2), "tcp://127.0.0.1:5670").is_ok());
}
