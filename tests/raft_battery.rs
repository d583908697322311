//! The Raft test battery (scenarios R1-R15 of the consensus research note
//! §2.2, plus snapshot catch-up, membership change and leadership transfer)
//! on the deterministic simulator: every scenario runs over many seeds
//! (`CONSENSUS_SEEDS=n`, default 16; `CONSENSUS_SEED=s` for one), checks the
//! safety invariants S1 after every step (`support/raft.rs`), liveness after
//! heal (S4), durability (S3) and linearizability (S2) where it runs a
//! workload, and prints a one-line replay command for a failing seed.
//! Negative controls re-introduce three known Raft bugs (feature
//! `negative-controls`) and assert the battery catches each. The
//! OmniPaxos `constrained` topology runs on both stores (R13 and P9).
//!
//! Scenario lengths are cut to fit the debug-build budget (virtual time: a
//! few seconds each); `CONSENSUS_SEEDS` runs longer sweeps.

mod support;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use support::raft::*;
use zpatterns::paxos::{ClientId, Op, Outcome};
use zpatterns::raft::{ConfChange, EntryKind, Membership, Mutation};
use zpatterns::sim::LinkProfile;
use zpatterns::transport::NodeId;

const FILE: &str = "raft_battery";

/// Random workload for `duration`, calling `nemesis` every `tick`, then S4,
/// S3 and S2.
fn chaos(
    c: &mut Cluster,
    duration: Duration,
    tick: Duration,
    mut nemesis: impl FnMut(&mut Cluster) -> Result<(), String>,
) -> Result<(), String> {
    let end = c.sim.now() + duration;
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(5, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    while c.sim.now() < end {
        c.run_for(tick)?;
        nemesis(c)?;
    }
    finish(c)
}

/// S4, S3 and S2 at the end of a scenario with a workload.
fn finish(c: &mut Cluster) -> Result<(), String> {
    c.check_liveness()?;
    c.check_durability()?;
    c.check_linearizable()?;
    if c.completed_ops() == 0 {
        return Err("no operation completed at all".into());
    }
    Ok(())
}

fn others(c: &Cluster, not: &[NodeId]) -> Vec<NodeId> {
    c.nodes
        .iter()
        .copied()
        .filter(|n| !not.contains(n))
        .collect()
}

fn et_max(c: &Cluster) -> Duration {
    c.spec.election.1
}

/// The log index holding `client`'s command `seq` on node `id`.
fn index_of(c: &Cluster, id: NodeId, client: ClientId, seq: u64) -> Option<u64> {
    let r = c.up(id);
    (r.snapshot_index() + 1..=r.last_index()).find(|i| {
        r.entry(*i).is_some_and(|e| match &e.kind {
            EntryKind::Commands(cmds) => cmds.iter().any(|m| m.client == client && m.seq == seq),
            _ => false,
        })
    })
}

/// The highest commit index on any live node.
fn max_commit(c: &Cluster) -> u64 {
    c.live()
        .iter()
        .map(|id| c.up(*id).commit_index())
        .max()
        .unwrap_or(0)
}

/// Cuts every link between two nodes both outside `hub`: the nodes of
/// `hub` reach everyone, the rest reach only `hub`.
fn star(c: &mut Cluster, hub: &[NodeId]) {
    let spokes = others(c, hub);
    for a in &spokes {
        for b in &spokes {
            if a != b {
                c.sim.block(*a, *b);
            }
        }
    }
}

// ---------------------------------------------------------------- R1 --

/// R1: 3 reliable nodes elect exactly one leader, all in one term, and the
/// term does not change over 2 s without failures.
#[test]
fn initial_election() {
    run_seeds(FILE, "initial_election", |seed| {
        let mut c = Cluster::new(Spec::voters(3), seed);
        c.wait_leader(et_max(&c) * 10)?;
        c.run_for(et_max(&c))?; // a split vote settles
        let leader = c.leader().ok_or("no leader after settling")?;
        let terms: BTreeSet<u64> = c.nodes.iter().map(|id| c.up(*id).term()).collect();
        if c.leaders() != [leader] || terms.len() != 1 {
            return Err(format!("leaders {:?}, terms {terms:?}", c.leaders()));
        }
        let term = c.up(leader).term();
        c.run_for(secs(2))?;
        let now: Vec<(u64, Option<NodeId>)> = c
            .nodes
            .iter()
            .map(|id| (c.up(*id).term(), c.up(*id).leader()))
            .collect();
        if c.leader() != Some(leader) || now.iter().any(|v| *v != (term, Some(leader))) {
            return Err(format!(
                "the term or leader changed without failures: {leader} in {term}, now {now:?}"
            ));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- R2 --

/// R2: the leader is cut off, the others elect a new one and the old one
/// steps down; it rejoins as a follower; with every node alone there is
/// no leader; after heal there is one again.
#[test]
fn reelection() {
    run_seeds(FILE, "reelection", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let et = et_max(&c);
        let old = c.stable_leader()?;
        c.sim.isolate(old);
        let rest = others(&c, &[old]);
        let new = c.wait_leader_among(&rest, et * 10)?;
        let deadline = c.sim.now() + et;
        c.run_until(deadline, |c| !c.up(old).is_leader())?;
        if c.up(old).is_leader() {
            return Err(format!("the cut-off leader {old} still leads after ET_max"));
        }
        c.sim.heal();
        let deadline = c.sim.now() + et * 2;
        c.run_until(deadline, |c| {
            let r = c.up(old);
            r.leader() == Some(new) && r.term() == c.up(new).term()
        })?;
        if c.up(old).leader() != Some(new) || c.leader() != Some(new) {
            return Err(format!(
                "after heal {old} follows {:?}, the leader is {:?} (expected {new})",
                c.up(old).leader(),
                c.leader()
            ));
        }
        let client = c.clients[0];
        c.write(client, 0, put("k", "after-rejoin"), secs(2))?;
        // Every node alone: nobody may lead (the leader steps down).
        let n = c.nodes.clone();
        c.sim.partition(&[&n[0..1], &n[1..2], &n[2..3]]);
        c.run_for(et + c.spec.heartbeat * 2)?;
        let deadline = c.sim.now() + secs(2);
        if c.run_until(deadline, |c| !c.leaders().is_empty())? {
            return Err(format!(
                "{:?} leads while only 1 of 3 is connected",
                c.leaders()
            ));
        }
        c.sim.heal();
        c.wait_leader(et * 10)?;
        finish(&mut c)
    });
}

// ---------------------------------------------------------------- R3 --

/// R3: 7 nodes, ten rounds of 3 random nodes cut off: the 4 connected ones
/// always have a leader.
#[test]
fn many_elections() {
    run_seeds(FILE, "many_elections", |seed| {
        let mut c = Cluster::new(Spec::voters(7), seed);
        let et = et_max(&c);
        c.wait_leader(et * 10)?;
        for round in 0..10 {
            let mut connected = c.nodes.clone();
            for _ in 0..3 {
                let i = c.sim.rng().index(connected.len());
                connected.remove(i);
            }
            c.sim.partition(&[&connected]);
            c.wait_leader_among(&connected, et * 10)
                .map_err(|e| format!("round {round}, {connected:?} connected: {e}"))?;
            c.run_for(et / 2)?;
            c.sim.heal();
        }
        c.wait_leader(et * 10)?;
        Ok(())
    });
}

// ---------------------------------------------------------------- R4 --

/// R4 `basic_agree`: each write is committed on every node at the next
/// index with the expected command.
#[test]
fn basic_agree() {
    run_seeds(FILE, "basic_agree", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        let client = c.clients[0];
        let mut prev = c.up(leader).last_index();
        for i in 0..3 {
            let got = c.write(client, 0, put("k", &format!("v{i}")), secs(2))?;
            if got != Outcome::Written {
                return Err(format!("put {i}: {got:?}"));
            }
            let rec = c.client(client).history().last().cloned().unwrap();
            let index = index_of(&c, leader, rec.client, rec.seq)
                .ok_or_else(|| format!("put {i} is not in the leader's log"))?;
            if index != prev + 1 {
                return Err(format!("put {i} at index {index}, expected {}", prev + 1));
            }
            prev = index;
            let deadline = c.sim.now() + secs(1);
            c.run_until(deadline, |c| {
                c.nodes.iter().all(|n| c.up(*n).commit_index() >= index)
            })?;
            let digest = c.up(leader).entry(index).map(|e| e.digest());
            for n in c.nodes.clone() {
                let r = c.up(n);
                if r.commit_index() < index || r.entry(index).map(|e| e.digest()) != digest {
                    return Err(format!("{n} did not commit put {i} at index {index}"));
                }
            }
        }
        Ok(())
    });
}

/// R4 `concurrent_starts`: five writes started at once are each in the log
/// exactly once, and every node holds the same log.
#[test]
fn concurrent_starts() {
    run_seeds(FILE, "concurrent_starts", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 5), seed);
        let leader = c.stable_leader()?;
        let client = c.clients[0];
        for s in 0..5 {
            c.client_mut(client).push(s, put(&format!("k{s}"), "v"));
        }
        c.sim.with_node(client, |_, _, _| {});
        let deadline = c.sim.now() + secs(3);
        c.run_until(deadline, |c| c.completed_ops() == 5)?;
        if c.completed_ops() != 5 {
            return Err(format!(
                "{} of 5 concurrent puts completed",
                c.completed_ops()
            ));
        }
        c.wait_converged(secs(2))?;
        let history = c.client(client).history().to_vec();
        for rec in &history {
            let r = c.up(leader);
            let n = (r.snapshot_index() + 1..=r.last_index())
                .filter_map(|i| r.entry(i))
                .map(|e| match &e.kind {
                    EntryKind::Commands(cmds) => cmds
                        .iter()
                        .filter(|m| m.client == rec.client && m.seq == rec.seq)
                        .count(),
                    _ => 0,
                })
                .sum::<usize>();
            if n != 1 {
                return Err(format!(
                    "{:?} #{} is in the log {n} times",
                    rec.client, rec.seq
                ));
            }
        }
        let logs: Vec<_> = c.nodes.iter().map(|n| c.log_terms(*n)).collect();
        if logs.windows(2).any(|w| w[0] != w[1]) {
            return Err(format!("the logs differ: {logs:?}"));
        }
        c.check_linearizable()
    });
}

