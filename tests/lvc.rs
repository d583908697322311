//! The Last Value Cache between libzmq publishers and libzmq subscribers.

mod common;
use common::*;

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::lvc::{CacheLimits, Lvc, LvcConfig};
use zpatterns::pubsub::ProxyConfig;

async fn cache_with(limits: CacheLimits) -> (Lvc, Lz) {
    let proxy = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback());
    let cache = Lvc::start(
        LvcConfig::new(proxy).limits(limits),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_sndhwm(0).unwrap());
    publisher.connect(cache.frontend_endpoint());
    (cache, publisher)
}

/// The pathological publisher's burst: `n` topics "%03d" = "Save Roger",
/// sent once the cache's subscription reached the publisher.
async fn burst(cache: &Lvc, publisher: &Lz, n: u32) {
    within(secs(10), "the cache to receive from the publisher", async {
        while cache.stats().cache.topics == 0 {
            publisher.send(&[b"000", b"Save Roger"]).await;
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || {
        p.with(|s| {
            for t in 0..n {
                s.send_multipart([format!("{t:03}").into_bytes(), b"Save Roger".to_vec()], 0)
                    .unwrap();
            }
        })
    })
    .await
    .unwrap();
    eventually(secs(10), "the burst to be cached", || {
        cache.stats().cache.topics == u64::from(n)
    })
    .await;
}

fn subscriber(cache: &Lvc, topic: &[u8]) -> Lz {
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(topic);
    sub.connect(cache.backend_endpoint());
    sub
}

async fn expect(sub: &Lz, frames: &[&str]) {
    let got = within(secs(10), "a cached value", sub.recv(secs(10)))
        .await
        .expect("no value arrived");
    assert_eq!(text(&got), frames);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiners_get_the_cached_value_and_only_the_newcomer_gets_it() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::default()).await;
    burst(&cache, &publisher, 1000).await;
    let first = subscriber(&cache, b"042");
    expect(&first, &["042", "Save Roger"]).await;
    // A second subscriber to the same topic gets its replay too...
    let second = subscriber(&cache, b"042");
    expect(&second, &["042", "Save Roger"]).await;
    // Live updates still flow to both, and the first one did not get the
    // replay twice: the second's replay was sent before this update, so a
    // copy for the first would arrive ahead of it.
    publisher.send(&[b"042", b"Off with his head!"]).await;
    expect(&first, &["042", "Off with his head!"]).await;
    expect(&second, &["042", "Off with his head!"]).await;
    assert_eq!(cache.stats().replays, 2);
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_prefix_replays_all_topics_in_key_order_and_a_prefix_its_ten() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::default()).await;
    burst(&cache, &publisher, 1000).await;
    let everything = subscriber(&cache, b"");
    let forties = subscriber(&cache, b"04");
    let mut topics = Vec::new();
    while let Some(m) = everything.recv(ms(500)).await {
        topics.push(String::from_utf8(m[0].clone()).unwrap());
    }
    let expected: Vec<_> = (0..1000).map(|t| format!("{t:03}")).collect();
    assert_eq!(topics, expected);
    let mut tens = Vec::new();
    while let Some(m) = forties.recv(ms(500)).await {
        tens.push(String::from_utf8(m[0].clone()).unwrap());
    }
    assert_eq!(
        tens,
        (40..50).map(|t| format!("{t:03}")).collect::<Vec<_>>()
    );
    cache.shutdown().await.unwrap();
}

