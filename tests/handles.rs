//! The one handle shape across patterns: every pattern started under one
//! parent token; shutting each one down in turn (or dropping it) stops that
//! one only, and every pattern still running keeps doing its job, checked
//! end to end with libzmq or crate peers after each step.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use tokio_util::sync::CancellationToken;
use zpatterns::blackbox::{BlackBox, BlackBoxConfig};
use zpatterns::clone::{
    CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, ServerAddr,
};
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{Espresso, EspressoConfig};
use zpatterns::lvc::{Lvc, LvcConfig};
use zpatterns::pubsub::ProxyConfig;
use zpatterns::snail::{SnailConfig, SnailPublisher, SnailPublisherConfig, SnailSubscriber};

/// A proxy pattern (LVC or Espresso) with a libzmq publisher and subscriber.
struct ProxyProbe {
    publisher: Lz,
    subscriber: Lz,
}

impl ProxyProbe {
    fn attach(frontend: &str, backend: &str) -> Self {
        let publisher = Lz::new(zmq::PUB);
        publisher.connect(frontend);
        let subscriber = Lz::new(zmq::SUB);
        subscriber.subscribe(b"");
        subscriber.connect(backend);
        Self {
            publisher,
            subscriber,
        }
    }

    /// Publishes `topic` until the subscriber receives it (the proxy is
    /// alive and forwarding); panics after a generous limit.
    async fn forwards(&self, topic: &str) {
        for _ in 0..200 {
            self.publisher.send(&[topic.as_bytes(), b"v"]).await;
            while let Some(m) = self.subscriber.recv(ms(50)).await {
                if m[0] == topic.as_bytes() {
                    return;
                }
            }
        }
        panic!("{topic} never came through the proxy");
    }

    /// Publishes `topic` for a while and asserts nothing arrives (the proxy
    /// is stopped).
    async fn is_silent(&self, topic: &str) {
        for _ in 0..5 {
            self.publisher.send(&[topic.as_bytes(), b"v"]).await;
        }
        let seen = self.subscriber.drain(ms(300)).await;
        assert!(
            seen.iter().all(|m| m[0] != topic.as_bytes()),
            "{topic} came through a stopped proxy"
        );
    }
}

struct Patterns {
    lvc: Option<(Lvc, ProxyProbe)>,
    espresso: Option<(Espresso, ProxyProbe)>,
    clone: Option<(CloneServer, CloneClient)>,
    blackbox: Option<(BlackBox, Lz, Arc<AtomicU64>)>,
    snail: Option<(SnailPublisher, SnailSubscriber)>,
}

