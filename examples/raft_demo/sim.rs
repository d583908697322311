//! The demo scenario on the simulator (`zpatterns::sim::Sim`): every node
//! on a crashable simulated disk; same seed, same run.

use std::time::Duration;

use super::{
    client, judge, node_report, pick_follower, raft_config, DemoConfig, DemoReport, Fate, HeldBack,
    CLIENT,
};
use zpatterns::det::splitmix64;
use zpatterns::paxos::KvClient;
use zpatterns::raft::RaftNode;
use zpatterns::sim::{LinkProfile, Sim};
use zpatterns::transport::{Either, NodeId, Time};

type Actor = Either<RaftNode, KvClient>;

fn raft(sim: &Sim<Actor>, id: NodeId) -> Option<&RaftNode> {
    sim.node(id).and_then(|a| a.left())
}

fn leader(sim: &Sim<Actor>, ids: &[NodeId]) -> Option<NodeId> {
    ids.iter()
        .copied()
        .find(|id| raft(sim, *id).is_some_and(|r| r.is_leader()))
}

/// Runs the scenario on the simulator (LAN-like links, 0.5-2 ms) with
/// `seed`; at most `limit` of virtual time.
pub(crate) fn run_sim(cfg: &DemoConfig, seed: u64, limit: Duration) -> DemoReport {
    let mut sim: Sim<Actor> = Sim::new(seed);
    sim.set_default_link(LinkProfile::default());
    let mut st = seed;
    let ids = cfg.ids();
    for id in &ids {
        let rc = raft_config(cfg, *id, splitmix64(&mut st));
        sim.add_node(*id, move |_, disk, now| {
            Either::Left(RaftNode::new(rc.clone(), Box::new(disk), now).expect("the WAL replays"))
        });
    }
    let mut c = Some(client(cfg, splitmix64(&mut st)));
    sim.add_node(CLIENT, move |_, _, _| {
        Either::Right(c.take().expect("the client never restarts"))
    });
    let deadline = Time::ZERO + limit;
    let mut killed: Option<(NodeId, bool)> = None; // (id, restarted)
    let mut held: Option<(HeldBack, bool)> = None; // (record, released)
    let idle = |sim: &Sim<Actor>| {
        sim.node(CLIENT)
            .and_then(|a| a.right())
            .is_none_or(|c| c.is_idle())
    };
    let step = Duration::from_millis(10);
    while !idle(&sim) && sim.now() < deadline {
        let _ = sim.run_for(step, |_, _| Ok::<_, ()>(()));
        let done = completed(&sim);
        if cfg.hold_back && held.is_none() && done >= cfg.hold_at() {
            let candidates: Vec<(NodeId, bool)> = ids
                .iter()
                .filter_map(|id| raft(&sim, *id).map(|r| (*id, r.is_leader())))
                .collect();
            if leader(&sim, &ids).is_some() {
                if let Some(f) = pick_follower(&candidates) {
                    let stopped_at = raft(&sim, f).map_or(0, |r| r.last_index());
                    sim.crash(f);
                    held = Some((
                        HeldBack {
                            id: f,
                            stopped_at,
                            leader_snapshot: 0,
                        },
                        false,
                    ));
                }
            }
        }
        if cfg.kill_leader && killed.is_none() && done >= cfg.kill_at() {
            if let Some(l) = leader(&sim, &ids) {
                sim.crash(l);
                killed = Some((l, false));
            }
        }
        if let Some((l, restarted @ false)) = &mut killed {
            if done >= cfg.restart_at() {
                sim.restart(*l);
                *restarted = true;
            }
        }
        if let Some((h, released @ false)) = &mut held {
            let snap = leader(&sim, &ids)
                .and_then(|l| raft(&sim, l))
                .map_or(0, |r| r.snapshot_index());
            if done >= cfg.release_at() && snap > h.stopped_at {
                h.leader_snapshot = snap;
                sim.restart(h.id);
                *released = true;
            }
        }
    }
    // Bring back whoever is still down, then let every node catch up.
    if let Some((l, false)) = killed {
        sim.restart(l);
    }
    if let Some((h, released @ false)) = &mut held {
        h.leader_snapshot = leader(&sim, &ids)
            .and_then(|l| raft(&sim, l))
            .map_or(0, |r| r.snapshot_index());
        sim.restart(h.id);
        *released = true;
    }
    let settle = sim.now() + Duration::from_secs(10);
    while sim.now() < settle && !caught_up(&sim, &ids) {
        let _ = sim.run_for(step, |_, _| Ok::<_, ()>(()));
    }
    let fate = |id: NodeId| {
        if killed.is_some_and(|(k, _)| k == id) {
            Fate::Restarted
        } else if held.is_some_and(|(h, _)| h.id == id) {
            Fate::HeldBack
        } else {
            Fate::Ran
        }
    };
    let reports = ids
        .iter()
        .map(|id| node_report(cfg, *id, fate(*id), raft(&sim, *id)))
        .collect();
    let nodes: Vec<&RaftNode> = ids.iter().filter_map(|id| raft(&sim, *id)).collect();
    let records = sim
        .node(CLIENT)
        .and_then(|a| a.right())
        .map(|c| c.history().to_vec())
        .unwrap_or_default();
    judge(
        cfg,
        reports,
        &nodes,
        &records,
        killed.map(|(k, _)| k),
        held.map(|(h, _)| h),
    )
}

/// Every node is running and has applied everything the most advanced
/// one knows to be committed.
fn caught_up(sim: &Sim<Actor>, ids: &[NodeId]) -> bool {
    let nodes: Vec<&RaftNode> = ids.iter().filter_map(|id| raft(sim, *id)).collect();
    let commit = nodes.iter().map(|n| n.commit_index()).max().unwrap_or(0);
    nodes.len() == ids.len() && nodes.iter().all(|n| n.applied_index() == commit)
}

fn completed(sim: &Sim<Actor>) -> usize {
    sim.node(CLIENT)
        .and_then(|a| a.right())
        .map_or(0, |c| c.stats().completed as usize)
}
