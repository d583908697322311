//! The proxies' slow-subscriber policies against libzmq peers: a libzmq
//! PUB (HWM 0, so it never drops: it waits, or queues, when the proxy
//! stops reading it) feeds a proxy with one slow or stuck libzmq SUB and
//! one fast libzmq SUB behind it.
//!
//! - `Block` (nodrop): the slow subscriber receives every message in order,
//!   and so does the fast one, for the plain proxy, Espresso and the Last
//!   Value Cache alike; the proxy did pause its publishers (`slow_blocks`).
//! - `Drop`: a stuck subscriber does not stall the fast one, which gets
//!   everything; the stuck one loses messages (`slow_drops`).
//! - `Disconnect`: a stuck subscriber is disconnected after the limit and
//!   the fast one gets everything; nothing is dropped silently.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::endpoint::EndpointSpec;
use zpatterns::espresso::{Espresso, EspressoConfig};
use zpatterns::lvc::{Lvc, LvcConfig};
use zpatterns::pubsub::{Proxy, ProxyConfig, ProxyStats, SlowPolicy};

/// Payload bytes per message: thousands of them are more than the socket
/// buffers and libzmq pipes between the proxy and a subscriber hold.
const PAYLOAD: usize = 2048;

/// The traffic of one test.
#[derive(Clone, Copy)]
struct Shape {
    /// Data messages.
    n: u32,
    /// The proxy's per-subscriber queue.
    hwm: usize,
    /// The publisher sends 16 messages a millisecond (which a subscriber
    /// that reads keeps up with) rather than as fast as it can.
    paced: bool,
}

/// Blocking tests: a full-speed publisher, a short queue.
const BLOCKING: Shape = Shape {
    n: 4_000,
    hwm: 64,
    paced: false,
};

/// The drop test: 32 MB paced, a 3,000-message queue (6 MB, 190 ms of
/// traffic), so a reading subscriber never overflows while a stuck one must
/// (its queue, socket buffers and libzmq pipe hold far less than 32 MB).
const DROPPING: Shape = Shape {
    n: 16_000,
    hwm: 3_000,
    paced: true,
};

enum Running {
    Plain(Proxy),
    Espresso(Espresso),
    Lvc(Lvc),
}

#[derive(Clone, Copy)]
enum Kind {
    Plain,
    Espresso,
    Lvc,
}

impl Running {
    async fn start(kind: Kind, policy: SlowPolicy, hwm: usize, token: &CancellationToken) -> Self {
        let config = ProxyConfig::new(EndpointSpec::loopback(), EndpointSpec::loopback())
            .subscriber_hwm(hwm)
            .slow_subscribers(policy);
        match kind {
            Kind::Plain => Running::Plain(Proxy::start(config, (), token).await.unwrap()),
            Kind::Espresso => Running::Espresso(
                Espresso::start(EspressoConfig::new(config), token)
                    .await
                    .unwrap(),
            ),
            Kind::Lvc => Running::Lvc(Lvc::start(LvcConfig::new(config), token).await.unwrap()),
        }
    }

    fn stats(&self) -> ProxyStats {
        match self {
            Running::Plain(p) => p.stats(),
            Running::Espresso(e) => e.stats().proxy,
            Running::Lvc(l) => l.stats().proxy,
        }
    }

    fn endpoints(&self) -> (String, String) {
        let (f, b) = match self {
            Running::Plain(p) => (p.frontend_endpoint(), p.backend_endpoint()),
            Running::Espresso(e) => (e.frontend_endpoint(), e.backend_endpoint()),
            Running::Lvc(l) => (l.frontend_endpoint(), l.backend_endpoint()),
        };
        (f.to_owned(), b.to_owned())
    }
}

/// How a subscriber reads.
#[derive(Clone, Copy)]
enum Reader {
    /// As fast as it can.
    Fast,
    /// Pauses 1 ms after every 8 messages (about 8,000 msgs/s).
    Slow,
    /// Reads nothing until `release` is set, then reads what it can.
    Stuck,
}