// ---------------------------------------------------------------- R5 --

/// Raft traffic between the nodes (clients left out): (requests, replies,
/// payload bytes) per message kind.
type Counts = Rc<RefCell<BTreeMap<String, (u64, u64)>>>;

fn count_raft_traffic(c: &mut Cluster) -> Counts {
    let counts: Counts = Rc::default();
    let tap = counts.clone();
    c.sim.set_tap(move |_, env| {
        if env.from.0 >= CLIENT_BASE || env.to.0 >= CLIENT_BASE {
            return;
        }
        if let Some(kind) = raft_kind(&env.msg) {
            let mut t = tap.borrow_mut();
            let e = t.entry(kind).or_default();
            e.0 += 1;
            e.1 += env.msg.len() as u64;
        }
    });
    counts
}

fn requests(counts: &Counts) -> u64 {
    counts
        .borrow()
        .iter()
        .filter(|(k, _)| is_request(k))
        .map(|(_, v)| v.0)
        .sum()
}

fn bytes(counts: &Counts) -> u64 {
    counts.borrow().values().map(|v| v.1).sum()
}

/// R5 (6.824 `Count` and `RPCBytes`): 10 commands of 5,000 bytes on 3 nodes
/// cost at most 42 Raft requests (RPCs, replies not counted) and at most
/// 3 x the payload + 50,000 bytes on the wire; an idle second costs at most
/// 60 requests.
#[test]
fn message_budget() {
    run_seeds(FILE, "message_budget", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        let term = c.up(leader).term();
        let counts = count_raft_traffic(&mut c);
        let client = c.clients[0];
        let value = "x".repeat(5000);
        for i in 0..10 {
            c.write(client, 0, put(&format!("k{i}"), &value), secs(2))?;
        }
        let commit = c.up(leader).commit_index();
        let deadline = c.sim.now() + secs(1);
        c.run_until(deadline, |c| {
            c.nodes.iter().all(|n| c.up(*n).commit_index() >= commit)
        })?;
        let (req, wire) = (requests(&counts), bytes(&counts));
        let got = format!("{req} requests, {wire} bytes: {:?}", counts.borrow());
        eprintln!("message_budget seed {seed}: 10 commands: {got}");
        if c.up(leader).term() != term {
            return Err(format!("an election ran during the budget: {got}"));
        }
        if req > 42 || wire > 3 * 50_000 + 50_000 {
            return Err(format!("over the budget for 10 commands: {got}"));
        }
        counts.borrow_mut().clear();
        c.run_for(secs(1))?;
        let idle = requests(&counts);
        eprintln!("message_budget seed {seed}: idle second: {idle} requests");
        if idle > 60 {
            return Err(format!(
                "{idle} requests in an idle second: {:?}",
                counts.borrow()
            ));
        }
        Ok(())
    });
}

// ---------------------------------------------------------------- R6 --

/// Submits `op` and runs `d`: true if it completed.
fn completes_within(c: &mut Cluster, client: NodeId, op: Op, d: Duration) -> Result<bool, String> {
    let before = c.completed_ops();
    c.submit(client, 0, op);
    let deadline = c.sim.now() + d;
    c.run_until(deadline, |c| c.completed_ops() > before)
}

/// R6 `follower_failure`: one follower down, writes commit; both down, no
/// commit; after restart, everything converges.
#[test]
fn follower_failure() {
    run_seeds(FILE, "follower_failure", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        let client = c.clients[0];
        let f = others(&c, &[leader]);
        c.crash(f[0]);
        c.write(client, 0, put("a", "1"), secs(2))?;
        c.crash(f[1]);
        let commit = c.up(leader).commit_index();
        if completes_within(&mut c, client, put("b", "2"), secs(2))? {
            return Err("a write completed with 1 of 3 nodes up".into());
        }
        if c.up(leader).commit_index() != commit {
            return Err("the lone leader committed".into());
        }
        c.restart_all()?;
        finish(&mut c)
    });
}

/// R6 `leader_failure`: the leader dies, a new one commits; it dies too,
/// the last node commits nothing.
#[test]
fn leader_failure() {
    run_seeds(FILE, "leader_failure", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let et = et_max(&c);
        let first = c.stable_leader()?;
        let client = c.clients[0];
        c.write(client, 0, put("a", "1"), secs(2))?;
        c.crash(first);
        let second = c.wait_leader(et * 10)?;
        c.write(client, 0, put("a", "2"), secs(3))?;
        c.crash(second);
        let last = others(&c, &[first, second])[0];
        let commit = c.up(last).commit_index();
        if completes_within(&mut c, client, put("a", "3"), secs(2))? {
            return Err("a write completed with 1 of 3 nodes up".into());
        }
        if c.up(last).commit_index() != commit || c.up(last).is_leader() {
            return Err(format!("the last node {last} led or committed alone"));
        }
        c.restart_all()?;
        finish(&mut c)
    });
}

/// R6 `fail_agree`: a follower cut off misses writes and catches up after
/// heal.
#[test]
fn fail_agree() {
    run_seeds(FILE, "fail_agree", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        let client = c.clients[0];
        let f = others(&c, &[leader])[0];
        c.sim.isolate(f);
        for i in 0..5 {
            c.write(client, 0, put("k", &format!("v{i}")), secs(2))?;
        }
        c.sim.heal();
        c.wait_converged(secs(3))?;
        finish(&mut c)
    });
}

