//! Multi-Paxos CPU cost on the simulator (commits per second of wall time
//! for the protocol, codec and simulated network, 1 session and 64
//! batched sessions), and the wire codec. The ZeroMQ numbers come from
//! `cargo run --release --example paxos` (see `patterns/paxos.md`).

#[allow(dead_code, unused_imports)] // the bench runs the simulator scenario only
#[path = "../examples/paxos_demo/mod.rs"]
mod demo;

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use demo::{run_sim, DemoConfig};
use zpatterns::paxos::{Ballot, ClientId, Command, Msg, Op, Value};
use zpatterns::transport::NodeId;

fn sim(c: &mut Criterion) {
    let mut g = c.benchmark_group("paxos_sim");
    g.sample_size(10);
    for sessions in [1usize, 64] {
        let cfg = DemoConfig {
            acceptors: 3,
            leaders: 1,
            failed: 0,
            proposals: 2000,
            sessions,
            ..DemoConfig::default()
        };
        g.throughput(Throughput::Elements(cfg.proposals as u64));
        g.bench_function(format!("3_acceptors_{sessions}_sessions"), |b| {
            b.iter(|| {
                let r = run_sim(&cfg, 1, Duration::from_secs(600));
                assert!(r.agree());
            })
        });
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let batch = Value::Batch(
        (0..64)
            .map(|i| Command {
                client: ClientId(i),
                seq: 7,
                op: Op::Put {
                    key: Bytes::from(format!("key-{i}")),
                    value: Bytes::from(vec![b'x'; 32]),
                },
            })
            .collect(),
    );
    let msg = Msg::Accept {
        ballot: Ballot::new(3, NodeId(1)),
        slot: 12345,
        value: batch,
        commit: 12340,
    };
    let frame = msg.encode();
    let mut g = c.benchmark_group("paxos_codec");
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("encode_accept_64_puts", |b| b.iter(|| msg.encode()));
    g.bench_function("decode_accept_64_puts", |b| {
        b.iter(|| Msg::decode(frame.clone()).unwrap())
    });
    g.finish();
}

criterion_group!(benches, sim, codec);
criterion_main!(benches);
