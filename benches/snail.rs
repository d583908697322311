//! Hot paths of the Suicidal Snail: stamping a message (publisher side),
//! decoding a stamp (toolkit envelope and the Guide's C format), one
//! detector update, and the whole pure core's step per received message
//! (size check, stamp removal, detector, policy state).
//!
//! `cargo bench --bench snail`

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use zpatterns::snail::envelope::{decode, encode_guide, take_stamp, Stamper, WireFormat};
use zpatterns::snail::{Detector, DetectorConfig, SnailCore, SnailStep};

fn envelope(c: &mut Criterion) {
    let mut g = c.benchmark_group("envelope");
    let now = UNIX_EPOCH + Duration::from_micros(1_732_240_000_123_456);
    let mut stamper = Stamper::with_epoch("publisher-01", 7).unwrap();
    g.bench_function("encode_stamp", |b| {
        b.iter(|| black_box(stamper.next_stamp(black_box(now))))
    });
    let mut frames = vec![Bytes::from_static(b"AAPL"), Bytes::from(vec![b'x'; 84])];
    stamper.stamp(&mut frames, now);
    g.bench_function("decode_toolkit", |b| {
        b.iter(|| black_box(decode(black_box(&frames), WireFormat::Toolkit).unwrap()))
    });
    g.bench_function("decode_auto_toolkit", |b| {
        b.iter(|| black_box(decode(black_box(&frames), WireFormat::Auto).unwrap()))
    });
    // What the subscriber does: frames as the zeromq codec hands them out
    // (slices of one receive buffer), stamp popped without refcounting.
    let mut buf = bytes::BytesMut::new();
    for f in &frames {
        buf.extend_from_slice(f);
    }
    let mut buf = buf.freeze();
    let wire: Vec<Bytes> = frames.iter().map(|f| buf.split_to(f.len())).collect();
    g.bench_function("take_stamp_toolkit", |b| {
        b.iter_batched(
            || wire.clone(),
            // Returning the frames drops them outside the measurement.
            |mut f| (black_box(take_stamp(&mut f, WireFormat::Auto).unwrap()), f),
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("encode_guide", |b| {
        b.iter(|| black_box(encode_guide(black_box(now))))
    });
    let guide = [encode_guide(now)];
    g.bench_function("decode_guide", |b| {
        b.iter(|| black_box(decode(black_box(&guide), WireFormat::GuideC).unwrap()))
    });
    g.finish();
}

/// Pre-built stamps from `publishers` publishers, 1 ms apart.
fn stamps(publishers: usize, n: usize) -> Vec<zpatterns::snail::Stamp> {
    let mut stampers: Vec<Stamper> = (0..publishers)
        .map(|i| Stamper::with_epoch(format!("publisher-{i:02}"), 1).unwrap())
        .collect();
    (0..n)
        .map(|i| {
            let t = UNIX_EPOCH + Duration::from_millis(1_732_240_000_000 + i as u64);
            let s = &mut stampers[i % publishers];
            decode(
                &[Bytes::from_static(b"t"), s.next_stamp(t)],
                WireFormat::Toolkit,
            )
            .unwrap()
        })
        .collect()
}

fn detector(c: &mut Criterion) {
    let mut g = c.benchmark_group("detector");
    for publishers in [1usize, 64] {
        let input = stamps(publishers, 4096);
        let mut det = Detector::new(DetectorConfig::default());
        let mut i = 0usize;
        let mut now = UNIX_EPOCH + Duration::from_millis(1_732_240_000_000);
        g.bench_function(format!("handle_message/{publishers}_publishers"), |b| {
            b.iter(|| {
                let s = &input[i % input.len()];
                if i.is_multiple_of(input.len()) {
                    // Keep the sequence numbers valid across wrap-arounds.
                    det = Detector::new(DetectorConfig::default());
                }
                i += 1;
                now += Duration::from_micros(1);
                black_box(det.handle_message(s, black_box(now)))
            })
        });
    }
    // The subscriber's whole per-message decision (what `recv` runs
    // besides the socket and the clock): frames in, a step out.
    let mut stamper = Stamper::with_epoch("publisher-01", 1).unwrap();
    let mut core = SnailCore::new(DetectorConfig::default(), WireFormat::Toolkit, 1 << 20);
    let mut now = UNIX_EPOCH + Duration::from_millis(1_732_240_000_000);
    let body = Bytes::from(vec![b'x'; 84]);
    g.bench_function("snail_core_on_message", |b| {
        b.iter_batched(
            || {
                now += Duration::from_micros(1);
                let mut f = vec![Bytes::from_static(b"AAPL"), body.clone()];
                stamper.stamp(&mut f, now);
                (f, now)
            },
            |(f, at)| match core.on_message(f, at) {
                SnailStep::Deliver(m) => m,
                other => panic!("{other:?}"),
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.bench_function("system_time_now", |b| {
        b.iter(|| black_box(SystemTime::now()))
    });
    g.finish();
}

criterion_group!(benches, envelope, detector);
criterion_main!(benches);
