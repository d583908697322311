//! The demo scenario over `ZmqTransport` on loopback: one tokio task per
//! node, every node with its own ROUTER on an ephemeral port (a restarted
//! node binds the same port again and replays its WAL).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zpatterns::durable::{FileWal, MemWal, Wal};
use zpatterns::paxos::KvClient;
use zpatterns::raft::RaftNode;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{driver, NodeId, Time};

use super::{
    client, judge, node_report, pick_follower, raft_config, DemoConfig, DemoReport, Fate, HeldBack,
    Storage, CLIENT,
};

/// What a node's driver publishes after every batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NodeState {
    leader: bool,
    commit: u64,
    applied: u64,
    last: u64,
    snapshot: u64,
}

impl NodeState {
    fn of(r: &RaftNode) -> Self {
        NodeState {
            leader: r.is_leader(),
            commit: r.commit_index(),
            applied: r.applied_index(),
            last: r.last_index(),
            snapshot: r.snapshot_index(),
        }
    }
}

struct Running {
    stop: CancellationToken,
    state: watch::Receiver<NodeState>,
    task: JoinHandle<(RaftNode, ZmqTransport)>,
}

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
}

/// The cluster: endpoints, storage, seeds and the running nodes.
struct Cluster<'a> {
    cfg: &'a DemoConfig,
    endpoints: BTreeMap<NodeId, String>,
    seed: u64,
    starts: u64,
    running: BTreeMap<NodeId, Running>,
    stop_all: CancellationToken,
}

impl Cluster<'_> {
    fn wal(&self, id: NodeId) -> anyhow::Result<Box<dyn Wal>> {
        Ok(match &self.cfg.storage {
            Storage::Files(dir) => {
                let path = dir.join(format!("raft-n{}.wal", id.0));
                Box::new(FileWal::open(&path).with_context(|| format!("{}", path.display()))?)
            }
            _ => Box::new(MemWal::new()),
        })
    }

    /// Starts node `id` on `t` (bound, without peers yet).
    fn spawn(&mut self, id: NodeId, mut t: ZmqTransport) -> anyhow::Result<()> {
        for (p, ep) in &self.endpoints {
            if *p != id {
                t.add_peer(*p, ep)?;
            }
        }
        // Election timings must differ between nodes, runs and restarts.
        self.starts += 1;
        let seed = self
            .seed
            .wrapping_add(u64::from(id.0) << 32 | self.starts)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let node = RaftNode::new(raft_config(self.cfg, id, seed), self.wal(id)?, Time::ZERO)?;
        let stop = self.stop_all.child_token();
        let (tx, state) = watch::channel(NodeState::of(&node));
        let task = tokio::spawn(driver::run(node, t, stop.clone(), move |r: &RaftNode| {
            tx.send_if_modified(|s| std::mem::replace(s, NodeState::of(r)) != *s);
        }));
        self.running.insert(id, Running { stop, state, task });
        Ok(())
    }

    /// Stops node `id` (its task and sockets; its WAL file is closed) and
    /// returns its last state.
    async fn stop(&mut self, id: NodeId) -> anyhow::Result<NodeState> {
        let r = self
            .running
            .remove(&id)
            .context("the node is not running")?;
        r.stop.cancel();
        let (node, t) = r.task.await.context("a node task failed")?;
        t.shutdown().await?;
        Ok(NodeState::of(&node))
    }

    /// Restarts node `id` on its old port from its WAL.
    async fn restart(&mut self, id: NodeId) -> anyhow::Result<()> {
        let ep = self.endpoints[&id].clone();
        let t = ZmqTransport::start(zcfg(id).bind(Some(&ep))?, &self.stop_all).await?;
        self.spawn(id, t)
    }

    fn leader(&self) -> Option<NodeId> {
        self.running
            .iter()
            .find(|(_, r)| r.state.borrow().leader)
            .map(|(id, _)| *id)
    }

    fn states(&self) -> Vec<(NodeId, NodeState)> {
        self.running
            .iter()
            .map(|(id, r)| (*id, *r.state.borrow()))
            .collect()
    }

    /// Every node is running and has applied everything the most advanced
    /// one knows to be committed.
    fn caught_up(&self) -> bool {
        let s = self.states();
        let commit = s.iter().map(|(_, s)| s.commit).max().unwrap_or(0);
        s.len() == self.cfg.nodes as usize && s.iter().all(|(_, s)| s.applied == commit)
    }
}