/// R6 `fail_no_agree`: 3 of 5 cut off, the leader's side commits nothing;
/// after heal the minority's uncommitted entry is replaced and a fresh
/// write lands 2 or 3 indices past the old commit.
#[test]
fn fail_no_agree() {
    run_seeds(FILE, "fail_no_agree", |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(2, 1), seed);
        let et = et_max(&c);
        let leader = c.stable_leader()?;
        let base = c.up(leader).commit_index();
        let old_term = c.up(leader).term();
        let rest = others(&c, &[leader]);
        let minority = [leader, rest[0], c.clients[0]];
        let majority = [rest[1], rest[2], rest[3], c.clients[1]];
        c.sim.partition(&[&minority, &majority]);
        c.submit(c.clients[0], 0, put("lost", "maybe"));
        let deadline = c.sim.now() + secs(2);
        let done = c.run_until(deadline, |c| c.completed_ops() > 0)?;
        if done || c.up(leader).commit_index() != base || c.up(rest[0]).commit_index() != base {
            return Err("the minority side committed".into());
        }
        if c.up(leader).last_index() <= base {
            return Err("the minority leader never appended the write".into());
        }
        c.wait_leader_among(&majority[..3], et * 10)?;
        c.sim.heal();
        c.wait_leader(et * 10)?;
        let rec_before = c.client(c.clients[1]).history().len();
        c.write(c.clients[1], 0, put("fresh", "1"), secs(3))?;
        let rec = c.client(c.clients[1]).history()[rec_before].clone();
        let l = c.leader().ok_or("no leader after the fresh write")?;
        let index = index_of(&c, l, rec.client, rec.seq).ok_or("fresh write not in the log")?;
        // 6.824's "2 or 3": after the new leader's no-op, maybe after the
        // minority's retried write.
        if !(base + 2..=base + 3).contains(&index) {
            return Err(format!(
                "the fresh write landed at {index}, old commit {base}"
            ));
        }
        c.wait_converged(secs(3))?;
        if c.up(leader)
            .entry(base + 1)
            .is_some_and(|e| e.term == old_term)
        {
            return Err(format!(
                "{leader}'s uncommitted entry {} of term {old_term} survived",
                base + 1
            ));
        }
        finish(&mut c)
    });
}

// ---------------------------------------------------------------- R7 --

/// R7 `rejoin_partitioned_leader` (6.824 `Rejoin`): the leader is cut off
/// with its client and appends writes it cannot commit; the others commit;
/// the new leader is cut off and the old one rejoins the remaining
/// follower, which must win (its log is newer) and truncate the old
/// leader's suffix.
#[test]
fn rejoin_partitioned_leader() {
    run_seeds(FILE, "rejoin_partitioned_leader", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(2, 3), seed);
        let et = et_max(&c);
        let l1 = c.stable_leader()?;
        let (c0, c1) = (c.clients[0], c.clients[1]);
        // Both clients learn the leader first.
        c.write(c0, 0, put("warm", "0"), secs(2))?;
        c.write(c1, 0, put("warm", "1"), secs(2))?;
        let base = c.up(l1).commit_index();
        let rest = others(&c, &[l1]);
        c.sim.partition(&[&[l1, c0], &[rest[0], rest[1], c1]]);
        for s in 0..3 {
            c.client_mut(c0).push(s, put(&format!("old{s}"), "x"));
        }
        c.sim.with_node(c0, |_, _, _| {});
        let l2 = c.wait_leader_among(&rest, et * 10)?;
        if c.up(l1).last_index() <= base {
            return Err(format!(
                "the cut-off {l1} never appended its client's writes"
            ));
        }
        c.write(c1, 0, put("new", "1"), secs(3))?;
        let f = others(&c, &[l1, l2])[0];
        c.sim.partition(&[&[l1, f, c0, c1], &[l2]]);
        let l3 = c.wait_leader_among(&[l1, f], et * 10)?;
        if l3 != f {
            return Err(format!("the stale {l1} won against {f}"));
        }
        c.write(c1, 1, put("new", "2"), secs(3))?;
        if !c
            .inv
            .truncations
            .iter()
            .any(|(n, from)| *n == l1 && *from == base + 1)
        {
            return Err(format!(
                "{l1}'s uncommitted suffix was not truncated: {:?}",
                c.inv.truncations
            ));
        }
        c.sim.heal();
        finish(&mut c)
    });
}

/// Waits until `n` operations of `client` completed.
fn wait_completed(c: &mut Cluster, client: NodeId, n: usize, d: Duration) -> Result<(), String> {
    let deadline = c.sim.now() + d;
    let ok = c.run_until(deadline, |c| {
        c.client(client)
            .history()
            .iter()
            .filter(|r| r.completed.is_some())
            .count()
            >= n
    })?;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{client} did not complete {n} operations within {d:?}"
        ))
    }
}

/// Each of `client`'s sessions puts once (one log entry each with
/// `max_batch(1)`).
fn burst(c: &mut Cluster, client: NodeId, tag: &str) {
    for s in 0..c.spec.sessions {
        c.client_mut(client)
            .push(s, put(&format!("{tag}{}", s % 5), &format!("{tag}-{s}")));
    }
    c.sim.with_node(client, |_, _, _| {});
}

/// R7 `backup` (6.824 `Backup`): 5 nodes, leaders cut off with 50
/// uncommitted entries each, twice; after heal the stale logs are fixed
/// within a step budget (fast backtracking by conflict term) and the
/// conflicting suffixes are truncated.
#[test]
fn backup() {
    let worst = std::cell::Cell::new(0);
    run_seeds(FILE, "backup", |seed| {
        let mut spec = Spec::voters(5).clients(4, 50);
        spec.max_batch = Some(1);
        spec.request_timeout = ms(300);
        let mut c = Cluster::new(spec, seed);
        let et = et_max(&c);
        let l1 = c.stable_leader()?;
        let cl = c.clients.clone();
        let rest = others(&c, &[l1]);
        let (f1, m_side) = (rest[0], rest[1..].to_vec());
        // 1. The leader and one follower, cut off, get 50 entries.
        c.sim
            .partition(&[&[l1, f1, cl[0]], &[m_side[0], m_side[1], m_side[2], cl[1]]]);
        burst(&mut c, cl[0], "a");
        c.run_for(ms(200))?;
        // 2. The other three elect and commit 50.
        let m = c.wait_leader_among(&m_side, et * 10)?;
        burst(&mut c, cl[1], "b");
        wait_completed(&mut c, cl[1], 50, secs(5))?;
        // 3. That leader and one follower are cut off with 50 more; the
        //    third follower leads the stale pair and commits 50.
        let rest_m: Vec<NodeId> = m_side.iter().copied().filter(|n| *n != m).collect();
        let (x, y) = (rest_m[0], rest_m[1]);
        c.sim
            .partition(&[&[m, x, cl[2]], &[l1, f1, y, cl[0], cl[1], cl[3]]]);
        burst(&mut c, cl[2], "c");
        let l3 = c.wait_leader_among(&[l1, f1, y], et * 10)?;
        if l3 != y {
            return Err(format!("{l3} won the stale side, expected {y}"));
        }
        burst(&mut c, cl[3], "d");
        wait_completed(&mut c, cl[3], 50, secs(5))?;
        // 4. Heal: everyone converges within the budget.
        let counts = count_raft_traffic(&mut c);
        let refused: Rc<RefCell<BTreeSet<(NodeId, u64)>>> = Rc::default();
        let tap_refused = refused.clone();
        let tap_counts = counts.clone();
        c.sim.set_tap(move |_, env| {
            if env.from.0 >= CLIENT_BASE || env.to.0 >= CLIENT_BASE {
                return;
            }
            let Ok(msg) = zpatterns::raft::Msg::decode(env.msg.clone()) else {
                return;
            };
            tap_counts
                .borrow_mut()
                .entry(format!("{:?}", msg.kind()))
                .or_default()
                .0 += 1;
            // A refusal naming a conflicting term: backtracking (a refusal
            // without one is an append that overtook another).
            if let zpatterns::raft::Msg::AppendReply {
                success: false,
                index,
                hint_term: Some(_),
                ..
            } = msg
            {
                tap_refused.borrow_mut().insert((env.from, index));
            }
        });
        c.sim.heal();
        let steps_before = c.sim.stats().delivered;
        c.wait_converged(secs(5))?;
        let steps = c.sim.stats().delivered - steps_before;
        // Fast backtracking: each refusal skips a whole conflicting term,
        // so each stale node refuses a handful of distinct points (one entry
        // at a time would be about 50). Copies of a refusal (appends that
        // were in flight) count once.
        let per_node: BTreeMap<NodeId, usize> =
            refused
                .borrow()
                .iter()
                .fold(BTreeMap::new(), |mut m, (n, _)| {
                    *m.entry(*n).or_default() += 1;
                    m
                });
        let most = per_node.values().copied().max().unwrap_or(0);
        worst.set(worst.get().max(most as u64));
        if most > 5 {
            return Err(format!(
                "stale nodes refused appends at {:?} ({steps} deliveries, Raft traffic {:?}) to fix their logs",
                refused.borrow(),
                counts.borrow()
            ));
        }
        for n in [l1, f1, m, x] {
            if !c.inv.truncations.iter().any(|(t, _)| *t == n) {
                return Err(format!("{n}'s conflicting suffix was never truncated"));
            }
        }
        finish(&mut c)
    });
    eprintln!(
        "backup: at most {} distinct refusals per stale node to converge after heal",
        worst.get()
    );
}

