//! Criterion benchmarks of the Last Value Cache's pure hot paths: storing
//! the newest value of a topic (`update`, once per forwarded message) and
//! finding the values a new subscription replays (`matching`), at 1k and
//! 100k cached topics.
//!
//! `cargo bench --bench lvc`.

use std::hint::black_box;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use zpatterns::lvc::{CacheLimits, LastValueCache};
use zpatterns::zmtp::Shared;

fn msg(topic: usize, value: &Bytes) -> Shared {
    vec![Bytes::from(format!("T{topic:06}")), value.clone()].into()
}

/// A cache holding `n` topics and the messages that update them.
fn filled(n: usize) -> (LastValueCache, Vec<Shared>) {
    let value = Bytes::from(vec![b'x'; 256]);
    let msgs: Vec<Shared> = (0..n).map(|i| msg(i, &value)).collect();
    let mut cache = LastValueCache::new(CacheLimits::new(n, usize::MAX));
    for m in &msgs {
        cache.update(m);
    }
    (cache, msgs)
}

fn update(c: &mut Criterion) {
    let mut g = c.benchmark_group("lvc/update");
    for n in [1_000usize, 100_000] {
        let (mut cache, msgs) = filled(n);
        // Replace values round-robin: the steady state of a busy feed.
        let mut i = 0;
        g.bench_function(BenchmarkId::new("replace", n), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                black_box(cache.update(&msgs[i]))
            })
        });
        // New topics at the limit: every update evicts the oldest.
        let value = Bytes::from(vec![b'x'; 256]);
        let fresh: Vec<Shared> = (n..n + 4096).map(|t| msg(t, &value)).collect();
        let mut j = 0;
        g.bench_function(BenchmarkId::new("insert_evict", n), |b| {
            b.iter(|| {
                j = (j + 1) % fresh.len();
                black_box(cache.update(&fresh[j]))
            })
        });
    }
    g.finish();
}

fn matching(c: &mut Criterion) {
    let mut g = c.benchmark_group("lvc/matching");
    for n in [1_000usize, 100_000] {
        let (cache, _) = filled(n);
        let exact = format!("T{:06}", n / 2).into_bytes();
        g.bench_with_input(BenchmarkId::new("exact", n), &exact, |b, p| {
            b.iter(|| cache.matching(black_box(p)).count())
        });
        // A prefix matching 1,000 topics (T000xxx) or 100 of the 1k cache.
        let prefix: &[u8] = if n >= 100_000 { b"T000" } else { b"T0000" };
        g.bench_with_input(BenchmarkId::new("prefix", n), prefix, |b, p| {
            b.iter(|| cache.matching(black_box(p)).count())
        });
        g.bench_with_input(BenchmarkId::new("miss", n), b"U".as_slice(), |b, p| {
            b.iter(|| cache.matching(black_box(p)).count())
        });
    }
    g.finish();
}

criterion_group!(benches, update, matching);
criterion_main!(benches);
