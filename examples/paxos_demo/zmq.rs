//! The demo scenario over `ZmqTransport` on loopback: one tokio task per
//! node, every node with its own ROUTER on an ephemeral port.

use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use anyhow::Context;
use zpatterns::durable::{FileWal, MemWal, Wal};
use zpatterns::paxos::{KvClient, Replica};
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{driver, NodeId, Time};

use super::{
    acceptor_ids, client, judge, leader_ids, node_report, replica_config, DemoConfig, DemoReport,
    Storage, CLIENT,
};

struct Running {
    id: NodeId,
    stop: CancellationToken,
    state: watch::Receiver<(bool, u64)>,
    task: JoinHandle<(Replica, ZmqTransport)>,
}

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
}

/// Runs the scenario over ZeroMQ on `127.0.0.1`. Stops early if
/// `shutdown` is cancelled.
pub(crate) async fn run_zmq(
    cfg: &DemoConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<DemoReport> {
    let stop_all = shutdown.child_token();
    let acceptors = acceptor_ids(cfg);
    let replicas: Vec<NodeId> = acceptors.iter().copied().chain(leader_ids(cfg)).collect();
    let failed: Vec<NodeId> = acceptors
        .iter()
        .copied()
        .take(cfg.failed as usize)
        .collect();
    let mut transports = Vec::new();
    for id in &replicas {
        transports.push(ZmqTransport::start(zcfg(*id), &stop_all).await?);
    }
    let endpoints: Vec<(NodeId, String)> = replicas
        .iter()
        .zip(&transports)
        .map(|(id, t)| (*id, t.endpoint().unwrap_or_default().to_owned()))
        .collect();
    // Real runs: election timings must differ between runs and restarts.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut running = Vec::new();
    for (id, mut t) in replicas.iter().copied().zip(transports) {
        if failed.contains(&id) {
            // Failed from the start: its port is closed; peers keep trying.
            t.shutdown().await?;
            continue;
        }
        for (p, ep) in &endpoints {
            if *p != id {
                t.add_peer(*p, ep)?;
            }
        }
        let wal: Box<dyn Wal> = match &cfg.storage {
            Storage::Files(dir) if acceptors.contains(&id) => {
                Box::new(FileWal::open(dir.join(format!("n{}.wal", id.0)))?)
            }
            _ => Box::new(MemWal::new()),
        };
        let rc = replica_config(
            cfg,
            id,
            seed.wrapping_add(u64::from(id.0))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15),
        );
        let replica = Replica::new(rc, wal, Time::ZERO)?;
        let stop = stop_all.child_token();
        let (tx, state) = watch::channel((false, 0));
        let task = tokio::spawn(driver::run(replica, t, stop.clone(), move |r: &Replica| {
            tx.send_if_modified(|s| {
                let new = (r.is_leader(), r.learner().next_apply());
                std::mem::replace(s, new) != new
            });
        }));
        running.push(Running {
            id,
            stop,
            state,
            task,
        });
    }

    // The client talks to the leaders.
    let mut ccfg = zcfg(CLIENT).bind(None)?;
    for (p, ep) in endpoints.iter().filter(|(p, _)| !acceptors.contains(p)) {
        ccfg = ccfg.peer(*p, ep)?;
    }
    let ct = ZmqTransport::start(ccfg, &stop_all).await?;
    let (ctx, mut progress) = watch::channel((0usize, false));
    let cstop = stop_all.child_token();
    let cdone = cstop.clone();
    let client_task = tokio::spawn(driver::run(
        client(cfg, seed),
        ct,
        cstop,
        move |c: &KvClient| {
            let idle = c.is_idle();
            ctx.send_if_modified(|s| {
                let new = (c.stats().completed as usize, idle);
                std::mem::replace(s, new) != new
            });
            if idle {
                cdone.cancel();
            }
        },
    ));

    let mut killed = None;
    let mut finished = Vec::new();
    loop {
        let (done, idle) = *progress.borrow_and_update();
        if idle || shutdown.is_cancelled() {
            break;
        }
        if let (Some(k), None) = (cfg.kill_leader_after, killed) {
            if done >= k {
                if let Some(i) = running.iter().position(|r| r.state.borrow().0) {
                    let victim = running.remove(i);
                    victim.stop.cancel();
                    if let Ok((replica, t)) = victim.task.await {
                        t.shutdown().await?;
                        finished.push(replica);
                    }
                    killed = Some(victim.id);
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = progress.changed() => if r.is_err() { break },
        }
    }
    let (c, ct) = client_task.await.context("the client task failed")?;
    ct.shutdown().await?;

    // Let the live learners catch up (a few heartbeats), then stop.
    let target = running
        .iter()
        .map(|r| r.state.borrow().1)
        .max()
        .unwrap_or(0);
    for r in &mut running {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), r.state.wait_for(|s| s.1 >= target)).await;
    }
    let mut nodes = Vec::new();
    for r in running {
        r.stop.cancel();
        let (replica, t) = r.task.await.context("a node task failed")?;
        t.shutdown().await?;
        finished.push(replica);
    }
    for id in &replicas {
        let r = finished.iter().find(|r| r.id() == *id);
        nodes.push(node_report(cfg, *id, &failed, killed, r));
    }
    stop_all.cancel();
    Ok(judge(cfg, nodes, c.history(), killed))
}
