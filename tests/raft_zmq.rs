//! The same Raft node code over real ZeroMQ sockets on loopback: three
//! nodes with fsynced WALs in a temporary directory and a key-value client;
//! the leader is killed (its task and sockets dropped), the others elect a
//! new one and keep serving, then the old leader restarts from its WAL on
//! the same port and catches up; every node ends with the same applied
//! state. And a libzmq peer: a libzmq DEALER speaking the client wire format
//! gets a Reply or a Redirect from a node's ROUTER, and its garbage is
//! counted while the cluster keeps serving. A hostile libzmq DEALER hits
//! the client limits (`max_pending`, `max_message`, `max_sessions`) while a
//! well-behaved client is served.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zpatterns::durable::FileWal;
use zpatterns::paxos::{ClientId, KvClient, KvClientConfig, Msg, Op, OpRecord, Outcome};
use zpatterns::raft::{RaftConfig, RaftNode};
use zpatterns::transport::driver;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{NodeId, Time, Transport};

const IDS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];

type Driven = JoinHandle<(RaftNode, ZmqTransport)>;

/// What a node shows while it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct View {
    leader: bool,
    term: u64,
    applied: u64,
    garbage: u64,
    oversized: u64,
    /// Client requests dropped (`max_pending` full, or a command too large).
    dropped: u64,
    /// The most client requests held at once, over every step so far.
    held_max: usize,
    sessions: usize,
    evicted: u64,
}

struct Node {
    stop: CancellationToken,
    view: watch::Receiver<View>,
    task: Driven,
}

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(ms(20), ms(200))
        .connect_timeout(ms(500))
}

/// A fresh temporary directory for this test's WALs.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("zpatterns-raft-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Three transports on `127.0.0.1:0`, each told the others' endpoints.
async fn transports(shutdown: &CancellationToken) -> (Vec<ZmqTransport>, Vec<(NodeId, String)>) {
    let mut ts = Vec::new();
    for id in IDS {
        ts.push(ZmqTransport::start(zcfg(id), shutdown).await.unwrap());
    }
    let eps: Vec<(NodeId, String)> = ts
        .iter()
        .map(|t| (t.id(), t.endpoint().unwrap().to_owned()))
        .collect();
    for t in &mut ts {
        for (p, ep) in &eps {
            if *p != t.id() {
                t.add_peer(*p, ep).unwrap();
            }
        }
    }
    (ts, eps)
}

/// Binds `bind` again (the old port may linger a moment) and starts the
/// node from its WAL.
async fn restart_node(
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
                Err(_) => tokio::time::sleep(ms(50)).await, // poll until the port is free
            }
        }
    })
    .await;
    for (p, ep) in peers {
        transport.add_peer(*p, ep).unwrap();
    }
    spawn_node(id, transport, dir, shutdown, |c| c)
}

fn spawn_node(
    id: NodeId,
    transport: ZmqTransport,
    dir: &Path,
    shutdown: &CancellationToken,
    tune: fn(RaftConfig) -> RaftConfig,
) -> Node {
    let cfg = tune(
        RaftConfig::new(id, &IDS)
            .heartbeat(ms(20))
            .election_timeout(ms(150), ms(300))
            .seed(fastrand::u64(..)),
    );
    let wal = FileWal::open(dir.join(format!("n{}.wal", id.0))).unwrap();
    let node = RaftNode::new(cfg, Box::new(wal), Time::ZERO).unwrap();
    let stop = shutdown.child_token();
    let (tx, view) = watch::channel(View::default());
    let task = tokio::spawn(driver::run(
        node,
        transport,
        stop.clone(),
        move |r: &RaftNode| {
            tx.send_if_modified(|v| {
                let s = r.stats();
                let new = View {
                    leader: r.is_leader(),
                    term: r.term(),
                    applied: r.applied_index(),
                    garbage: s.garbage,
                    oversized: s.oversized,
                    dropped: s.requests_dropped,
                    held_max: v.held_max.max(r.held_requests()),
                    sessions: r.kv().sessions(),
                    evicted: r.kv().evicted_sessions(),
                };
                std::mem::replace(v, new) != new
            });
        },
    ));
    Node { stop, view, task }
}

