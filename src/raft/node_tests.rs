//! Unit tests of the Raft core on the simulator: election, replication
//! under loss, crash and restart from the WAL, snapshot catch-up,
//! membership changes and leadership transfer. (The seeded battery with
//! per-step invariants and linearizability is `tests/raft_battery.rs`.)

use std::time::Duration;

use super::*;
use crate::paxos::{ClientId, KvClient, KvClientConfig};
use crate::sim::{LinkProfile, Sim};
use crate::transport::{Either, NodeId, Outbox};

type Actor = Either<RaftNode, KvClient>;

const CLIENT: NodeId = NodeId(100);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cluster(
    seed: u64,
    n: u32,
    tune: impl Fn(RaftConfig) -> RaftConfig + Clone + 'static,
) -> Sim<Actor> {
    let ids: Vec<NodeId> = (1..=n).map(NodeId).collect();
    let mut sim = Sim::new(seed);
    sim.set_default_link(LinkProfile::uniform(ms(1), ms(5)));
    for id in &ids {
        let voters = ids.clone();
        let tune = tune.clone();
        sim.add_node(*id, move |id, disk, now| {
            let cfg = tune(RaftConfig::new(id, &voters).seed(seed * 31 + u64::from(id.0)));
            Either::Left(RaftNode::new(cfg, Box::new(disk), now).expect("wal"))
        });
    }
    let sessions: Vec<ClientId> = (1..=4).map(ClientId).collect();
    sim.add_node(CLIENT, move |id, _, _| {
        Either::Right(KvClient::new(
            id,
            KvClientConfig::new(&ids).seed(seed),
            &sessions,
        ))
    });
    sim
}

fn run(sim: &mut Sim<Actor>, d: Duration) {
    sim.run_for(d, |_, _| Ok::<_, ()>(())).unwrap();
}

fn leaders(sim: &Sim<Actor>) -> Vec<NodeId> {
    sim.nodes()
        .filter_map(|(id, a)| a.left().filter(|n| n.is_leader()).map(|_| id))
        .collect()
}

fn node(sim: &Sim<Actor>, id: NodeId) -> &RaftNode {
    sim.node(id).and_then(Either::left).expect("a raft node")
}

fn client(sim: &mut Sim<Actor>) -> &mut KvClient {
    sim.node_mut(CLIENT)
        .and_then(Either::right_mut)
        .expect("the client")
}

fn wait_leader(sim: &mut Sim<Actor>) -> NodeId {
    for _ in 0..200 {
        run(sim, ms(50));
        let l = leaders(sim);
        if l.len() == 1 {
            return l[0];
        }
    }
    panic!("no single leader: {:?}", leaders(sim));
}

/// Runs until every live node applied the same log and the client is idle.
fn settle(sim: &mut Sim<Actor>) {
    for _ in 0..400 {
        run(sim, ms(50));
        let live: Vec<&RaftNode> = sim
            .nodes()
            .filter(|(id, _)| sim.is_up(*id))
            .filter_map(|(_, a)| a.left())
            .collect();
        let top = live.iter().map(|n| n.commit_index()).max().unwrap_or(0);
        let agree = live
            .iter()
            .all(|n| n.applied_index() == top && n.kv().digest() == live[0].kv().digest());
        if agree && client(sim).is_idle() {
            return;
        }
    }
    let state: Vec<_> = sim
        .nodes()
        .filter_map(|(_, a)| a.left())
        .map(RaftNode::status)
        .collect();
    panic!("did not settle: {state:#?}");
}

fn workload(sim: &mut Sim<Actor>, d: Duration) {
    let until = sim.now() + d;
    client(sim).random_workload(5, until);
    sim.with_node(CLIENT, |_, _, _| {});
}

fn completed(sim: &mut Sim<Actor>) -> usize {
    client(sim)
        .history()
        .iter()
        .filter(|r| r.completed.is_some())
        .count()
}

#[test]
fn elects_one_leader_and_replicates_under_loss_with_snapshots() {
    for seed in 1..=4 {
        let mut sim = cluster(seed, 3, |c| c.snapshot_every(40).snapshot_chunk(256));
        sim.set_default_link(LinkProfile::uniform(ms(1), ms(8)).lossy(0.05, 0.05));
        let l = wait_leader(&mut sim);
        workload(&mut sim, Duration::from_secs(3));
        run(&mut sim, Duration::from_secs(3));
        client(&mut sim).stop();
        settle(&mut sim);
        assert!(
            completed(&mut sim) > 100,
            "seed {seed}: {}",
            completed(&mut sim)
        );
        let n = node(&sim, l);
        assert!(
            n.stats().snapshots_taken > 0,
            "seed {seed}: {:?}",
            n.stats()
        );
        assert!(n.stats().reads > 0);
    }
}