/// Runs the scenario over ZeroMQ on `127.0.0.1`. Stops early if
/// `shutdown` is cancelled.
pub(crate) async fn run_zmq(
    cfg: &DemoConfig,
    shutdown: &CancellationToken,
) -> anyhow::Result<DemoReport> {
    let stop_all = shutdown.child_token();
    let ids = cfg.ids();
    let mut transports = Vec::new();
    for id in &ids {
        transports.push(ZmqTransport::start(zcfg(*id), &stop_all).await?);
    }
    let endpoints: BTreeMap<NodeId, String> = ids
        .iter()
        .zip(&transports)
        .map(|(id, t)| (*id, t.endpoint().unwrap_or_default().to_owned()))
        .collect();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut cluster = Cluster {
        cfg,
        endpoints,
        seed,
        starts: 0,
        running: BTreeMap::new(),
        stop_all: stop_all.clone(),
    };
    for (id, t) in ids.iter().copied().zip(transports) {
        cluster.spawn(id, t)?;
    }

    // The client talks to every node and finds the leader itself.
    let mut ccfg = zcfg(CLIENT).bind(None)?;
    for (p, ep) in &cluster.endpoints {
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

    let mut killed: Option<(NodeId, bool)> = None;
    let mut held: Option<(HeldBack, bool)> = None;
    loop {
        let (done, idle) = *progress.borrow_and_update();
        if idle || shutdown.is_cancelled() {
            break;
        }
        if cfg.hold_back && held.is_none() && done >= cfg.hold_at() && cluster.leader().is_some() {
            let candidates: Vec<(NodeId, bool)> = cluster
                .states()
                .iter()
                .map(|(id, s)| (*id, s.leader))
                .collect();
            if let Some(f) = pick_follower(&candidates) {
                let stopped_at = cluster.stop(f).await?.last;
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
        if cfg.kill_leader && killed.is_none() && done >= cfg.kill_at() {
            if let Some(l) = cluster.leader() {
                cluster.stop(l).await?;
                killed = Some((l, false));
            }
        }
        if let Some((l, restarted @ false)) = &mut killed {
            if done >= cfg.restart_at() {
                cluster.restart(*l).await?;
                *restarted = true;
            }
        }
        if let Some((h, released @ false)) = &mut held {
            let snap = cluster
                .leader()
                .map_or(0, |l| cluster.running[&l].state.borrow().snapshot);
            if done >= cfg.release_at() && snap > h.stopped_at {
                h.leader_snapshot = snap;
                cluster.restart(h.id).await?;
                *released = true;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = progress.changed() => if r.is_err() { break },
        }
    }
    let (c, ct) = client_task.await.context("the client task failed")?;
    ct.shutdown().await?;

    // Bring back whoever is still down, then let every node catch up.
    if let Some((l, false)) = killed {
        cluster.restart(l).await?;
    }
    if let Some((h, released @ false)) = &mut held {
        h.leader_snapshot = cluster
            .leader()
            .map_or(0, |l| cluster.running[&l].state.borrow().snapshot);
        cluster.restart(h.id).await?;
        *released = true;
    }
    let settle = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cluster.caught_up() && tokio::time::Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Stop every node at once (no election can start in between).
    for r in cluster.running.values() {
        r.stop.cancel();
    }
    let mut finished = BTreeMap::new();
    for (id, r) in std::mem::take(&mut cluster.running) {
        let (node, t) = r.task.await.context("a node task failed")?;
        t.shutdown().await?;
        finished.insert(id, node);
    }
    stop_all.cancel();
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
        .map(|id| node_report(cfg, *id, fate(*id), finished.get(id)))
        .collect();
    let nodes: Vec<&RaftNode> = finished.values().collect();
    Ok(judge(
        cfg,
        reports,
        &nodes,
        c.history(),
        killed.map(|(k, _)| k),
        held.map(|(h, _)| h),
    ))
}
