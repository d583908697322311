//! The demo scenario on the simulator (`zpatterns::sim::Sim`): same seed,
//! same run.

use std::time::Duration;

use super::{
    acceptor_ids, client, judge, leader_ids, node_report, replica_config, DemoConfig, DemoReport,
    CLIENT,
};
use zpatterns::det::splitmix64;
use zpatterns::durable::{MemWal, Wal};
use zpatterns::paxos::{KvClient, Replica};
use zpatterns::sim::{LinkProfile, Sim};
use zpatterns::transport::{Either, NodeId, Time};

type Actor = Either<Replica, KvClient>;

/// Runs the scenario on the simulator (LAN-like links, 0.5-2 ms) with
/// `seed`; at most `limit` of virtual time.
pub(crate) fn run_sim(cfg: &DemoConfig, seed: u64, limit: Duration) -> DemoReport {
    let mut sim: Sim<Actor> = Sim::new(seed);
    sim.set_default_link(LinkProfile::default());
    let mut st = seed;
    let replicas: Vec<NodeId> = acceptor_ids(cfg)
        .into_iter()
        .chain(leader_ids(cfg))
        .collect();
    for id in &replicas {
        let rc = replica_config(cfg, *id, splitmix64(&mut st));
        sim.add_node(*id, move |_, disk, now| {
            // The simulated disk is the acceptors' storage here.
            let wal: Box<dyn Wal> = if rc.acceptors().contains(&rc.id()) {
                Box::new(disk)
            } else {
                Box::new(MemWal::new())
            };
            Either::Left(Replica::new(rc.clone(), wal, now).expect("fresh storage"))
        });
    }
    let c = client(cfg, splitmix64(&mut st));
    let mut c = Some(c);
    sim.add_node(CLIENT, move |_, _, _| {
        Either::Right(c.take().expect("the client never restarts"))
    });
    let failed: Vec<NodeId> = acceptor_ids(cfg)
        .into_iter()
        .take(cfg.failed as usize)
        .collect();
    for f in &failed {
        sim.crash(*f);
    }
    let deadline = Time::ZERO + limit;
    let mut killed = None;
    let done = |sim: &Sim<Actor>| {
        sim.node(CLIENT)
            .and_then(|a| a.right())
            .is_none_or(|c| c.is_idle())
    };
    while !done(&sim) && sim.now() < deadline {
        let _ = sim.run_for(Duration::from_millis(10), |_, _| Ok::<_, ()>(()));
        if let (Some(k), None) = (cfg.kill_leader_after, killed) {
            let acked = completed(&sim);
            if acked >= k {
                let leader = replicas.iter().copied().find(|id| {
                    sim.node(*id)
                        .and_then(|a| a.left())
                        .is_some_and(|r| r.is_leader())
                });
                if let Some(l) = leader {
                    sim.crash(l);
                    killed = Some(l);
                }
            }
        }
    }
    // Let the live learners catch up.
    let _ = sim.run_for(Duration::from_secs(1), |_, _| Ok::<_, ()>(()));
    let nodes = replicas
        .iter()
        .map(|id| {
            node_report(
                cfg,
                *id,
                &failed,
                killed,
                sim.node(*id).and_then(|a| a.left()),
            )
        })
        .collect();
    let records = sim
        .node(CLIENT)
        .and_then(|a| a.right())
        .map(|c| c.history().to_vec())
        .unwrap_or_default();
    judge(cfg, nodes, &records, killed)
}

fn completed(sim: &Sim<Actor>) -> usize {
    sim.node(CLIENT)
        .and_then(|a| a.right())
        .map_or(0, |c| c.stats().completed as usize)
}
