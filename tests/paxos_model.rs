//! P1: an exhaustive model check of single-decree Paxos built on this
//! crate's real acceptor ([`AcceptorState`], its durable records and
//! replay): 3 acceptors, 2 proposers with up to 2 ballots each, a network
//! that reorders, duplicates (a sent message stays deliverable forever) and
//! loses (a message may never be delivered). Depth-first over every
//! reachable state, checking that at most one value is ever chosen and that
//! replaying each acceptor's durable records rebuilds its state (so a
//! restart changes nothing). The state counts are asserted as a
//! regression guard, as stateright does for its Paxos example.
//!
//! The negative controls re-introduce the two bugs of the battery (an
//! acceptor that forgets its promise on restart; a leader that proposes its
//! own value instead of the highest accepted one) and show the model
//! checker finds a run that chooses two values.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use bytes::Bytes;
use zpatterns::paxos::{AcceptorState, Ballot, ClientId, Command, Msg, Op, Record, Value};
use zpatterns::transport::NodeId;

const ACCEPTORS: u8 = 3;
const PROPOSERS: u8 = 2;
const QUORUM: usize = 2;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
enum Net {
    Prepare {
        to: u8,
        b: Ballot,
    },
    Promise {
        from: u8,
        b: Ballot,
        acc: Option<(Ballot, u8)>,
    },
    Accept {
        to: u8,
        b: Ballot,
        v: u8,
    },
    Accepted {
        from: u8,
        b: Ballot,
        v: u8,
    },
    Nack {
        b: Ballot,
    },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Phase {
    Idle,
    Preparing {
        b: Ballot,
        promises: BTreeMap<u8, Option<(Ballot, u8)>>,
    },
    Accepting {
        b: Ballot,
    },
}

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct State {
    acceptors: Vec<AcceptorState>,
    records: Vec<Vec<Bytes>>,
    attempts: Vec<u8>,
    phases: Vec<Phase>,
    net: BTreeSet<Net>,
    restarts_left: u8,
}

#[derive(Clone, Copy, Debug)]
struct Model {
    /// Ballots each proposer may try.
    ballots: [u8; PROPOSERS as usize],
    restarts: u8,
    forget_promise: bool,
    propose_own: bool,
}

/// Value 0 is a no-op; value p+1 is proposer p's own command.
fn value(id: u8) -> Value {
    if id == 0 {
        return Value::Noop;
    }
    Value::Batch(vec![Command {
        client: ClientId(u64::from(id)),
        seq: 1,
        op: Op::Put {
            key: Bytes::from_static(b"k"),
            value: Bytes::from(vec![id]),
        },
    }])
}

fn value_id(v: &Value) -> u8 {
    (0..=PROPOSERS)
        .find(|i| value(*i) == *v)
        .expect("a model value")
}

impl Model {
    fn initial(&self) -> State {
        State {
            acceptors: vec![AcceptorState::new(); ACCEPTORS as usize],
            records: vec![Vec::new(); ACCEPTORS as usize],
            attempts: vec![0; PROPOSERS as usize],
            phases: vec![Phase::Idle; PROPOSERS as usize],
            net: BTreeSet::new(),
            restarts_left: self.restarts,
        }
    }

    fn persist(&self, s: &mut State, a: usize, r: Option<Record>) {
        match r {
            Some(Record::Promise(_)) if self.forget_promise => {}
            Some(r) => s.records[a].push(r.encode()),
            None => {}
        }
    }

    fn successors(&self, s: &State) -> Vec<State> {
        let mut out = Vec::new();
        // A proposer (re)starts with its next ballot (a timeout).
        for p in 0..PROPOSERS as usize {
            if s.attempts[p] < self.ballots[p] {
                let mut n = s.clone();
                n.attempts[p] += 1;
                let b = Ballot::new(u64::from(n.attempts[p]), NodeId(p as u32));
                n.phases[p] = Phase::Preparing {
                    b,
                    promises: BTreeMap::new(),
                };
                for to in 0..ACCEPTORS {
                    n.net.insert(Net::Prepare { to, b });
                }
                out.push(n);
            }
        }
        // Any message ever sent can be delivered (again).
        for m in &s.net {
            if let Some(n) = self.deliver(s, m) {
                out.push(n);
            }
        }
        // (Last, so the depth-first search tries it first.)
        // An acceptor crashes and restarts from its durable records.
        if s.restarts_left > 0 {
            for a in 0..ACCEPTORS as usize {
                let mut n = s.clone();
                n.restarts_left -= 1;
                n.acceptors[a] = AcceptorState::replay(n.records[a].clone()).expect("own records");
                out.push(n);
            }
        }
        out
    }

