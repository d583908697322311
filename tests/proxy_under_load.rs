//! The pub-sub proxy under a flood: it must still stop when cancelled
//! (its loop checks cancellation only every few messages while the
//! frontend always has data), and count what it forwarded.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::pubsub::{Proxy, ProxyConfig};

#[tokio::test(flavor = "current_thread")]
async fn a_flooded_proxy_stops_when_cancelled() {
    trace_init();
    let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    let cancel = CancellationToken::new();
    let proxy = Proxy::start(config, (), &cancel).await.unwrap();
    let mut sub = zsub(proxy.backend_endpoint(), &[""]).await;

    // A libzmq publisher flooding from its own thread (PUB never blocks).
    let flooding = Arc::new(AtomicBool::new(true));
    let frontend = proxy.frontend_endpoint().to_owned();
    let flag = flooding.clone();
    let publisher = std::thread::spawn(move || {
        let s = lz_ctx().socket(zmq::PUB).unwrap();
        s.set_linger(0).unwrap();
        s.connect(&frontend).unwrap();
        let payload = [b'x'; 64];
        while flag.load(Ordering::Relaxed) {
            s.send(&b"T"[..], zmq::SNDMORE).unwrap();
            s.send(&payload[..], 0).unwrap();
        }
    });

    // The flood is flowing once the subscriber sees it ...
    within(
        secs(10),
        "flood through the proxy",
        zrecv(&mut sub, secs(10)),
    )
    .await;
    eventually(secs(10), "proxy counts the flood", || {
        proxy.stats().messages_in > 1000
    })
    .await;
    // ... and the proxy stops while it is still going.
    let s = within(secs(10), "proxy shutdown under load", proxy.shutdown())
        .await
        .unwrap();
    assert!(
        !cancel.is_cancelled(),
        "shutdown must not cancel the parent"
    );
    flooding.store(false, Ordering::Relaxed);
    publisher.join().unwrap();
    assert!(
        s.messages_in >= s.messages_out && s.messages_out > 1000,
        "{s:?}"
    );
}