/// What one subscriber saw: the sequence numbers of the data messages.
struct Seen {
    seqs: Vec<u32>,
}

/// A libzmq SUB thread: subscribes to everything, flags `warm` at the
/// first warm-up message, then collects data messages until it has `n` or
/// nothing came for 2 s.
fn subscriber(
    n_max: u32,
    backend: &str,
    reader: Reader,
    warm: Arc<AtomicBool>,
    release: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Seen> {
    let sub = lz_ctx().socket(zmq::SUB).unwrap();
    sub.set_linger(0).unwrap();
    // A small libzmq pipe, so the proxy's own queue is what fills.
    sub.set_rcvhwm(8).unwrap();
    sub.set_subscribe(b"").unwrap();
    sub.connect(backend).unwrap();
    std::thread::spawn(move || {
        sub.set_rcvtimeo(20_000).unwrap();
        let mut seqs = Vec::new();
        let mut n = 0u64;
        loop {
            if matches!(reader, Reader::Stuck) && !release.load(Ordering::Acquire) {
                if warm.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            } else if !seqs.is_empty() {
                sub.set_rcvtimeo(2_000).unwrap();
            }
            let Ok(frames) = sub.recv_multipart(0) else {
                break;
            };
            if frames[0] == b"warm" {
                warm.store(true, Ordering::Release);
                continue;
            }
            assert_eq!(frames.len(), 3, "topic, sequence, payload");
            assert_eq!(frames[2].len(), PAYLOAD);
            seqs.push(u32::from_be_bytes(frames[1][..4].try_into().unwrap()));
            n += 1;
            if seqs.len() == n_max as usize {
                break;
            }
            if matches!(reader, Reader::Slow) && n.is_multiple_of(8) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Seen { seqs }
    })
}

/// A libzmq PUB thread with HWM 0 (it never drops): warm-up messages until
/// every flag in `warm` is set, then the data messages `[T<seq % 10>][seq][payload]`.
fn publisher(
    shape: Shape,
    frontend: &str,
    warm: Vec<Arc<AtomicBool>>,
) -> std::thread::JoinHandle<()> {
    let publisher = lz_ctx().socket(zmq::PUB).unwrap();
    publisher.set_linger(0).unwrap();
    publisher.set_sndhwm(0).unwrap();
    publisher.connect(frontend).unwrap();
    std::thread::spawn(move || {
        let started = Instant::now();
        while !warm.iter().all(|w| w.load(Ordering::Acquire)) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "subscriptions never reached the publisher"
            );
            publisher.send(&b"warm"[..], 0).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        let payload = vec![b'x'; PAYLOAD];
        for seq in 0..shape.n {
            let topic = format!("T{}", seq % 10);
            publisher.send(topic.as_bytes(), zmq::SNDMORE).unwrap();
            publisher
                .send(&seq.to_be_bytes()[..], zmq::SNDMORE)
                .unwrap();
            publisher.send(&payload[..], 0).unwrap();
            if shape.paced && seq % 16 == 15 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        // LINGER 0 would discard what is still queued: wait for it to go.
        publisher.set_linger(30_000).unwrap();
    })
}

struct Run {
    proxy: Running,
    fast: Seen,
    other: Seen,
}

/// Runs one publisher, one fast subscriber and one `other` subscriber
/// through a proxy of `kind` under `policy`. A stuck subscriber is
/// released once the fast one has everything and `stuck_until` holds.
async fn run(
    shape: Shape,
    kind: Kind,
    policy: SlowPolicy,
    other: Reader,
    stuck_until: impl Fn(&ProxyStats) -> bool,
) -> Run {
    trace_init();
    let token = CancellationToken::new();
    let proxy = Running::start(kind, policy, shape.hwm, &token).await;
    let (frontend, backend) = proxy.endpoints();
    let warm: Vec<Arc<AtomicBool>> = (0..2).map(|_| Arc::default()).collect();
    let release = Arc::new(AtomicBool::new(false));
    let fast = subscriber(
        shape.n,
        &backend,
        Reader::Fast,
        warm[0].clone(),
        release.clone(),
    );
    let slow = subscriber(shape.n, &backend, other, warm[1].clone(), release.clone());
    let publisher = publisher(shape, &frontend, warm);
    let fast = tokio::task::spawn_blocking(move || fast.join().unwrap())
        .await
        .unwrap();
    eventually(secs(20), "the proxy state the test waits for", || {
        stuck_until(&proxy.stats())
    })
    .await;
    release.store(true, Ordering::Release);
    let other = tokio::task::spawn_blocking(move || slow.join().unwrap())
        .await
        .unwrap();
    tokio::task::spawn_blocking(move || publisher.join().unwrap())
        .await
        .unwrap();
    let run = Run { proxy, fast, other };
    token.cancel();
    run
}

fn assert_all_in_order(seen: &Seen, n: u32, who: &str) {
    assert_eq!(seen.seqs.len(), n as usize, "{who}: every message");
    assert!(
        seen.seqs.iter().copied().eq(0..n),
        "{who}: in order, no gap, no duplicate"
    );
}

async fn nodrop_delivers_everything_in_order_to_a_slow_subscriber(kind: Kind) {
    let r = run(BLOCKING, kind, SlowPolicy::Block, Reader::Slow, |_| true).await;
    assert_all_in_order(&r.fast, BLOCKING.n, "fast subscriber");
    assert_all_in_order(&r.other, BLOCKING.n, "slow subscriber");
    let stats = r.proxy.stats();
    assert_eq!(stats.slow_drops, 0, "{stats:?}");
    assert!(
        stats.slow_blocks > 0,
        "the slow subscriber did fill its queue and pause the publisher: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodrop_proxy_delivers_everything_in_order_to_a_slow_libzmq_subscriber() {
    nodrop_delivers_everything_in_order_to_a_slow_subscriber(Kind::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodrop_espresso_delivers_everything_in_order_to_a_slow_libzmq_subscriber() {
    nodrop_delivers_everything_in_order_to_a_slow_subscriber(Kind::Espresso).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodrop_lvc_delivers_everything_in_order_to_a_slow_libzmq_subscriber() {
    nodrop_delivers_everything_in_order_to_a_slow_subscriber(Kind::Lvc).await;
}

/// Drop: the stuck subscriber loses its own messages and the fast one is
/// not held back at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_policy_does_not_stall_the_others_for_a_stuck_libzmq_subscriber() {
    let r = run(
        DROPPING,
        Kind::Plain,
        SlowPolicy::Drop,
        Reader::Stuck,
        |s| s.messages_in >= u64::from(DROPPING.n),
    )
    .await;
    assert_all_in_order(&r.fast, DROPPING.n, "fast subscriber");
    let stats = r.proxy.stats();
    assert!(stats.slow_drops > 0, "{stats:?}");
    assert_eq!(stats.slow_blocks, 0, "{stats:?}");
    assert!(
        r.other.seqs.len() < DROPPING.n as usize,
        "the stuck subscriber lost messages"
    );
    assert!(
        r.other.seqs.windows(2).all(|w| w[0] < w[1]),
        "what it got is in order"
    );
}

/// Disconnect: the stuck subscriber is cut after the limit, the publisher
/// resumes, the fast one gets everything, and nothing is dropped silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_policy_cuts_a_stuck_libzmq_subscriber_and_the_others_go_on() {
    let policy = SlowPolicy::Disconnect {
        after: Duration::from_millis(100),
    };
    let r = run(BLOCKING, Kind::Plain, policy, Reader::Stuck, |s| {
        s.slow_disconnects > 0
    })
    .await;
    assert_all_in_order(&r.fast, BLOCKING.n, "fast subscriber");
    let stats = r.proxy.stats();
    assert_eq!(stats.slow_drops, 0, "{stats:?}");
    assert!(stats.slow_blocks > 0, "{stats:?}");
    assert!(
        r.other.seqs.windows(2).all(|w| w[0] < w[1]),
        "what the stuck subscriber got is in order"
    );
    assert!(
        r.other.seqs.len() < BLOCKING.n as usize,
        "the stuck subscriber was cut"
    );
}
