//! A model check of the Binary Star FSM: two `Fsm`s wired together in
//! virtual time (each one's published states delivered to the other after a
//! random delay, in order, some dropped), random client votes to either,
//! crashes and restarts (with the persisted epoch), and the epoch carried
//! with every state message as the Clone pair's HUGZ carry it.
//!
//! What is provable, and checked here: as long as no partition (in either
//! direction) lasts as long as the peer timeout, the pair never has two
//! actives at once, never aborts, promotes with a persisted, higher epoch,
//! and never leaves ACTIVE but by death. A longer partition with clients
//! reaching both sides gives two actives by design (Binary Star is not
//! consensus): `a_partition_longer_than_the_timeout_gives_two_actives_then_both_abort`
//! shows and pins that outcome.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use zpatterns::bstar::{BstarAction, BstarState, FatalCause, Fsm, FsmConfig, Side, Vote};

const HB: u64 = 100;

#[derive(Debug, Clone, Copy)]
enum Op {
    Vote(usize),
    Crash(usize),
    Restart(usize),
    Idle,
}

#[derive(Debug, Clone)]
struct Params {
    /// Peer timeout in heartbeats.
    timeout_hbs: u64,
    /// Largest one-way delay, ms.
    max_delay: u64,
    /// Chance of dropping a message, percent.
    drop_pct: u64,
    /// Most messages dropped in a row per direction.
    max_drops: u32,
    /// Both directions cut during [start, start + len) ms.
    partition: Option<(u64, u64)>,
}

struct Msg {
    at: u64,
    frames: Vec<Bytes>,
    epoch: u64,
}

#[derive(Debug, Default)]
struct Outcome {
    /// Times (ms) at which both were active with no fatal error yet.
    dual_active_at: Vec<u64>,
    fatal: Vec<(usize, FatalCause, u64)>,
    violations: Vec<String>,
    promotions: Vec<(usize, u64, u64)>,
    max_states: [Option<BstarState>; 2],
}

struct Model {
    params: Params,
    t0: Instant,
    now: u64,
    rng: fastrand::Rng,
    fsm: [Option<Fsm>; 2],
    persisted: [u64; 2],
    queue: [VecDeque<Msg>; 2],
    last_at: [u64; 2],
    drops: [u32; 2],
    prev_state: [Option<BstarState>; 2],
    out: Outcome,
}

const SIDES: [Side; 2] = [Side::Primary, Side::Backup];

impl Model {
    fn new(params: Params, seed: u64) -> Self {
        let t0 = Instant::now();
        let mut m = Self {
            params,
            t0,
            now: 0,
            rng: fastrand::Rng::with_seed(seed),
            fsm: [None, None],
            persisted: [0, 0],
            queue: [VecDeque::new(), VecDeque::new()],
            last_at: [0, 0],
            drops: [0, 0],
            prev_state: [None, None],
            out: Outcome::default(),
        };
        m.restart(0);
        m.restart(1);
        m
    }

    fn config(&self) -> FsmConfig {
        FsmConfig::new()
            .heartbeat(Duration::from_millis(HB))
            .peer_timeout(Duration::from_millis(HB * self.params.timeout_hbs))
    }

    fn at(&self) -> Instant {
        self.t0 + Duration::from_millis(self.now)
    }

    fn restart(&mut self, i: usize) {
        if self.fsm[i].is_none() {
            let fsm = Fsm::new(SIDES[i], self.config(), self.persisted[i], self.at());
            self.fsm[i] = Some(fsm);
            self.queue[i].clear(); // a new SUB: nothing old reaches it
            self.prev_state[i] = None;
        }
    }

    fn crash(&mut self, i: usize) {
        self.fsm[i] = None;
        self.queue[i].clear();
    }

    fn partitioned(&self) -> bool {
        self.params
            .partition
            .is_some_and(|(s, len)| self.now >= s && self.now < s + len)
    }