// ---------------------------------------------------------------- R8 --

/// What must survive a restart: term, vote, snapshot index and the log's
/// (index, term, digest).
type Durable = (u64, Option<NodeId>, u64, Vec<(u64, u64, u64)>);

fn durable_state(c: &Cluster, id: NodeId) -> Durable {
    let r = c.up(id);
    (r.term(), r.voted_for(), r.snapshot_index(), c.log_terms(id))
}

/// R8 `persist_1`: every node crashes and restarts from its disk after each
/// of a few writes; term, vote and log are exactly as before.
fn persist_all(seed: u64, spec: Spec) -> Result<(), String> {
    let mut c = Cluster::new(spec.clients(1, 1), seed);
    c.stable_leader()?;
    let client = c.clients[0];
    for round in 0..3 {
        c.write(client, 0, put("k", &format!("r{round}")), secs(5))?;
        let before: Vec<_> = c.nodes.iter().map(|id| durable_state(&c, *id)).collect();
        for id in c.nodes.clone() {
            c.crash(id);
        }
        c.restart_all()?;
        for (id, b) in c.nodes.clone().into_iter().zip(before) {
            let after = durable_state(&c, id);
            if after != b {
                return Err(format!(
                    "{id}'s term, vote or log changed across a restart: {:?} -> {:?}",
                    (b.0, b.1, b.2, b.3.len()),
                    (after.0, after.1, after.2, after.3.len())
                ));
            }
        }
        c.wait_leader(et_max(&c) * 10)?;
    }
    finish(&mut c)
}

#[test]
fn persist_1() {
    run_seeds(FILE, "persist_1", |seed| persist_all(seed, Spec::voters(3)));
}

/// R8 `persist_2`: random crashes (also between a step and its fsync) and
/// restarts of 5 nodes under load; no double vote (S1), S2-S4.
fn crash_restart(seed: u64, spec: Spec) -> Result<(), String> {
    let mut c = Cluster::new(spec.clients(3, 2), seed);
    let nodes = c.nodes.clone();
    c.sim.set_mid_step_crash(0.0005, &nodes);
    c.wait_leader(et_max(&c) * 10)?;
    chaos(&mut c, secs(3), ms(100), |c| {
        let down: Vec<NodeId> = nodes.iter().copied().filter(|r| !c.sim.is_up(*r)).collect();
        let r = c.sim.rng().below(10);
        if r < 3 && !down.is_empty() {
            let i = c.sim.rng().index(down.len());
            c.restart(down[i])?;
        } else if r < 5 && down.len() < 2 {
            let up: Vec<NodeId> = nodes.iter().copied().filter(|r| c.sim.is_up(*r)).collect();
            let i = c.sim.rng().index(up.len());
            let victim = up[i];
            let before = durable_state(c, victim);
            c.crash(victim);
            c.restart(victim)?;
            let after = durable_state(c, victim);
            if before != after {
                return Err(format!(
                    "{victim}'s term, vote or log changed across a restart: {:?} -> {:?}",
                    (before.0, before.1, before.2),
                    (after.0, after.1, after.2)
                ));
            }
            c.crash(victim);
        }
        Ok(())
    })
}

#[test]
fn persist_2() {
    run_seeds(FILE, "persist_2", |seed| {
        crash_restart(seed, Spec::voters(5))
    });
}

/// R8 `persist_3`: a follower is down while writes commit, then the leader
/// dies and the stale follower restarts: only the up-to-date node may win
/// (§5.4.1), with and without pre-vote.
fn stale_restart(seed: u64, spec: Spec) -> Result<(), String> {
    let mut c = Cluster::new(spec.clients(1, 1), seed);
    let et = et_max(&c);
    let a = c.stable_leader()?;
    let rest = others(&c, &[a]);
    let (b, stale) = (rest[0], rest[1]);
    c.crash(stale);
    for i in 0..5 {
        c.write(c.clients[0], 0, put("k", &format!("v{i}")), secs(3))?;
    }
    let deadline = c.sim.now() + secs(1);
    c.run_until(deadline, |c| {
        c.up(b).commit_index() == c.up(a).commit_index()
    })?;
    c.crash(a);
    // What the dead leader still had in flight lands (or is lost) first.
    c.run_for(ms(20))?;
    c.restart(stale)?;
    let l = c.wait_leader(et * 10)?;
    if l != b {
        return Err(format!("the stale {stale} was elected over {b}"));
    }
    c.restart(a)?;
    finish(&mut c)
}

#[test]
fn persist_3() {
    run_seeds(FILE, "persist_3", |seed| {
        stale_restart(seed, Spec::voters(3))?;
        let mut no_pre_vote = Spec::voters(3);
        no_pre_vote.pre_vote = false;
        stale_restart(seed, no_pre_vote)
    });
}

// ---------------------------------------------------------------- R9 --

/// R9 `figure8` (6.824 `Figure8`): 5 nodes under a steady workload; again
/// and again a command is started at the leader (as 6.824's `Start`: a
/// client request injected at it) and the leader dies a random short time
/// later (often while its entries reached only some followers), and a
/// crashed node restarts while fewer than 3 are up. `rounds` leader crashes
/// a seed: 64 in R9, about 1,000 over the default 16 seeds.
fn figure8(seed: u64, spec: Spec, rounds: usize) -> Result<(), String> {
    let mut spec = spec.clients(1, 2);
    if spec.link == LinkProfile::default() {
        // Delays long enough for a crash to land mid-replication.
        spec.link = LinkProfile::uniform(ms(1), ms(8));
    }
    spec.election = (ms(150), ms(300));
    spec.heartbeat = ms(25);
    spec.max_append = Some(1);
    spec.max_batch = Some(1);
    let mut c = Cluster::new(spec, seed);
    let et = et_max(&c);
    let nodes = c.nodes.clone();
    let end = c.sim.now() + secs(600);
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(5, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    let starter = NodeId(CLIENT_BASE + 98);
    let mut started = 0u64;
    let mut crashes = 0;
    for _ in 0..rounds * 3 {
        if crashes == rounds {
            break;
        }
        let deadline = c.sim.now() + et * 4;
        c.run_until(deadline, |c| c.leader().is_some())?;
        if let Some(l) = c.leader() {
            for _ in 0..=c.sim.rng().below(3) {
                started += 1;
                let request = zpatterns::paxos::Msg::Request {
                    client: ClientId(1 << 40 | started),
                    seq: 1,
                    op: put(&format!("f{}", started % 5), &format!("s{started}")),
                };
                c.sim.inject(starter, l, request.encode());
            }
        }
        let wait = if c.sim.rng().chance(0.1) {
            ms(c.sim.rng().below(et.as_millis() as u64 / 2))
        } else {
            ms(c.sim.rng().below(13))
        };
        c.run_for(wait)?;
        if let Some(l) = c.leader() {
            c.crash(l);
            crashes += 1;
        }
        let up = nodes.iter().filter(|n| c.sim.is_up(**n)).count();
        if up < 3 {
            let down: Vec<NodeId> = nodes.iter().copied().filter(|n| !c.sim.is_up(*n)).collect();
            let i = c.sim.rng().index(down.len());
            c.restart(down[i])?;
        }
    }
    finish(&mut c)
}

#[test]
fn figure8_leader_crashes() {
    run_seeds(FILE, "figure8_leader_crashes", |seed| {
        figure8(seed, Spec::voters(5), 64)
    });
}

// --------------------------------------------------------------- R10 --

/// The labrpc "unreliable" profile: 0-27 ms, 10 % loss, long reordering,
/// plus 5 % duplicates.
fn labrpc() -> LinkProfile {
    LinkProfile::uniform(ms(0), ms(27))
        .lossy(0.1, 0.05)
        .slow_tail(0.05, ms(600))
}

/// R10 `unreliable_agree`: 5 nodes, clients writing over the unreliable
/// network.
#[test]
fn unreliable_agree() {
    run_seeds(FILE, "unreliable_agree", |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(2, 2).link(labrpc()), seed);
        chaos(&mut c, secs(3), secs(1), |_| Ok(()))
    });
}

