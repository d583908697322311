//! The highly available Clone pair (Guide ch. 5, model 6, `clonesrv6`) over
//! loopback, with this crate's clients and libzmq ones: failover loses no
//! acknowledged update, a quickly restarted primary never makes two
//! actives, a cut between the servers, a passive that missed updates, and
//! the backup alone.
//!
//! Every link goes through a [`Relay`] so that a server can be given its
//! peer's address before the peer binds, restarted on new ports behind the
//! same address, and cut off from its peer while clients still reach it.
//! Timers are short (heartbeat 100 ms, peer dead after 200 ms, client
//! server ttl 1 s) so each scenario takes a few seconds.

mod common;
use common::relay::Relay;
use common::*;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;
use zpatterns::bstar::{BstarState, FsmConfig, Side};
use zpatterns::clone::{
    AgentConfig, CloneClient, CloneClientConfig, ClonePairConfig, CloneServer, CloneServerConfig,
    Phase, ServerAddr, StoreConfig,
};
use zpatterns::endpoint::EndpointSpec;

const HEARTBEAT: Duration = Duration::from_millis(100);
const SERVER_TTL: Duration = Duration::from_millis(1000);

/// Relays in front of one server: what its clients use (`Pair::front`),
/// or its view of the other server (`Pair::peer`, whose collector relay is
/// unused), so that the link between the servers can be cut alone.
struct Front {
    state: Relay,
    snapshot: Relay,
    updates: Relay,
    collector: Relay,
}

impl Front {
    async fn new() -> Self {
        Self {
            state: Relay::start().await,
            snapshot: Relay::start().await,
            updates: Relay::start().await,
            collector: Relay::start().await,
        }
    }

    fn addr(&self) -> ServerAddr {
        ServerAddr::new(
            self.snapshot.endpoint(),
            self.updates.endpoint(),
            self.collector.endpoint(),
        )
        .unwrap()
    }

    fn point_at(&self, server: &CloneServer) {
        let ep = server.endpoints();
        self.state
            .set_target(ep.state.as_deref().expect("a pair server"));
        self.snapshot.set_target(&ep.snapshot);
        self.updates.set_target(&ep.publisher);
        self.collector.set_target(&ep.collector);
    }

    fn all(&self) -> [&Relay; 4] {
        [&self.state, &self.snapshot, &self.updates, &self.collector]
    }

    async fn cut(&self) {
        for r in self.all() {
            r.cut_and_wait().await;
        }
    }

    fn heal(&self) {
        self.all().iter().for_each(|r| r.heal());
    }
}

/// A pair under test: `front[i]` is what clients use to reach server `i`
/// (0 = primary, 1 = backup); `peer[i]` is how server `i` reaches the
/// other one.
struct Pair {
    front: [Front; 2],
    peer: [Front; 2],
    servers: Mutex<[Option<CloneServer>; 2]>,
    store: StoreConfig,
    token: CancellationToken,
}

fn side(i: usize) -> Side {
    if i == 0 {
        Side::Primary
    } else {
        Side::Backup
    }
}

impl Pair {
    async fn new(token: &CancellationToken) -> Self {
        Self {
            front: [Front::new().await, Front::new().await],
            peer: [Front::new().await, Front::new().await],
            servers: Mutex::new([None, None]),
            store: StoreConfig::new().hugz_interval(HEARTBEAT),
            token: token.clone(),
        }
    }

    /// Starts server `i` on fresh ephemeral ports behind its relays.
    async fn start(&self, i: usize) {
        let other = &self.peer[i];
        let peer = ServerAddr::new(
            other.snapshot.endpoint(),
            other.updates.endpoint(),
            other.snapshot.endpoint(), // not used by a pair server
        )
        .unwrap();
        let server = CloneServerConfig::loopback().store(self.store.clone());
        let config = ClonePairConfig::new(
            side(i),
            server,
            EndpointSpec::loopback(),
            EndpointSpec::connect(other.state.endpoint()).unwrap(),
            peer,
        )
        .fsm(FsmConfig::new().heartbeat(HEARTBEAT))
        .peer_snapshot_timeout(secs(2));
        let s = CloneServer::start_pair(config, &self.token).await.unwrap();
        self.front[i].point_at(&s);
        // The other server reaches this one through `peer[1 - i]`.
        self.peer[1 - i].point_at(&s);
        let old = self.servers.lock().unwrap()[i].replace(s);
        drop(old);
    }

    fn state(&self, i: usize) -> Option<BstarState> {
        self.servers.lock().unwrap()[i]
            .as_ref()
            .map(|s| s.stats().pair.expect("pair stats").state)
    }

    fn actives(&self) -> usize {
        (0..2)
            .filter(|&i| self.state(i) == Some(BstarState::Active))
            .count()
    }

    async fn wait_state(&self, i: usize, want: BstarState) {
        eventually(secs(15), &format!("server {i} {want:?}"), || {
            self.state(i) == Some(want)
        })
        .await;
    }

    /// Waits until the passive `i` holds a snapshot of the active.
    async fn wait_synced(&self, i: usize) {
        eventually(secs(15), &format!("server {i} synced"), || {
            self.servers.lock().unwrap()[i]
                .as_ref()
                .is_some_and(|s| s.stats().store.peer_snapshots > 0)
        })
        .await;
    }

    /// Kills server `i` (its sockets close at once, as on `kill -9`; no
    /// goodbye goes to anyone).
    fn kill(&self, i: usize) {
        let server = self.servers.lock().unwrap()[i].take();
        drop(server);
    }

