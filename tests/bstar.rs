//! Binary Star over loopback: this crate's servers with each other and
//! with libzmq peers that speak the Guide's state messages (a Guide-faithful
//! `bstar` written here on the `zmq` crate), libzmq clients voting, the
//! backup alone, the restart race, and hostile peers.

mod common;
use common::*;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::relay::Relay;
use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{
    BinaryStar, BinaryStarConfig, BstarError, BstarState, FatalCause, FsmConfig, Side,
};
use zpatterns::endpoint::EndpointSpec;

const HB: Duration = Duration::from_millis(100);

/// One of this crate's servers: state PUB and voter on ephemeral loopback
/// ports, its state SUB connecting to `remote` (the peer's state PUB, or a
/// relay in front of it).
fn config(side: Side, remote: &str) -> BinaryStarConfig {
    BinaryStarConfig::new(
        side,
        EndpointSpec::loopback(),
        EndpointSpec::connect(remote).unwrap(),
        EndpointSpec::loopback(),
    )
    .fsm(FsmConfig::new().heartbeat(HB))
}

async fn start(side: Side, remote: &str, token: &CancellationToken) -> BinaryStar {
    BinaryStar::start(config(side, remote), token)
        .await
        .expect("start")
}

/// The bound voter of one of this crate's servers.
fn voter(server: &BinaryStar) -> String {
    server.endpoints().voter.clone()
}

/// Where a server with no peer points its state SUB: a relay with no target
/// keeps its ephemeral port and closes every connection, so nobody ever
/// publishes there.
async fn nobody() -> Relay {
    Relay::start().await
}

/// The links of a pair of this crate's servers, each on ephemeral ports:
/// each reaches the other's state PUB through a relay (so it has the
/// address before the other has bound), and clients reach the primary's
/// voter through a relay (so the address survives a restart on new ports).
struct Links {
    /// Forwards to the primary's state PUB (the backup's remote).
    to_primary: Relay,
    /// Forwards to the backup's state PUB (the primary's remote).
    to_backup: Relay,
    /// Forwards to the primary's voter.
    primary_voter: Relay,
}

impl Links {
    async fn new() -> Self {
        Self {
            to_primary: Relay::start().await,
            to_backup: Relay::start().await,
            primary_voter: Relay::start().await,
        }
    }

    /// The remote (peer state endpoint) of `side`.
    fn remote(&self, side: Side) -> &str {
        match side {
            Side::Primary => self.to_backup.endpoint(),
            Side::Backup => self.to_primary.endpoint(),
        }
    }

    /// Starts `side` and points the relays in front of it at its ports.
    async fn start(&self, side: Side, token: &CancellationToken) -> BinaryStar {
        let server = start(side, self.remote(side), token).await;
        self.point_at(side, &server);
        server
    }

    fn point_at(&self, side: Side, server: &BinaryStar) {
        let ep = server.endpoints();
        match side {
            Side::Primary => {
                self.to_primary.set_target(&ep.state);
                self.primary_voter.set_target(&ep.voter);
            }
            Side::Backup => self.to_backup.set_target(&ep.state),
        }
    }
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
    /// Its bound state PUB.
    state_pub: String,
    /// Its bound voter ROUTER.
    voter: String,
    thread: Option<JoinHandle<()>>,
}

/// A Guide server's state PUB and voter ROUTER, bound on ephemeral loopback
/// ports before its peer starts (libzmq reports the port; its state SUB
/// connects lazily, so the peer's address may come later, in
/// [`spawn`](Self::spawn)).
struct GuideBound {
    statepub: zmq::Socket,
    frontend: zmq::Socket,
    state: String,
    voter: String,
}

impl GuideBound {
    fn new() -> Self {
        let bind = |kind| {
            let s = lz_ctx().socket(kind).unwrap();
            s.set_linger(0).unwrap();
            s.bind("tcp://127.0.0.1:*").unwrap();
            let ep = s.get_last_endpoint().unwrap().unwrap();
            (s, ep)
        };
        let (statepub, state) = bind(zmq::PUB);
        let (frontend, voter) = bind(zmq::ROUTER);
        Self {
            statepub,
            frontend,
            state,
            voter,
        }
    }

    /// Runs the Guide's server as `side`, its state SUB connecting to
    /// `remote`.
    fn spawn(self, side: Side, remote: &str) -> GuidePeer {
        let Self {
            statepub,
            frontend,
            state: state_pub,
            voter,
        } = self;
        let remote = remote.to_owned();
        let state = Arc::new(AtomicU8::new(match side {
            Side::Primary => 1,
            Side::Backup => 2,
        }));
        let fatal = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, a, st) = (state.clone(), fatal.clone(), accepted.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let statesub = lz_ctx().socket(zmq::SUB).unwrap();
            statesub.set_linger(0).unwrap();
            statesub.set_subscribe(b"").unwrap();
            statesub.connect(&remote).unwrap();
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
        GuidePeer {
            state: state.clone(),
            fatal,
            accepted,
            stop,
            state_pub,
            voter,
            thread: Some(thread),
        }
    }
}