/// The index of the node that leads in the highest term (polled: any of
/// them may win).
async fn leader(nodes: &[Node], limit: std::time::Duration) -> usize {
    within(limit, "a leader", async {
        loop {
            let views: Vec<View> = nodes.iter().map(|n| *n.view.borrow()).collect();
            let top = views.iter().map(|v| v.term).max().unwrap_or(0);
            if let Some(i) = views.iter().position(|v| v.leader && v.term == top) {
                return i;
            }
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await
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

/// Stops a node and hands back its state.
async fn stop(n: Node) -> RaftNode {
    n.stop.cancel();
    let (r, t) = within(secs(10), "node stops", n.task).await.unwrap();
    t.shutdown().await.unwrap();
    r
}

#[tokio::test(flavor = "current_thread")]
async fn leader_killed_and_restarted_over_zeromq() {
    trace_init();
    let dir = temp_dir("kill");
    let shutdown = CancellationToken::new();
    let (ts, eps) = transports(&shutdown).await;
    let mut nodes: Vec<Node> = ts
        .into_iter()
        .map(|t| {
            let id = t.id();
            spawn_node(id, t, &dir, &shutdown, |c| c)
        })
        .collect();
    leader(&nodes, secs(10)).await;

    let first = client(1, puts("a", 20), &eps, &shutdown).await;
    assert!(first.iter().all(|r| r.completed.is_some()), "{first:?}");
    let l = leader(&nodes, secs(10)).await;

    // Kill the leader: its driver, sockets and port go away.
    let old = stop(nodes.remove(l)).await;
    let (term, last) = (old.term(), old.last_index());
    drop(old);

    let second = client(2, puts("b", 20), &eps, &shutdown).await;
    assert!(second.iter().all(|r| r.completed.is_some()), "{second:?}");
    let new = leader(&nodes, secs(10)).await;
    assert!(nodes[new].view.borrow().term > term, "a new term began");

    // The old leader restarts from its WAL on the same port and catches up.
    let id = IDS[l];
    let peers: Vec<(NodeId, String)> = eps.iter().filter(|(p, _)| *p != id).cloned().collect();
    nodes.push(restart_node(id, &eps[l].1, &peers, &dir, &shutdown).await);
    let target = nodes.iter().map(|n| n.view.borrow().applied).max().unwrap();
    for n in &mut nodes {
        let mut rx = n.view.clone();
        within(secs(20), "catch up", rx.wait_for(|v| v.applied >= target))
            .await
            .unwrap();
    }
    // The cluster keeps serving with all three.
    let third = client(3, puts("c", 5), &eps, &shutdown).await;
    assert!(third.iter().all(|r| r.completed.is_some()), "{third:?}");
    let target = nodes.iter().map(|n| n.view.borrow().applied).max().unwrap();
    for n in &mut nodes {
        let mut rx = n.view.clone();
        within(secs(20), "catch up", rx.wait_for(|v| v.applied >= target))
            .await
            .unwrap();
    }

    let mut states = Vec::new();
    for n in nodes {
        let r = stop(n).await;
        if r.id() == id {
            assert!(r.term() >= term, "the term survived the restart");
            assert!(r.last_index() >= last, "the log survived the restart");
        }
        let keys: Vec<Option<Bytes>> = ["a0", "a1", "a2", "b0", "b1", "b2", "c0", "c1", "c2"]
            .iter()
            .map(|k| r.kv().get(k.as_bytes()).cloned())
            .collect();
        for rec in first.iter().chain(&second).chain(&third) {
            assert!(
                r.kv().last_seq(rec.client) >= Some(rec.seq),
                "{rec:?} not applied at {}",
                r.id()
            );
        }
        states.push((r.applied_index(), r.kv().digest(), keys));
    }
    assert!(
        states.windows(2).all(|w| w[0] == w[1]),
        "every node ends with the same applied state: {states:?}"
    );
    assert_eq!(
        states[0].2[2],
        Some(Bytes::from_static(b"a-17")),
        "the last write of a2 before the kill"
    );
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a client request from a libzmq DEALER and waits for the answer
/// to it (other frames, e.g. late answers, are skipped).
async fn ask(dealer: &Lz, client: ClientId, seq: u64, op: Op) -> Msg {
    let request = Msg::Request { client, seq, op };
    dealer.send_owned(vec![request.encode().to_vec()]).await;
    within(secs(10), "an answer at libzmq", async {
        loop {
            let Some(m) = dealer.recv(secs(5)).await else {
                panic!("no answer to {client:?} #{seq}");
            };
            assert_eq!(m.len(), 1, "one payload frame");
            match Msg::decode(Bytes::from(m[0].clone())) {
                Ok(msg @ (Msg::Reply { seq: s, .. } | Msg::Redirect { seq: s, .. }))
                    if s == seq =>
                {
                    return msg;
                }
                _ => continue,
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_client_and_garbage_at_a_raft_node() {
    trace_init();
    let dir = temp_dir("libzmq");
    let shutdown = CancellationToken::new();
    let (ts, eps) = transports(&shutdown).await;
    let nodes: Vec<Node> = ts
        .into_iter()
        .map(|t| {
            let id = t.id();
            spawn_node(id, t, &dir, &shutdown, |c| c)
        })
        .collect();
    let l = leader(&nodes, secs(10)).await;
    let f = (l + 1) % 3;

    // A follower redirects a libzmq client to the leader.
    let at_follower = Lz::new(zmq::DEALER);
    at_follower.with(|s| s.set_identity(b"n200").unwrap());
    at_follower.connect(&eps[f].1);
    let put = |v: &'static str| Op::Put {
        key: Bytes::from_static(b"lz"),
        value: Bytes::from_static(v.as_bytes()),
    };
    match ask(&at_follower, ClientId(777), 1, put("1")).await {
        Msg::Redirect { leader, .. } => {
            assert!(leader.is_none_or(|x| x == IDS[l]), "hint {leader:?}")
        }
        Msg::Reply { .. } => panic!("a follower answered a write"),
        other => panic!("unexpected {other:?}"),
    }

    // The leader applies it and replies.
    let at_leader = Lz::new(zmq::DEALER);
    at_leader.with(|s| s.set_identity(b"n201").unwrap());
    at_leader.connect(&eps[l].1);
    let got = ask(&at_leader, ClientId(777), 1, put("1")).await;
    assert!(
        matches!(
            got,
            Msg::Reply {
                outcome: Outcome::Written,
                ..
            }
        ),
        "{got:?}"
    );

    // Garbage is counted, not fatal.
    let before = nodes[l].view.borrow().garbage;
    for junk in [&b"garbage"[..], b"\x01\x21\xff\xff", b"\x07"] {
        at_leader.send(&[junk]).await;
    }
    let mut rx = nodes[l].view.clone();
    within(
        secs(10),
        "garbage counted",
        rx.wait_for(|v| v.garbage >= before + 3),
    )
    .await
    .unwrap();
    let got = ask(
        &at_leader,
        ClientId(777),
        2,
        Op::Get {
            key: Bytes::from_static(b"lz"),
        },
    )
    .await;
    assert!(
        matches!(&got, Msg::Reply { outcome: Outcome::Read(Some(v)), .. } if v.as_ref() == b"1"),
        "{got:?}"
    );
    let history = client(9, puts("z", 3), &eps, &shutdown).await;
    assert!(history.iter().all(|r| r.completed.is_some()), "{history:?}");

    for n in nodes {
        stop(n).await;
    }
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}

const MAX_PENDING: usize = 100;
const MAX_SESSIONS: usize = 64;
const MAX_MESSAGE: usize = 64 * 1024;

fn limited(c: RaftConfig) -> RaftConfig {
    c.max_pending(MAX_PENDING)
        .max_sessions(MAX_SESSIONS)
        .max_message(MAX_MESSAGE)
}

/// One encoded client request.
fn request(client: u64, seq: u64, key: String, value: Vec<u8>) -> Vec<u8> {
    Msg::Request {
        client: ClientId(client),
        seq,
        op: Op::Put {
            key: key.into(),
            value: value.into(),
        },
    }
    .encode()
    .to_vec()
}

/// Sends every frame from a libzmq socket in one blocking task: a flood
/// as fast as libzmq queues it.
async fn blast(lz: &Lz, frames: Vec<Vec<u8>>) {
    let lz = lz.clone();
    tokio::task::spawn_blocking(move || {
        lz.with(|s| {
            for f in frames {
                s.send(f, 0).expect("libzmq send");
            }
        })
    })
    .await
    .unwrap();
}

/// Counts the Replies a libzmq DEALER receives until it has `n`.
async fn replies(lz: &Lz, n: usize) {
    let mut got = 0;
    while got < n {
        let Some(m) = lz.recv(secs(10)).await else {
            panic!("{got} of {n} replies");
        };
        if let Ok(Msg::Reply { .. }) = Msg::decode(Bytes::from(m[0].clone())) {
            got += 1;
        }
    }
}

/// A hostile libzmq DEALER hits every limit a client can reach at a Raft
/// leader over ZeroMQ: a request flood over `max_pending` while a KvClient
/// writes, a frame over `max_message`, a command over a quarter of it,
/// and hundreds of sessions over `max_sessions`. The leader holds at most
/// the bounds, counts the drops, and keeps serving the KvClient (and the
/// hostile peer's own valid requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_libzmq_client_is_held_to_the_limits_while_a_kv_client_is_served() {
    trace_init();
    let dir = temp_dir("hostile");
    let shutdown = CancellationToken::new();
    let (ts, eps) = transports(&shutdown).await;
    let nodes: Vec<Node> = ts
        .into_iter()
        .map(|t| {
            let id = t.id();
            spawn_node(id, t, &dir, &shutdown, limited)
        })
        .collect();
    let l = leader(&nodes, secs(10)).await;
    let hostile = Lz::new(zmq::DEALER);
    hostile.with(|s| s.set_identity(b"n666").unwrap());
    hostile.connect(&eps[l].1);

    // 1. A flood over max_pending, in rounds of 1,000 requests (16 client
    //    ids, so the sessions stay under their bound here), for as long as
    //    a well-behaved client is writing. Its unread replies stay far
    //    below what the sockets buffer.
    let writing = CancellationToken::new();
    let flood = {
        let hostile = hostile.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            let mut sent = 0u64;
            while !writing.is_cancelled() && sent < 300_000 {
                let frames = (sent..sent + 1000)
                    .map(|n| {
                        request(
                            1_000_000 + n % 16,
                            n / 16 + 1,
                            format!("h{}", n % 16),
                            vec![b'x'],
                        )
                    })
                    .collect();
                blast(&hostile, frames).await;
                sent += 1000;
                // Pacing between rounds, so the flood lasts as long as the
                // good client's writes.
                tokio::time::sleep(ms(20)).await;
            }
            sent
        })
    };
    let history = client(9, puts("g", 30), &eps, &shutdown).await;
    writing.cancel();
    let sent = flood.await.unwrap();
    assert!(
        history
            .iter()
            .all(|r| matches!(r.completed, Some((_, Outcome::Written)))),
        "the well-behaved client was not served during the flood: {history:?}"
    );
    let v = *nodes[l].view.borrow();
    eprintln!("flood: {sent} requests sent; leader {v:?}");
    assert!(v.dropped > 0, "the flood never reached max_pending: {v:?}");
    for n in &nodes {
        let held = n.view.borrow().held_max;
        assert!(held <= MAX_PENDING, "held {held} requests");
    }
    hostile.drain(ms(300)).await;

    // 2. A frame over max_message and a command over a quarter of it are
    //    dropped and counted; the peer's next valid request is answered
    //    (the answer also shows that both were handled before it).
    let barrier = |seq: u64| Op::Put {
        key: Bytes::from_static(b"barrier"),
        value: Bytes::from(seq.to_string()),
    };
    assert!(matches!(
        ask(&hostile, ClientId(2_000_000), 1, barrier(1)).await,
        Msg::Reply { .. }
    ));
    let before = *nodes[l].view.borrow();
    blast(
        &hostile,
        vec![
            vec![1u8; MAX_MESSAGE + 1],
            request(2_000_000, 2, "big".into(), vec![7u8; MAX_MESSAGE / 4 + 1]),
        ],
    )
    .await;
    let got = ask(&hostile, ClientId(2_000_000), 3, barrier(3)).await;
    assert!(
        matches!(
            got,
            Msg::Reply {
                outcome: Outcome::Written,
                ..
            }
        ),
        "{got:?}"
    );
    let after = *nodes[l].view.borrow();
    assert_eq!(after.oversized, before.oversized + 1, "{after:?}");
    assert_eq!(after.dropped, before.dropped + 1, "{after:?}");

    // 3. Hundreds of sessions over max_sessions, in rounds the leader can
    //    hold: every node keeps at most the bound and evicts alike.
    const OPENED: u64 = 500;
    for round in 0..OPENED / 50 {
        let frames = (0..50)
            .map(|i| request(3_000_000 + round * 50 + i, 1, format!("s{i}"), vec![b's']))
            .collect();
        blast(&hostile, frames).await;
        replies(&hostile, 50).await;
    }
    let target = nodes[l].view.borrow().applied;
    let mut seen = Vec::new();
    for n in &nodes {
        let mut rx = n.view.clone();
        let v = *within(
            secs(20),
            "node caught up",
            rx.wait_for(|v| v.applied >= target),
        )
        .await
        .unwrap();
        assert!(v.sessions <= MAX_SESSIONS, "{v:?}");
        assert!(v.evicted >= OPENED - MAX_SESSIONS as u64, "{v:?}");
        seen.push((v.sessions, v.evicted));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");

    // A new well-behaved session is served after it all.
    let history = client(10, puts("after", 3), &eps, &shutdown).await;
    assert!(
        history
            .iter()
            .all(|r| matches!(r.completed, Some((_, Outcome::Written)))),
        "{history:?}"
    );
    for n in nodes {
        stop(n).await;
    }
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