    fn stats(&self, i: usize) -> zpatterns::clone::CloneServerStats {
        self.servers.lock().unwrap()[i]
            .as_ref()
            .expect("running")
            .stats()
    }
}

fn client_config() -> CloneClientConfig {
    CloneClientConfig::new().agent(
        AgentConfig::new()
            .server_ttl(SERVER_TTL)
            .min_backoff(ms(100))
            .max_backoff(ms(400)),
    )
}

async fn client(pair: &Pair, subtree: &str) -> CloneClient {
    let c = CloneClient::start(client_config(), &pair.token)
        .await
        .unwrap();
    c.subtree(subtree).await.unwrap();
    c.connect(pair.front[0].addr()).await.unwrap();
    c.connect(pair.front[1].addr()).await.unwrap();
    c
}

/// What one writer sent and saw acknowledged.
#[derive(Debug, Default)]
struct Ledger {
    /// uuid -> (key, value), every update sent.
    sent: HashMap<[u8; 16], (String, String)>,
    /// Per key, the values in the order sent.
    order: HashMap<String, Vec<String>>,
    acked: HashSet<[u8; 16]>,
}

/// A client writing `/w{n}/{i % keys}` = increasing values every `every`,
/// recording what it sent and what came back acknowledged.
struct Writer {
    client: Arc<CloneClient>,
    ledger: Arc<Mutex<Ledger>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    acks: tokio::task::JoinHandle<()>,
}

impl Writer {
    async fn start(pair: &Pair, n: usize, keys: usize, every: Duration) -> Self {
        let subtree = format!("/w{n}/");
        let client = Arc::new(client(pair, &subtree).await);
        within(secs(15), "writer synced", client.wait_active())
            .await
            .unwrap();
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let stop = CancellationToken::new();
        let mut acks_rx = client.acks();
        let acks = {
            let ledger = ledger.clone();
            tokio::spawn(async move {
                loop {
                    match acks_rx.recv().await {
                        Ok(uuid) => {
                            ledger.lock().unwrap().acked.insert(uuid);
                        }
                        Err(RecvError::Lagged(n)) => panic!("missed {n} acks"),
                        Err(RecvError::Closed) => return,
                    }
                }
            })
        };
        let task = {
            let (client, ledger, stop) = (client.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                for i in 0u64.. {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let key = format!("{subtree}{}", i as usize % keys);
                    let value = format!("{i}");
                    let uuid = client.set(key.clone(), value.clone(), None).await.unwrap();
                    let mut l = ledger.lock().unwrap();
                    l.sent.insert(uuid, (key.clone(), value.clone()));
                    l.order.entry(key).or_default().push(value);
                }
            })
        };
        Self {
            client,
            ledger,
            stop,
            task,
            acks,
        }
    }

    fn acked(&self) -> usize {
        self.ledger.lock().unwrap().acked.len()
    }

    /// Stops writing and waits until the client has nothing in flight
    /// (every update acknowledged, or superseded by its own later
    /// acknowledged write to the same key).
    async fn finish(self) -> (Arc<CloneClient>, Ledger) {
        self.stop.cancel();
        self.task.await.unwrap();
        nothing_in_flight(&self.client).await;
        self.acks.abort();
        let ledger = std::mem::take(&mut *self.ledger.lock().unwrap());
        (self.client, ledger)
    }
}

/// A Guide-style libzmq client (the clone agent's sockets, no resending):
/// a PUB to both collectors sending KVSETs `/lz/{i % 10}` = i with a UUID,
/// and a SUB to both servers' updates that sees them acknowledged. It also
/// checks that each server's KVPUB sequences strictly increase.
struct LzWriter {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<LzLedger>,
}

#[derive(Debug, Default)]
struct LzLedger {
    /// (key, value, acknowledged) in the order sent.
    sent: Vec<(String, String, [u8; 16])>,
    acked: HashSet<[u8; 16]>,
    /// Per updates endpoint, the KVPUB sequences in the order received.
    seqs: HashMap<usize, Vec<u64>>,
}

impl LzWriter {
    fn start(pair: &Pair) -> Self {
        let publisher = lz_ctx().socket(zmq::PUB).unwrap();
        publisher.set_linger(0).unwrap();
        let subs: Vec<zmq::Socket> = (0..2)
            .map(|i| {
                let sub = lz_ctx().socket(zmq::SUB).unwrap();
                sub.set_linger(0).unwrap();
                sub.set_subscribe(b"/lz/").unwrap();
                sub.connect(pair.front[i].updates.endpoint()).unwrap();
                publisher
                    .connect(pair.front[i].collector.endpoint())
                    .unwrap();
                sub
            })
            .collect();
        let stop = CancellationToken::new();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut ledger = LzLedger::default();
                // Let the subscriptions arrive before the first KVSET.
                std::thread::sleep(Duration::from_millis(300));
                let mut i = 0u64;
                let mut next = Instant::now();
                let drain_until = |until: Instant, ledger: &mut LzLedger| loop {
                    let mut items: Vec<zmq::PollItem<'_>> =
                        subs.iter().map(|s| s.as_poll_item(zmq::POLLIN)).collect();
                    let left = until.saturating_duration_since(Instant::now());
                    if zmq::poll(&mut items, left.as_millis() as i64).unwrap() == 0 {
                        return;
                    }
                    for (n, sub) in subs.iter().enumerate() {
                        while let Ok(m) = sub.recv_multipart(zmq::DONTWAIT) {
                            if m.len() == 5 && m[1].len() == 8 && m[2].len() == 16 {
                                let seq = u64::from_be_bytes(m[1][..].try_into().unwrap());
                                ledger.seqs.entry(n).or_default().push(seq);
                                ledger.acked.insert(m[2][..].try_into().unwrap());
                            }
                        }
                    }
                };
                while !stop.is_cancelled() {
                    let uuid: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
                    let (key, value) = (format!("/lz/{}", i % 10), i.to_string());
                    publisher
                        .send_multipart([key.as_bytes(), &[0; 8], &uuid, b"", value.as_bytes()], 0)
                        .unwrap();
                    ledger.sent.push((key, value, uuid));
                    i += 1;
                    next += Duration::from_millis(20);
                    drain_until(next, &mut ledger);
                }
                drain_until(Instant::now() + Duration::from_millis(500), &mut ledger);
                ledger
            })
        };
        Self { stop, thread }
    }

    fn finish(self) -> LzLedger {
        self.stop.cancel();
        self.thread.join().unwrap()
    }
}

