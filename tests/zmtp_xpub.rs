//! The crate's own XPUB and XSUB servers: libzmq and zeromq-crate peers,
//! targeted sends, reconnects, and garbage at the protocol level.

mod common;
use common::*;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zpatterns::endpoint::EndpointSpec;
use zpatterns::subscription::SubEvent;
use zpatterns::zmtp::{
    CloseCause, Shared, XPubEvent, XPubOptions, XPubServer, XSubEvent, XSubOptions, XSubServer,
};

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

async fn next_sub(server: &mut XSubServer) -> XSubEvent {
    within(secs(10), "an XSUB event", server.recv()).await
}

/// Receives until a message arrives whose first frame is `topic`, skipping
/// others and connection events; `None` after `wait`.
async fn recv_topic(
    server: &mut XSubServer,
    topic: &str,
    wait: std::time::Duration,
) -> Option<Vec<Bytes>> {
    tokio::time::timeout(wait, async {
        loop {
            if let XSubEvent::Message(m) = server.recv().await {
                if m[0] == topic.as_bytes() {
                    return m.to_vec();
                }
            }
        }
    })
    .await
    .ok()
}

/// Bound: several libzmq publishers, each sent the subscriptions made
/// before it connected, their messages fair-queued; a publisher that sends
/// a frame over the limit is disconnected (and the others carry on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xsub_serves_many_publishers_and_refuses_oversized_frames() {
    trace_init();
    let mut options = XSubOptions::default();
    options.max_message = 1024;
    let mut xsub = XSubServer::attach(&EndpointSpec::loopback(), options)
        .await
        .unwrap();
    xsub.send(&SubEvent::Subscribe(Bytes::from_static(b"A")));
    let (p1, p2) = (Lz::new(zmq::PUB), Lz::new(zmq::PUB));
    p1.connect(xsub.endpoint());
    p2.connect(xsub.endpoint());
    let mut connected = 0;
    while connected < 2 {
        if let XSubEvent::Connected { .. } = next_sub(&mut xsub).await {
            connected += 1;
        }
    }
    assert_eq!(xsub.peer_count(), 2);
    // Each publisher got the subscription on connecting: B is filtered at
    // the publisher, A arrives, from both.
    for (p, name) in [(&p1, "A-1"), (&p2, "A-2")] {
        within(secs(10), "a message from each publisher", async {
            loop {
                p.send(&[b"B-nobody"]).await;
                p.send(&[name.as_bytes(), b"body"]).await;
                if let Some(m) = recv_topic(&mut xsub, name, ms(50)).await {
                    assert_eq!(text(&m), [name, "body"]);
                    return;
                }
            }
        })
        .await;
    }
    // An oversized frame: that publisher is disconnected at the header.
    // (It starts with A, or the publisher would filter it out.)
    let mut big = vec![7u8; 4096];
    big[0] = b'A';
    p1.send_owned(vec![big]).await;
    loop {
        match next_sub(&mut xsub).await {
            XSubEvent::Disconnected { cause, .. } => {
                assert_eq!(cause, CloseCause::TooLarge);
                break;
            }
            XSubEvent::Message(m) => assert_ne!(m[0].len(), 4096, "oversized frame delivered"),
            _ => {}
        }
    }
    // The other publisher is still heard.
    within(secs(10), "the other publisher after the refusal", async {
        loop {
            p2.send(&[b"A-after"]).await;
            if recv_topic(&mut xsub, "A-after", ms(50)).await.is_some() {
                return;
            }
        }
    })
    .await;
}

/// Connecting: the subscriptions reach a libzmq XPUB, and after that
/// publisher restarts on the same port the server reconnects by itself and
/// sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xsub_reconnects_and_resends_its_subscriptions() {
    trace_init();
    let publisher = Lz::new(zmq::XPUB);
    let ep = publisher.bind_loopback();
    let mut xsub = XSubServer::attach(&EndpointSpec::connect(&ep).unwrap(), XSubOptions::default())
        .await
        .unwrap();
    xsub.send(&SubEvent::Subscribe(Bytes::from_static(b"A")));
    xsub.send(&SubEvent::Subscribe(Bytes::from_static(b"B")));
    xsub.send(&SubEvent::Unsubscribe(Bytes::from_static(b"B")));
    assert!(matches!(
        next_sub(&mut xsub).await,
        XSubEvent::Connected { .. }
    ));
    let first = within(
        secs(10),
        "the subscription upstream",
        publisher.recv(secs(10)),
    )
    .await
    .expect("no subscription reached the publisher");
    assert_eq!(
        first,
        [b"\x01A".to_vec()],
        "only what is in effect is replayed"
    );
    drop(publisher);
    assert!(matches!(
        next_sub(&mut xsub).await,
        XSubEvent::Disconnected { .. }
    ));
    // Rebind the same port (it may take the kernel a moment to free it).
    let again = Lz::new(zmq::XPUB);
    within(secs(10), "rebinding the publisher's port", async {
        while again.with(|s| s.bind(&ep)).is_err() {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    // Someone must drive the server while we wait at the publisher.
    let driver = tokio::spawn(async move {
        loop {
            if let XSubEvent::Connected { .. } = xsub.recv().await {
                return xsub;
            }
        }
    });
    let resent = within(secs(20), "the subscription re-sent", again.recv(secs(20)))
        .await
        .expect("nothing re-sent");
    within(secs(10), "the reconnect event", driver)
        .await
        .unwrap();
    assert_eq!(resent, [b"\x01A".to_vec()]);
}
