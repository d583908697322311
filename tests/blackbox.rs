//! Black Box end to end: per-key order under load, every received message
//! accounted for (delivered or counted as dropped), several sockets, a
//! libzmq publisher feeding the sharded subscriber, and bad configurations.

mod common;
use common::*;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use zeromq::prelude::*;
use zeromq::{PubSocket, ZmqMessage};
use zpatterns::blackbox::*;
use zpatterns::endpoint::EndpointSpec;

/// (key, seq) pairs, in the order one worker handled them.
type Log = Arc<Mutex<Vec<Vec<(String, u64)>>>>;

fn parse(msg: &ZmqMessage) -> (String, u64) {
    let key = String::from_utf8_lossy(msg.get(0).unwrap()).into_owned();
    let seq = u64::from_be_bytes(msg.get(1).unwrap()[..8].try_into().unwrap());
    (key, seq)
}

fn data(key: &str, seq: u64) -> ZmqMessage {
    zpatterns::frames::message([
        Bytes::from(key.to_owned()),
        Bytes::copy_from_slice(&seq.to_be_bytes()),
    ])
    .unwrap()
}

/// Starts a Black Box on `config` whose workers log what they handle,
/// optionally sleeping `work` per message.
async fn recording(
    config: BlackBoxConfig,
    workers: usize,
    work: Duration,
) -> (BlackBoxHandle, Log) {
    let log: Log = Arc::new(Mutex::new(vec![Vec::new(); workers]));
    let l = log.clone();
    let bb = BlackBox::start(config.workers(workers), move |w| {
        let l = l.clone();
        move |msg: ZmqMessage| {
            if !work.is_zero() {
                std::thread::sleep(work);
            }
            l.lock().unwrap()[w].push(parse(&msg));
        }
    })
    .await
    .expect("black box starts");
    (bb, log)
}