/// R10 `figure8_unreliable`.
#[test]
fn figure8_unreliable() {
    run_seeds(FILE, "figure8_unreliable", |seed| {
        figure8(seed, Spec::voters(5).link(labrpc()), 12)
    });
}

/// R10 `unreliable_churn` (6.824 `UnreliableChurn`): every 0.7 ET a random
/// node is cut off, crashed or restarted, over the unreliable network.
#[test]
fn unreliable_churn() {
    run_seeds(FILE, "unreliable_churn", |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(3, 1).link(labrpc()), seed);
        let tick = et_max(&c) * 7 / 10;
        let nodes = c.nodes.clone();
        chaos(&mut c, secs(4), tick, |c| {
            let i = c.sim.rng().index(nodes.len());
            let n = nodes[i];
            let down = nodes.iter().filter(|n| !c.sim.is_up(**n)).count();
            match c.sim.rng().below(4) {
                0 => c.sim.isolate(n),
                1 => c.sim.heal(),
                2 if down < 2 => c.crash(n),
                _ => c.restart(n)?,
            }
            Ok(())
        })
    });
}

// --------------------------------------------------------------- R11 --

/// The largest number of entries any live node keeps in its log.
fn longest_log(c: &Cluster) -> u64 {
    c.live()
        .iter()
        .map(|n| {
            let r = c.up(*n);
            r.last_index() - r.snapshot_index()
        })
        .max()
        .unwrap_or(0)
}

/// Runs a workload of `entries` single-command entries (`max_batch(1)`),
/// checking after every step that no log outgrows `bound`.
fn write_entries(
    c: &mut Cluster,
    entries: u64,
    bound: u64,
    within: Duration,
) -> Result<(), String> {
    let start = max_commit(c);
    let end = c.sim.now() + within;
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(20, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    let mut longest = 0;
    c.run_until(end, |c| {
        longest = longest.max(longest_log(c));
        longest > bound || max_commit(c) >= start + entries
    })?;
    for id in c.clients.clone() {
        c.client_mut(id).stop();
    }
    if longest > bound {
        return Err(format!("a log grew to {longest} entries (bound {bound})"));
    }
    if max_commit(c) < start + entries {
        return Err(format!(
            "only {} of {entries} entries committed in {within:?}",
            max_commit(c) - start
        ));
    }
    Ok(())
}

fn snapshot_spec(n: u32) -> Spec {
    let mut spec = Spec::voters(n).clients(2, 4).snapshots(64, 1024);
    spec.max_batch = Some(1);
    spec
}

/// R11 `snapshot_basic`: snapshots every 64 entries keep every log short
/// (at most 3 x 64 entries) while 300 entries commit; every node compacts.
#[test]
fn snapshot_basic() {
    run_seeds(FILE, "snapshot_basic", |seed| {
        let mut c = Cluster::new(snapshot_spec(3), seed);
        c.stable_leader()?;
        write_entries(&mut c, 300, 3 * 64, secs(10))?;
        c.wait_converged(secs(3))?;
        for n in c.nodes.clone() {
            if c.up(n).snapshot_index() == 0 {
                return Err(format!("{n} never took a snapshot"));
            }
        }
        finish(&mut c)
    });
}

/// R11 `snapshot_install*`: a follower misses 300 entries (cut off, or
/// crashed), then catches up through InstallSnapshot.
fn catch_up_by_snapshot(seed: u64, link: LinkProfile, crash: bool) -> Result<(), String> {
    let mut c = Cluster::new(snapshot_spec(3).link(link), seed);
    let leader = c.stable_leader()?;
    let f = others(&c, &[leader])[0];
    if crash {
        c.crash(f);
    } else {
        c.sim.isolate(f);
    }
    write_entries(&mut c, 300, 3 * 64, secs(20))?;
    c.sim.heal();
    c.restart(f)?;
    c.wait_converged(secs(10))?;
    if !c.inv.installs.iter().any(|(n, _)| *n == f) {
        return Err(format!("{f} caught up without installing a snapshot"));
    }
    finish(&mut c)
}

#[test]
fn snapshot_install() {
    run_seeds(FILE, "snapshot_install", |seed| {
        catch_up_by_snapshot(seed, LinkProfile::default(), false)
    });
}

#[test]
fn snapshot_install_unreliable() {
    run_seeds(FILE, "snapshot_install_unreliable", |seed| {
        catch_up_by_snapshot(
            seed,
            LinkProfile::uniform(ms(1), ms(10)).lossy(0.1, 0.05),
            false,
        )
    });
}

#[test]
fn snapshot_install_crash() {
    run_seeds(FILE, "snapshot_install_crash", |seed| {
        catch_up_by_snapshot(seed, LinkProfile::default(), true)
    });
}

/// R11 `snapshot_all_crash`: every node crashes and restarts between
/// rounds of writes; no snapshot index goes back (S1) and no acknowledged
/// write is lost (S3).
#[test]
fn snapshot_all_crash() {
    run_seeds(FILE, "snapshot_all_crash", |seed| {
        let mut c = Cluster::new(snapshot_spec(3), seed);
        for _ in 0..3 {
            c.wait_leader(et_max(&c) * 10)?;
            write_entries(&mut c, 100, 3 * 64, secs(10))?;
            for n in c.nodes.clone() {
                c.crash(n);
            }
            c.restart_all()?;
        }
        finish(&mut c)
    });
}

/// A follower down for thousands of entries catches up through a snapshot
/// sent in several chunks, under 5 % drops and 5 % duplicates.
#[test]
fn snapshot_catch_up_after_thousands_of_entries() {
    run_seeds(
        FILE,
        "snapshot_catch_up_after_thousands_of_entries",
        |seed| {
            let mut spec = Spec::voters(3)
                .clients(2, 8)
                .snapshots(200, 128)
                .link(LinkProfile::uniform(ms(1), ms(3)).lossy(0.05, 0.05));
            spec.max_batch = Some(1);
            let mut c = Cluster::new(spec, seed);
            let leader = c.stable_leader()?;
            let f = others(&c, &[leader])[0];
            c.crash(f);
            write_entries(&mut c, 2000, 3 * 200, secs(30))?;
            let to_f: Rc<RefCell<u64>> = Rc::default();
            let tap = to_f.clone();
            c.sim.set_tap(move |_, env| {
                if env.to == f {
                    if let Some(k) = raft_kind(&env.msg) {
                        if k.contains("Snapshot") && is_request(&k) {
                            *tap.borrow_mut() += 1;
                        }
                    }
                }
            });
            c.restart(f)?;
            c.wait_converged(secs(10))?;
            let chunks = *to_f.borrow();
            if !c.inv.installs.iter().any(|(n, _)| *n == f) || chunks < 3 {
                return Err(format!(
                    "{f} caught up with {chunks} snapshot chunks; installs {:?}",
                    c.inv.installs
                ));
            }
            finish(&mut c)
        },
    );
}

// --------------------------------------------------------------- R12 --

/// R12 `prevote_no_disruption`: a follower cut off for 10 ET rejoins
/// without disturbing the leader (same leader, same term); without
/// pre-vote, the same run does disturb it.
#[test]
fn prevote_no_disruption() {
    run_seeds(FILE, "prevote_no_disruption", |seed| {
        let (disrupted, why) = rejoin_after_isolation(seed, true)?;
        if disrupted {
            return Err(why);
        }
        // The control: without pre-vote the cut-off follower's terms grow
        // and its return deposes the leader, so the check above can fail.
        let (disrupted, why) = rejoin_after_isolation(seed, false)?;
        if !disrupted {
            return Err(format!("without pre-vote: no disruption either ({why})"));
        }
        Ok(())
    });
}

/// Cuts a follower off for 10 ET, heals, and says whether the leader or
/// its term changed.
fn rejoin_after_isolation(seed: u64, pre_vote: bool) -> Result<(bool, String), String> {
    let mut spec = Spec::voters(3).clients(1, 1);
    spec.pre_vote = pre_vote;
    let mut c = Cluster::new(spec, seed);
    let leader = c.stable_leader()?;
    let term = c.up(leader).term();
    let f = others(&c, &[leader])[0];
    c.sim.isolate(f);
    c.run_for(et_max(&c) * 10)?;
    c.sim.heal();
    c.run_for(et_max(&c) * 2)?;
    let why = format!(
        "the rejoining {f} (term {}): {leader} led in {term}, now {:?} leads, {leader} in {}",
        c.up(f).term(),
        c.leader(),
        c.up(leader).term()
    );
    let disrupted = c.leader() != Some(leader) || c.up(leader).term() != term;
    finish(&mut c)?;
    Ok((disrupted, why))
}

/// R12 `check_quorum_stepdown`: a leader cut off (with a client) steps down
/// within ET_max and commits nothing.
#[test]
fn check_quorum_stepdown() {
    run_seeds(FILE, "check_quorum_stepdown", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(2, 1), seed);
        let leader = c.stable_leader()?;
        let commit = c.up(leader).commit_index();
        let rest = others(&c, &[leader]);
        let (c0, c1) = (c.clients[0], c.clients[1]);
        c.sim.partition(&[&[leader, c0], &[rest[0], rest[1], c1]]);
        c.submit(c0, 0, put("cut", "off"));
        // ET_max, plus one heartbeat for the last acknowledgements in flight.
        let deadline = c.sim.now() + et_max(&c) + c.spec.heartbeat;
        c.run_until(deadline, |c| !c.up(leader).is_leader())?;
        if c.up(leader).is_leader() {
            return Err(format!(
                "{leader} still leads ET_max after losing its quorum"
            ));
        }
        c.run_for(secs(1))?;
        if c.completed_ops() > 0 || c.up(leader).commit_index() != commit {
            return Err("the cut-off leader accepted and committed a write".into());
        }
        finish(&mut c)
    });
}