#[test]
fn a_crashed_follower_catches_up_by_snapshot_and_a_restarted_leader_keeps_its_log() {
    let mut sim = cluster(7, 3, |c| c.snapshot_every(30).snapshot_chunk(128));
    let l = wait_leader(&mut sim);
    let f = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|n| *n != l)
        .unwrap();
    sim.crash(f);
    workload(&mut sim, Duration::from_secs(2));
    run(&mut sim, Duration::from_secs(2));
    client(&mut sim).stop();
    settle(&mut sim);
    let before = node(&sim, l).commit_index();
    assert!(before > node(&sim, l).snapshot_index() && node(&sim, l).snapshot_index() > 0);
    sim.restart(f);
    settle(&mut sim);
    assert!(
        node(&sim, f).stats().snapshots_installed > 0,
        "{:?}",
        node(&sim, f).stats()
    );
    assert_eq!(node(&sim, f).kv().digest(), node(&sim, l).kv().digest());
    // The leader crashes and restarts from its WAL: term and log survive.
    let term = node(&sim, l).term();
    let last = node(&sim, l).last_index();
    sim.crash(l);
    sim.restart(l);
    assert_eq!(node(&sim, l).term(), term);
    assert_eq!(node(&sim, l).last_index(), last);
    let l2 = wait_leader(&mut sim);
    workload(&mut sim, Duration::from_millis(500));
    run(&mut sim, Duration::from_millis(500));
    client(&mut sim).stop();
    settle(&mut sim);
    assert!(node(&sim, l2).commit_index() > before);
}