/// For the libzmq writer (which never re-sends): every key holds its last
/// acknowledged value or a value sent after it; sequences strictly increase
/// per server.
fn assert_lz_acked_kept(map: &[(Bytes, Bytes)], ledger: &LzLedger) {
    let map: HashMap<&[u8], &[u8]> = map.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let mut last_acked: HashMap<&str, usize> = HashMap::new();
    for (pos, (key, _, uuid)) in ledger.sent.iter().enumerate() {
        if ledger.acked.contains(uuid) {
            last_acked.insert(key, pos);
        }
    }
    assert!(
        !last_acked.is_empty(),
        "the libzmq writer saw acknowledgements"
    );
    for (key, pos) in last_acked {
        let got = map.get(key.as_bytes()).copied();
        let ok = ledger.sent[pos..]
            .iter()
            .any(|(k, v, _)| k == key && got == Some(v.as_bytes()));
        assert!(
            ok,
            "{key}: lost its acknowledged value {:?} (has {got:?})",
            ledger.sent[pos].1
        );
    }
    for (server, seqs) in &ledger.seqs {
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "server {server}: KVPUB sequences not strictly increasing"
        );
    }
}

/// The map an observer with no subtree sees from the active server.
async fn active_map(pair: &Pair) -> Vec<(Bytes, Bytes)> {
    let c = CloneClient::start(client_config(), &pair.token)
        .await
        .unwrap();
    c.connect(pair.front[0].addr()).await.unwrap();
    c.connect(pair.front[1].addr()).await.unwrap();
    within(secs(20), "observer synced", c.wait_active())
        .await
        .unwrap();
    let entries = c.entries().await.unwrap();
    c.shutdown().await.unwrap();
    entries
}

/// Every writer's last value per key is in `map` (its updates were all
/// acknowledged, so the last one sent is the newest).
fn assert_nothing_lost(map: &[(Bytes, Bytes)], ledgers: &[Ledger]) {
    let map: HashMap<&[u8], &[u8]> = map.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    for (n, l) in ledgers.iter().enumerate() {
        assert!(!l.acked.is_empty(), "writer {n}: nothing acknowledged");
        for (key, values) in &l.order {
            let last = values.last().unwrap();
            assert_eq!(
                map.get(key.as_bytes()).copied(),
                Some(last.as_bytes()),
                "writer {n}: {key} must hold its last acknowledged value"
            );
        }
    }
}

