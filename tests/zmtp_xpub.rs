//! The crate's own XPUB server: libzmq and zeromq-crate subscribers, targeted
//! sends, and garbage at the protocol level.

mod common;
use common::*;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zpatterns::endpoint::EndpointSpec;
use zpatterns::pubsub::SubEvent;
use zpatterns::zmtp::{Shared, XPubEvent, XPubOptions, XPubServer};

async fn server() -> XPubServer {
    XPubServer::attach(&EndpointSpec::loopback(), XPubOptions::default())
        .await
        .unwrap()
}

async fn next(server: &mut XPubServer) -> XPubEvent {
    within(secs(10), "an XPUB event", server.recv()).await
}

fn shared(frames: &[&str]) -> Shared {
    frames
        .iter()
        .map(|f| Bytes::copy_from_slice(f.as_bytes()))
        .collect::<Vec<_>>()
        .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_by_prefix_and_sends_to_one_subscriber() {
    trace_init();
    let mut xpub = server().await;
    let lz = Lz::new(zmq::SUB);
    lz.subscribe(b"A");
    lz.connect(xpub.endpoint());
    let mut zs = zsub(xpub.endpoint(), &["A"]).await;
    let mut peers = Vec::new();
    while peers.len() < 2 {
        if let XPubEvent::Subscription { peer, event } = next(&mut xpub).await {
            assert_eq!(event, SubEvent::Subscribe(Bytes::from_static(b"A")));
            peers.push(peer);
        }
    }
    let d = xpub.publish(&shared(&["A-1", "body"]));
    assert_eq!((d.queued, d.dropped), (2, 0));
    assert_eq!(xpub.publish(&shared(&["B-1"])).queued, 0, "nobody wants B");
    assert_eq!(text(&lz.recv(secs(10)).await.unwrap()), ["A-1", "body"]);
    assert_eq!(
        text(&zrecv(&mut zs, secs(10)).await.unwrap()),
        ["A-1", "body"]
    );
    // Targeted: only the first subscriber to have subscribed gets these.
    let (first, second) = (peers[0], peers[1]);
    assert!(xpub.send_to(
        first,
        vec![shared(&["A-only-for-first"]), shared(&["A-again"])]
    ));
    let mut got_first = 0;
    if let Some(m) = lz.recv(ms(500)).await {
        assert_eq!(text(&m), ["A-only-for-first"]);
        got_first += 1;
    }
    if let Some(m) = zrecv(&mut zs, ms(500)).await {
        assert_eq!(text(&m), ["A-only-for-first"]);
        got_first += 1;
    }
    assert_eq!(
        got_first, 1,
        "exactly one subscriber got the targeted batch"
    );
    assert!(!xpub.send_to(second + 1000, vec![shared(&["nobody"])]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_is_refused_and_the_server_keeps_serving() {
    trace_init();
    let mut options = XPubOptions::default();
    options.max_frame = 1024;
    let mut xpub = XPubServer::attach(&EndpointSpec::loopback(), options)
        .await
        .unwrap();
    let addr = xpub.endpoint().strip_prefix("tcp://").unwrap().to_owned();

    // Not ZMTP at all: the connection is closed after our greeting.
    let mut http = tokio::net::TcpStream::connect(&addr).await.unwrap();
    http.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    http.write_all(&[0u8; 64]).await.unwrap();
    let mut sink = Vec::new();
    within(secs(10), "garbage peer closed", http.read_to_end(&mut sink))
        .await
        .ok();
    assert_eq!(sink.len(), 64, "our greeting, then close");
    assert_eq!(&sink[..1], &[0xff]);

    // A DEALER is not a subscriber: refused during the handshake.
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(xpub.endpoint());

    // A subscriber that sends an oversized message is disconnected.
    let big = Lz::new(zmq::XSUB);
    big.connect(xpub.endpoint());
    big.send_owned(vec![vec![1u8; 4096]]).await;
    let ev = next(&mut xpub).await;
    assert!(matches!(ev, XPubEvent::Connected { .. }), "{ev:?}");
    let ev = next(&mut xpub).await;
    assert!(
        matches!(&ev, XPubEvent::Disconnected { reason, .. } if reason.contains("limit")),
        "{ev:?}"
    );

    // A well-behaved subscriber is served as usual.
    let good = Lz::new(zmq::SUB);
    good.subscribe(b"");
    good.connect(xpub.endpoint());
    loop {
        if let XPubEvent::Subscription { .. } = next(&mut xpub).await {
            break;
        }
    }
    assert_eq!(xpub.publish(&shared(&["fine"])).queued, 1);
    assert_eq!(text(&good.recv(secs(10)).await.unwrap()), ["fine"]);
    assert_eq!(xpub.peer_count(), 1);
}
