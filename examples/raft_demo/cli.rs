//! The `raft` example's cluster subcommands: `serve` runs one node of a
//! cluster described by a JSON file (see `cluster.rs`); `put`, `get`,
//! `delete` and `status` talk to that cluster over ZeroMQ and find the
//! leader themselves (example-private code, not library API).

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::info;
use zpatterns::durable::FileWal;
use zpatterns::paxos::{ClientId, KvClient, KvClientConfig, Op, Outcome};
use zpatterns::raft::msg::Msg as RaftMsg;
use zpatterns::raft::{RaftConfig, RaftNode, RaftStatus, Role};
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{driver, NodeId, Outbox, Process, Time};

use crate::cluster::Cluster;

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(Duration::from_millis(20), Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
}

fn random_seed() -> u64 {
    fastrand::u64(..)
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
}

/// Runs `fut` on a current-thread runtime with Ctrl-C cancelling `stop`.
pub(crate) fn block_on<F: Future>(stop: &CancellationToken, fut: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(rt.block_on(async {
        let on_ctrl_c = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.cancel();
            }
        });
        fut.await
    }))
}

/// `raft serve`: runs node `node` until `stop` (Ctrl-C).
pub(crate) async fn serve(
    cluster: &Cluster,
    node: u64,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let (id, port) = cluster.node(node)?;
    let path = cluster.wal_path(id);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let wal =
        FileWal::open(&path).with_context(|| format!("opening the WAL {}", path.display()))?;
    let rc = RaftConfig::new(id, &cluster.ids())
        .heartbeat(cluster.heartbeat)
        .election_timeout(cluster.election.0, cluster.election.1)
        .snapshot_every(cluster.snapshot_every)
        .seed(random_seed());
    let raft = RaftNode::new(rc, Box::new(wal), Time::ZERO)
        .with_context(|| format!("replaying the WAL {}", path.display()))?;
    let endpoint = cluster.endpoint(port);
    let mut zc = zcfg(id).bind(Some(&endpoint))?;
    for (peer, p) in &cluster.nodes {
        if *peer != id {
            zc = zc.peer(*peer, &cluster.endpoint(*p))?;
        }
    }
    let t = ZmqTransport::start(zc, stop)
        .await
        .with_context(|| format!("node {}: binding {endpoint}", id.0))?;
    println!(
        "node {} listening on {endpoint}, WAL {} (term {}, log up to {})",
        id.0,
        path.display(),
        raft.term(),
        raft.last_index()
    );
    let _ = std::io::stdout().flush();
    let mut seen = (Role::Follower, 0, None);
    let (raft, t) = driver::run(raft, t, stop.child_token(), move |r: &RaftNode| {
        let now = (r.role(), r.term(), r.leader());
        if now != seen {
            info!(node = id.0, role = ?now.0, term = now.1, leader = ?now.2.map(|l| l.0), commit = r.commit_index(), "role");
            seen = now;
        }
    })
    .await;
    t.shutdown().await?;
    println!(
        "node {} stopped: term {}, applied {}",
        id.0,
        raft.term(),
        raft.applied_index()
    );
    Ok(())
}

/// A client node id above every replica's, picked at random so concurrent
/// command-line clients do not collide.
fn client_node(cluster: &Cluster) -> NodeId {
    let max = cluster.ids().iter().map(|n| n.0).max().unwrap_or(0);
    NodeId(fastrand::u32(max + 1..u32::MAX))
}

/// A transport that binds nothing and connects to every node.
async fn client_transport(
    cluster: &Cluster,
    me: NodeId,
    stop: &CancellationToken,
) -> anyhow::Result<ZmqTransport> {
    let mut zc = zcfg(me).bind(None)?;
    for (id, port) in &cluster.nodes {
        zc = zc.peer(*id, &cluster.endpoint(*port))?;
    }
    Ok(ZmqTransport::start(zc, stop).await?)
}

/// Drives `p` over `t` until `done(p)`, `limit` or `stop`; returns `p`.
async fn drive<P: Process>(
    p: P,
    t: ZmqTransport,
    limit: Duration,
    stop: &CancellationToken,
    done: impl Fn(&P) -> bool,
) -> anyhow::Result<P> {
    let finish = stop.child_token();
    let on_done = finish.clone();
    let run = driver::run(p, t, finish.clone(), move |p: &P| {
        if done(p) {
            on_done.cancel();
        }
    });
    tokio::pin!(run);
    let (p, t) = tokio::select! {
        r = &mut run => r,
        () = tokio::time::sleep(limit) => {
            finish.cancel();
            run.await
        }
    };
    t.shutdown().await?;
    Ok(p)
}