/// Publishes warm-up messages until one has been handled.
async fn warm_up(p: &mut PubSocket, log: &Log) {
    let seen = |log: &Log| {
        log.lock()
            .unwrap()
            .iter()
            .flatten()
            .any(|(k, _)| k == "warmup")
    };
    within(secs(10), "subscription", async {
        let mut i = 0;
        while !seen(log) {
            p.send(data("warmup", i)).await.unwrap();
            i += 1;
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

/// Publishes `keys` × `per_key` messages, interleaved, yielding every 256.
async fn publish(p: &mut PubSocket, keys: usize, per_key: u64) {
    let mut n = 0u32;
    for seq in 0..per_key {
        for k in 0..keys {
            p.send(data(&format!("K{k:04}"), seq)).await.unwrap();
            n += 1;
            if n.is_multiple_of(256) {
                tokio::task::yield_now().await;
            }
        }
    }
}

/// Checks per-key order at one worker per key; returns seqs per key.
fn check_order(log: &Log) -> BTreeMap<String, Vec<u64>> {
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (w, entries) in log.lock().unwrap().iter().enumerate() {
        for (k, seq) in entries.iter().filter(|(k, _)| k != "warmup") {
            assert_eq!(
                *owner.entry(k.clone()).or_insert(w),
                w,
                "key {k} went to two workers"
            );
            per_key.entry(k.clone()).or_default().push(*seq);
        }
    }
    for (k, seqs) in &per_key {
        assert!(
            seqs.windows(2).all(|p| p[0] < p[1]),
            "key {k} out of order: {seqs:?}"
        );
    }
    per_key
}

fn data_count(log: &Log) -> usize {
    log.lock()
        .unwrap()
        .iter()
        .flatten()
        .filter(|(k, _)| k != "warmup")
        .count()
}

async fn bound_pub() -> (PubSocket, EndpointSpec) {
    let mut p = PubSocket::new();
    let ep = p.bind("tcp://127.0.0.1:0").await.unwrap().to_string();
    (p, EndpointSpec::connect(&ep).unwrap())
}

#[tokio::test]
async fn backpressure_keeps_per_key_order_and_loses_nothing() {
    trace_init();
    let (mut p, ep) = bound_pub().await;
    let config = BlackBoxConfig::new()
        .socket(vec![ep], &[""])
        .queue_depth(16)
        .overflow(Overflow::Block);
    let (bb, log) = recording(config, 4, Duration::from_micros(20)).await;
    warm_up(&mut p, &log).await;
    publish(&mut p, 64, 300).await;
    eventually(secs(60), "all delivered", || data_count(&log) == 64 * 300).await;
    let stats = bb.shutdown().await.unwrap();
    let per_key = check_order(&log);
    assert_eq!(per_key.len(), 64);
    for seqs in per_key.values() {
        assert_eq!(seqs, &(0..300).collect::<Vec<u64>>());
    }
    assert_eq!(stats.total_dropped(), 0);
    assert_eq!(stats.total_received(), stats.total_delivered());
    assert!(
        stats.delivered.iter().all(|&d| d > 1000),
        "every shard worked: {stats:?}"
    );
}

#[tokio::test]
async fn drop_newest_accounts_for_every_message() {
    trace_init();
    let (mut p, ep) = bound_pub().await;
    let dropped: Arc<Mutex<Vec<(usize, String, u64)>>> = Arc::default();
    let d = dropped.clone();
    let config = BlackBoxConfig::new()
        .socket(vec![ep], &[""])
        .queue_depth(4)
        .overflow(Overflow::DropNewest)
        .on_drop(move |w, msg| {
            let (k, seq) = parse(msg);
            d.lock().unwrap().push((w, k, seq));
        });
    let (bb, log) = recording(config, 2, Duration::from_micros(200)).await;
    warm_up(&mut p, &log).await;
    let warm_drops = dropped.lock().unwrap().len();
    publish(&mut p, 32, 100).await;
    let accounted = || {
        data_count(&log)
            + dropped
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, k, _)| k != "warmup")
                .count()
    };
    eventually(secs(60), "all accounted", || accounted() == 3200).await;
    let stats = bb.shutdown().await.unwrap();
    let per_key = check_order(&log);
    let drops = dropped.lock().unwrap().clone();
    assert!(
        drops.len() > warm_drops,
        "a 4-deep queue behind a 200 µs worker must overflow"
    );
    // Delivered ∪ dropped is every message, each exactly once, and a key's
    // drops are counted at the worker that owns the key.
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    for (k, seqs) in &per_key {
        for s in seqs {
            assert!(seen.insert((k.clone(), *s)));
        }
    }
    for (w, k, s) in drops.iter().filter(|(_, k, _)| k != "warmup") {
        assert!(
            seen.insert((k.clone(), *s)),
            "{k}#{s} both delivered and dropped"
        );
        let owner = log
            .lock()
            .unwrap()
            .iter()
            .position(|e| e.iter().any(|(lk, _)| lk == k));
        assert!(
            owner.is_none_or(|o| o == *w),
            "drop of {k} counted at worker {w}"
        );
    }
    assert_eq!(seen.len(), 3200);
    assert_eq!(stats.total_dropped() as usize, drops.len());
    assert_eq!(
        stats.total_received(),
        stats.total_delivered() + stats.total_dropped()
    );
}

#[tokio::test]
async fn several_sockets_split_the_topics() {
    trace_init();
    let (mut p, ep) = bound_pub().await;
    let config = BlackBoxConfig::new()
        .socket(vec![ep.clone()], &["K00", "warmup"])
        .socket(vec![ep], &["K01"]);
    let (bb, log) = recording(config, 3, Duration::ZERO).await;
    warm_up(&mut p, &log).await;
    // The second socket's subscription may lag the first: wait for it too.
    within(secs(10), "second socket", async {
        while bb.stats().received[1] == 0 {
            p.send(data("K01-probe", 0)).await.unwrap();
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let before = bb.stats().received;
    publish(&mut p, 200, 10).await; // K0000..K0199: 100 keys per socket
    eventually(secs(30), "all delivered", || {
        let s = bb.stats();
        s.received[0] - before[0] == 1000 && s.received[1] - before[1] == 1000
    })
    .await;
    let stats = bb.shutdown().await.unwrap();
    let per_key = check_order(&log);
    assert_eq!(
        per_key
            .iter()
            .filter(|(k, v)| k.starts_with("K0") && k.len() == 5 && v.len() == 10)
            .count(),
        200
    );
    assert_eq!(stats.total_received(), stats.total_delivered());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_publisher_feeds_the_sharded_subscriber() {
    trace_init();
    let publisher = Lz::new(zmq::PUB);
    publisher.with(|s| s.set_sndhwm(0).unwrap()); // libzmq's default 1000 would drop
    let ep = EndpointSpec::connect(&publisher.bind_loopback()).unwrap();
    let config = BlackBoxConfig::new()
        .socket(vec![ep], &[""])
        .key(ShardKey::Prefix(5))
        .queue_depth(64);
    let (bb, log) = recording(config, 4, Duration::ZERO).await;
    within(secs(10), "subscription", async {
        while data_count(&log) == 0
            && !log
                .lock()
                .unwrap()
                .iter()
                .flatten()
                .any(|(k, _)| k == "warmup")
        {
            publisher.send(&[b"warmup", &0u64.to_be_bytes()]).await;
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let p = publisher.clone();
    tokio::task::spawn_blocking(move || {
        p.with(|s| {
            for seq in 0..200u64 {
                for k in 0..100 {
                    let body = [seq.to_be_bytes().as_slice(), &[b'.'; 92]].concat();
                    s.send_multipart([format!("K{k:04}").into_bytes(), body], 0)
                        .unwrap();
                }
            }
        })
    })
    .await
    .unwrap();
    eventually(secs(60), "all delivered", || data_count(&log) == 20_000).await;
    let stats = bb.shutdown().await.unwrap();
    let per_key = check_order(&log);
    assert!(per_key
        .values()
        .all(|s| s == &(0..200).collect::<Vec<u64>>()));
    assert_eq!(stats.total_received(), stats.total_delivered());
}

#[tokio::test]
async fn bad_configurations_are_typed_errors() {
    let ep = EndpointSpec::connect("tcp://127.0.0.1:1").unwrap();
    let start = |c: BlackBoxConfig| BlackBox::start(c, |_| |_m: ZmqMessage| {});
    assert!(matches!(
        start(BlackBoxConfig::new()).await,
        Err(BlackBoxError::NoSockets)
    ));
    let one = BlackBoxConfig::new().socket(vec![ep], &[""]);
    assert!(matches!(
        start(one.clone().workers(0)).await,
        Err(BlackBoxError::ZeroWorkers)
    ));
    assert!(matches!(
        start(one.queue_depth(0)).await,
        Err(BlackBoxError::ZeroQueueDepth)
    ));
    let none = BlackBoxConfig::new().socket(vec![], &[""]);
    assert!(matches!(
        start(none).await,
        Err(BlackBoxError::NoEndpoint(0))
    ));
}

#[tokio::test]
async fn a_panicking_worker_is_reported_and_its_messages_counted_as_dropped() {
    trace_init();
    let (mut p, ep) = bound_pub().await;
    let config = BlackBoxConfig::new()
        .socket(vec![ep], &[""])
        .workers(1)
        .queue_depth(8);
    let bb = BlackBox::start(config, |_| {
        |msg: ZmqMessage| {
            if msg.get(0).unwrap().as_ref() == b"boom" {
                panic!("handler bug");
            }
        }
    })
    .await
    .unwrap();
    within(secs(10), "delivery", async {
        while bb.stats().total_delivered() == 0 {
            p.send(data("warmup", 0)).await.unwrap();
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    p.send(data("boom", 0)).await.unwrap();
    eventually(secs(10), "worker gone", || {
        let _ = futures::FutureExt::now_or_never(p.send(data("after", 0)));
        bb.stats().total_dropped() > 0
    })
    .await;
    assert!(matches!(
        bb.shutdown().await,
        Err(BlackBoxError::WorkerPanicked(0))
    ));
}
