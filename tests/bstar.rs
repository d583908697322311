//! Binary Star over loopback: this crate's servers with each other and
//! with libzmq peers that speak the Guide's state messages (a Guide-faithful
//! `bstar` written here on the `zmq` crate), libzmq clients voting, the
//! backup alone, the restart race, and hostile peers.

mod common;
use common::*;

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{
    BinaryStar, BinaryStarConfig, BstarError, BstarState, FatalCause, FsmConfig, Side,
};
use zpatterns::endpoint::EndpointSpec;

const HB: Duration = Duration::from_millis(100);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The four endpoints of a pair on fresh loopback ports.
#[derive(Clone)]
struct Ports {
    p_state: u16,
    b_state: u16,
    p_voter: u16,
    b_voter: u16,
}

impl Ports {
    fn new() -> Self {
        Self {
            p_state: free_port(),
            b_state: free_port(),
            p_voter: free_port(),
            b_voter: free_port(),
        }
    }
    /// (local state, remote state, voter) of one side.
    fn of(&self, side: Side) -> (u16, u16, u16) {
        match side {
            Side::Primary => (self.p_state, self.b_state, self.p_voter),
            Side::Backup => (self.b_state, self.p_state, self.b_voter),
        }
    }
    fn voter(&self, side: Side) -> String {
        format!("tcp://127.0.0.1:{}", self.of(side).2)
    }
}

fn config(side: Side, ports: &Ports) -> BinaryStarConfig {
    let (local, remote, voter) = ports.of(side);
    BinaryStarConfig::new(
        side,
        EndpointSpec::bind(&format!("tcp://127.0.0.1:{local}")).unwrap(),
        EndpointSpec::connect(&format!("tcp://127.0.0.1:{remote}")).unwrap(),
        EndpointSpec::bind(&format!("tcp://127.0.0.1:{voter}")).unwrap(),
    )
    .fsm(FsmConfig::new().heartbeat(HB))
}

async fn start(side: Side, ports: &Ports, token: &CancellationToken) -> BinaryStar {
    BinaryStar::start(config(side, ports), token)
        .await
        .expect("start")
}

/// Serves `server` as the Guide's bstarsrv does (echo), until it stops.
fn echo(
    mut server: BinaryStar,
) -> tokio::task::JoinHandle<Result<zpatterns::bstar::BinaryStarStats, BstarError>> {
    tokio::spawn(async move {
        while let Some(req) = server.recv().await {
            let frames = req.frames().to_vec();
            let _ = req.reply(frames).await;
        }
        server.shutdown().await
    })
}

// ---------------------------------------------------------------------------
// A Guide-faithful Binary Star server on libzmq (bstar.c's s_execute_fsm,
// with its own clock, sockets and poll loop), echoing accepted requests.

