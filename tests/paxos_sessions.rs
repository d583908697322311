//! The Paxos session table against a hostile libzmq peer: a libzmq DEALER
//! that speaks the Paxos wire format opens thousands of client sessions
//! (client ids it chooses) on a three-replica cluster over ZeroMQ. Every
//! replica keeps at most `max_sessions` (least recently used evicted, as
//! part of applying the log, so alike everywhere), and a well-behaved
//! client is still served.

mod common;
use common::*;

use bytes::Bytes;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use zpatterns::durable::MemWal;
use zpatterns::paxos::{
    ClientId, KvClient, KvClientConfig, Msg, Op, OpRecord, Outcome, Replica, ReplicaConfig,
};
use zpatterns::transport::driver;
use zpatterns::transport::zmq::{ZmqConfig, ZmqTransport};
use zpatterns::transport::{NodeId, Time};

const IDS: [NodeId; 3] = [NodeId(0), NodeId(1), NodeId(2)];
const MAX_SESSIONS: usize = 64;
const HOSTILE_SESSIONS: u64 = 2_000;

/// What a replica shows while it runs: (leader, next slot to apply,
/// sessions held, sessions evicted).
type View = (bool, u64, usize, u64);

fn zcfg(id: NodeId) -> ZmqConfig {
    ZmqConfig::new(id)
        .backoff(ms(20), ms(200))
        .connect_timeout(ms(500))
}

async fn start_cluster(shutdown: &CancellationToken) -> (Vec<String>, Vec<watch::Receiver<View>>) {
    let mut transports = Vec::new();
    for id in IDS {
        let cfg = zcfg(id).bind(Some("tcp://127.0.0.1:0")).unwrap();
        transports.push(ZmqTransport::start(cfg, shutdown).await.unwrap());
    }
    let eps: Vec<String> = transports
        .iter()
        .map(|t| t.endpoint().unwrap().to_owned())
        .collect();
    let mut views = Vec::new();
    for (i, mut transport) in transports.into_iter().enumerate() {
        for (j, ep) in eps.iter().enumerate() {
            if i != j {
                transport.add_peer(IDS[j], ep).unwrap();
            }
        }
        let cfg = ReplicaConfig::symmetric(IDS[i], &IDS)
            .heartbeat(ms(20))
            .election_timeout(ms(150), ms(300))
            .retransmit(ms(50))
            .max_sessions(MAX_SESSIONS)
            .seed(fastrand::u64(..));
        let replica = Replica::new(cfg, Box::new(MemWal::new()), Time::ZERO).unwrap();
        let (tx, view) = watch::channel((false, 0, 0, 0));
        tokio::spawn(driver::run(
            replica,
            transport,
            shutdown.child_token(),
            move |r: &Replica| {
                let new = (
                    r.is_leader(),
                    r.learner().next_apply(),
                    r.learner().kv().sessions(),
                    r.stats().sessions_evicted,
                );
                tx.send_if_modified(|v| std::mem::replace(v, new) != new);
            },
        ));
        views.push(view);
    }
    (eps, views)
}

/// A well-behaved client session running `ops` to completion.
async fn good_client(eps: &[String], ops: Vec<Op>, shutdown: &CancellationToken) -> Vec<OpRecord> {
    let mut cfg = zcfg(NodeId(100)).bind(None).unwrap();
    for (id, ep) in IDS.iter().zip(eps) {
        cfg = cfg.peer(*id, ep).unwrap();
    }
    let transport = ZmqTransport::start(cfg, shutdown).await.unwrap();
    let mut c = KvClient::new(
        NodeId(100),
        KvClientConfig::new(&IDS).request_timeout(ms(300)),
        &[ClientId(1)],
    );
    for op in ops {
        c.push(0, op);
    }
    let stop = shutdown.child_token();
    let done = stop.clone();
    let (c, t) = within(
        secs(40),
        "good client operations",
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_peer_opening_thousands_of_sessions_is_held_to_the_bound() {
    trace_init();
    let shutdown = CancellationToken::new();
    let (eps, mut views) = start_cluster(&shutdown).await;
    let leader = within(secs(20), "a leader", async {
        loop {
            if let Some(i) = views.iter().position(|v| v.borrow().0) {
                return i;
            }
            tokio::time::sleep(ms(10)).await; // poll: any of the three may win
        }
    })
    .await;

    // The hostile peer: a libzmq DEALER with a node identity of its own,
    // one put per client id it makes up, all sent to the leader.
    let hostile = Lz::new(zmq::DEALER);
    hostile.with(|s| s.set_identity(b"n200").unwrap());
    hostile.connect(&eps[leader]);
    for client in 0..HOSTILE_SESSIONS {
        let request = Msg::Request {
            client: ClientId(1_000_000 + client),
            seq: 1,
            op: Op::Put {
                key: Bytes::from(format!("h{}", client % 16)),
                value: Bytes::from_static(b"x"),
            },
        };
        hostile.send_owned(vec![request.encode().to_vec()]).await;
    }
    // Every request is answered (a libzmq DEALER does not drop on its
    // side at this volume), so all of them went through the log.
    let mut written = 0;
    while written < HOSTILE_SESSIONS {
        let Some(m) = hostile.recv(secs(20)).await else {
            panic!("the hostile peer got {written} of {HOSTILE_SESSIONS} replies");
        };
        if let Ok(Msg::Reply { outcome, .. }) = Msg::decode(Bytes::from(m[0].clone())) {
            assert_eq!(outcome, Outcome::Written);
            written += 1;
        }
    }

    // A well-behaved client is served after the flood.
    let ops = vec![
        Op::Put {
            key: Bytes::from_static(b"good"),
            value: Bytes::from_static(b"1"),
        },
        Op::Get {
            key: Bytes::from_static(b"good"),
        },
    ];
    let history = good_client(&eps, ops, &shutdown).await;
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(
        history.iter().all(|r| r.completed.is_some()),
        "the good client's operations completed: {history:?}"
    );

    // Every replica applied the same log and holds at most the bound.
    let target = views[leader].borrow().1;
    let mut seen = Vec::new();
    for (i, view) in views.iter_mut().enumerate() {
        within(secs(20), "replica caught up", async {
            while view.borrow().1 < target {
                view.changed().await.unwrap();
            }
        })
        .await;
        let (_, _, sessions, evicted) = *view.borrow();
        eprintln!("replica {i}: {sessions} sessions held, {evicted} evicted");
        assert!(sessions <= MAX_SESSIONS, "replica {i} holds {sessions}");
        assert!(
            evicted >= HOSTILE_SESSIONS - MAX_SESSIONS as u64,
            "replica {i} evicted only {evicted}"
        );
        seen.push((sessions, evicted));
    }
    assert!(
        seen.windows(2).all(|w| w[0] == w[1]),
        "the replicas evicted alike: {seen:?}"
    );
    shutdown.cancel();
}