    fn deliver(&self, s: &State, m: &Net) -> Option<State> {
        let mut n = s.clone();
        match m {
            Net::Prepare { to, b } => {
                let a = *to as usize;
                let (reply, rec) = n.acceptors[a].handle_prepare(*b, 0);
                self.persist(&mut n, a, rec);
                n.net.insert(match reply {
                    Msg::Promise { accepted, .. } => Net::Promise {
                        from: *to,
                        b: *b,
                        acc: accepted.first().map(|e| (e.ballot, value_id(&e.value))),
                    },
                    _ => Net::Nack { b: *b },
                });
            }
            Net::Accept { to, b, v } => {
                let a = *to as usize;
                let (reply, rec) = n.acceptors[a].handle_accept(*b, 0, &value(*v));
                self.persist(&mut n, a, rec);
                n.net.insert(match reply {
                    Msg::Accepted { .. } => Net::Accepted {
                        from: *to,
                        b: *b,
                        v: *v,
                    },
                    _ => Net::Nack { b: *b },
                });
            }
            Net::Promise { from, b, acc } => {
                let p = b.node.0 as usize;
                let Phase::Preparing { b: mine, promises } = &mut n.phases[p] else {
                    return None;
                };
                if mine != b {
                    return None;
                }
                promises.insert(*from, *acc);
                if promises.len() < QUORUM {
                    return Some(n);
                }
                // The highest-ballot accepted value among the promises, or
                // our own.
                let highest = promises.values().flatten().max().map(|(_, v)| *v);
                let own = p as u8 + 1;
                let v = if self.propose_own {
                    own
                } else {
                    highest.unwrap_or(own)
                };
                let b = *b;
                n.phases[p] = Phase::Accepting { b };
                for to in 0..ACCEPTORS {
                    n.net.insert(Net::Accept { to, b, v });
                }
            }
            Net::Nack { b } => {
                let p = b.node.0 as usize;
                let current = match &n.phases[p] {
                    Phase::Preparing { b, .. } | Phase::Accepting { b } => Some(*b),
                    Phase::Idle => None,
                };
                if current != Some(*b) {
                    return None;
                }
                n.phases[p] = Phase::Idle;
            }
            Net::Accepted { .. } => return None,
        }
        (n != *s).then_some(n)
    }

    /// The values chosen in a state: a quorum of acceptors accepted the
    /// same ballot.
    fn chosen(s: &State) -> BTreeSet<u8> {
        let mut by_ballot: BTreeMap<Ballot, (u8, BTreeSet<u8>)> = BTreeMap::new();
        for m in &s.net {
            if let Net::Accepted { from, b, v } = m {
                by_ballot
                    .entry(*b)
                    .or_insert((*v, BTreeSet::new()))
                    .1
                    .insert(*from);
            }
        }
        by_ballot
            .values()
            .filter(|(_, who)| who.len() >= QUORUM)
            .map(|(v, _)| *v)
            .collect()
    }

    /// Explores every reachable state (depth first: a violation is found
    /// quickly); returns the count, or the first state where two values are
    /// chosen.
    fn check(&self) -> Result<usize, Box<State>> {
        let init = self.initial();
        let mut seen = HashSet::new();
        let mut stack = vec![init.clone()];
        seen.insert(init);
        while let Some(s) = stack.pop() {
            if Self::chosen(&s).len() > 1 {
                return Err(Box::new(s));
            }
            if !self.forget_promise {
                // Durability: replaying the records rebuilds the state.
                for (a, records) in s.acceptors.iter().zip(&s.records) {
                    assert_eq!(&AcceptorState::replay(records.clone()).unwrap(), a);
                }
            }
            for n in self.successors(&s) {
                if seen.insert(n.clone()) {
                    stack.push(n);
                }
            }
        }
        Ok(seen.len())
    }
}

const CORRECT: Model = Model {
    ballots: [1, 1],
    restarts: 0,
    forget_promise: false,
    propose_own: false,
};

#[test]
fn single_decree_exhaustive() {
    let states = CORRECT
        .check()
        .unwrap_or_else(|s| panic!("two values chosen: {s:#?}"));
    assert_eq!(states, EXPECTED_STATES, "the state space changed");
}

#[test]
fn negative_control_forgotten_promise_chooses_two_values() {
    let m = Model {
        restarts: 1,
        forget_promise: true,
        ..CORRECT
    };
    let bad = m
        .check()
        .expect_err("the model checker must find two chosen values");
    assert_eq!(Model::chosen(&bad).len(), 2);
}

#[test]
fn negative_control_own_value_chooses_two_values() {
    let m = Model {
        propose_own: true,
        ..CORRECT
    };
    let bad = m
        .check()
        .expect_err("the model checker must find two chosen values");
    assert_eq!(Model::chosen(&bad).len(), 2);
}

const EXPECTED_STATES: usize = 49_573;