struct GuidePeer {
    state: Arc<AtomicU8>,
    fatal: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GuidePeer {
    fn spawn(side: Side, ports: &Ports) -> Self {
        let (local, remote, voter) = ports.of(side);
        let state = Arc::new(AtomicU8::new(match side {
            Side::Primary => 1,
            Side::Backup => 2,
        }));
        let fatal = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, a, st) = (state.clone(), fatal.clone(), accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let ctx = lz_ctx();
            let statepub = ctx.socket(zmq::PUB).unwrap();
            statepub.set_linger(0).unwrap();
            statepub.bind(&format!("tcp://127.0.0.1:{local}")).unwrap();
            let statesub = ctx.socket(zmq::SUB).unwrap();
            statesub.set_linger(0).unwrap();
            statesub.set_subscribe(b"").unwrap();
            statesub
                .connect(&format!("tcp://127.0.0.1:{remote}"))
                .unwrap();
            let frontend = ctx.socket(zmq::ROUTER).unwrap();
            frontend.set_linger(0).unwrap();
            frontend.bind(&format!("tcp://127.0.0.1:{voter}")).unwrap();
            let hb = HB;
            let mut peer_expiry = Instant::now() + 2 * hb; // bstar_start
            let mut send_state_at = Instant::now() + hb;
            // s_execute_fsm: Ok(accept) or Err(()) for the C's -1.
            let fsm = |event: u8, expiry: Instant| -> Result<(), ()> {
                let cur = s.load(Ordering::SeqCst);
                let now = Instant::now();
                match (cur, event) {
                    (1, 2) => s.store(3, Ordering::SeqCst),
                    (1, 3) => s.store(4, Ordering::SeqCst),
                    (1, 5) if now >= expiry => s.store(3, Ordering::SeqCst),
                    (1, 5) => return Err(()),
                    (2, 3) => s.store(4, Ordering::SeqCst),
                    (2, 5) => return Err(()),
                    (3, 3) => return Err(()),
                    (4, 1) | (4, 2) => s.store(3, Ordering::SeqCst),
                    (4, 4) => return Err(()),
                    (4, 5) if now >= expiry => s.store(3, Ordering::SeqCst),
                    (4, 5) => return Err(()),
                    _ => {}
                }
                Ok(())
            };
            while !st.load(Ordering::SeqCst) {
                let left = send_state_at.saturating_duration_since(Instant::now());
                let mut items = [
                    frontend.as_poll_item(zmq::POLLIN),
                    statesub.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, (left.as_millis() as i64).max(1)).unwrap();
                if items[0].is_readable() {
                    let msg = frontend.recv_multipart(0).unwrap();
                    if fsm(5, peer_expiry).is_ok() {
                        a.fetch_add(1, Ordering::SeqCst);
                        frontend.send_multipart(msg, 0).unwrap();
                    }
                }
                if items[1].is_readable() {
                    let msg = statesub.recv_multipart(0).unwrap();
                    let event = std::str::from_utf8(&msg[0])
                        .ok()
                        .and_then(|t| t.parse::<u8>().ok())
                        .unwrap_or(0);
                    peer_expiry = Instant::now() + 2 * hb;
                    if fsm(event, peer_expiry).is_err() {
                        f.store(true, Ordering::SeqCst);
                        break;
                    }
                }
                if Instant::now() >= send_state_at {
                    let cur = s.load(Ordering::SeqCst);
                    statepub.send(cur.to_string().as_bytes(), 0).unwrap();
                    send_state_at = Instant::now() + hb;
                }
            }
        });
        Self {
            state: state.clone(),
            fatal,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn state(&self) -> u8 {
        self.state.load(Ordering::SeqCst)
    }
}

impl Drop for GuidePeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Votes at `endpoint` with libzmq REQ sockets (a new one per try, as the
/// Guide's Lazy Pirate client does) until the echo of `body` comes back.
async fn vote_until_answered(endpoint: &str, body: &str, limit: Duration) {
    within(limit, &format!("a reply from {endpoint}"), async {
        loop {
            let req = Lz::new(zmq::REQ);
            req.connect(endpoint);
            req.send(&[body.as_bytes()]).await;
            if let Some(reply) = req.recv(ms(150)).await {
                assert_eq!(text(&reply), [body]);
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_primary_and_a_guide_backup_settle_then_the_guide_backup_takes_over() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let guide = GuidePeer::spawn(Side::Backup, &ports);
    let ours = start(Side::Primary, &ports, &token).await;
    let mut watch = ours.watch_state();
    within(
        secs(10),
        "our primary active",
        watch.wait_for(|s| *s == BstarState::Active),
    )
    .await
    .unwrap();
    eventually(secs(10), "the Guide's backup passive", || {
        guide.state() == 4
    })
    .await;
    let server = echo(ours);
    // A libzmq REQ client votes at our active and is answered.
    vote_until_answered(&ports.voter(Side::Primary), "1", secs(10)).await;
    // The Guide's backup refuses votes while our primary lives.
    let req = Lz::new(zmq::REQ);
    req.connect(&ports.voter(Side::Backup));
    req.send(&[b"2"]).await;
    assert!(req.recv(ms(300)).await.is_none(), "the passive answered");
    // Kill our active: the Guide's backup takes over on a vote.
    token.cancel();
    let stats = server.await.unwrap().expect("clean stop");
    assert_eq!(stats.state, BstarState::Active);
    assert!(stats.replies_sent >= 1);
    vote_until_answered(&ports.voter(Side::Backup), "3", secs(10)).await;
    assert_eq!(guide.state(), 3);
    assert!(!guide.fatal.load(Ordering::SeqCst));
    assert!(guide.accepted.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_backup_goes_passive_behind_a_guide_primary_and_takes_over_when_it_dies() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let guide = GuidePeer::spawn(Side::Primary, &ports);
    let ours = start(Side::Backup, &ports, &token).await;
    let mut watch = ours.watch_state();
    within(
        secs(10),
        "our backup passive",
        watch.wait_for(|s| *s == BstarState::Passive),
    )
    .await
    .unwrap();
    assert_eq!(guide.state(), 3, "the Guide's primary active");
    let server = echo(ours);
    vote_until_answered(&ports.voter(Side::Primary), "1", secs(10)).await;
    drop(guide);
    // Our backup fails over on the first vote after the peer timeout.
    vote_until_answered(&ports.voter(Side::Backup), "2", secs(10)).await;
    token.cancel();
    let stats = server.await.unwrap().expect("clean stop");
    assert_eq!(stats.state, BstarState::Active);
    assert_eq!(stats.fsm.promotions, 1);
    assert!(stats.fsm.votes_accepted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_alone_refuses_every_vote() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let ours = start(Side::Backup, &ports, &token).await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&ports.voter(Side::Backup));
    // Vote for well over the peer timeout (200 ms): no reply, ever.
    let t0 = Instant::now();
    within(secs(20), "ten votes rejected over 3 peer timeouts", async {
        while ours.stats().fsm.votes_rejected < 10 || t0.elapsed() < 3 * 2 * HB {
            dealer.send(&[b"", b"vote"]).await;
            assert!(
                dealer.recv(ms(50)).await.is_none(),
                "the lone backup answered"
            );
        }
    })
    .await;
    let stats = ours.shutdown().await.expect("clean stop");
    assert_eq!(stats.state, BstarState::Backup);
    assert_eq!(stats.fsm.votes_accepted, 0);
    assert_eq!(stats.replies_sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_started_together_settle_the_same_way_every_time() {
    trace_init();
    for round in 0..3 {
        let ports = Ports::new();
        let token = CancellationToken::new();
        // Alternate which one binds first; start them concurrently.
        let (p, b) = if round % 2 == 0 {
            tokio::join!(
                start(Side::Primary, &ports, &token),
                start(Side::Backup, &ports, &token)
            )
        } else {
            let (b, p) = tokio::join!(
                start(Side::Backup, &ports, &token),
                start(Side::Primary, &ports, &token)
            );
            (p, b)
        };
        let (mut pw, mut bw) = (p.watch_state(), b.watch_state());
        within(
            secs(10),
            "primary active",
            pw.wait_for(|s| *s == BstarState::Active),
        )
        .await
        .unwrap();
        within(
            secs(10),
            "backup passive",
            bw.wait_for(|s| *s == BstarState::Passive),
        )
        .await
        .unwrap();
        let (ps, bs) = (p.shutdown().await.unwrap(), b.shutdown().await.unwrap());
        assert_eq!(
            (ps.state, ps.epoch, ps.fsm.promotions),
            (BstarState::Active, 1, 1),
            "round {round}"
        );
        assert_eq!(
            (bs.state, bs.fsm.promotions),
            (BstarState::Passive, 0),
            "round {round}"
        );
    }
}

/// The Guide's race (zguide #172/#174): the primary dies, the backup takes
/// over, and the primary restarts at once while a stale client keeps
/// voting to it every 5 ms. The restarted primary must go passive, never
/// active, and the backup stays the one active server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_primary_stays_out_of_active_while_a_stale_client_votes_to_it() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let (p, b) = tokio::join!(
        start(Side::Primary, &ports, &token),
        start(Side::Backup, &ports, &token)
    );
    let mut pw = p.watch_state();
    within(
        secs(10),
        "primary active",
        pw.wait_for(|s| *s == BstarState::Active),
    )
    .await
    .unwrap();
    p.shutdown().await.expect("primary stopped");
    let backup = echo(b);
    vote_until_answered(&ports.voter(Side::Backup), "failover", secs(10)).await;
    // The stale client: votes to the primary's voter without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let stale = {
        let stop = stop.clone();
        let endpoint = ports.voter(Side::Primary);
        tokio::spawn(async move {
            let dealer = Lz::new(zmq::DEALER);
            // Reconnect at once when the primary is back, and vote often:
            // the first vote lands well inside the restart window.
            dealer.with(|s| s.set_reconnect_ivl(5).unwrap());
            dealer.connect(&endpoint);
            let mut answered = 0;
            while !stop.load(Ordering::SeqCst) {
                dealer.send(&[b"", b"stale"]).await;
                if dealer.recv(ms(5)).await.is_some() {
                    answered += 1;
                }
            }
            answered
        })
    };
    let restarted = start(Side::Primary, &ports, &token).await;
    let mut rw = restarted.watch_state();
    within(
        secs(10),
        "restarted primary passive",
        rw.wait_for(|s| *s == BstarState::Passive),
    )
    .await
    .unwrap();
    // Keep voting for several more peer timeouts: it stays passive.
    let votes_then = restarted.stats().fsm.votes_rejected;
    eventually(secs(10), "20 more stale votes rejected", || {
        restarted.stats().fsm.votes_rejected >= votes_then + 20
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    assert_eq!(
        stale.await.unwrap(),
        0,
        "the restarted primary answered a stale vote"
    );
    let rs = restarted
        .shutdown()
        .await
        .expect("no fatal error on the primary");
    assert_eq!((rs.state, rs.fsm.promotions), (BstarState::Passive, 0));
    token.cancel();
    let bs = backup.await.unwrap().expect("no fatal error on the backup");
    assert_eq!(bs.state, BstarState::Active);
}

/// Two actives: ours aborts with "dual actives" as soon as they hear each
/// the other active's state, and `shutdown` reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_actives_abort_our_server() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    // Ours goes active alone (nobody at its remote port); then a Guide
    // primary that went active alone too (its SUB listens to nobody)
    // publishes where our state SUB connects.
    let nobody = free_port();
    let ours = start(Side::Primary, &ports, &token).await;
    vote_until_answered_server(&ours, &ports.voter(Side::Primary)).await;
    assert_eq!(ours.state(), BstarState::Active);
    let guide_ports = Ports {
        p_state: ports.b_state, // it publishes where our SUB listens
        b_state: nobody,
        p_voter: free_port(),
        b_voter: free_port(),
    };
    let guide = GuidePeer::spawn(Side::Primary, &guide_ports);
    vote_until_answered(&guide_ports.voter(Side::Primary), "x", secs(10)).await;
    assert_eq!(guide.state(), 3);
    let err = within(secs(10), "our server aborts", async {
        let mut w = ours.watch_state();
        while w.changed().await.is_ok() {}
        ours.shutdown().await
    })
    .await
    .unwrap_err();
    assert!(
        matches!(err, BstarError::Fatal(FatalCause::DualActive)),
        "{err}"
    );
}

/// Votes at our (not yet echoing) server until it is active: the handle's
/// requests are answered inline.
async fn vote_until_answered_server(server: &BinaryStar, endpoint: &str) {
    within(secs(10), "our primary active on a vote", async {
        while server.state() != BstarState::Active {
            let dealer = Lz::new(zmq::DEALER);
            dealer.connect(endpoint);
            dealer.send(&[b"", b"v"]).await;
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await
}

/// Garbage from a libzmq "peer" on the state link and an oversized voter
/// message are counted and dropped; a good libzmq client is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_states_and_oversized_votes_are_counted_and_dropped() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let hostile = Lz::new(zmq::PUB);
    hostile.with(|s| {
        s.bind(&format!("tcp://127.0.0.1:{}", ports.b_state))
            .unwrap()
    });
    let ours = BinaryStar::start(config(Side::Primary, &ports).max_request(1024), &token)
        .await
        .unwrap();
    let garbage: [&[&[u8]]; 6] = [
        &[b"x"],
        &[b""],
        &[b"5"],
        &[b"3", b"3"],
        &[b"\xff\x00"],
        &[&[b'2'; 70_000]],
    ];
    within(secs(10), "garbage counted", async {
        while ours.stats().fsm.bad_state_frames < 30 {
            for g in garbage {
                hostile.send(g).await;
            }
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
    let big = Lz::new(zmq::DEALER);
    big.connect(&ports.voter(Side::Primary));
    big.send_owned(vec![vec![], vec![b'v'; 100_000]]).await;
    eventually(secs(10), "oversized vote counted", || {
        ours.stats().requests_oversized >= 1
    })
    .await;
    assert!(big.recv(ms(100)).await.is_none());
    let server = echo(ours);
    vote_until_answered(&ports.voter(Side::Primary), "good", secs(10)).await;
    token.cancel();
    let stats = server.await.unwrap().unwrap();
    assert_eq!(stats.fsm.peer_states, 0, "garbage is not a peer state");
    assert!(stats.fsm.bad_state_frames >= 30);
    assert_eq!(stats.requests_oversized, 1);
    assert_eq!(stats.state, BstarState::Active);
}

/// The restart race against the Guide's own backup: it took over from our
/// primary, and our primary comes back while a stale libzmq client keeps
/// voting to it. Ours goes passive behind theirs; nobody aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_restarted_primary_goes_passive_behind_the_guides_active_backup() {
    trace_init();
    let ports = Ports::new();
    let token = CancellationToken::new();
    let guide = GuidePeer::spawn(Side::Backup, &ports);
    let ours = start(Side::Primary, &ports, &token).await;
    eventually(secs(10), "settled", || {
        ours.state() == BstarState::Active && guide.state() == 4
    })
    .await;
    ours.shutdown().await.unwrap();
    vote_until_answered(&ports.voter(Side::Backup), "failover", secs(10)).await;
    assert_eq!(guide.state(), 3);
    let stale = Lz::new(zmq::DEALER);
    stale.with(|s| s.set_reconnect_ivl(5).unwrap());
    stale.connect(&ports.voter(Side::Primary));
    let restarted = start(Side::Primary, &ports, &token).await;
    within(secs(10), "restarted primary passive", async {
        while restarted.state() != BstarState::Passive {
            stale.send(&[b"", b"stale"]).await;
            assert!(
                stale.recv(ms(5)).await.is_none(),
                "a stale vote was answered"
            );
        }
    })
    .await;
    let stats = restarted.shutdown().await.expect("no fatal error");
    assert_eq!(stats.fsm.promotions, 0);
    assert_eq!(guide.state(), 3);
    assert!(!guide.fatal.load(Ordering::SeqCst));
}

/// The promotion epoch survives a restart through the epoch file, and a
/// corrupt file is a clear start error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_epoch_file_carries_the_epoch_across_restarts() {
    trace_init();
    let dir = std::env::temp_dir().join(format!("zpatterns-bstar-epoch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("primary.epoch");
    let token = CancellationToken::new();
    for expected in 1..=2u64 {
        let ports = Ports::new();
        let server = BinaryStar::start(config(Side::Primary, &ports).epoch_file(&path), &token)
            .await
            .unwrap();
        vote_until_answered_server(&server, &ports.voter(Side::Primary)).await;
        let stats = server.shutdown().await.unwrap();
        assert_eq!(stats.epoch, expected);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{expected}\n")
        );
    }
    std::fs::write(&path, "not an epoch").unwrap();
    let err = BinaryStar::start(
        config(Side::Primary, &Ports::new()).epoch_file(&path),
        &token,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BstarError::EpochCorrupt { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
