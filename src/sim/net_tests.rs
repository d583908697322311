//! Tests of the simulator: determinism, partitions, crashes, the pump,
//! filters and taps.

use super::*;

/// A process that echoes every message back once and counts.
#[derive(Debug, Default)]
struct Echo {
    got: Vec<(NodeId, Bytes)>,
    ticks: u32,
    wake: Option<Time>,
}

impl Process for Echo {
    fn handle_message(&mut self, _now: Time, from: NodeId, msg: Bytes, out: &mut Outbox) {
        if msg.as_ref() == b"ping" {
            out.send(from, Bytes::from_static(b"pong"));
        }
        self.got.push((from, msg));
    }
    fn handle_timeout(&mut self, now: Time, _out: &mut Outbox) {
        self.ticks += 1;
        self.wake = (self.ticks < 3).then(|| now + Duration::from_millis(10));
    }
    fn poll_timeout(&self) -> Option<Time> {
        self.wake
    }
}

fn echo_sim(seed: u64) -> Sim<Echo> {
    let mut sim = Sim::new(seed);
    for i in 0..3 {
        sim.add_node(NodeId(i), |_, _, now| Echo {
            wake: Some(now + Duration::from_millis(5)),
            ..Echo::default()
        });
    }
    sim
}

fn pings(sim: &mut Sim<Echo>, n: usize) {
    for k in 0..n {
        let from = NodeId((k % 3) as u32);
        let to = NodeId(((k + 1) % 3) as u32);
        sim.inject(from, to, Bytes::from_static(b"ping"));
    }
}

fn run(seed: u64) -> (u64, SimStats) {
    let mut sim = echo_sim(seed);
    sim.set_default_link(
        LinkProfile::uniform(Duration::from_millis(1), Duration::from_millis(5)).lossy(0.1, 0.1),
    );
    pings(&mut sim, 100);
    sim.run_for(Duration::from_secs(1), |_, _| Ok::<_, ()>(()))
        .unwrap();
    (sim.trace_hash(), sim.stats())
}

#[test]
fn same_seed_same_trace_other_seed_other_trace() {
    let (a, stats) = run(1);
    assert_eq!(run(1).0, a);
    assert_ne!(run(2).0, a);
    assert!(stats.dropped > 0 && stats.duplicated > 0, "{stats:?}");
    assert_eq!(stats.timers, 9);
}

#[test]
fn partitions_cut_and_heal_restores() {
    let mut sim = echo_sim(3);
    sim.partition(&[&[NodeId(0)], &[NodeId(1), NodeId(2)]]);
    assert!(!sim.connected(NodeId(0), NodeId(1)));
    assert!(sim.connected(NodeId(1), NodeId(2)));
    sim.inject(NodeId(0), NodeId(1), Bytes::from_static(b"x"));
    sim.inject(NodeId(2), NodeId(1), Bytes::from_static(b"y"));
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(sim.node(NodeId(1)).unwrap().got.len(), 1);
    assert_eq!(sim.stats().cut, 1);
    sim.heal();
    sim.block(NodeId(0), NodeId(1));
    assert!(sim.connected(NodeId(1), NodeId(0)));
    assert!(!sim.connected(NodeId(0), NodeId(1)));
    sim.heal();
    sim.inject(NodeId(0), NodeId(1), Bytes::from_static(b"x"));
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(sim.node(NodeId(1)).unwrap().got.len(), 2);
}

#[test]
fn crash_drops_state_and_restart_rebuilds_from_the_factory() {
    let mut sim = echo_sim(4);
    pings(&mut sim, 3);
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert!(!sim.node(NodeId(1)).unwrap().got.is_empty());
    sim.crash(NodeId(1));
    assert!(!sim.is_up(NodeId(1)));
    sim.inject(NodeId(0), NodeId(1), Bytes::from_static(b"lost"));
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(sim.stats().to_down, 1);
    sim.restart(NodeId(1));
    assert!(sim.node(NodeId(1)).unwrap().got.is_empty());
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(sim.node(NodeId(1)).unwrap().ticks, 3);
}

#[test]
fn the_pump_reorders_but_delivers_everything() {
    let mut sim = echo_sim(5);
    sim.set_default_link(LinkProfile::reliable(Duration::ZERO));
    sim.set_pump(Some(PumpProfile::adversarial(Duration::from_millis(1))));
    for k in 0..50u8 {
        sim.inject(NodeId(0), NodeId(1), Bytes::copy_from_slice(&[k]));
    }
    sim.run_for(Duration::from_secs(1), |_, _| Ok::<_, ()>(()))
        .unwrap();
    let got: Vec<u8> = sim
        .node(NodeId(1))
        .unwrap()
        .got
        .iter()
        .map(|(_, m)| m[0])
        .collect();
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..50).collect::<Vec<_>>());
    assert_ne!(got, sorted, "the pump should reorder");
}

#[test]
fn filters_drop_and_taps_see_everything() {
    let mut sim = echo_sim(6);
    let seen = std::rc::Rc::new(std::cell::Cell::new(0));
    let s = seen.clone();
    sim.set_tap(move |_, _| s.set(s.get() + 1));
    sim.set_filter(|env| {
        if env.msg.as_ref() == b"pong" {
            Fate::Drop
        } else {
            Fate::Pass
        }
    });
    pings(&mut sim, 6);
    sim.run_for(Duration::from_millis(50), |_, _| Ok::<_, ()>(()))
        .unwrap();
    assert_eq!(seen.get(), 12);
    assert_eq!(sim.stats().dropped, 6);
}