fn nodes_list(cluster: &Cluster) -> String {
    cluster
        .nodes
        .iter()
        .map(|(id, p)| format!("{} at {}", id.0, cluster.endpoint(*p)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `raft put|get|delete`: runs one operation through the leader.
pub(crate) async fn request(
    cluster: &Cluster,
    op: Op,
    limit: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<Outcome> {
    let me = client_node(cluster);
    let session = ClientId(fastrand::u64(1..u64::MAX));
    let ccfg = KvClientConfig::new(&cluster.ids())
        .request_timeout(Duration::from_millis(400))
        .seed(random_seed());
    let mut client = KvClient::new(me, ccfg, &[session]);
    client.push(0, op);
    let t = client_transport(cluster, me, stop).await?;
    let client = drive(client, t, limit, stop, KvClient::is_idle).await?;
    let stats = client.stats();
    match client.history().first().and_then(|r| r.completed.clone()) {
        Some((_, outcome)) => Ok(outcome),
        None => bail!(
            "no leader answered within {:.1} s ({} requests sent, {} redirects; nodes {}): is a majority of the cluster running?",
            limit.as_secs_f64(),
            stats.sent,
            stats.redirects,
            nodes_list(cluster)
        ),
    }
}

/// Prints an outcome as the command line shows it.
pub(crate) fn show(outcome: &Outcome) -> String {
    let text = |b: &Bytes| String::from_utf8_lossy(b).into_owned();
    match outcome {
        Outcome::Written => "OK".into(),
        Outcome::Read(Some(v)) => text(v),
        Outcome::Read(None) => "(not found)".into(),
        Outcome::Deleted(true) => "deleted".into(),
        Outcome::Deleted(false) => "(not found)".into(),
        Outcome::Swapped => "swapped".into(),
        Outcome::Mismatch(v) => format!("mismatch: {:?}", v.as_ref().map(text)),
        other => format!("{other:?}"),
    }
}

/// Asks every node for its status (`raft::Msg::Status`), resending to the
/// silent ones every 250 ms.
#[derive(Debug)]
struct StatusPoll {
    nodes: Vec<NodeId>,
    nonce: u64,
    replies: BTreeMap<NodeId, RaftStatus>,
    next: Time,
}

impl StatusPoll {
    fn done(&self) -> bool {
        self.replies.len() == self.nodes.len()
    }
}

impl Process for StatusPoll {
    fn handle_message(&mut self, _now: Time, from: NodeId, msg: Bytes, _out: &mut Outbox) {
        if let Ok(RaftMsg::StatusReply { nonce, status }) = RaftMsg::decode(msg) {
            if nonce == self.nonce && self.nodes.contains(&from) {
                self.replies.insert(from, status);
            }
        }
    }

    fn handle_timeout(&mut self, now: Time, out: &mut Outbox) {
        if now < self.next {
            return;
        }
        for id in &self.nodes {
            if !self.replies.contains_key(id) {
                out.send(*id, RaftMsg::Status { nonce: self.nonce }.encode());
            }
        }
        self.next = now + Duration::from_millis(250);
    }

    fn poll_timeout(&self) -> Option<Time> {
        (!self.done()).then_some(self.next)
    }
}

fn role(r: Role) -> &'static str {
    match r {
        Role::Leader => "leader",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "precandidate",
        Role::Learner => "learner",
        _ => "other",
    }
}

/// `raft status`: every node's status, or "unreachable".
pub(crate) async fn status(
    cluster: &Cluster,
    limit: Duration,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let me = client_node(cluster);
    let poll = StatusPoll {
        nodes: cluster.ids(),
        nonce: fastrand::u64(..),
        replies: BTreeMap::new(),
        next: Time::ZERO,
    };
    let t = client_transport(cluster, me, stop).await?;
    let poll = drive(poll, t, limit, stop, StatusPoll::done).await?;
    println!(
        "{:>6} {:12} {:>6} {:>8} {:>8} {:>7} {:>8} {:>9} {:>10}",
        "node", "role", "term", "commit", "applied", "leader", "log", "snapshot", "snap_bytes"
    );
    for (id, port) in &cluster.nodes {
        match poll.replies.get(id) {
            Some(s) => println!(
                "{:>6} {:12} {:>6} {:>8} {:>8} {:>7} {:>8} {:>9} {:>10}",
                id.0,
                role(s.role),
                s.term,
                s.commit,
                s.applied,
                s.leader.map_or("-".to_owned(), |l| l.0.to_string()),
                s.log_entries,
                s.snapshot_index,
                s.snapshot_bytes
            ),
            None => println!(
                "{:>6} unreachable (no answer from {} within {:.1} s)",
                id.0,
                cluster.endpoint(*port),
                limit.as_secs_f64()
            ),
        }
    }
    if poll.replies.is_empty() {
        bail!(
            "no node answered within {:.1} s (nodes {}): is the cluster running?",
            limit.as_secs_f64(),
            nodes_list(cluster)
        );
    }
    Ok(())
}
