//! The Multi-Paxos test battery (scenarios P2-P8, P10, L1 and invariants
//! S1-S5, listed in `patterns/paxos.md`) on the deterministic simulator: every scenario runs over many seeds
//! (`CONSENSUS_SEEDS=n`, default 16; `CONSENSUS_SEED=s` for one), checks
//! the safety invariants after every step, and prints a one-line replay
//! command for a failing seed.

mod support;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use support::paxos::*;
use zpatterns::paxos::{Msg, Mutation, Op, Value};
use zpatterns::sim::{Fate, LinkProfile, PumpProfile};
use zpatterns::transport::NodeId;

const FILE: &str = "paxos_battery";

/// Random workload for `duration`, calling `nemesis` every `tick`, then S4,
/// S3 and S2.
fn chaos(
    c: &mut Cluster,
    duration: std::time::Duration,
    tick: std::time::Duration,
    mut nemesis: impl FnMut(&mut Cluster),
) -> Result<(), String> {
    let end = c.sim.now() + duration;
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(5, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    while c.sim.now() < end {
        c.run_for(tick)?;
        nemesis(c);
    }
    c.check_liveness()?;
    c.check_durability()?;
    c.check_linearizable()?;
    if c.completed_ops() == 0 {
        return Err("no operation completed at all".into());
    }
    Ok(())
}

#[test]
fn stable_leader_phase1_skip() {
    run_seeds(FILE, "stable_leader_phase1_skip", |seed| {
        for n in [3u32, 5] {
            let mut c = Cluster::new(Spec::symmetric(n).clients(1, 1), seed);
            let leader = c.stable_leader()?;
            let ballot = c.leader_ballot();
            let counts: Rc<RefCell<BTreeMap<String, u64>>> = Rc::default();
            let tap = counts.clone();
            c.sim.set_tap(move |_, env| {
                let kind = Msg::decode(env.msg.clone())
                    .map(|m| format!("{:?}", m.kind()))
                    .unwrap_or_default();
                *tap.borrow_mut().entry(kind).or_default() += 1;
            });
            let proposed_before = c.replica(leader).unwrap().stats().proposed;
            let client = c.clients[0];
            for i in 0..50 {
                c.client_mut(client).push(0, put("k", &format!("v{i}")));
            }
            c.sim.with_node(client, |_, _, _| {});
            let deadline = c.sim.now() + secs(10);
            c.run_until(deadline, |c| c.completed_ops() == 50)?;
            if c.completed_ops() != 50 {
                return Err(format!("only {} of 50 completed", c.completed_ops()));
            }
            let slots = c.replica(leader).unwrap().stats().proposed - proposed_before;
            let k = |name: &str| counts.borrow().get(name).copied().unwrap_or(0);
            let peers = u64::from(n - 1);
            let got = format!("n={n}, {slots} slots, counts {:?}", counts.borrow());
            if c.leader_ballot() != ballot || k("Prepare") + k("Promise") + k("Nack") != 0 {
                return Err(format!("phase 1 ran in steady state: {got}"));
            }
            if slots != 50 || k("Accept") != peers * slots || k("Accepted") != peers * slots {
                return Err(format!(
                    "expected 2(n-1) = {} phase-2 messages per slot: {got}",
                    2 * peers
                ));
            }
            // One commit notice per slot, plus periodic heartbeats.
            // (The client's first request may hit a follower: one redirect.)
            let redirects = k("Redirect");
            if k("Heartbeat") < peers * slots
                || redirects > 1
                || k("Request") != 50 + redirects
                || k("Reply") != 50
            {
                return Err(format!("unexpected notices or client traffic: {got}"));
            }
        }
        Ok(())
    });
}

#[test]
fn dueling_proposers() {
    run_seeds(FILE, "dueling_proposers", |seed| {
        let mut spec = Spec::symmetric(5).clients(2, 2);
        // Nearly equal timeouts: every node campaigns at about the same time.
        spec.election = (ms(150), ms(170));
        let mut c = Cluster::new(spec, seed);
        c.wait_leader(ms(170 * 10))?;
        let mut round = 0;
        chaos(&mut c, secs(4), ms(500), |c| {
            // Every second, crash the leader: the rest duel again.
            round += 1;
            if round % 2 == 0 {
                if let Some(l) = c.leader() {
                    c.crash(l);
                }
            } else {
                for id in c.replicas.clone() {
                    if !c.sim.is_up(id) {
                        c.restart(id);
                    }
                }
            }
        })?;
        if c.inv.elections.len() < 2 {
            return Err(format!(
                "expected several elections, saw {:?}",
                c.inv.elections
            ));
        }
        Ok(())
    });
}

/// P4: the leader's accept of X reaches a majority (itself and one
/// follower), nobody learns it, the leader dies: the new leader must
/// re-propose X in that slot.
fn takeover(seed: u64, spec: Spec) -> Result<(), String> {
    let mut c = Cluster::new(spec, seed);
    let leader = c.stable_leader()?;
    let others: Vec<NodeId> = c
        .replicas
        .iter()
        .copied()
        .filter(|n| *n != leader)
        .collect();
    let (b, cc) = (others[0], others[1]);
    c.sim
        .set_filter(move |env| match Msg::decode(env.msg.clone()) {
            Ok(Msg::Accept { .. }) if env.from == leader && env.to == cc => Fate::Drop,
            Ok(Msg::Accepted { .. }) if env.from == b && env.to == leader => Fate::Drop,
            _ => Fate::Pass,
        });
    let slot = c.replica(leader).unwrap().learner().next_apply();
    c.submit(c.clients[0], 0, put("x", "X"));
    let deadline = c.sim.now() + secs(2);
    let accepted = c.run_until(deadline, |c| {
        c.replica(b)
            .and_then(|r| r.acceptor()?.accepted(slot))
            .is_some()
    })?;
    if !accepted {
        return Err("the follower never accepted X".into());
    }
    let x = c
        .replica(b)
        .unwrap()
        .acceptor()
        .unwrap()
        .accepted(slot)
        .unwrap()
        .1
        .clone();
    c.crash(leader);
    c.sim.clear_filter();
    c.wait_leader(secs(6))?;
    let deadline = c.sim.now() + secs(3);
    c.run_until(deadline, |c| c.completed_ops() == 1)?;
    c.run_for(ms(300))?; // commit notices reach the other learner
    for id in [b, cc] {
        let got = c
            .replica(id)
            .and_then(|r| r.learner().decided(slot).cloned());
        if got.as_ref() != Some(&x) {
            return Err(format!(
                "{id} decided {got:?} in slot {slot}, expected the accepted {x:?}"
            ));
        }
    }
    if c.completed_ops() != 1 {
        return Err("the client's put never completed".into());
    }
    c.restart(leader);
    c.check_durability()
}

#[test]
fn takeover_readopts_accepted_value() {
    run_seeds(FILE, "takeover_readopts_accepted_value", |seed| {
        takeover(seed, Spec::symmetric(3).clients(1, 1))
    });
}

/// P5: a hole in the middle of the log is filled with a no-op by the next
/// leader; learners wait at the hole, then drain.
fn gap_fill(seed: u64) -> Result<(), String> {
    let mut c = Cluster::new(Spec::symmetric(3).clients(3, 1), seed);
    let leader = c.stable_leader()?;
    let hole_client = zpatterns::paxos::ClientId(u64::from(c.clients[0].0) << 16);
    c.sim
        .set_filter(move |env| match Msg::decode(env.msg.clone()) {
            Ok(Msg::Accept { value, .. })
                if value.commands().iter().any(|c| c.client == hole_client) =>
            {
                Fate::Drop
            }
            _ => Fate::Pass,
        });
    let first = c.replica(leader).unwrap().learner().next_apply();
    c.submit(c.clients[0], 0, put("a", "hole"));
    c.run_for(ms(20))?;
    c.submit(c.clients[1], 0, put("b", "after-1"));
    c.submit(c.clients[2], 0, put("c", "after-2"));
    // Wait until the two later slots are accepted by a majority.
    let followers: Vec<NodeId> = c
        .replicas
        .iter()
        .copied()
        .filter(|n| *n != leader)
        .collect();
    let deadline = c.sim.now() + secs(2);
    c.run_until(deadline, |c| {
        followers.iter().any(|f| {
            c.replica(*f)
                .and_then(|r| r.acceptor())
                .is_some_and(|a| a.accepted(first + 1).is_some() && a.accepted(first + 2).is_some())
        })
    })?;
    c.run_for(ms(30))?;
    for f in &followers {
        let next = c.replica(*f).unwrap().learner().next_apply();
        if next > first {
            return Err(format!(
                "{f} applied past the hole (next {next}, hole {first})"
            ));
        }
    }
    c.crash(leader);
    c.sim.clear_filter();
    c.wait_leader(secs(6))?;
    let deadline = c.sim.now() + secs(3);
    c.run_until(deadline, |c| c.completed_ops() == 3)?;
    c.run_for(ms(300))?; // commit notices reach every learner
    for f in &followers {
        let l = c.replica(*f).unwrap().learner();
        if l.decided(first) != Some(&Value::Noop) {
            return Err(format!(
                "{f}: hole slot {first} decided {:?}, expected a no-op",
                l.decided(first)
            ));
        }
        for s in [first + 1, first + 2] {
            if l.decided(s).is_none_or(|v| v.commands().is_empty()) {
                return Err(format!("{f}: slot {s} lost its value: {:?}", l.decided(s)));
            }
        }
    }
    if c.completed_ops() != 3 {
        return Err(format!("{} of 3 puts completed", c.completed_ops()));
    }
    c.restart(leader);
    c.check_durability()?;
    c.check_linearizable()
}

#[test]
fn gap_fill_noop() {
    run_seeds(FILE, "gap_fill_noop", gap_fill);
}

/// P6: random replica crashes (including between a step and its fsync)
/// and restarts from the simulated disk under load.
fn crash_restart(seed: u64, spec: Spec) -> Result<(), String> {
    let mut c = Cluster::new(spec.clients(3, 2), seed);
    let replicas = c.replicas.clone();
    c.sim.set_mid_step_crash(0.0005, &replicas);
    c.wait_leader(secs(5))?;
    chaos(&mut c, secs(5), ms(100), |c| {
        let replicas = c.replicas.clone();
        let down: Vec<NodeId> = replicas
            .iter()
            .copied()
            .filter(|r| !c.sim.is_up(*r))
            .collect();
        let r = c.sim.rng().below(10);
        if r < 3 && !down.is_empty() {
            let i = c.sim.rng().index(down.len());
            c.restart(down[i]);
        } else if r < 5 && down.len() < 2 {
            let up: Vec<NodeId> = replicas
                .iter()
                .copied()
                .filter(|r| c.sim.is_up(*r))
                .collect();
            let i = c.sim.rng().index(up.len());
            let victim = up[i];
            let before = c.replica(victim).and_then(|r| r.acceptor().cloned());
            c.crash(victim);
            c.restart(victim);
            // Everything was fsynced at the end of the last step: the
            // restarted acceptor has exactly the state it had.
            let after = c.replica(victim).and_then(|r| r.acceptor().cloned());
            assert_eq!(
                before, after,
                "{victim}'s acceptor state changed across a restart"
            );
            c.crash(victim);
        }
    })
}

#[test]
fn acceptor_crash_restart() {
    run_seeds(FILE, "acceptor_crash_restart", |seed| {
        crash_restart(seed, Spec::symmetric(5))
    });
}

/// P7: the adversarial pump plus 5 % drops and 5 % duplicates.
fn pump(seed: u64) -> Result<Cluster, String> {
    let spec = Spec::symmetric(5)
        .clients(2, 2)
        .link(LinkProfile::uniform(ms(0), ms(2)).lossy(0.05, 0.05));
    let mut c = Cluster::new(spec, seed);
    c.sim.set_pump(Some(PumpProfile::adversarial(ms(1))));
    chaos(&mut c, secs(4), ms(500), |c| {
        // Now and then the leader dies too.
        if c.sim.rng().chance(0.2) {
            if let Some(l) = c.leader() {
                c.crash(l);
                c.restart(l);
            }
        }
    })?;
    Ok(c)
}

#[test]
fn adversarial_pump_with_drops_and_duplicates() {
    run_seeds(FILE, "adversarial_pump_with_drops_and_duplicates", |seed| {
        pump(seed).map(|_| ())
    });
}

#[test]
fn same_seed_same_trace() {
    // S5: the whole run, faults included, is a function of the seed.
    let a = pump(7).unwrap();
    let b = pump(7).unwrap();
    assert_eq!(a.sim.trace_hash(), b.sim.trace_hash());
    assert_eq!(a.sim.stats(), b.sim.stats());
    let other = pump(8).unwrap();
    assert_ne!(a.sim.trace_hash(), other.sim.trace_hash());
}

/// P8: a leader cut off with one follower commits nothing; the majority
/// elects a higher ballot and commits; after heal the old leader steps
/// down and learns the decided slots.
fn minority(seed: u64) -> Result<(), String> {
    let mut c = Cluster::new(Spec::symmetric(5).clients(4, 1), seed);
    c.wait_leader(secs(5))?;
    let end = c.sim.now() + secs(8);
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(5, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    c.run_for(ms(500))?;
    let old = c.leader().ok_or("no leader before the partition")?;
    let buddy = c.replicas.iter().copied().find(|n| *n != old).unwrap();
    let majority: Vec<NodeId> = c
        .replicas
        .iter()
        .copied()
        .filter(|n| *n != old && *n != buddy)
        .collect();
    let (cl, cr) = c.clients.split_at(2);
    let minority_side: Vec<NodeId> = [old, buddy].into_iter().chain(cl.iter().copied()).collect();
    let majority_side: Vec<NodeId> = majority.iter().copied().chain(cr.iter().copied()).collect();
    c.sim.partition(&[&minority_side, &majority_side]);
    c.run_for(ms(20))?; // messages already in flight land or are cut
    let frozen = c.replica(old).unwrap().learner().next_apply();
    let decided_before = c.replica(old).unwrap().stats().decided_as_leader;
    let majority_before = c.replica(majority[0]).unwrap().learner().next_apply();
    c.run_for(secs(3))?;
    let r = c.replica(old).unwrap();
    if r.learner().next_apply() != frozen || r.stats().decided_as_leader != decided_before {
        return Err("the minority leader committed during the partition".into());
    }
    let new = c.leader_ballot().zip(c.leader());
    let progressed = c.replica(majority[0]).unwrap().learner().next_apply() > majority_before;
    if !progressed || new.is_none_or(|(_, l)| !majority.contains(&l)) {
        return Err(format!(
            "the majority did not elect and commit: leader {new:?}"
        ));
    }
    c.sim.heal();
    let deadline = c.sim.now() + secs(3);
    c.run_until(deadline, |c| {
        let r = c.replica(old).unwrap();
        !r.is_leader() && r.learner().next_apply() > frozen
    })?;
    let r = c.replica(old).unwrap();
    if r.is_leader() || r.learner().next_apply() <= frozen {
        return Err(format!(
            "after heal the old leader {old} did not step down and catch up: leader {}, applied {} (frozen {frozen}), commit hint {}, believes {:?}; cluster leader {:?}",
            r.is_leader(),
            r.learner().next_apply(),
            r.learner().commit_hint(),
            r.leader_hint(),
            c.leader()
        ));
    }
    c.run_until(end, |_| false)?;
    c.check_liveness()?;
    c.check_durability()?;
    c.check_linearizable()
}

#[test]
fn minority_leader() {
    run_seeds(FILE, "minority_leader", minority);
}

/// P10: linearizable get/put/cas on 5 keys under random partitions.
fn lin_kv(seed: u64, n: u32) -> Result<(), String> {
    let spec = Spec::symmetric(n)
        .clients(n as usize, 4)
        .link(LinkProfile::uniform(ms(1), ms(5)).slow_tail(0.05, ms(50)));
    let mut c = Cluster::new(spec, seed);
    chaos(&mut c, secs(8), secs(1), |c| {
        let nodes: Vec<NodeId> = c.sim.node_ids();
        if c.sim.rng().chance(0.5) {
            c.sim.heal();
        } else {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for id in nodes {
                if c.sim.rng().chance(0.5) {
                    a.push(id);
                } else {
                    b.push(id);
                }
            }
            c.sim.partition(&[&a, &b]);
        }
    })
}

/// L1: the session table is bounded. 3 replicas with room for 4 sessions,
/// one client with 12 sessions writing in turns: no store ever holds more
/// than 4, every replica evicts the same sessions (same counts at the same
/// applied slot, same data), evicted clients are told (`SessionExpired`,
/// recorded as indeterminate) and the history stays linearizable.
#[test]
fn session_table_is_bounded_and_evicts_identically() {
    run_seeds(
        FILE,
        "session_table_is_bounded_and_evicts_identically",
        |seed| {
            let mut c = Cluster::new(Spec::symmetric(3).clients(1, 12).max_sessions(4), seed);
            c.stable_leader()?;
            let client = c.clients[0];
            for round in 0..3 {
                for s in 0..12 {
                    c.submit(client, s, put(&format!("k{s}"), &format!("r{round}")));
                }
            }
            let deadline = c.sim.now() + secs(30);
            let mut peak = 0;
            let replicas = c.replicas.clone();
            let idle = c.run_until(deadline, |c| {
                for id in &replicas {
                    if let Some(r) = c.replica(*id) {
                        peak = peak.max(r.learner().kv().sessions());
                    }
                }
                c.client(client).is_idle()
            })?;
            if !idle {
                return Err("the client did not finish in 30 s".into());
            }
            c.run_for(secs(1))?;
            if peak > 4 {
                return Err(format!("a store held {peak} sessions (bound 4)"));
            }
            let views: Vec<_> = replicas
                .iter()
                .map(|id| {
                    let r = c.replica(*id).expect("all replicas up");
                    let kv = r.learner().kv();
                    let data: Vec<_> = (0..12)
                        .map(|s| kv.get(format!("k{s}").as_bytes()).cloned())
                        .collect();
                    (
                        r.learner().next_apply(),
                        kv.evicted_sessions(),
                        kv.expired_commands(),
                        data,
                    )
                })
                .collect();
            if views.windows(2).any(|w| w[0] != w[1]) {
                return Err(format!("replicas differ: {views:?}"));
            }
            let (_, evicted, expired, _) = &views[0];
            let told = c.client(client).stats().expired;
            if *evicted == 0 || *expired == 0 || told == 0 {
                return Err(format!(
                    "the bound was never hit: evicted {evicted}, expired {expired}, told {told}"
                ));
            }
            c.check_linearizable()
        },
    );
}

#[test]
fn lin_kv_nemesis() {
    run_seeds(FILE, "lin_kv_nemesis", |seed| {
        lin_kv(seed, 3)?;
        lin_kv(seed, 5)
    });
}

/// P10: retried and duplicated requests apply exactly once.
#[test]
fn duplicate_client_requests() {
    let with_duplicates = std::cell::Cell::new(0usize);
    run_seeds(FILE, "duplicate_client_requests", |seed| {
        let mut spec = Spec::symmetric(3)
            .clients(3, 2)
            .link(LinkProfile::uniform(ms(1), ms(20)).lossy(0.0, 0.3));
        // Clients time out long before replies can come back: every
        // request is retried, often at another replica.
        spec.request_timeout = ms(15);
        let mut c = Cluster::new(spec, seed);
        c.wait_leader(secs(5))?;
        // Leader changes make new leaders re-propose commands that are
        // also retried by their clients: the log gets duplicates.
        chaos(&mut c, secs(3), ms(500), |c| {
            if let Some(l) = c.leader() {
                c.crash(l);
                c.restart(l);
            }
        })?;
        let r = c.replica(c.replicas[0]).unwrap();
        let distinct: std::collections::BTreeSet<_> =
            r.learner().commands().map(|c| (c.client, c.seq)).collect();
        let retries: u64 = c
            .clients
            .iter()
            .map(|id| c.client(*id).stats().timeouts)
            .sum();
        if r.learner().kv().applied_commands() != distinct.len() as u64 {
            return Err(format!(
                "{} commands applied for {} distinct requests",
                r.learner().kv().applied_commands(),
                distinct.len()
            ));
        }
        if retries > 0 && r.learner().commands().count() > distinct.len() {
            with_duplicates.set(with_duplicates.get() + 1);
        }
        Ok(())
    });
    // The scenario must actually exercise deduplication (most seeds do).
    assert!(
        with_duplicates.get() * 2 >= seeds().len(),
        "only {} of {} seeds produced duplicate commands in the log",
        with_duplicates.get(),
        seeds().len()
    );
}

#[test]
fn garbage_is_counted_not_fatal() {
    run_seeds(FILE, "garbage_is_counted_not_fatal", |seed| {
        let mut c = Cluster::new(Spec::symmetric(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        for junk in [
            &b""[..],
            b"\x01",
            b"\x07\x03",
            b"\x01\x03\xff\xff\xff",
            b"hello",
        ] {
            for id in c.replicas.clone() {
                c.sim
                    .inject(c.clients[0], id, bytes::Bytes::from_static(junk));
            }
        }
        c.submit(c.clients[0], 0, put("k", "v"));
        let deadline = c.sim.now() + secs(3);
        c.run_until(deadline, |c| c.completed_ops() == 1)?;
        let garbage: u64 = c
            .replicas
            .iter()
            .map(|id| c.replica(*id).unwrap().stats().garbage)
            .sum();
        if garbage != 15 || c.completed_ops() != 1 || c.leader() != Some(leader) {
            return Err(format!(
                "garbage {garbage}, completed {}",
                c.completed_ops()
            ));
        }
        Ok(())
    });
}

#[test]
fn operations_are_get_put_cas() {
    // A smoke test of the store semantics through the whole stack.
    let mut c = Cluster::new(Spec::symmetric(3).clients(1, 1), 1);
    c.wait_leader(secs(5)).unwrap();
    let client = c.clients[0];
    let key = || bytes::Bytes::from_static(b"k");
    let ops = [
        Op::Get { key: key() },
        put("k", "a"),
        Op::Cas {
            key: key(),
            expect: Some(bytes::Bytes::from_static(b"a")),
            new: bytes::Bytes::from_static(b"b"),
        },
        Op::Cas {
            key: key(),
            expect: None,
            new: bytes::Bytes::from_static(b"c"),
        },
        Op::Get { key: key() },
    ];
    for op in ops {
        c.client_mut(client).push(0, op);
    }
    c.sim.with_node(client, |_, _, _| {});
    let deadline = c.sim.now() + secs(5);
    c.run_until(deadline, |c| c.completed_ops() == 5).unwrap();
    let outcomes: Vec<String> = c
        .client(client)
        .history()
        .iter()
        .map(|r| format!("{:?}", r.completed.as_ref().unwrap().1))
        .collect();
    assert_eq!(
        outcomes,
        [
            "Read(None)",
            "Written",
            "Swapped",
            "Mismatch(Some(b\"b\"))",
            "Read(Some(b\"b\"))"
        ]
    );
}

/// Negative control: re-introduce "an acceptor forgets its promise on
/// restart" and show the crash-restart scenario catches it.
#[test]
fn negative_control_forgotten_promise_is_caught() {
    let spec = Spec::symmetric(5).mutation(Some(Mutation::ForgetPromiseOnRestart));
    let (seed, why) = first_failure(|seed| crash_restart(seed, spec.clone()))
        .expect("the battery must catch an acceptor that forgets its promise");
    eprintln!("caught at seed {seed}: {why}");
    assert!(
        why.contains("promise") || why.contains("acceptor state"),
        "{why}"
    );
}

/// Negative control: re-introduce "a new leader proposes its own value
/// instead of the highest accepted one" and show the takeover scenario
/// catches it.
#[test]
fn negative_control_own_value_is_caught() {
    let spec = Spec::symmetric(3)
        .clients(1, 1)
        .mutation(Some(Mutation::ProposeOwnValue));
    let (seed, why) = first_failure(|seed| takeover(seed, spec.clone()))
        .expect("the battery must catch a leader that ignores accepted values");
    eprintln!("caught at seed {seed}: {why}");
    assert!(why.contains("P4") || why.contains("two values"), "{why}");
}