#[test]
fn a_five_node_cluster_shrinks_to_three_and_grows_back() {
    let mut sim = cluster(3, 5, |c| c);
    let l = wait_leader(&mut sim);
    workload(&mut sim, Duration::from_secs(6));
    run(&mut sim, ms(300));
    let mut removed = Vec::new();
    for id in (1..=5).map(NodeId).filter(|n| *n != l).take(2) {
        let mut index = 0;
        for _ in 0..100 {
            let mut r = None;
            sim.with_node(l, |a, now, out| {
                r = Some(
                    a.left_mut()
                        .unwrap()
                        .propose_change(now, ConfChange::Remove(id), out),
                );
            });
            match r.unwrap() {
                Ok(i) => {
                    index = i;
                    break;
                }
                Err(RaftError::ChangeInProgress | RaftError::LeaderNotReady) => {
                    run(&mut sim, ms(20))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(index > 0);
        removed.push(id);
    }
    run(&mut sim, ms(300));
    assert_eq!(node(&sim, l).membership().voters.len(), 3);
    for id in removed {
        for change in [ConfChange::AddLearner(id), ConfChange::Promote(id)] {
            let mut done = false;
            for _ in 0..200 {
                let mut r = None;
                sim.with_node(l, |a, now, out| {
                    r = Some(a.left_mut().unwrap().propose_change(now, change, out));
                });
                match r.unwrap() {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(
                        RaftError::ChangeInProgress
                        | RaftError::LeaderNotReady
                        | RaftError::NotCaughtUp(_),
                    ) => run(&mut sim, ms(20)),
                    Err(e) => panic!("{change:?}: {e}"),
                }
            }
            assert!(done, "{change:?}");
        }
    }
    run(&mut sim, ms(500));
    assert_eq!(node(&sim, l).membership().voters.len(), 5);
    run(&mut sim, Duration::from_secs(5));
    client(&mut sim).stop();
    settle(&mut sim);
    assert!(completed(&mut sim) > 50);
}

#[test]
fn leadership_moves_to_the_chosen_voter() {
    let mut sim = cluster(5, 3, |c| c);
    let l = wait_leader(&mut sim);
    let to = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|n| *n != l)
        .unwrap();
    let mut r = None;
    sim.with_node(l, |a, now, out: &mut Outbox| {
        r = Some(a.left_mut().unwrap().transfer_leadership(now, to, out));
    });
    r.unwrap().unwrap();
    run(&mut sim, ms(200));
    assert_eq!(leaders(&sim), vec![to]);
    assert!(node(&sim, to).term() > 1);
}

#[test]
fn an_isolated_leader_steps_down_within_the_election_timeout() {
    let mut sim = cluster(9, 3, |c| c);
    let l = wait_leader(&mut sim);
    sim.isolate(l);
    let t0 = sim.now();
    while node(&sim, l).is_leader() {
        run(&mut sim, ms(10));
    }
    let took = sim.now().saturating_since(t0);
    assert!(took <= ms(600), "{took:?}");
    assert_eq!(node(&sim, l).stats().step_downs, 1);
}

#[test]
fn a_client_flood_is_bounded_by_max_pending_while_another_client_is_served() {
    use crate::paxos::Msg as ClientMsg;
    let mut sim = cluster(11, 3, |c| c.max_pending(100));
    let l = wait_leader(&mut sim);
    let hostile = NodeId(666);
    workload(&mut sim, Duration::from_secs(2));
    let mut held_max = 0;
    for round in 0..40u64 {
        for i in 0..500u64 {
            let req = ClientMsg::Request {
                client: ClientId(1_000_000 + round * 500 + i),
                seq: 1,
                op: crate::paxos::Op::Put {
                    key: bytes::Bytes::from(format!("flood{i}")),
                    value: bytes::Bytes::from_static(b"x"),
                },
            };
            sim.inject(hostile, l, req.encode());
        }
        run(&mut sim, ms(50));
        let n = node(&sim, l);
        held_max = held_max.max(n.waiting.len() + n.reads.len());
    }
    client(&mut sim).stop();
    settle(&mut sim);
    let n = node(&sim, l);
    assert!(held_max <= 100, "held {held_max}");
    assert!(n.stats().requests_dropped > 0, "{:?}", n.stats());
    assert!(completed(&mut sim) > 20, "the good client starved");
    // Garbage and oversized frames are counted, never panicked on.
    sim.inject(hostile, l, bytes::Bytes::from_static(&[1, 36, 0xff]));
    sim.inject(hostile, l, bytes::Bytes::from(vec![1u8; 17 << 20]));
    run(&mut sim, ms(50));
    let s = node(&sim, l).stats();
    assert_eq!((s.garbage, s.oversized), (1, 1));
    assert!(node(&sim, l).is_leader());
}

#[test]
fn a_follower_a_little_behind_at_compaction_gets_entries_not_the_snapshot() {
    let mut sim = cluster(13, 3, |c| c.snapshot_every(20));
    let l = wait_leader(&mut sim);
    let f = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|n| *n != l)
        .unwrap();
    workload(&mut sim, Duration::from_secs(2));
    // Cut the follower off for a moment, several times, while the leader
    // compacts every 20 entries.
    for _ in 0..6 {
        run(&mut sim, ms(200));
        sim.block(l, f);
        let from = node(&sim, l).commit_index();
        while node(&sim, l).commit_index() < from + 4 {
            run(&mut sim, ms(2));
        }
        sim.heal();
    }
    client(&mut sim).stop();
    settle(&mut sim);
    assert!(
        node(&sim, l).stats().snapshots_taken >= 3,
        "{:?}",
        node(&sim, l).stats()
    );
    assert!(
        node(&sim, l).stats().rejects > 0,
        "the follower never lagged"
    );
    assert_eq!(node(&sim, f).stats().snapshots_installed, 0);
    assert_eq!(node(&sim, f).kv().digest(), node(&sim, l).kv().digest());
}

#[test]
fn a_follower_caught_up_over_a_slow_link_installs_one_snapshot_while_writes_go_on() {
    let mut sim = cluster(17, 3, |c| c.snapshot_every(30));
    let l = wait_leader(&mut sim);
    let f = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|n| *n != l)
        .unwrap();
    sim.crash(f);
    workload(&mut sim, Duration::from_secs(4));
    run(&mut sim, Duration::from_secs(1));
    assert!(node(&sim, l).snapshot_index() > 60);
    // Round trips to the follower take ~100 ms: longer than the leader
    // needs to fill the log tail with new entries.
    let slow = LinkProfile::uniform(ms(45), ms(55));
    sim.set_link(l, f, slow);
    sim.set_link(f, l, slow);
    sim.restart(f);
    run(&mut sim, Duration::from_secs(3));
    client(&mut sim).stop();
    settle(&mut sim);
    let installed = node(&sim, f).stats().snapshots_installed;
    assert_eq!(installed, 1, "{:?}", node(&sim, f).stats());
    assert_eq!(node(&sim, f).kv().digest(), node(&sim, l).kv().digest());
}
