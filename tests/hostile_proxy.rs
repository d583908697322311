//! Hostile libzmq peers against the pub-sub proxies' limits: for each limit
//! a peer hits it, the proxy counts and contains it (memory measured by the
//! process RSS and by the proxy's own accounting), and a well-behaved libzmq
//! subscriber is still served afterwards.
//!
//! The tests of this file run one at a time (they measure the RSS of the
//! whole test process) and print their RSS numbers on stderr
//! (`cargo test --test hostile_proxy -- --nocapture`).

mod common;
use common::*;

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::lvc::{CacheLimits, Lvc, LvcConfig};
use zpatterns::pubsub::{Proxy, ProxyConfig};

/// One test at a time: they measure the RSS of the whole process.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MIB: u64 = 1 << 20;

/// (VmRSS, VmHWM) of this process, in bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak RSS (VmHWM) to the current RSS, where the kernel allows
/// it (Linux >= 4.0); returns whether it did.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples the RSS every millisecond until dropped; `peak()` is the largest
/// sample (a fallback where VmHWM cannot be reset).
struct RssSampler {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssSampler {
    fn start() -> Self {
        use std::sync::atomic::Ordering::Relaxed;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss().0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Relaxed) {
                p.fetch_max(rss().0, Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Measures the process memory across an attack: the peak growth (from
/// VmHWM if it could be reset, and from sampling) and the growth after.
struct Memory {
    what: &'static str,
    before: u64,
    hwm_reset: bool,
    sampler: RssSampler,
}

impl Memory {
    fn start(what: &'static str) -> Self {
        let hwm_reset = reset_peak();
        Self {
            what,
            before: rss().0,
            hwm_reset,
            sampler: RssSampler::start(),
        }
    }

    /// Returns the peak growth in bytes, after printing the numbers.
    fn finish(self) -> u64 {
        let (now, hwm) = rss();
        let mut peak = self.sampler.peak().max(now);
        if self.hwm_reset {
            peak = peak.max(hwm);
        }
        let growth = peak.saturating_sub(self.before);
        eprintln!(
            "[{}] RSS before {:.1} MiB, peak {:.1} MiB (+{:.1} MiB{}), after {:.1} MiB",
            self.what,
            self.before as f64 / MIB as f64,
            peak as f64 / MIB as f64,
            growth as f64 / MIB as f64,
            if self.hwm_reset {
                ", VmHWM reset"
            } else {
                ", sampled"
            },
            now as f64 / MIB as f64,
        );
        growth
    }
}

/// A libzmq SUB subscribed to everything at the proxy's backend.
fn good_subscriber(backend: &str) -> Lz {
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(backend);
    sub
}

/// Publishes `topic` from `publisher` until `sub` receives it; returns it.
async fn publish_until_received(publisher: &Lz, topic: &str, sub: &Lz) -> Vec<Vec<u8>> {
    within(secs(20), "a message through the proxy", async {
        loop {
            publisher.send(&[topic.as_bytes(), b"body"]).await;
            while let Some(m) = sub.recv(ms(50)).await {
                if m[0] == topic.as_bytes() {
                    return m;
                }
            }
        }
    })
    .await
}

/// A proxy with both ends bound on loopback, a libzmq publisher connected
/// to its frontend and a good libzmq subscriber at its backend, with
/// traffic flowing.
async fn proxy_with_good_peers(config: ProxyConfig) -> (Proxy, Lz, Lz) {
    let proxy = Proxy::start(config, (), &CancellationToken::new())
        .await
        .unwrap();
    let publisher = Lz::new(zmq::PUB);
    publisher.connect(proxy.frontend_endpoint());
    let sub = good_subscriber(proxy.backend_endpoint());
    publish_until_received(&publisher, "before", &sub).await;
    (proxy, publisher, sub)
}

fn loopback_config() -> ProxyConfig {
    ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback())
}

/// A libzmq publisher sends a 64 MiB frame to a proxy whose limit is 1 MiB:
/// it is disconnected from the frame header, the body is never buffered,
/// and everyone is served afterwards (the publisher too, once it has
/// reconnected). With the `zeromq` crate's XSUB (before), the proxy read
/// the whole frame into memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_publisher_frame_disconnects_that_publisher_only() {
    let _serial = SERIAL.lock().await;
    trace_init();
    let limit = MIB as usize;
    // The frontend connects to the hostile publisher, as `lvcache` does.
    let hostile = Lz::new(zmq::PUB);
    let hostile_ep = hostile.bind_loopback();
    let proxy = Proxy::start(
        ProxyConfig::new(
            EndpointSpec::connect(&hostile_ep).unwrap(),
            EndpointSpec::loopback(),
        )
        .max_message(limit),
        (),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let sub = good_subscriber(proxy.backend_endpoint());
    publish_until_received(&hostile, "warm-up", &sub).await;
    let before = proxy.stats();
    let connects = before.publisher_connects;

    // Zeroed pages the sender only reads are not resident: what the RSS
    // shows is the proxy's buffering, not this buffer.
    let frame = vec![0u8; 64 << 20];
    let mem = Memory::start("oversized frame 64 MiB, limit 1 MiB");
    hostile.send_owned(vec![b"big".to_vec(), frame]).await;
    eventually(
        secs(20),
        "the oversized publisher to be disconnected",
        || proxy.stats().oversized == 1,
    )
    .await;
    let growth = mem.finish();
    assert!(
        growth < 16 * MIB,
        "RSS grew by {growth} bytes for a {limit}-byte limit"
    );
    let s = proxy.stats();
    assert_eq!(s.oversized, 1);
    assert!(s.publisher_disconnects >= 1);
    // The oversized message was never taken in (warm-ups still in flight
    // may add a few bytes).
    assert!(
        s.bytes_in - before.bytes_in < limit as u64,
        "{before:?} -> {s:?}"
    );
    // The proxy reconnects to the publisher (re-sending its subscriptions)
    // and traffic after the attack reaches the good subscriber.
    publish_until_received(&hostile, "after", &sub).await;
    assert!(proxy.stats().publisher_connects > connects);
    proxy.shutdown().await.unwrap();
}

/// One subscriber sends 200,000 distinct subscriptions; the proxy keeps
/// 10,000 (the default per-peer limit), refuses and counts the rest, and a
/// subscriber that subscribes afterwards is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_flood_is_capped_per_subscriber() {
    let _serial = SERIAL.lock().await;
    trace_init();
    let per_peer = 10_000;
    let (proxy, publisher, sub) =
        proxy_with_good_peers(loopback_config().max_subscriptions_per_peer(per_peer)).await;
    let held_before = proxy.stats().subscriptions_held;

    let mem = Memory::start("200,000 subscriptions from one subscriber, limit 10,000");
    let hostile = Lz::new(zmq::XSUB);
    hostile.with(|s| s.set_sndhwm(0).unwrap());
    hostile.connect(proxy.backend_endpoint());
    let n = 200_000u64;
    // In rounds, so that the hostile's own libzmq queue (in this process,
    // SNDHWM 0) does not dominate the RSS being measured.
    let chunk = 10_000u64;
    for round in 0..n / chunk {
        let h = hostile.clone();
        tokio::task::spawn_blocking(move || {
            h.with(|s| {
                for i in round * chunk..(round + 1) * chunk {
                    // Short topics: the hostile libzmq XSUB keeps a trie of
                    // what it sent, in this process, node per character.
                    s.send(format!("\x01{i}").as_bytes(), 0).unwrap();
                }
            })
        })
        .await
        .unwrap();
        eventually(secs(30), "the round's subscribes to be seen", || {
            let s = proxy.stats();
            s.subscribes + s.subscriptions_refused >= (round + 1) * chunk + held_before
        })
        .await;
    }
    let growth = mem.finish();
    let s = proxy.stats();
    assert_eq!(s.subscriptions_refused, n - per_peer as u64);
    assert_eq!(s.subscriptions_held, held_before + per_peer as u64);
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");

    // A new subscriber, and the one that was there all along, are served.
    let late = Lz::new(zmq::SUB);
    late.subscribe(b"after");
    late.connect(proxy.backend_endpoint());
    publish_until_received(&publisher, "after", &late).await;
    publish_until_received(&publisher, "after", &sub).await;
    proxy.shutdown().await.unwrap();
}

/// Several subscribers together reach the total limit: subscribes over it
/// are refused; when they leave, the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_are_capped_in_total() {
    let _serial = SERIAL.lock().await;
    trace_init();
    let total = 5_000;
    let (proxy, publisher, sub) =
        proxy_with_good_peers(loopback_config().max_subscriptions(total)).await;
    let held_before = proxy.stats().subscriptions_held;
    let mut hostile = Vec::new();
    for p in 0..4 {
        let h = Lz::new(zmq::XSUB);
        h.with(|s| s.set_sndhwm(0).unwrap());
        h.connect(proxy.backend_endpoint());
        let h2 = h.clone();
        tokio::task::spawn_blocking(move || {
            h2.with(|s| {
                for i in 0..2_000 {
                    s.send(format!("\x01p{p}.{i}").as_bytes(), 0).unwrap();
                }
            })
        })
        .await
        .unwrap();
        hostile.push(h);
    }
    eventually(secs(30), "every subscribe to be seen", || {
        let s = proxy.stats();
        s.subscribes + s.subscriptions_refused >= 8_000 + held_before
    })
    .await;
    let s = proxy.stats();
    assert_eq!(s.subscriptions_held, total as u64);
    assert_eq!(s.subscriptions_refused, 8_000 + held_before - total as u64);
    publish_until_received(&publisher, "during", &sub).await;
    drop(hostile);
    eventually(
        secs(20),
        "the hostile subscribers' budget to be freed",
        || proxy.stats().subscriptions_held == held_before,
    )
    .await;
    let late = Lz::new(zmq::SUB);
    late.subscribe(b"after");
    late.connect(proxy.backend_endpoint());
    publish_until_received(&publisher, "after", &late).await;
    proxy.shutdown().await.unwrap();
}

/// Forty libzmq peers connect to a proxy whose listeners take 8 each: the
/// ones over the limit are accepted and closed (again at each of their
/// reconnects), and the publisher and subscriber that were there first are
/// still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    let _serial = SERIAL.lock().await;
    trace_init();
    let max = 8;
    let (proxy, publisher, sub) =
        proxy_with_good_peers(loopback_config().max_connections(max)).await;
    let mem = Memory::start("40 connections, limit 8 per listener");
    let mut hostile = Vec::new();
    for _ in 0..20 {
        let s = Lz::new(zmq::SUB);
        s.subscribe(b"");
        s.connect(proxy.backend_endpoint());
        let p = Lz::new(zmq::PUB);
        p.connect(proxy.frontend_endpoint());
        hostile.push((s, p));
    }
    eventually(
        secs(20),
        "the connections over the limit to be refused",
        || proxy.stats().connections_refused >= 2 * (20 - (max as u64 - 1)),
    )
    .await;
    let growth = mem.finish();
    let s = proxy.stats();
    assert!(s.connects - s.disconnects <= max as u64, "{s:?}");
    assert!(
        s.publisher_connects - s.publisher_disconnects <= max as u64,
        "{s:?}"
    );
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");
    publish_until_received(&publisher, "after", &sub).await;
    proxy.shutdown().await.unwrap();
}

/// A subscriber repeats `SUBSCRIBE ""` 3,000 times on a Last Value Cache of
/// 1,000 values and never reads, while the values keep changing. Replays
/// count against its queue (HWM 2,000 messages), so the cache holds at most
/// that many old values for it, whatever it asks; replays that do not fit
/// are dropped and counted. A new subscriber still gets its full replay
/// and live messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_replays_are_bounded_by_the_subscriber_queue() {
    let _serial = SERIAL.lock().await;
    trace_init();
    let hwm = 2_000;
    let topics = 1_000u32;
    let value = vec![b'v'; 1024];
    let proxy = loopback_config().subscriber_hwm(hwm);
    let cache = Lvc::start(
        LvcConfig::new(proxy).limits(CacheLimits::new(10_000, 16 << 20)),
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_sndhwm(0).unwrap());
    publisher.connect(cache.frontend_endpoint());
    let fill = |round: u8| {
        let p = publisher.clone();
        let mut v = value.clone();
        v[0] = round;
        tokio::task::spawn_blocking(move || {
            p.with(|s| {
                for t in 0..topics {
                    s.send_multipart([format!("{t:04}").into_bytes(), v.clone()], 0)
                        .unwrap();
                }
            })
        })
    };
    within(secs(20), "the cache to fill", async {
        while cache.stats().cache.topics < u64::from(topics) {
            fill(0).await.unwrap();
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;

    let mem = Memory::start("3,000 x SUBSCRIBE \"\" on 1,000 x 1 KiB values, HWM 2,000");
    let hostile = Lz::new(zmq::XSUB);
    hostile.with(|s| {
        s.set_rcvhwm(1).unwrap();
        s.set_rcvbuf(4096).unwrap();
        s.set_sndhwm(0).unwrap();
    });
    hostile.connect(cache.backend_endpoint());
    let subscribes_before = cache.stats().proxy.subscribes;
    let h = hostile.clone();
    let flood = tokio::task::spawn_blocking(move || {
        h.with(|s| {
            for _ in 0..3_000 {
                s.send(&b"\x01"[..], 0).unwrap();
            }
        })
    });
    // The values change meanwhile: queued replays keep old values alive.
    for round in 1..=5 {
        fill(round).await.unwrap();
    }
    flood.await.unwrap();
    eventually(secs(30), "every subscribe to be answered", || {
        cache.stats().proxy.subscribes >= subscribes_before + 3_000
    })
    .await;
    let growth = mem.finish();
    let s = cache.stats().proxy;
    assert!(s.replay_drops > 0, "{s:?}");
    assert!(
        s.replay_drops.is_multiple_of(u64::from(topics)),
        "whole replays: {s:?}"
    );
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");

    // A newcomer gets all 1,000 values, then live traffic.
    let good = good_subscriber(cache.backend_endpoint());
    let mut got = 0;
    within(secs(20), "a full replay", async {
        while got < topics {
            if good.recv(secs(10)).await.is_some() {
                got += 1;
            }
        }
    })
    .await;
    publish_until_received(&publisher, "after", &good).await;
    cache.shutdown().await.unwrap();
}