async fn start_all(parent: &CancellationToken) -> Patterns {
    let proxy = || ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    let lvc = Lvc::start(LvcConfig::new(proxy()), parent).await.unwrap();
    let lvc_probe = ProxyProbe::attach(lvc.frontend_endpoint(), lvc.backend_endpoint());
    let espresso = Espresso::start(EspressoConfig::new(proxy()), parent)
        .await
        .unwrap();
    let espresso_probe =
        ProxyProbe::attach(espresso.frontend_endpoint(), espresso.backend_endpoint());

    let server = CloneServer::start(CloneServerConfig::loopback(), parent)
        .await
        .unwrap();
    let client = CloneClient::start(CloneClientConfig::new(), parent)
        .await
        .unwrap();
    client
        .connect(ServerAddr::from_endpoints(server.endpoints()).unwrap())
        .await
        .unwrap();
    within(secs(10), "clone client active", client.wait_active())
        .await
        .unwrap();

    let feed = Lz::new(zmq::PUB);
    let feed_ep = feed.bind_loopback();
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    let config =
        BlackBoxConfig::new(vec![EndpointSpec::connect(&feed_ep).unwrap()], &[""]).workers(1);
    let blackbox = BlackBox::start(
        config,
        move |_| {
            let counter = counter.clone();
            move |_msg: zeromq::ZmqMessage| {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        },
        parent,
    )
    .await
    .unwrap();

    let publisher = SnailPublisher::start(
        SnailPublisherConfig::new(EndpointSpec::loopback(), "p1"),
        parent,
    )
    .await
    .unwrap();
    let sub_ep = EndpointSpec::connect(publisher.endpoint()).unwrap();
    let subscriber = SnailSubscriber::start(SnailConfig::new([sub_ep]), parent)
        .await
        .unwrap();

    Patterns {
        lvc: Some((lvc, lvc_probe)),
        espresso: Some((espresso, espresso_probe)),
        clone: Some((server, client)),
        blackbox: Some((blackbox, feed, delivered)),
        snail: Some((publisher, subscriber)),
    }
}

impl Patterns {
    /// Every pattern still held does its job end to end.
    async fn all_alive(&mut self, step: &str) {
        if let Some((_, probe)) = &self.lvc {
            probe.forwards(&format!("lvc-{step}")).await;
        }
        if let Some((_, probe)) = &self.espresso {
            probe.forwards(&format!("espresso-{step}")).await;
        }
        if let Some((_, client)) = &self.clone {
            let key = format!("/handles/{step}");
            let mut changes = client.changes();
            client.set(key.clone(), "v", None).await.unwrap();
            within(secs(10), "clone update republished", async {
                loop {
                    let change = changes.recv().await.expect("clone change stream");
                    if change.key() == &Bytes::from(key.clone()) {
                        break;
                    }
                }
            })
            .await;
        }
        if let Some((bb, feed, delivered)) = &self.blackbox {
            let before = delivered.load(Ordering::Relaxed);
            let mut sent = 0;
            while delivered.load(Ordering::Relaxed) == before {
                assert!(sent < 400, "the Black Box stopped delivering at {step}");
                feed.send(&[b"k", step.as_bytes()]).await;
                sent += 1;
                tokio::time::sleep(ms(25)).await;
            }
            assert!(bb.stats().total_delivered() > 0);
        }
        if let Some((publisher, subscriber)) = &mut self.snail {
            within(secs(10), "snail message", async {
                loop {
                    publisher
                        .send(vec![Bytes::from(step.to_owned())])
                        .await
                        .unwrap();
                    if let Ok(Ok(m)) = tokio::time::timeout(ms(50), subscriber.recv()).await {
                        if m.frames()[0] == step.as_bytes() {
                            break;
                        }
                    }
                }
            })
            .await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pattern_stops_alone_under_one_parent_token() {
    trace_init();
    let parent = CancellationToken::new();
    let mut all = start_all(&parent).await;
    all.all_alive("start").await;

    let (lvc, probe) = all.lvc.take().unwrap();
    let last = within(secs(10), "lvc shutdown", lvc.shutdown())
        .await
        .unwrap();
    assert!(
        last.proxy.messages_in > 0,
        "the final stats are the real ones"
    );
    probe.is_silent("lvc-after").await;
    all.all_alive("lvc-stopped").await;

    // A dropped handle stops its pattern too.
    let (espresso, probe) = all.espresso.take().unwrap();
    drop(espresso);
    probe.is_silent("espresso-after").await;
    all.all_alive("espresso-dropped").await;

    let (server, client) = all.clone.take().unwrap();
    within(secs(10), "clone client shutdown", client.shutdown())
        .await
        .unwrap();
    let stats = within(secs(10), "clone server shutdown", server.shutdown())
        .await
        .unwrap();
    assert!(stats.sequence > 0, "the server sequenced the probes");
    all.all_alive("clone-stopped").await;

    let (bb, _feed, _) = all.blackbox.take().unwrap();
    let stats = within(secs(10), "black box shutdown", bb.shutdown())
        .await
        .unwrap();
    assert!(stats.total_delivered() > 0);
    all.all_alive("blackbox-stopped").await;

    assert!(!parent.is_cancelled(), "no pattern cancels its parent");
    // Cancelling the parent stops what is left.
    parent.cancel();
    let (publisher, mut subscriber) = all.snail.take().unwrap();
    let r = within(secs(10), "snail stops with its parent", subscriber.recv()).await;
    assert!(r.is_err(), "recv after the parent was cancelled: {r:?}");
    publisher.shutdown().await.unwrap();
}