/// A newcomer never sees an older value after a newer one: the replay is
/// queued before any live message can reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_comes_before_live_updates() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::default()).await;
    burst(&cache, &publisher, 1).await;
    let before = cache.stats().cache.updates;
    let p = publisher.clone();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    let updater = tokio::task::spawn_blocking(move || {
        let mut n = 0u64;
        while !stopped.is_cancelled() {
            n += 1;
            p.with(|s| {
                s.send_multipart([b"000".to_vec(), n.to_string().into_bytes()], 0)
                    .unwrap()
            });
            // A steady stream (~5k/s), not a flood that starves this 2-core box.
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
    });
    // The cached value is a counter (no longer the burst's text).
    eventually(secs(10), "the updater's values cached", || {
        cache.stats().cache.updates > before + 10
    })
    .await;
    for _ in 0..5 {
        let sub = subscriber(&cache, b"000");
        let mut last = 0u64;
        for _ in 0..50 {
            let m = sub.recv(secs(10)).await.expect("values keep coming");
            let v: u64 = String::from_utf8_lossy(&m[1]).parse().expect("a counter");
            assert!(v > last, "value {v} arrived after {last}");
            last = v;
        }
    }
    stop.cancel();
    updater.await.unwrap();
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_values_are_replayed_whole() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::default()).await;
    burst(&cache, &publisher, 1).await;
    publisher
        .send(&[b"quote/EURUSD", b"1.0871", b"1.0873", b"ts=1"])
        .await;
    eventually(secs(10), "the multipart value cached", || {
        cache.stats().cache.updates >= 2
    })
    .await;
    let sub = subscriber(&cache, b"quote/");
    expect(&sub, &["quote/EURUSD", "1.0871", "1.0873", "ts=1"]).await;
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_bounded_by_evicting_the_least_recently_updated() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::new(10, usize::MAX)).await;
    burst(&cache, &publisher, 1).await;
    let before = cache.stats().cache.updates;
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || {
        p.with(|s| {
            for t in 0..100 {
                s.send_multipart([format!("{t:03}").into_bytes(), b"v".to_vec()], 0)
                    .unwrap();
            }
        })
    })
    .await
    .unwrap();
    eventually(secs(10), "all updates cached", || {
        cache.stats().cache.updates >= before + 100
    })
    .await;
    let stats = cache.stats();
    assert_eq!((stats.cache.topics, stats.cache.evictions), (10, 90));
    let sub = subscriber(&cache, b"");
    let mut topics = Vec::new();
    while let Some(m) = sub.recv(ms(500)).await {
        topics.push(String::from_utf8(m[0].clone()).unwrap());
    }
    assert_eq!(
        topics,
        (90..100).map(|t| format!("{t:03}")).collect::<Vec<_>>()
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_subscriptions_and_unsubscribes_are_counted_and_ignored() {
    trace_init();
    let (cache, publisher) = cache_with(CacheLimits::default()).await;
    burst(&cache, &publisher, 10).await;
    let vandal = Lz::new(zmq::XSUB);
    vandal.connect(cache.backend_endpoint());
    vandal.send(&[b""]).await;
    vandal.send(&[b"\x05abc"]).await;
    vandal.send(&[b"\x01005", b"extra frame"]).await;
    eventually(secs(10), "garbage counted", || {
        cache.stats().proxy.malformed == 3
    })
    .await;
    // libzmq's XSUB never sends an unsubscribe it has no subscription for;
    // the zeromq crate's does. It must not cancel anyone else's interest.
    use zeromq::prelude::*;
    let mut stray = zeromq::XSubSocket::new();
    stray.connect(cache.backend_endpoint()).await.unwrap();
    stray
        .send(bytes::Bytes::from_static(b"\x00007").into())
        .await
        .unwrap();
    eventually(secs(10), "stray unsubscribe counted", || {
        cache.stats().proxy.unmatched_unsubscribes == 1
    })
    .await;
    let sub = subscriber(&cache, b"005");
    expect(&sub, &["005", "Save Roger"]).await;
    sub.unsubscribe(b"005");
    eventually(secs(10), "unsubscribe counted", || {
        cache.stats().proxy.unsubscribes == 1
    })
    .await;
    assert_eq!(cache.stats().cache.topics, 10, "the cache is untouched");
    cache.shutdown().await.unwrap();
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

/// A value published into `cache` is replayed to a late libzmq subscriber.
async fn caches_and_replays(cache: &Lvc, topic: &str) {
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(cache.frontend_endpoint());
    let before = cache.stats().cache.updates;
    within(secs(10), "the cache to store the value", async {
        while cache.stats().cache.updates == before {
            publisher.send(&[topic.as_bytes(), b"kept"]).await;
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let sub = subscriber(cache, topic.as_bytes());
    expect(&sub, &[topic, "kept"]).await;
}

/// Shutting down one cache, or dropping its handle, stops that one only:
/// the parent token is not cancelled (the old API cancelled it) and another
/// cache under it still caches and replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_stopped_by_shutdown_or_drop_leaves_the_others_running() {
    trace_init();
    let parent = CancellationToken::new();
    let config = || {
        LvcConfig::new(ProxyConfig::new(
            EndpointSpec::loopback(),
            EndpointSpec::loopback(),
        ))
    };
    let a = Lvc::start(config(), &parent).await.unwrap();
    let b = Lvc::start(config(), &parent).await.unwrap();
    let c = Lvc::start(config(), &parent).await.unwrap();
    caches_and_replays(&a, "a").await;
    caches_and_replays(&c, "one").await;

    let a_backend = a.backend_endpoint().to_owned();
    let last = within(secs(10), "shutdown", a.shutdown()).await.unwrap();
    assert_eq!((last.cache.topics, last.replays), (1, 1), "{last:?}");
    assert!(!parent.is_cancelled());
    port_closed(&a_backend).await;
    caches_and_replays(&c, "two").await;

    let b_backend = b.backend_endpoint().to_owned();
    drop(b);
    port_closed(&b_backend).await;
    assert!(!parent.is_cancelled());
    caches_and_replays(&c, "three").await;
    let last = c.shutdown().await.unwrap();
    assert_eq!((last.cache.topics, last.replays), (3, 3), "{last:?}");
}
