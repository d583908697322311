//! The same Multi-Paxos node code over real ZeroMQ sockets on loopback:
//! three replicas with fsynced WALs and a client; the leader is killed
//! (its tasks and sockets dropped), the cluster elects another and keeps
//! serving, then the old leader restarts from its WAL on the same port and
//! catches up; every replica ends with the same log.

mod common;
use common::*;

use std::path::Path;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zpatterns::durable::FileWal;
use zpatterns::paxos::{ClientId, KvClient, KvClientConfig, Op, OpRecord, Replica, ReplicaConfig};
use zpatterns::transport::driver;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{NodeId, Time, Transport};

const IDS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];

type Driven = JoinHandle<(Replica, ZmqTransport)>;

struct Node {
    stop: CancellationToken,
    state: watch::Receiver<(bool, u64)>,
    task: Driven,
}

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(ms(20), ms(200))
        .connect_timeout(ms(500))
}

async fn start_node(
    id: NodeId,
    bind: &str,
    peers: &[(NodeId, String)],
    dir: &Path,
    shutdown: &CancellationToken,
) -> Node {
    let mut transport = within(secs(10), "bind", async {
        loop {
            match ZmqTransport::start(zcfg(id).bind(Some(bind)).unwrap(), shutdown).await {
                Ok(t) => return t,
                Err(_) => tokio::time::sleep(ms(50)).await, // the old port may linger
            }
        }
    })
    .await;
    for (p, ep) in peers {
        transport.add_peer(*p, ep).unwrap();
    }
    spawn_replica(id, transport, dir, shutdown)
}

fn spawn_replica(
    id: NodeId,
    transport: ZmqTransport,
    dir: &Path,
    shutdown: &CancellationToken,
) -> Node {
    let cfg = ReplicaConfig::symmetric(id, &IDS)
        .heartbeat(ms(20))
        .election_timeout(ms(150), ms(300))
        .retransmit(ms(50))
        .seed(fastrand::u64(..));
    let wal = FileWal::open(dir.join(format!("n{}.wal", id.0))).unwrap();
    let replica = Replica::new(cfg, Box::new(wal), Time::ZERO).unwrap();
    let stop = shutdown.child_token();
    let (tx, state) = watch::channel((false, 0));
    let task = tokio::spawn(driver::run(
        replica,
        transport,
        stop.clone(),
        move |r: &Replica| {
            tx.send_if_modified(|s| {
                let new = (r.is_leader(), r.learner().next_apply());
                std::mem::replace(s, new) != new
            });
        },
    ));
    Node { stop, state, task }
}

/// Runs a client with one session until its ops complete.
async fn client(
    session: u64,
    ops: Vec<Op>,
    eps: &[(NodeId, String)],
    shutdown: &CancellationToken,
) -> Vec<OpRecord> {
    let mut cfg = zcfg(NodeId(100)).bind(None).unwrap();
    for (id, ep) in eps {
        cfg = cfg.peer(*id, ep).unwrap();
    }
    let transport = ZmqTransport::start(cfg, shutdown).await.unwrap();
    let mut c = KvClient::new(
        NodeId(100),
        KvClientConfig::new(&IDS).request_timeout(ms(300)),
        &[ClientId(session)],
    );
    for op in ops {
        c.push(0, op);
    }
    let stop = shutdown.child_token();
    let done = stop.clone();
    let (c, t) = within(
        secs(40),
        "client operations",
        driver::run(c, transport, stop, move |c: &KvClient| {
            if c.is_idle() {
                done.cancel();
            }
        }),
    )
    .await;
    t.shutdown().await.unwrap();
    c.history().to_vec()
}

fn puts(prefix: &str, n: usize) -> Vec<Op> {
    (0..n)
        .map(|i| Op::Put {
            key: format!("{prefix}{}", i % 3).into(),
            value: format!("{prefix}-{i}").into(),
        })
        .collect()
}

#[tokio::test(flavor = "current_thread")]
async fn leader_killed_and_restarted_over_zeromq() {
    trace_init();
    let dir = std::env::temp_dir().join(format!("zpatterns-paxos-zmq-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let shutdown = CancellationToken::new();
    let mut transports = Vec::new();
    for id in IDS {
        transports.push(ZmqTransport::start(zcfg(id), &shutdown).await.unwrap());
    }
    let eps: Vec<(NodeId, String)> = transports
        .iter()
        .map(|t| (t.id(), t.endpoint().unwrap().to_owned()))
        .collect();
    let mut nodes = Vec::new();
    for mut t in transports {
        for (p, ep) in &eps {
            if *p != t.id() {
                t.add_peer(*p, ep).unwrap();
            }
        }
        let id = t.id();
        nodes.push(spawn_replica(id, t, &dir, &shutdown));
    }

    let first = client(1, puts("a", 20), &eps, &shutdown).await;
    assert!(first.iter().all(|r| r.completed.is_some()));
    let leader = nodes
        .iter()
        .position(|n| n.state.borrow().0)
        .expect("a leader after 20 commits");

    // Kill the leader: its driver, sockets and port go away.
    let old = nodes.remove(leader);
    old.stop.cancel();
    let (replica, transport) = within(secs(10), "leader stops", old.task).await.unwrap();
    let promised = replica.acceptor().unwrap().promised();
    drop(replica);
    transport.shutdown().await.unwrap();

    let second = client(2, puts("b", 20), &eps, &shutdown).await;
    assert!(second.iter().all(|r| r.completed.is_some()));
    let new_leader = nodes.iter().position(|n| n.state.borrow().0);
    assert!(new_leader.is_some(), "the survivors elected a leader");

    // The old leader restarts from its WAL on the same port and catches up.
    let id = IDS[leader];
    let peers: Vec<(NodeId, String)> = eps.iter().filter(|(p, _)| *p != id).cloned().collect();
    let back = start_node(id, &eps[leader].1, &peers, &dir, &shutdown).await;
    nodes.push(back);
    let target = nodes[0].state.borrow().1;
    for n in &mut nodes {
        let mut rx = n.state.clone();
        within(secs(20), "catch up", rx.wait_for(|s| s.1 >= target))
            .await
            .unwrap();
    }

    let mut logs = Vec::new();
    for n in nodes {
        n.stop.cancel();
        let (r, t) = within(secs(10), "stop", n.task).await.unwrap();
        if r.id() == id {
            assert!(
                r.acceptor().unwrap().promised() >= promised,
                "the promise survived the restart"
            );
        }
        let log: Vec<(ClientId, u64)> = r.learner().commands().map(|c| (c.client, c.seq)).collect();
        logs.push(log);
        t.shutdown().await.unwrap();
    }
    assert_eq!(logs[0], logs[1]);
    assert_eq!(logs[1], logs[2]);
    let applied: std::collections::BTreeSet<_> = logs[0].iter().copied().collect();
    for r in first.iter().chain(&second) {
        assert!(applied.contains(&(r.client, r.seq)), "{r:?} missing");
    }
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