// --------------------------------------------------------------- R13 --

/// Under the workload, within 10 ET there is a leader and operations
/// complete, and they keep completing for 2 ET more (no flip-flopping).
fn progress(c: &mut Cluster, what: &str) -> Result<(), String> {
    let et = et_max(c);
    let end = c.sim.now() + et * 20;
    for id in c.clients.clone() {
        c.client_mut(id).random_workload(5, end);
        c.sim.with_node(id, |_, _, _| {});
    }
    for (phase, within) in [("within 10 ET", et * 10), ("for 2 ET more", et * 2)] {
        let before = c.completed_ops();
        let deadline = c.sim.now() + within;
        let ok = c.run_until(deadline, |c| {
            c.leader().is_some() && c.completed_ops() >= before + 5
        })?;
        if !ok {
            return Err(format!(
                "{what}: no leader and progress {phase} ({} ops completed; leader {:?})",
                c.completed_ops() - before,
                c.leader()
            ));
        }
        if phase.starts_with("for") {
            c.run_until(deadline, |_| false)?;
        }
    }
    for id in c.clients.clone() {
        c.client_mut(id).stop();
    }
    Ok(())
}

/// R13 `chained` (OmniPaxos): A-B-C with the leader A and C unable to talk;
/// pre-vote and check-quorum keep a leader and progress.
#[test]
fn partial_connectivity_chained() {
    run_seeds(FILE, "partial_connectivity_chained", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 2), seed);
        let a = c.stable_leader()?;
        let rest = others(&c, &[a]);
        let far = rest[1];
        c.sim.block(a, far);
        c.sim.block(far, a);
        progress(&mut c, "chained")?;
        finish(&mut c)
    });
}

/// R13 `quorum_loss` (OmniPaxos): only one follower Q still reaches
/// everyone; the others, the leader included, reach only Q. The leader
/// steps down and Q (up to date) is elected.
#[test]
fn partial_connectivity_quorum_loss() {
    run_seeds(FILE, "partial_connectivity_quorum_loss", |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(1, 2), seed);
        let l = c.stable_leader()?;
        let q = others(&c, &[l])[0];
        star(&mut c, &[q]);
        progress(&mut c, "quorum loss")?;
        finish(&mut c)
    });
}

/// R13 `constrained` (OmniPaxos), an EXPECTED LIVENESS FAILURE documenting
/// a Raft limitation: the leader is gone and the only quorum-connected
/// node Q has a stale log. Raft's up-to-date-log vote rule makes every
/// other node refuse Q, and none of them reaches a majority itself, so no
/// leader is elected and nothing commits for 10 ET, even with pre-vote and
/// check-quorum. (The Multi-Paxos demo on the same topology, P9, is
/// `paxos_p9_partial_connectivity_constrained` below: phase 1 merges the
/// acceptors' logs, so the stale but quorum-connected node leads.) After
/// heal, S2-S4 hold.
#[test]
fn partial_connectivity_constrained() {
    run_seeds(FILE, "partial_connectivity_constrained", |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(1, 2), seed);
        let et = et_max(&c);
        let l = c.stable_leader()?;
        let q = others(&c, &[l])[0];
        c.sim.isolate(q);
        for i in 0..3 {
            c.write(c.clients[0], 0, put("k", &format!("v{i}")), secs(3))?;
        }
        if c.up(q).last_index() >= c.up(l).commit_index() {
            return Err("Q is not stale".into());
        }
        c.crash(l);
        c.sim.heal();
        star(&mut c, &[q]);
        let commit = max_commit(&c);
        c.submit(c.clients[0], 0, put("k", "stuck"));
        let deadline = c.sim.now() + et * 10;
        if c.run_until(deadline, |c| {
            !c.leaders().is_empty() || max_commit(c) > commit
        })? {
            return Err(format!(
                "expected no leader and no commit (the Raft limitation), got leaders {:?}, commit {} (was {commit})",
                c.leaders(),
                max_commit(&c)
            ));
        }
        finish(&mut c)
    });
}

// --------------------------------------------------------------- R14 --

/// R14 `lin_kv_nemesis`: linearizable get/put/cas on 5 keys under random
/// partitions every second (the Maelstrom tutorial's run, shortened).
fn lin_kv(seed: u64, n: u32) -> Result<(), String> {
    let spec = Spec::voters(n)
        .clients(n as usize, 4)
        .link(LinkProfile::uniform(ms(1), ms(5)).slow_tail(0.05, ms(50)));
    let mut c = Cluster::new(spec, seed);
    chaos(&mut c, secs(3), ms(750), |c| {
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
        Ok(())
    })
}

#[test]
fn lin_kv_nemesis() {
    run_seeds(FILE, "lin_kv_nemesis", |seed| {
        lin_kv(seed, 3)?;
        lin_kv(seed, 5)
    });
}

// --------------------------------------------------------------- R15 --

