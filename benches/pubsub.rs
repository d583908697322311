//! Criterion benchmarks of the pub-sub proxies' pure hot paths: subscription
//! frames, subscription matching (the registry against a naive scan) and the
//! ZMTP message codec of the XPUB backend.
//!
//! `cargo bench --bench pubsub`; end-to-end numbers come from
//! `cargo run --release --example throughput` (see `patterns/throughput.md`).

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use zpatterns::subscription::{matches_any, Registry, SubEvent};
use zpatterns::zmtp::codec;

fn subscription_frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("subscription");
    let frame = Bytes::from_static(b"\x01weather.eu.paris");
    g.bench_function("decode", |b| {
        b.iter(|| SubEvent::decode_frame(black_box(&frame)))
    });
    let event = SubEvent::Subscribe(Bytes::from_static(b"weather.eu.paris"));
    g.bench_function("encode", |b| b.iter(|| black_box(&event).encode()));
    g.finish();
}

/// `n` distinct prefixes like a real subscription set: `T000`, `T001`, ...
fn prefixes(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(format!("T{i:03}"))).collect()
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("matches");
    for n in [10usize, 100, 1000] {
        let ps = prefixes(n);
        let mut registry = Registry::new();
        for p in &ps {
            registry.subscribe(p.clone());
        }
        // A topic matched by the last prefix (worst case for the scan) and
        // one that matches nothing.
        let hit = format!("T{:03}-some.topic", n - 1).into_bytes();
        let miss = b"X-no.subscriber".to_vec();
        for (name, topic) in [("hit", &hit), ("miss", &miss)] {
            g.bench_with_input(
                BenchmarkId::new(format!("registry/{name}"), n),
                topic,
                |b, t| b.iter(|| registry.matches(black_box(t))),
            );
            g.bench_with_input(
                BenchmarkId::new(format!("naive/{name}"), n),
                topic,
                |b, t| b.iter(|| matches_any(ps.iter().map(|p| &p[..]), black_box(t))),
            );
        }
    }
    g.finish();
}

fn zmtp_codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("zmtp");
    for size in [16usize, 256, 4096, 65536] {
        let frames = [Bytes::from_static(b"T042"), Bytes::from(vec![b'x'; size])];
        g.throughput(Throughput::Bytes(size as u64));
        let mut buf = BytesMut::with_capacity(2 * size + 64);
        g.bench_with_input(BenchmarkId::new("encode", size), &frames, |b, f| {
            b.iter(|| {
                buf.clear();
                codec::encode_message(f.iter(), &mut buf);
                black_box(buf.len())
            })
        });
        let mut wire = BytesMut::new();
        codec::encode_message(frames.iter(), &mut wire);
        let wire = wire.freeze();
        g.bench_with_input(BenchmarkId::new("decode", size), &wire, |b, w| {
            b.iter(|| {
                let mut buf = BytesMut::from(&w[..]);
                let mut n = 0;
                while let Some(f) = codec::decode_frame(&mut buf, 1 << 20).expect("valid") {
                    n += f.body.len();
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, subscription_frames, matching, zmtp_codec);
criterion_main!(benches);
