//! Hot paths of the Clone pattern: the kvmsg codec, the server store and
//! the snapshot cursor. `cargo bench --bench clone`.

use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use zpatterns::clone::{KvMsg, SnapshotCursor, Store, StoreConfig, Update, TTL};

fn sample() -> KvMsg {
    let mut m = KvMsg::new("/client/1234", "value-567890").unwrap();
    m.set_seq(42);
    m.set_uuid(Some([7; 16]));
    m.props_mut().set(TTL, "10").unwrap();
    m
}

fn codec(c: &mut Criterion) {
    let m = sample();
    let frames = m.encode();
    let mut g = c.benchmark_group("kvmsg");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&m).encode()));
    g.bench_function("decode", |b| b.iter(|| KvMsg::decode(black_box(&frames))));
    g.bench_function("decode_update", |b| {
        b.iter(|| Update::decode(black_box(&frames)))
    });
    g.finish();
}

fn store(c: &mut Criterion) {
    let now = Instant::now();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut s = Store::new(StoreConfig::default(), now);
    let mut i = 0u64;
    g.bench_function("handle_kvset_100k_keys", |b| {
        b.iter(|| {
            i += 1;
            let m = KvMsg::new(format!("/k/{}", i % 100_000), "v").unwrap();
            s.handle_kvset(m, now)
        })
    });
    g.finish();

    let mut s = Store::new(StoreConfig::default(), now);
    for i in 0..100_000 {
        s.handle_kvset(KvMsg::new(format!("/k/{i:06}"), "value").unwrap(), now);
    }
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(100_000));
    g.bench_function("cursor_100k_keys", |b| {
        b.iter(|| {
            let mut cur = SnapshotCursor::new(Bytes::new(), Bytes::new(), s.map(), 0, now);
            let mut out = Vec::with_capacity(257);
            let mut n = 0;
            while !cur.next_chunk(now, 256, &mut out) {
                n += out.len();
                out.clear();
            }
            n
        })
    });
    g.finish();
}

criterion_group!(benches, codec, store);
criterion_main!(benches);