/// R15: retried and duplicated requests apply exactly once: on every node,
/// the store applied as many commands as there are distinct `(client,
/// seq)` in the log, however often they appear.
#[test]
fn duplicate_client_requests() {
    let with_duplicates = std::cell::Cell::new(0usize);
    run_seeds(FILE, "duplicate_client_requests", |seed| {
        let mut spec = Spec::voters(3)
            .clients(3, 2)
            .link(LinkProfile::uniform(ms(1), ms(20)).lossy(0.0, 0.3))
            .snapshots(0, 64 * 1024);
        // Clients time out long before replies can come back: every
        // request is retried, often at another node.
        spec.request_timeout = ms(15);
        let mut c = Cluster::new(spec, seed);
        c.wait_leader(et_max(&c) * 10)?;
        chaos(&mut c, secs(3), ms(500), |c| {
            if let Some(l) = c.leader() {
                c.crash(l);
                c.restart(l)?;
            }
            Ok(())
        })?;
        let mut worst = 0;
        for n in c.nodes.clone() {
            let r = c.up(n);
            let mut all = 0usize;
            let mut distinct = BTreeSet::new();
            for i in 1..=r.applied_index() {
                if let Some(EntryKind::Commands(cmds)) = r.entry(i).map(|e| &e.kind) {
                    // Reads are in the log only as a session's first
                    // operation (the rest go through ReadIndex).
                    for m in cmds {
                        all += 1;
                        distinct.insert((m.client, m.seq));
                    }
                }
            }
            // Each distinct request runs once, or is refused once as
            // expired (`SessionExpired`, not executed); copies never run.
            let (applied, expired) = (r.kv().applied_commands(), r.kv().expired_commands());
            if applied + expired != distinct.len() as u64 {
                return Err(format!(
                    "{n}: {applied} commands applied and {expired} refused as expired for {} distinct requests ({all} in the log)",
                    distinct.len()
                ));
            }
            worst = worst.max(all - distinct.len());
        }
        if worst > 0 {
            with_duplicates.set(with_duplicates.get() + 1);
        }
        Ok(())
    });
    eprintln!(
        "duplicate_client_requests: {} of {} seeds had duplicate commands in the log",
        with_duplicates.get(),
        seeds().len()
    );
    // The scenario must actually exercise deduplication.
    assert!(
        with_duplicates.get() > 0,
        "no seed produced a duplicate command in the log"
    );
}

// ------------------------------------------------ membership, transfer --

/// Proposes a configuration change at the current leader until `done`
/// holds for the leader's committed configuration.
fn change(
    c: &mut Cluster,
    make: impl Fn() -> ConfChange,
    done: impl Fn(&Membership) -> bool,
    within: Duration,
) -> Result<(), String> {
    let deadline = c.sim.now() + within;
    let mut last_err = String::new();
    while c.sim.now() < deadline {
        if let Some(l) = c.leader() {
            let r = c.up(l);
            // The latest configuration entry (none left: compacted, so
            // committed).
            let config_at = (r.snapshot_index() + 1..=r.last_index()).rev().find(|i| {
                r.entry(*i)
                    .is_some_and(|e| matches!(e.kind, EntryKind::Config(_)))
            });
            if done(r.membership()) && config_at.is_none_or(|i| i <= r.commit_index()) {
                return Ok(());
            }
            if !done(r.membership()) {
                let res = c.on_node(l, |r, now, out| r.propose_change(now, make(), out))?;
                if let Some(Err(e)) = res {
                    last_err = e.to_string();
                }
            }
        }
        c.run_for(ms(50))?;
    }
    Err(format!(
        "the change {:?} did not commit within {within:?} (last error: {last_err})",
        make()
    ))
}

/// A five-node cluster shrinks to three (two voters removed one at a time)
/// and grows back to five (two new nodes added as learners, promoted once
/// caught up) while clients write; no acknowledged write is lost.
#[test]
fn membership_shrink_and_grow() {
    run_seeds(FILE, "membership_shrink_and_grow", |seed| {
        let spec = Spec::voters(5)
            .joiners(&[NodeId(5), NodeId(6)])
            .clients(2, 2);
        let mut c = Cluster::new(spec, seed);
        let leader = c.stable_leader()?;
        let end = c.sim.now() + secs(30);
        for id in c.clients.clone() {
            c.client_mut(id).random_workload(5, end);
            c.sim.with_node(id, |_, _, _| {});
        }
        let _ = leader;
        for _ in 0..2 {
            // The highest-numbered voter that does not lead.
            let l = c.leader().ok_or("no leader while shrinking")?;
            let n = *c
                .up(l)
                .membership()
                .voters
                .iter()
                .rev()
                .find(|v| **v != l)
                .ok_or("no voter to remove")?;
            change(
                &mut c,
                || ConfChange::Remove(n),
                |m| !m.contains(n),
                secs(10),
            )?;
            // Decommissioned: it leaves the cluster for good.
            c.crash(n);
            c.nodes.retain(|x| *x != n);
            c.run_for(ms(200))?;
        }
        if c.members().len() != 3 {
            return Err(format!("members after shrinking: {:?}", c.members()));
        }
        for n in [NodeId(5), NodeId(6)] {
            change(
                &mut c,
                || ConfChange::AddLearner(n),
                |m| m.learners.contains(&n) || m.voters.contains(&n),
                secs(10),
            )?;
            change(
                &mut c,
                || ConfChange::Promote(n),
                |m| m.voters.contains(&n),
                secs(10),
            )?;
        }
        let l = c.leader().ok_or("no leader after growing")?;
        let voters: Vec<NodeId> = c.up(l).membership().voters.iter().copied().collect();
        if voters.len() != 5 || !voters.contains(&NodeId(5)) || !voters.contains(&NodeId(6)) {
            return Err(format!("voters after growing: {voters:?}"));
        }
        for id in c.clients.clone() {
            c.client_mut(id).stop();
        }
        finish(&mut c)?;
        // The removed nodes are not needed: the new ones vote.
        Ok(())
    });
}

/// Leadership transfer: the leader hands over to a chosen follower, which
/// leads within ET_max (no election timeout needed); a transfer to an
/// unknown node is refused.
#[test]
fn leadership_transfer() {
    run_seeds(FILE, "leadership_transfer", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 2), seed);
        let leader = c.stable_leader()?;
        let end = c.sim.now() + secs(3);
        for id in c.clients.clone() {
            c.client_mut(id).random_workload(5, end);
            c.sim.with_node(id, |_, _, _| {});
        }
        c.run_for(ms(300))?;
        let unknown = c.on_node(leader, |r, now, out| {
            r.transfer_leadership(now, NodeId(99), out)
        })?;
        if !matches!(unknown, Some(Err(_))) {
            return Err(format!("a transfer to an unknown node: {unknown:?}"));
        }
        let pick = c.sim.rng().index(2);
        let to = others(&c, &[leader])[pick];
        let term = c.up(leader).term();
        let res = c.on_node(leader, |r, now, out| r.transfer_leadership(now, to, out))?;
        if !matches!(res, Some(Ok(()))) {
            return Err(format!("transfer to {to}: {res:?}"));
        }
        let deadline = c.sim.now() + et_max(&c);
        c.run_until(deadline, |c| c.leader() == Some(to))?;
        if c.leader() != Some(to) || c.up(to).term() <= term {
            return Err(format!(
                "{to} did not take over within ET_max: leader {:?}",
                c.leader()
            ));
        }
        c.run_until(end, |_| false)?;
        finish(&mut c)
    });
}

// -------------------------------------------------------------- misc --

#[test]
fn same_seed_same_trace() {
    // S5: the whole run, faults included, is a function of the seed.
    let run = |seed| {
        let mut c = Cluster::new(Spec::voters(5).clients(2, 2).link(labrpc()), seed);
        chaos(&mut c, secs(2), ms(500), |c| {
            if let Some(l) = c.leader() {
                c.crash(l);
                c.restart(l)?;
            }
            Ok(())
        })
        .unwrap();
        (c.sim.trace_hash(), c.sim.stats())
    };
    let a = run(7);
    assert_eq!(a, run(7));
    assert_ne!(a.0, run(8).0);
}