    fn send(&mut self, from: usize, frame: Bytes) {
        let to = 1 - from;
        if self.fsm[to].is_none() || self.partitioned() {
            return;
        }
        if self.drops[to] < self.params.max_drops && self.rng.u64(0..100) < self.params.drop_pct {
            self.drops[to] += 1;
            return;
        }
        self.drops[to] = 0;
        let delay = self.rng.u64(1..=self.params.max_delay);
        let at = self.last_at[to].max(self.now + delay);
        self.last_at[to] = at;
        let epoch = self.fsm[from].as_ref().map_or(0, Fsm::epoch);
        self.queue[to].push_back(Msg {
            at,
            frames: vec![frame],
            epoch,
        });
    }

    fn apply(&mut self, i: usize, known_before: u64, actions: Vec<BstarAction>) {
        let mut persisted_now = None;
        for a in actions {
            match a {
                BstarAction::Publish(f) => self.send(i, f),
                BstarAction::Persist(e) => {
                    self.persisted[i] = self.persisted[i].max(e);
                    persisted_now = Some(e);
                }
                BstarAction::BecameActive { epoch } => {
                    if persisted_now != Some(epoch) {
                        self.out.violations.push(format!(
                            "{}ms: node {i} active at epoch {epoch} without persisting it first",
                            self.now
                        ));
                    }
                    if epoch <= known_before {
                        self.out.violations.push(format!(
                            "{}ms: node {i} promoted at epoch {epoch} <= known {known_before}",
                            self.now
                        ));
                    }
                    self.out.promotions.push((i, epoch, self.now));
                }
                BstarAction::BecamePassive => {}
                BstarAction::Fatal(cause) => self.out.fatal.push((i, cause, self.now)),
            }
        }
    }

    fn with_fsm(&mut self, i: usize, f: impl FnOnce(&mut Fsm, Instant) -> Vec<BstarAction>) {
        let at = self.at();
        let Some(fsm) = self.fsm[i].as_mut() else {
            return;
        };
        let known = fsm.epoch();
        let actions = f(fsm, at);
        self.apply(i, known, actions);
    }

    fn tick(&mut self, op: Op) {
        for i in 0..2 {
            while self.queue[i].front().is_some_and(|m| m.at <= self.now) {
                let m = self.queue[i].pop_front().unwrap();
                self.with_fsm(i, |f, at| {
                    let mut a = f.observe_epoch(m.epoch, at);
                    a.extend(f.handle_peer_state(&m.frames, at));
                    a
                });
            }
        }
        for i in 0..2 {
            self.with_fsm(i, |f, at| f.handle_timeout(at));
        }
        match op {
            Op::Vote(i) => {
                let at = self.at();
                if let Some(fsm) = self.fsm[i].as_mut() {
                    let known = fsm.epoch();
                    let (vote, actions) = fsm.handle_vote(at);
                    let state = fsm.state();
                    if vote == Vote::Accept && state != BstarState::Active {
                        self.out.violations.push(format!(
                            "{}ms: node {i} accepted a vote in {state:?}",
                            self.now
                        ));
                    }
                    self.apply(i, known, actions);
                }
            }
            Op::Crash(i) => self.crash(i),
            Op::Restart(i) => self.restart(i),
            Op::Idle => {}
        }
        self.check();
    }

    fn check(&mut self) {
        let live = |f: &Option<Fsm>| f.as_ref().filter(|f| f.fatal().is_none()).map(Fsm::state);
        let states = [live(&self.fsm[0]), live(&self.fsm[1])];
        if states == [Some(BstarState::Active); 2] {
            self.out.dual_active_at.push(self.now);
        }
        for i in 0..2 {
            if let Some(f) = &self.fsm[i] {
                if self.prev_state[i] == Some(BstarState::Active) && f.state() != BstarState::Active
                {
                    self.out
                        .violations
                        .push(format!("{}ms: node {i} left ACTIVE", self.now));
                }
                self.prev_state[i] = Some(f.state());
                self.out.max_states[i] = Some(f.state());
            }
        }
    }

    fn run(mut self, ops: &[(u64, Op)]) -> Outcome {
        for &(dt, op) in ops {
            for _ in 0..dt {
                self.now += 1;
                self.tick(Op::Idle);
            }
            self.now += 1;
            self.tick(op);
        }
        for _ in 0..1000 {
            self.now += 1;
            self.tick(Op::Idle);
        }
        self.out
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize).prop_map(Op::Vote),
        1 => (0..2usize).prop_map(Op::Crash),
        2 => (0..2usize).prop_map(Op::Restart),
        1 => Just(Op::Idle),
    ]
}

