//! Hot paths of the Black Box: the shard hash, shard selection on a
//! market-data message, the pure dispatcher's step per message (size
//! check, shard, batch), and the hand-off to a worker over a bounded tokio
//! channel (what the I/O task pays per message besides the socket).
//!
//! `cargo bench --bench blackbox`. `fnv1a` (byte at a time, the usual
//! simple stable hash) and std's SipHash are measured for comparison.

use std::hash::{BuildHasher, Hasher};
use std::hint::black_box;
use std::num::NonZeroUsize;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use zeromq::ZmqMessage;
use zpatterns::blackbox::{shard_hash, Dispatched, Dispatcher, Overflow, ShardKey, Sharder};

fn fnv1a(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn hashes(c: &mut Criterion) {
    let mut g = c.benchmark_group("shard_hash");
    let sip = std::collections::hash_map::RandomState::new();
    for len in [8usize, 16, 32] {
        let key: Vec<u8> = (0..len as u8).map(|i| b'A' + i % 26).collect();
        g.bench_with_input(BenchmarkId::new("shard_hash", len), &key, |b, k| {
            b.iter(|| shard_hash(black_box(k)))
        });
        g.bench_with_input(BenchmarkId::new("fnv1a", len), &key, |b, k| {
            b.iter(|| fnv1a(black_box(k)))
        });
        g.bench_with_input(BenchmarkId::new("siphash13_std", len), &key, |b, k| {
            b.iter(|| {
                let mut h = sip.build_hasher();
                h.write(black_box(k));
                h.finish()
            })
        });
    }
    g.finish();
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("worker_for");
    let workers = NonZeroUsize::new(8).unwrap();
    let mut body = b"K3-00042".to_vec();
    body.resize(100, b'.');
    let single = ZmqMessage::from(Bytes::from(body));
    let prefix = Sharder::new(ShardKey::Prefix(8), workers);
    g.bench_function("prefix8_100B", |b| {
        b.iter(|| prefix.worker_for(black_box(&single)))
    });
    let multi = ZmqMessage::try_from(vec![
        Bytes::from_static(b"AAPL.NASDAQ"),
        Bytes::from(vec![0u8; 89]),
    ])
    .unwrap();
    let topic = Sharder::new(ShardKey::Topic, workers);
    g.bench_function("topic_2frames", |b| {
        b.iter(|| topic.worker_for(black_box(&multi)))
    });
    g.finish();
    // The dispatcher: what `io_task` asks per message (batches of 64 are
    // handed back and dropped outside the measurement).
    let mut g = c.benchmark_group("dispatch");
    let mut d = Dispatcher::new(
        Sharder::new(ShardKey::Prefix(8), workers),
        NonZeroUsize::new(64).unwrap(),
        64 << 10,
        Overflow::Block,
    );
    g.bench_function("on_message_100B", |b| {
        b.iter_batched(
            || single.clone(),
            |m| match d.on_message(m) {
                Dispatched::Full(batch) => Some(batch),
                _ => None,
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// The I/O task → worker hand-off over a bounded tokio channel, channel
/// cost only (the same message or batch moves back and forth): one channel
/// operation per message (the first design) against one per batch of 64
/// (what `io_task` does now).
fn hand_off(c: &mut Criterion) {
    let mut g = c.benchmark_group("hand_off");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<ZmqMessage>(4096);
    let mut msg = Some(ZmqMessage::from(Bytes::from(vec![b'.'; 100])));
    g.bench_function("per_message", |b| {
        b.iter(|| {
            tx.try_send(msg.take().unwrap()).unwrap();
            msg = Some(black_box(rx.try_recv().unwrap()));
        })
    });
    let (btx, mut brx) = tokio::sync::mpsc::channel::<Vec<ZmqMessage>>(64);
    let one = ZmqMessage::from(Bytes::from(vec![b'.'; 100]));
    let mut batch = Some(vec![one; 64]);
    g.throughput(criterion::Throughput::Elements(64));
    g.bench_function("per_batch_of_64", |b| {
        b.iter(|| {
            btx.try_send(batch.take().unwrap()).unwrap();
            batch = Some(black_box(brx.try_recv().unwrap()));
        })
    });
    g.finish();
}

criterion_group!(benches, hashes, selection, hand_off);
criterion_main!(benches);