#[test]
fn garbage_is_counted_not_fatal() {
    run_seeds(FILE, "garbage_is_counted_not_fatal", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        let leader = c.stable_leader()?;
        let term = c.up(leader).term();
        let before: u64 = c.nodes.iter().map(|id| c.up(*id).stats().garbage).sum();
        for junk in [
            &b""[..],
            b"\x01",
            b"\x01\x20",
            b"\x01\x21\xff\xff\xff",
            b"hello",
        ] {
            for id in c.nodes.clone() {
                c.sim
                    .inject(c.clients[0], id, bytes::Bytes::from_static(junk));
            }
        }
        c.write(c.clients[0], 0, put("k", "v"), secs(3))?;
        let garbage: u64 = c.nodes.iter().map(|id| c.up(*id).stats().garbage).sum();
        if garbage - before != 15 || c.leader() != Some(leader) || c.up(leader).term() != term {
            return Err(format!(
                "garbage {}, leader {:?}",
                garbage - before,
                c.leader()
            ));
        }
        Ok(())
    });
}

#[test]
fn operations_are_get_put_cas_delete() {
    // A smoke test of the store semantics through the whole stack.
    let mut c = Cluster::new(Spec::voters(3).clients(1, 1), 1);
    c.stable_leader().unwrap();
    let client = c.clients[0];
    let key = || bytes::Bytes::from_static(b"k");
    let ops = [
        get("k"),
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
        get("k"),
        delete("k"),
        delete("k"),
        get("k"),
    ];
    let n = ops.len();
    for op in ops {
        c.client_mut(client).push(0, op);
    }
    c.sim.with_node(client, |_, _, _| {});
    let deadline = c.sim.now() + secs(5);
    c.run_until(deadline, |c| c.completed_ops() == n).unwrap();
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
            "Read(Some(b\"b\"))",
            "Deleted(true)",
            "Deleted(false)",
            "Read(None)"
        ]
    );
    c.check_linearizable().unwrap();
}

/// A session whose first operation is a read (answered through ReadIndex,
/// so never in the log) writes next: the write must be executed, not
/// refused as `SessionExpired` (the store has never seen the session).
#[test]
fn a_write_after_a_first_read_is_executed() {
    run_seeds(FILE, "a_write_after_a_first_read_is_executed", |seed| {
        let mut c = Cluster::new(Spec::voters(3).clients(1, 1), seed);
        c.stable_leader()?;
        let client = c.clients[0];
        c.write(client, 0, get("k"), secs(2))?;
        c.submit(client, 0, put("k", "v"));
        let deadline = c.sim.now() + secs(3);
        c.run_until(deadline, |c| c.client(client).is_idle())?;
        let last = c.client(client).history().last().cloned().unwrap();
        let expired = c.client(client).stats().expired;
        if last.completed.as_ref().map(|(_, o)| o) != Some(&Outcome::Written) {
            return Err(format!(
                "the put after a first get: {:?} ({expired} answered SessionExpired)",
                last.completed
            ));
        }
        Ok(())
    });
}

#[test]
fn the_checker_judges_deletes() {
    use support::linearizability::{check, Call, HistOp, Ret};
    let b = |s: &str| bytes::Bytes::copy_from_slice(s.as_bytes());
    let op = |client, call, invoked, ret| HistOp {
        client,
        key: b("k"),
        call,
        invoked,
        ret,
    };
    let ok = [
        op(1, Call::Put(b("a")), 0, Some((1, Ret::Written))),
        op(1, Call::Delete, 2, Some((3, Ret::Deleted(true)))),
        op(1, Call::Get, 4, Some((5, Ret::Read(None)))),
        op(1, Call::Delete, 6, Some((7, Ret::Deleted(false)))),
    ];
    assert!(check(&ok).is_ok());
    // A read after a completed delete that still sees the value.
    let stale = [
        op(1, Call::Put(b("a")), 0, Some((1, Ret::Written))),
        op(1, Call::Delete, 2, Some((3, Ret::Deleted(true)))),
        op(2, Call::Get, 4, Some((5, Ret::Read(Some(b("a")))))),
    ];
    assert!(check(&stale).is_err());
    // A delete that claims the key existed when it never did.
    let phantom = [op(1, Call::Delete, 0, Some((1, Ret::Deleted(true))))];
    assert!(check(&phantom).is_err());
    // An indeterminate delete may or may not have run.
    let maybe = [
        op(1, Call::Put(b("a")), 0, Some((1, Ret::Written))),
        op(2, Call::Delete, 2, None),
        op(1, Call::Get, 4, Some((5, Ret::Read(Some(b("a")))))),
        op(1, Call::Get, 6, Some((7, Ret::Read(None)))),
    ];
    assert!(check(&maybe).is_ok());
}

// ------------------------------------------------- negative controls --

/// Negative control: commit counting of prior-term entries (Figure 8).
#[test]
fn negative_control_commit_prior_term_is_caught() {
    let spec = Spec::voters(5).mutation(Some(Mutation::CommitPriorTerm));
    let (seed, why) = first_failure(|seed| figure8(seed, spec.clone(), 64))
        .expect("the battery must catch commit counting of prior-term entries");
    eprintln!("caught at seed {seed}: {why}");
    assert!(
        why.contains("S1") || why.contains("S2") || why.contains("S3"),
        "{why}"
    );
}

/// Negative control: granting votes without the up-to-date-log check.
#[test]
fn negative_control_skip_up_to_date_check_is_caught() {
    let mut spec = Spec::voters(3).mutation(Some(Mutation::SkipUpToDateCheck));
    spec.pre_vote = false;
    let (seed, why) = first_failure(|seed| stale_restart(seed, spec.clone()))
        .expect("the battery must catch votes without the up-to-date check");
    eprintln!("caught at seed {seed}: {why}");
    assert!(
        why.contains("stale") || why.contains("leader completeness"),
        "{why}"
    );
}

/// Negative control: the vote is not persisted.
#[test]
fn negative_control_forget_vote_is_caught() {
    let spec = Spec::voters(3).mutation(Some(Mutation::ForgetVote));
    let (seed, why) = first_failure(|seed| persist_all(seed, spec.clone()))
        .expect("the battery must catch a vote that is not persisted");
    eprintln!("caught at seed {seed}: {why}");
    assert!(why.contains("vote"), "{why}");
}

/// P9, the Multi-Paxos demo on R13's `constrained` topology, for contrast
/// (the same steps on `support/paxos.rs`): the leader dies, the only
/// quorum-connected node Q has a stale log, the others reach only Q. Phase
/// 1 merges the acceptors' accepted values, so the stale Q learns what it
/// lacks and leads: writes commit within 10 ET, where Raft elects nobody
/// (`partial_connectivity_constrained`). After heal, S2-S4 as ever.
#[test]
fn paxos_p9_partial_connectivity_constrained() {
    use support::paxos as px;
    run_seeds(FILE, "paxos_p9_partial_connectivity_constrained", |seed| {
        let mut c = px::Cluster::new(px::Spec::symmetric(5).clients(1, 2), seed);
        let l = c.stable_leader()?;
        let q = c.replicas.iter().copied().find(|n| *n != l).unwrap();
        c.sim.isolate(q);
        let client = c.clients[0];
        for i in 0..3 {
            c.submit(client, 0, put("k", &format!("v{i}")));
            let deadline = c.sim.now() + secs(3);
            c.run_until(deadline, |c| c.completed_ops() > i)?;
        }
        if c.completed_ops() < 3 {
            return Err("the writes before the cut did not complete".into());
        }
        c.crash(l);
        c.sim.heal();
        let spokes: Vec<NodeId> = c.replicas.iter().copied().filter(|n| *n != q).collect();
        for a in &spokes {
            for b in &spokes {
                if a != b {
                    c.sim.block(*a, *b);
                }
            }
        }
        let before = c.completed_ops();
        let et = c.spec.election.1;
        let end = c.sim.now() + et * 10;
        c.client_mut(client).random_workload(5, end);
        c.sim.with_node(client, |_, _, _| {});
        let led = c.run_until(end, |c| {
            c.leader() == Some(q) && c.completed_ops() >= before + 20
        })?;
        if !led {
            return Err(format!(
                "the stale Q {q} did not lead and serve within 10 ET: leader {:?}, {} ops",
                c.leader(),
                c.completed_ops() - before
            ));
        }
        c.restart(l);
        c.check_liveness()?;
        c.check_durability()?;
        c.check_linearizable()
    });
}