/// Waits until every update `c` was given has been acknowledged (asked of
/// the client task, after its earlier sets: its stats may lag them).
async fn nothing_in_flight(c: &CloneClient) {
    within(secs(20), "nothing left in flight", async {
        while c.in_flight().await.unwrap() > 0 {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

/// Waits until `c`'s local map is `want`.
async fn converged(c: &CloneClient, want: &[(Bytes, Bytes)]) {
    within(secs(15), "client converged", async {
        loop {
            if c.entries().await.unwrap() == want {
                return;
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
}

/// Samples both servers' states every 5 ms while `fut` runs; returns the
/// most actives seen at once, with `fut`'s output.
async fn max_actives<T>(pair: &Pair, fut: impl std::future::Future<Output = T>) -> (usize, T) {
    tokio::pin!(fut);
    let mut most = 0;
    loop {
        most = most.max(pair.actives());
        tokio::select! {
            out = &mut fut => return (most.max(pair.actives()), out),
            () = tokio::time::sleep(ms(5)) => {}
        }
    }
}

async fn settled_pair(token: &CancellationToken) -> Pair {
    settle(Pair::new(token).await).await
}

async fn settle(pair: Pair) -> Pair {
    pair.start(0).await;
    pair.start(1).await;
    pair.wait_state(0, BstarState::Active).await;
    pair.wait_state(1, BstarState::Passive).await;
    pair.wait_synced(1).await;
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_loses_no_acknowledged_update() {
    trace_init();
    let token = CancellationToken::new();
    let pair = settled_pair(&token).await;
    let mut writers = Vec::new();
    for n in 0..3 {
        writers.push(Writer::start(&pair, n, 20, ms(10)).await);
    }
    let lz = LzWriter::start(&pair);
    eventually(secs(10), "writes acknowledged by the primary", || {
        writers.iter().all(|w| w.acked() >= 20)
    })
    .await;
    let killed = Instant::now();
    let backup_seq_before = pair.stats(1).sequence;
    pair.kill(0);
    // Promotion needs the peer timeout and a client's vote.
    pair.wait_state(1, BstarState::Active).await;
    let promoted = killed.elapsed();
    assert!(
        promoted >= 2 * HEARTBEAT,
        "promoted {promoted:?} after the kill, before the peer timeout"
    );
    let backup = pair.stats(1);
    let fsm = backup.pair.unwrap().fsm;
    assert!(fsm.votes_accepted >= 1, "promoted on a vote: {fsm:?}");
    assert!(backup.sequence >= backup_seq_before);
    // Keep writing on the new active for a while.
    let acked_at_failover: Vec<usize> = writers.iter().map(Writer::acked).collect();
    eventually(secs(15), "writes acknowledged by the backup", || {
        writers
            .iter()
            .zip(&acked_at_failover)
            .all(|(w, &before)| w.acked() >= before + 20)
    })
    .await;
    let mut ledgers = Vec::new();
    let mut clients = Vec::new();
    for w in writers {
        let (c, l) = w.finish().await;
        ledgers.push(l);
        clients.push(c);
    }
    let lz = lz.finish();
    let map = active_map(&pair).await;
    assert_nothing_lost(&map, &ledgers);
    assert_lz_acked_kept(&map, &lz);
    // Every client converges on the active's map (its own subtree of it).
    for (n, c) in clients.iter().enumerate() {
        let prefix = format!("/w{n}/");
        let want: Vec<_> = map
            .iter()
            .filter(|(k, _)| k.starts_with(prefix.as_bytes()))
            .cloned()
            .collect();
        converged(c, &want).await;
        assert!(matches!(c.phase(), Phase::Active { server: 1, .. }));
    }
    let resent: u64 = clients.iter().map(|c| c.stats().agent.resent).sum();
    let dup = pair.stats(1).store.duplicates;
    eprintln!(
        "failover: promoted after {promoted:?}; {resent} updates re-sent, {dup} dropped as duplicates"
    );
    token.cancel();
}

/// A libzmq DEALER sending `ICANHAZ?` every 20 ms: a client that keeps
/// voting for a server whatever happens (the Guide's stale client).
fn stale_voter(endpoint: &str, stop: CancellationToken) -> std::thread::JoinHandle<u64> {
    let dealer = lz_ctx().socket(zmq::DEALER).unwrap();
    dealer.set_linger(0).unwrap();
    dealer.set_sndhwm(10).unwrap();
    dealer.connect(endpoint).unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        while !stop.is_cancelled() {
            if dealer
                .send_multipart([&b"ICANHAZ?"[..], b"/stale/"], zmq::DONTWAIT)
                .is_ok()
            {
                sent += 1;
            }
            // Replies (if any) are read and thrown away.
            while dealer.recv_multipart(zmq::DONTWAIT).is_ok() {}
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quickly_restarted_primary_never_makes_two_actives() {
    trace_init();
    let token = CancellationToken::new();
    let pair = settled_pair(&token).await;
    let writer = Writer::start(&pair, 0, 5, ms(20)).await;
    let stop = CancellationToken::new();
    let voter = stale_voter(pair.front[0].snapshot.endpoint(), stop.clone());
    pair.kill(0);
    // The writer fails over and votes the backup active.
    pair.wait_state(1, BstarState::Active).await;
    // Restart the primary at once, inside the backup's peer timeout, while
    // the stale voter keeps voting for it.
    let (most, direct) = max_actives(&pair, async {
        pair.start(0).await;
        // A second stale client reaches the new process directly the moment
        // it is up (the relayed one reconnects on libzmq's own schedule).
        let snapshot = pair.servers.lock().unwrap()[0]
            .as_ref()
            .unwrap()
            .endpoints()
            .snapshot
            .replace("0.0.0.0", "127.0.0.1");
        let direct = stale_voter(&snapshot, stop.clone());
        pair.wait_state(0, BstarState::Passive).await;
        let reached = tokio::time::timeout(secs(15), async {
            while pair.stats(0).pair.unwrap().fsm.votes_rejected < 5 {
                tokio::time::sleep(ms(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "stale votes never reached the restarted primary: relay connections {}, primary {:?}",
            pair.front[0].snapshot.accepted(),
            pair.stats(0)
        );
        // Keep sampling a while longer: still exactly one active.
        tokio::time::sleep(10 * HEARTBEAT).await;
        direct
    })
    .await;
    stop.cancel();
    let votes = voter.join().unwrap() + direct.join().unwrap();
    assert!(votes > 0);
    assert_eq!(most, 1, "two actives at once");
    assert_eq!(pair.state(1), Some(BstarState::Active), "no fail-back");
    assert_eq!(pair.state(0), Some(BstarState::Passive));
    let primary = pair.stats(0).pair.unwrap();
    assert!(
        primary.fsm.votes_rejected > 0,
        "the stale votes were refused: {primary:?}"
    );
    assert!(primary.epoch >= pair.stats(1).pair.unwrap().epoch);
    let (_, ledger) = writer.finish().await;
    let map = active_map(&pair).await;
    assert_nothing_lost(&map, &[ledger]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutting_only_the_link_between_the_servers_leaves_one_active() {
    trace_init();
    let token = CancellationToken::new();
    let pair = settled_pair(&token).await;
    let writer = Writer::start(&pair, 0, 10, ms(10)).await;
    let epoch = pair.stats(0).pair.unwrap().epoch;
    // Cut both directions between the servers; clients still reach both.
    pair.peer[0].cut().await;
    pair.peer[1].cut().await;
    let acked = writer.acked();
    let (most, ()) = max_actives(&pair, async {
        eventually(secs(10), "writes go on during the cut", || {
            writer.acked() >= acked + 50
        })
        .await;
        tokio::time::sleep(10 * HEARTBEAT).await;
    })
    .await;
    // Nobody votes for the backup (its clients still hear the primary), so
    // it stays passive: the primary alone accepts writes, with its epoch.
    assert_eq!(most, 1);
    assert_eq!(pair.state(0), Some(BstarState::Active));
    assert_eq!(pair.state(1), Some(BstarState::Passive));
    assert_eq!(
        pair.stats(0).pair.unwrap().epoch,
        epoch,
        "no promotion, no new epoch"
    );
    let pending = pair.stats(1).store.pending_added;
    assert!(
        pending > 0,
        "the backup queued the clients' updates it could not confirm"
    );
    // Heal: the backup sees the gap and fetches a new snapshot.
    let snapshots = pair.stats(1).store.peer_snapshots;
    pair.peer[0].heal();
    pair.peer[1].heal();
    eventually(secs(15), "backup re-synchronised after the heal", || {
        pair.stats(1).store.peer_snapshots > snapshots
    })
    .await;
    let (_, ledger) = writer.finish().await;
    eventually(secs(10), "backup caught up", || {
        pair.stats(1).sequence == pair.stats(0).sequence
    })
    .await;
    assert_eq!(pair.stats(1).keys, pair.stats(0).keys);
    let map = active_map(&pair).await;
    assert_nothing_lost(&map, &[ledger]);
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_that_missed_updates_resyncs_and_fails_over_without_resurrecting() {
    trace_init();
    let token = CancellationToken::new();
    let pair = settled_pair(&token).await;
    let c = client(&pair, "/d/").await;
    within(secs(15), "client synced", c.wait_active())
        .await
        .unwrap();
    for i in 0..10 {
        c.set(format!("/d/{i}"), "old", None).await.unwrap();
    }
    eventually(secs(10), "backup has the keys", || pair.stats(1).keys >= 10).await;
    // Pause the passive's peer subscription: it misses what follows.
    pair.peer[1].updates.cut_and_wait().await;
    let set_at = Instant::now();
    c.set("/d/eph", "short-lived", Some(secs(4))).await.unwrap();
    for i in 0..10 {
        // Each key is changed, then half of them deleted.
        c.set(format!("/d/{i}"), "new", None).await.unwrap();
        if i % 2 == 0 {
            c.set(format!("/d/{i}"), "", None).await.unwrap();
        }
    }
    eventually(secs(10), "primary applied them", || pair.stats(0).keys == 6).await;
    let gaps = pair.stats(1).store.peer_gaps;
    pair.peer[1].updates.heal();
    eventually(secs(15), "the gap is detected", || {
        pair.stats(1).store.peer_gaps > gaps
    })
    .await;
    eventually(secs(15), "the passive caught up", || {
        pair.stats(1).sequence == pair.stats(0).sequence && pair.stats(1).keys == 6
    })
    .await;
    pair.kill(0);
    pair.wait_state(1, BstarState::Active).await;
    within(secs(15), "client failed over", async {
        while !matches!(c.phase(), Phase::Active { server: 1, .. }) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let map = active_map(&pair).await;
    let get = |k: &str| map.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    for i in 0..10 {
        let want = (i % 2 == 1).then(|| Bytes::from_static(b"new"));
        assert_eq!(
            get(&format!("/d/{i}")),
            want,
            "/d/{i}: no old value resurrected"
        );
    }
    assert_eq!(get("/d/eph"), Some(Bytes::from_static(b"short-lived")));
    // The ephemeral key keeps its remaining lifetime across the failover.
    let expired = within(secs(15), "the ephemeral key expires", async {
        while c.get("/d/eph").await.unwrap().is_some() {
            tokio::time::sleep(ms(20)).await;
        }
        set_at.elapsed()
    })
    .await;
    assert!(
        expired >= secs(3),
        "expired after {expired:?}, before its ttl"
    );
    assert!(
        expired < secs(4) + 2 * SERVER_TTL + secs(2),
        "expired after {expired:?}: lifetime restarted"
    );
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_alone_refuses_votes() {
    trace_init();
    let token = CancellationToken::new();
    let pair = Pair::new(&token).await;
    pair.start(1).await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(pair.front[1].snapshot.endpoint());
    for _ in 0..5 {
        dealer.send(&[b"ICANHAZ?", b""]).await;
        assert!(
            dealer.recv(4 * HEARTBEAT).await.is_none(),
            "a lone backup answered"
        );
    }
    let stats = pair.stats(1).pair.unwrap();
    assert_eq!(stats.state, BstarState::Backup);
    assert!(stats.fsm.votes_rejected >= 5, "{stats:?}");
    // Once the primary appears, the pair settles and the backup follows.
    pair.start(0).await;
    pair.wait_state(0, BstarState::Active).await;
    pair.wait_state(1, BstarState::Passive).await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_started_together_settle_the_same_way_every_time() {
    trace_init();
    for round in 0..5 {
        let token = CancellationToken::new();
        let pair = Pair::new(&token).await;
        // Alternate which one binds first.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        pair.start(order[0]).await;
        pair.start(order[1]).await;
        pair.wait_state(0, BstarState::Active).await;
        pair.wait_state(1, BstarState::Passive).await;
        assert_eq!(pair.actives(), 1, "round {round}");
        token.cancel();
    }
}

/// The Guide's `clonesrv6 -p` as far as its peer sees it, on libzmq: a
/// Binary Star state PUB ("1" until it hears the backup's "2", then "3"), a
/// snapshot ROUTER answering `ICANHAZ?` with KVSYNCs and a C-style empty
/// KTHXBAI, and a PUB with KVPUBs and HUGZ carrying the current sequence.
/// It runs until `stop`, then closes everything at once (a kill).
struct GuidePrimary {
    state: String,
    snapshot: String,
    updates: String,
    collector: String,
    backup_state: Arc<Mutex<Option<String>>>,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl GuidePrimary {
    fn start() -> Self {
        let bind = |kind| {
            let s = lz_ctx().socket(kind).unwrap();
            s.set_linger(0).unwrap();
            s.bind("tcp://127.0.0.1:*").unwrap();
            let ep = s.get_last_endpoint().unwrap().unwrap();
            (s, ep)
        };
        let (state_pub, state) = bind(zmq::PUB);
        let (router, snapshot) = bind(zmq::ROUTER);
        let (publisher, updates) = bind(zmq::PUB);
        let (collector_sock, collector) = bind(zmq::SUB);
        collector_sock.set_subscribe(b"").unwrap();
        let backup_state = Arc::new(Mutex::new(None::<String>));
        let stop = CancellationToken::new();
        let thread = {
            let (backup_state, stop) = (backup_state.clone(), stop.clone());
            std::thread::spawn(move || {
                let state_sub = lz_ctx().socket(zmq::SUB).unwrap();
                state_sub.set_linger(0).unwrap();
                state_sub.set_subscribe(b"").unwrap();
                let mut connected = false;
                let mut me = b"1".to_vec();
                let mut seq = 2u64;
                let mut next_beat = Instant::now();
                let mut published_extra = false;
                let frames = |key: &[u8], seq: u64, body: &[u8]| -> Vec<Vec<u8>> {
                    vec![
                        key.to_vec(),
                        seq.to_be_bytes().to_vec(),
                        vec![],
                        vec![],
                        body.to_vec(),
                    ]
                };
                while !stop.is_cancelled() {
                    if !connected {
                        if let Some(ep) = backup_state.lock().unwrap().clone() {
                            state_sub.connect(&ep).unwrap();
                            connected = true;
                        }
                    }
                    if Instant::now() >= next_beat {
                        state_pub.send(&me[..], 0).unwrap();
                        publisher
                            .send_multipart(frames(b"HUGZ", seq, b""), 0)
                            .unwrap();
                        next_beat += HEARTBEAT;
                    }
                    if me == b"3" && !published_extra {
                        seq += 1;
                        publisher
                            .send_multipart(frames(b"/g/3", seq, b"three"), 0)
                            .unwrap();
                        published_extra = true;
                    }
                    let mut items = [
                        state_sub.as_poll_item(zmq::POLLIN),
                        router.as_poll_item(zmq::POLLIN),
                        collector_sock.as_poll_item(zmq::POLLIN),
                    ];
                    zmq::poll(&mut items, 10).unwrap();
                    while let Ok(m) = state_sub.recv_multipart(zmq::DONTWAIT) {
                        if m.first().map(Vec::as_slice) == Some(b"2") && me == b"1" {
                            me = b"3".to_vec(); // PRIMARY + PEER_BACKUP: active
                        }
                    }
                    while let Ok(m) = router.recv_multipart(zmq::DONTWAIT) {
                        if m.len() >= 2 && m[1] == b"ICANHAZ?" {
                            let id = m[0].clone();
                            let upto = if published_extra { 3 } else { 2 };
                            let all: [(&[u8], &[u8]); 3] =
                                [(b"/g/1", b"one"), (b"/g/2", b"two"), (b"/g/3", b"three")];
                            for (n, (k, v)) in all.iter().take(upto).enumerate() {
                                let mut f = vec![id.clone()];
                                f.extend(frames(k, n as u64 + 1, v));
                                router.send_multipart(f, 0).unwrap();
                            }
                            let mut f = vec![id];
                            f.extend(frames(b"KTHXBAI", seq, b""));
                            router.send_multipart(f, 0).unwrap();
                        }
                    }
                    while collector_sock.recv_multipart(zmq::DONTWAIT).is_ok() {}
                }
            })
        };
        Self {
            state,
            snapshot,
            updates,
            collector,
            backup_state,
            stop,
            thread: Some(thread),
        }
    }

    fn kill(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_backup_pairs_with_a_libzmq_guide_primary_and_takes_over() {
    trace_init();
    let token = CancellationToken::new();
    let mut guide = GuidePrimary::start();
    let config = ClonePairConfig::new(
        Side::Backup,
        CloneServerConfig::loopback().store(StoreConfig::new().hugz_interval(HEARTBEAT)),
        EndpointSpec::loopback(),
        EndpointSpec::connect(&guide.state).unwrap(),
        ServerAddr::new(&guide.snapshot, &guide.updates, &guide.collector).unwrap(),
    )
    .fsm(FsmConfig::new().heartbeat(HEARTBEAT));
    let backup = CloneServer::start_pair(config, &token).await.unwrap();
    let state_ep = backup.endpoints().state.clone().unwrap();
    *guide.backup_state.lock().unwrap() = Some(state_ep.replace("0.0.0.0", "127.0.0.1"));
    let pair_state = |s: &CloneServer| s.stats().pair.unwrap().state;
    eventually(secs(15), "our backup follows the Guide's active", || {
        pair_state(&backup) == BstarState::Passive && backup.stats().keys == 3
    })
    .await;
    assert!(backup.stats().store.peer_snapshots >= 1);
    // A client of both; the Guide's primary dies; the client votes ours in.
    let c = CloneClient::start(client_config(), &token).await.unwrap();
    c.connect(ServerAddr::new(&guide.snapshot, &guide.updates, &guide.collector).unwrap())
        .await
        .unwrap();
    c.connect(ServerAddr::from_endpoints(backup.endpoints()).unwrap())
        .await
        .unwrap();
    within(secs(15), "client synced", c.wait_active())
        .await
        .unwrap();
    guide.kill();
    eventually(secs(15), "our backup takes over", || {
        pair_state(&backup) == BstarState::Active
    })
    .await;
    within(
        secs(15),
        "client on our server with the Guide's data",
        async {
            loop {
                let on_ours = matches!(c.phase(), Phase::Active { server: 1, .. });
                if on_ours && c.entries().await.unwrap().len() == 3 {
                    return;
                }
                tokio::time::sleep(ms(20)).await;
            }
        },
    )
    .await;
    c.set("/g/4", "four", None).await.unwrap();
    eventually(secs(10), "our new active sequences writes", || {
        backup.stats().keys == 4
    })
    .await;
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_for_the_backup_during_a_cut_makes_two_actives_until_the_heal_stops_both() {
    trace_init();
    let token = CancellationToken::new();
    let pair = settled_pair(&token).await;
    let epoch = pair.stats(0).pair.unwrap().epoch;
    pair.peer[0].cut().await;
    pair.peer[1].cut().await;
    // A client that can only reach the backup votes for it.
    let c = CloneClient::start(client_config(), &token).await.unwrap();
    c.connect(pair.front[1].addr()).await.unwrap();
    pair.wait_state(1, BstarState::Active).await;
    within(secs(15), "the backup's client synced", c.wait_active())
        .await
        .unwrap();
    assert_eq!(pair.actives(), 2, "two islands, two actives");
    let backup_epoch = pair.stats(1).pair.unwrap().epoch;
    assert!(backup_epoch > epoch, "the promotion took a newer epoch");
    // Healing the link: whichever server first hears the other's "3"
    // stops (the Guide's fatal dual-active rule), or the older one stops on
    // seeing the newer epoch; the survivor, if any, is the only active.
    // Which one that is depends on which link reconnects first: the
    // operator restarts the stopped one (it rejoins as passive).
    pair.peer[0].heal();
    pair.peer[1].heal();
    let (i, server) = within(secs(20), "a server stops", async {
        loop {
            {
                let mut guard = pair.servers.lock().unwrap();
                for (i, slot) in guard.iter_mut().enumerate() {
                    let ended = slot
                        .as_mut()
                        .is_some_and(|s| futures::FutureExt::now_or_never(s.stopped()).is_some());
                    if ended {
                        return (i, slot.take().unwrap());
                    }
                }
            }
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    match server.shutdown().await {
        Err(zpatterns::clone::CloneError::Fatal(cause)) => {
            eprintln!("server {i} stopped: {cause:?}")
        }
        other => panic!("server {i} should stop on a fatal error, got {other:?}"),
    }
    // Observe a while: the other one never makes two actives again.
    let (most, ()) = max_actives(&pair, tokio::time::sleep(10 * HEARTBEAT)).await;
    assert!(most <= 1, "two actives after the heal");
    token.cancel();
}

/// `clonesrv -p` and `clonesrv -b` as processes (every socket on an
/// ephemeral port, the peer links through relays), crate clients writing,
/// and `kill -9` of the primary: the backup takes over on a vote and no
/// acknowledged update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clonesrv_pair_processes_survive_kill_9_of_the_primary() {
    use common::procs::{line_after, spawn_reading};
    trace_init();
    let token = CancellationToken::new();
    // peer[i]: how server i reaches the other one.
    let peer = [Front::new().await, Front::new().await];
    let any = "@tcp://127.0.0.1:0";
    let start = |flag: &'static str, i: usize| {
        let link = &peer[i];
        let args = [
            flag,
            "--snapshot",
            any,
            "--updates",
            any,
            "--collector",
            any,
            "--state-local",
            any,
            "--state-remote",
            link.state.endpoint(),
            "--peer-snapshot",
            link.snapshot.endpoint(),
            "--peer-updates",
            link.updates.endpoint(),
            "--heartbeat-ms",
            "100",
            "--hugz-ms",
            "100",
        ];
        let (child, lines) = spawn_reading("clonesrv", &args);
        let eps = line_after(&lines, "I: clone server on ", secs(60));
        let state = line_after(&lines, "I: Binary Star state on ", secs(10));
        let eps: Vec<String> = eps
            .split(" / ")
            .map(|e| e.replace("0.0.0.0", "127.0.0.1"))
            .collect();
        // The other server reaches this one through peer[1 - i].
        let other = &peer[1 - i];
        other.state.set_target(&state);
        other.snapshot.set_target(&eps[0]);
        other.updates.set_target(&eps[1]);
        (child, ServerAddr::new(&eps[0], &eps[1], &eps[2]).unwrap())
    };
    let (mut primary, p_addr) = start("-p", 0);
    let (_backup, b_addr) = start("-b", 1);
    let mut writers = Vec::new();
    for n in 0..2 {
        let c = CloneClient::start(client_config(), &token).await.unwrap();
        c.subtree(&format!("/k{n}/")).await.unwrap();
        c.connect(p_addr.clone()).await.unwrap();
        c.connect(b_addr.clone()).await.unwrap();
        within(secs(20), "client synced", c.wait_active())
            .await
            .unwrap();
        writers.push(c);
    }
    let mut last: HashMap<String, String> = HashMap::new();
    let mut write = async |round: u64, writers: &[CloneClient]| {
        for (n, c) in writers.iter().enumerate() {
            let (k, v) = (format!("/k{n}/{}", round % 7), round.to_string());
            c.set(k.clone(), v.clone(), None).await.unwrap();
            last.insert(k, v);
        }
        tokio::time::sleep(ms(10)).await;
    };
    for round in 0..100 {
        write(round, &writers).await;
    }
    primary.kill9();
    let killed = Instant::now();
    // Keep writing through the failover until both clients are on the backup.
    let mut round = 100;
    within(secs(30), "clients on the backup", async {
        while !writers
            .iter()
            .all(|c| matches!(c.phase(), Phase::Active { server: 1, .. }))
        {
            write(round, &writers).await;
            round += 1;
        }
    })
    .await;
    eprintln!("clients on the backup {:?} after kill -9", killed.elapsed());
    for _ in 0..50 {
        write(round, &writers).await;
        round += 1;
    }
    for c in &writers {
        nothing_in_flight(c).await;
    }
    let observer = CloneClient::start(client_config(), &token).await.unwrap();
    observer.connect(b_addr.clone()).await.unwrap();
    within(secs(20), "observer synced", observer.wait_active())
        .await
        .unwrap();
    let map: HashMap<Bytes, Bytes> = observer.entries().await.unwrap().into_iter().collect();
    for (k, v) in &last {
        assert_eq!(
            map.get(k.as_bytes()).map(|b| &b[..]),
            Some(v.as_bytes()),
            "{k} lost its last acknowledged value"
        );
    }
    token.cancel();
}

/// Hostile libzmq peers against a settled pair: a PUB flooding the
/// passive's collector with updates the active never sees (each one a
/// pending entry) is held to `max_pending`, and garbage and oversized
/// messages on the passive's snapshot socket are counted as non-votes and
/// never promote it, while a well-behaved client keeps writing through the
/// active and the passive keeps following it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_of_the_passive_are_bounded_while_a_client_is_served() {
    trace_init();
    let token = CancellationToken::new();
    let mut pair = Pair::new(&token).await;
    pair.store = StoreConfig::new()
        .hugz_interval(HEARTBEAT)
        .max_pending(100)
        .max_request_size(256);
    let pair = settle(pair).await;
    let writer = Writer::start(&pair, 0, 10, ms(10)).await;
    // The flood goes to the passive only: nothing cancels it.
    let flood = Lz::new(zmq::PUB);
    flood.connect(pair.front[1].collector.endpoint());
    let voter = Lz::new(zmq::DEALER);
    voter.connect(pair.front[1].snapshot.endpoint());
    let rss_before = rss_kib();
    let acked = writer.acked();
    let mut sent = 0u64;
    within(
        secs(30),
        "the passive's pending list is full and dropping",
        async {
            while pair.stats(1).store.pending_dropped < 1_000 {
                for _ in 0..200 {
                    let uuid: [u8; 16] = std::array::from_fn(|_| fastrand::u8(..));
                    let key = format!("/flood/{sent}");
                    let body = vec![b'x'; 1024];
                    flood
                        .send(&[key.as_bytes(), &[0; 8], &uuid, b"", &body])
                        .await;
                    sent += 1;
                }
                voter.send(&[b"GIMME", b"everything"]).await;
                voter.send(&[b"ICANHAZ?", &[b'/'; 4096]]).await;
                tokio::time::sleep(ms(5)).await;
            }
        },
    )
    .await;
    let passive = pair.stats(1);
    assert!(
        passive.pending <= 100,
        "held {} pending, over max_pending",
        passive.pending
    );
    assert!(
        passive.pending_bytes <= 100 * 2048,
        "{} pending bytes",
        passive.pending_bytes
    );
    assert!(passive.store.pending_added > 1_000, "{:?}", passive.store);
    let pair_stats = passive.pair.clone().unwrap();
    assert!(pair_stats.non_votes >= 2, "{pair_stats:?}");
    assert_eq!(pair_stats.fsm.votes_accepted, 0, "garbage is never a vote");
    assert_eq!(pair_stats.state, BstarState::Passive);
    // The good client is still served through the active, and the passive
    // still follows it.
    eventually(secs(15), "the good writer is still acknowledged", || {
        writer.acked() >= acked + 50
    })
    .await;
    eventually(secs(15), "the passive follows the active", || {
        pair.stats(1).sequence == pair.stats(0).sequence
    })
    .await;
    let rss_after = rss_kib();
    eprintln!(
        "flood: {sent} updates of 1 KiB to the passive, pending dropped {}, VmRSS {rss_before} -> {rss_after} KiB",
        pair.stats(1).store.pending_dropped
    );
    let (_, ledger) = writer.finish().await;
    let map = active_map(&pair).await;
    assert_nothing_lost(&map, &[ledger]);
    token.cancel();
}