/// Runs with no partition as long as the peer timeout: the delay plus the
/// heartbeats lost in a row stay below it ((drops + 1) x heartbeat +
/// delay < timeout).
fn good_params() -> impl Strategy<Value = Params> {
    (2u64..=4, 1u64..=40, 0u64..=30).prop_map(|(timeout_hbs, max_delay, drop_pct)| Params {
        timeout_hbs,
        max_delay,
        drop_pct,
        max_drops: u32::try_from(timeout_hbs - 2).unwrap(),
        partition: None,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn no_two_actives_without_a_long_partition(
        params in good_params(),
        ops in proptest::collection::vec((0u64..400, op()), 1..60),
        seed in any::<u64>(),
    ) {
        let out = Model::new(params.clone(), seed).run(&ops);
        prop_assert!(out.violations.is_empty(), "{:?}", out.violations);
        prop_assert!(out.dual_active_at.is_empty(), "two actives at {:?} ms ({params:?})", &out.dual_active_at[..out.dual_active_at.len().min(5)]);
        prop_assert!(out.fatal.is_empty(), "fatal {:?}", out.fatal);
    }
}

/// Votes at both sides every 50 ms for `ms` milliseconds.
fn votes_for(ms: u64) -> Vec<(u64, Op)> {
    (0..ms / 50)
        .flat_map(|_| [(24, Op::Vote(0)), (24, Op::Vote(1))])
        .collect()
}

#[test]
fn the_model_settles_primary_active_and_fails_over_on_a_vote() {
    let params = Params {
        timeout_hbs: 2,
        max_delay: 5,
        drop_pct: 0,
        max_drops: 0,
        partition: None,
    };
    let mut ops = vec![(500, Op::Idle), (0, Op::Crash(0))];
    ops.extend(votes_for(1000));
    let out = Model::new(params, 1).run(&ops);
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    assert_eq!(out.promotions.len(), 2, "{:?}", out.promotions);
    assert_eq!((out.promotions[0].0, out.promotions[0].1), (0, 1));
    let (node, epoch, at) = out.promotions[1];
    assert_eq!(
        (node, epoch),
        (1, 2),
        "the backup takes over above the primary's epoch"
    );
    assert!(
        at >= 502 + 2 * HB - HB,
        "failover before the peer timeout: {at} ms"
    );
    assert_eq!(out.max_states[1], Some(BstarState::Active));
}

/// The documented outcome of a partition between the servers while clients
/// reach both: both become active (each sees its peer dead and gets votes);
/// when the link heals each hears the other's "3" and aborts (the Guide's
/// "dual actives"), the lower epoch also fenced. The operator restarts them.
#[test]
fn a_partition_longer_than_the_timeout_gives_two_actives_then_both_abort() {
    let params = Params {
        timeout_hbs: 2,
        max_delay: 5,
        drop_pct: 0,
        max_drops: 0,
        partition: Some((600, 1000)),
    };
    let mut ops = vec![(500, Op::Idle)];
    ops.extend(votes_for(2000));
    let out = Model::new(params, 7).run(&ops);
    assert!(out.violations.is_empty(), "{:?}", out.violations);
    let first = *out
        .dual_active_at
        .first()
        .expect("two actives during the partition");
    let last = *out.dual_active_at.last().unwrap();
    // Silence counts from the last state heard, up to a heartbeat before the cut.
    assert!((600 - HB + 2 * HB..1600).contains(&first), "{first}");
    assert!(
        last < 1600 + 2 * HB,
        "two actives outlived the heal: {last}"
    );
    let mut aborted: Vec<usize> = out.fatal.iter().map(|f| f.0).collect();
    aborted.sort_unstable();
    aborted.dedup();
    assert_eq!(aborted, [0, 1], "{:?}", out.fatal);
    assert!(out
        .fatal
        .iter()
        .all(|f| matches!(f.1, FatalCause::DualActive | FatalCause::Fenced)));
    // The backup's promotion during the partition went above the primary's.
    assert_eq!(
        out.promotions
            .iter()
            .map(|p| (p.0, p.1))
            .collect::<Vec<_>>(),
        [(0, 1), (1, 2)]
    );
}