impl GuidePeer {
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
    let token = CancellationToken::new();
    let bound = GuideBound::new();
    let ours = start(Side::Primary, &bound.state, &token).await;
    let guide = bound.spawn(Side::Backup, &ours.endpoints().state);
    let our_voter = voter(&ours);
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
    vote_until_answered(&our_voter, "1", secs(10)).await;
    // The Guide's backup refuses votes while our primary lives.
    let req = Lz::new(zmq::REQ);
    req.connect(&guide.voter);
    req.send(&[b"2"]).await;
    assert!(req.recv(ms(300)).await.is_none(), "the passive answered");
    // Kill our active: the Guide's backup takes over on a vote.
    token.cancel();
    let stats = server.await.unwrap().expect("clean stop");
    assert_eq!(stats.state, BstarState::Active);
    assert!(stats.replies_sent >= 1);
    vote_until_answered(&guide.voter, "3", secs(10)).await;
    assert_eq!(guide.state(), 3);
    assert!(!guide.fatal.load(Ordering::SeqCst));
    assert!(guide.accepted.load(Ordering::SeqCst) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_backup_goes_passive_behind_a_guide_primary_and_takes_over_when_it_dies() {
    trace_init();
    let token = CancellationToken::new();
    let bound = GuideBound::new();
    let ours = start(Side::Backup, &bound.state, &token).await;
    let guide = bound.spawn(Side::Primary, &ours.endpoints().state);
    let our_voter = voter(&ours);
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
    vote_until_answered(&guide.voter, "1", secs(10)).await;
    drop(guide);
    // Our backup fails over on the first vote after the peer timeout.
    vote_until_answered(&our_voter, "2", secs(10)).await;
    token.cancel();
    let stats = server.await.unwrap().expect("clean stop");
    assert_eq!(stats.state, BstarState::Active);
    assert_eq!(stats.fsm.promotions, 1);
    assert!(stats.fsm.votes_accepted >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_alone_refuses_every_vote() {
    trace_init();
    let token = CancellationToken::new();
    let nobody = nobody().await;
    let ours = start(Side::Backup, nobody.endpoint(), &token).await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&voter(&ours));
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
        let links = Links::new().await;
        let token = CancellationToken::new();
        // Alternate which one binds (and becomes reachable) first; start
        // them concurrently.
        let (p, b) = if round % 2 == 0 {
            tokio::join!(
                links.start(Side::Primary, &token),
                links.start(Side::Backup, &token)
            )
        } else {
            let (b, p) = tokio::join!(
                links.start(Side::Backup, &token),
                links.start(Side::Primary, &token)
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
    let links = Links::new().await;
    let token = CancellationToken::new();
    let (p, b) = tokio::join!(
        links.start(Side::Primary, &token),
        links.start(Side::Backup, &token)
    );
    let backup_voter = voter(&b);
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
    vote_until_answered(&backup_voter, "failover", secs(10)).await;
    // The stale client: votes to the primary's voter without pause, through
    // the relay that the restarted primary's voter is put behind.
    let stop = Arc::new(AtomicBool::new(false));
    let stale = {
        let stop = stop.clone();
        let endpoint = links.primary_voter.endpoint().to_owned();
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
    let restarted = links.start(Side::Primary, &token).await;
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
    let token = CancellationToken::new();
    // Ours goes active alone (nobody publishes where its state SUB
    // connects); then a Guide primary that went active alone too (its SUB
    // listens to nobody) publishes there.
    let nobody = nobody().await;
    let bound = GuideBound::new();
    let ours = start(Side::Primary, &bound.state, &token).await;
    vote_until_answered_server(&ours, &voter(&ours)).await;
    assert_eq!(ours.state(), BstarState::Active);
    let guide = bound.spawn(Side::Primary, nobody.endpoint());
    vote_until_answered(&guide.voter, "x", secs(10)).await;
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
    let token = CancellationToken::new();
    let hostile = Lz::new(zmq::PUB);
    let hostile_ep = hostile.bind_loopback();
    let ours = BinaryStar::start(config(Side::Primary, &hostile_ep).max_request(1024), &token)
        .await
        .unwrap();
    let our_voter = voter(&ours);
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
    big.connect(&our_voter);
    big.send_owned(vec![vec![], vec![b'v'; 100_000]]).await;
    eventually(secs(10), "oversized vote counted", || {
        ours.stats().requests_oversized >= 1
    })
    .await;
    assert!(big.recv(ms(100)).await.is_none());
    let server = echo(ours);
    vote_until_answered(&our_voter, "good", secs(10)).await;
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
    let token = CancellationToken::new();
    // Our primary restarts on new ports: the Guide's state SUB and the
    // stale client reach it through relays that keep their addresses.
    let to_primary = Relay::start().await;
    let primary_voter = Relay::start().await;
    let point_at = |server: &BinaryStar| {
        to_primary.set_target(&server.endpoints().state);
        primary_voter.set_target(&server.endpoints().voter);
    };
    let bound = GuideBound::new();
    let ours = start(Side::Primary, &bound.state, &token).await;
    point_at(&ours);
    let guide = bound.spawn(Side::Backup, to_primary.endpoint());
    eventually(secs(10), "settled", || {
        ours.state() == BstarState::Active && guide.state() == 4
    })
    .await;
    ours.shutdown().await.unwrap();
    vote_until_answered(&guide.voter, "failover", secs(10)).await;
    assert_eq!(guide.state(), 3);
    let stale = Lz::new(zmq::DEALER);
    stale.with(|s| s.set_reconnect_ivl(5).unwrap());
    stale.connect(primary_voter.endpoint());
    let restarted = start(Side::Primary, &guide.state_pub, &token).await;
    point_at(&restarted);
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
    let nobody = nobody().await;
    for expected in 1..=2u64 {
        let server = BinaryStar::start(
            config(Side::Primary, nobody.endpoint()).epoch_file(&path),
            &token,
        )
        .await
        .unwrap();
        vote_until_answered_server(&server, &voter(&server)).await;
        let stats = server.shutdown().await.unwrap();
        assert_eq!(stats.epoch, expected);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{expected}\n")
        );
    }
    std::fs::write(&path, "not an epoch").unwrap();
    let err = BinaryStar::start(
        config(Side::Primary, nobody.endpoint()).epoch_file(&path),
        &token,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, BstarError::EpochCorrupt { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
