//! The Guide's Clone programs (ch. 5, models 1-6) against this crate's
//! Clone server and client, as small libzmq programs with the Guide's
//! socket behaviour: which socket each one opens, binds or connects, what it
//! sends and how it reads. Frames are built by hand (not with this crate's
//! codec), so the wire format is checked independently.
//!
//! - `clonecli5` (PUSH KVSETs with a `ttl` property, C and Python flavours)
//!   against `CloneServer`, and `clonecli3`/`clonecli4`'s 3-frame kvsimple
//!   KVSETs, which are refused;
//! - a clone-agent-style client (PUB to `P+2`) and PUSH clients (libzmq and
//!   this crate's) on the same collector at the same time;
//! - this crate's `CloneClient` with `CollectorSocket::Push` against a
//!   libzmq `clonesrv5` (ROUTER, PUB, PULL);
//! - the socket patterns of models 1 and 2 (a SUB alone; a one-frame
//!   `ICANHAZ?`), and why their kvsimple framing cannot read this server;
//! - hostile collector peers: oversized and over-framed messages, a DEALER,
//!   connections that never finish their handshake.

mod common;
use common::chp::{kvmsg, recv_until, seq_of, Frames};
use common::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use zpatterns::clone::{
    CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, CloneServerStats,
    CollectorLimits, CollectorSocket, Phase, ServerAddr,
};

/// Sends `ICANHAZ?` (with `subtree`, or alone as in model 2) on a fresh
/// libzmq DEALER and reads the snapshot: the entries by key, and
/// KTHXBAI's sequence.
async fn snapshot(endpoint: &str, subtree: Option<&str>) -> (HashMap<Vec<u8>, Frames>, u64) {
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(endpoint);
    match subtree {
        Some(s) => dealer.send(&[b"ICANHAZ?", s.as_bytes()]).await,
        None => dealer.send(&[b"ICANHAZ?"]).await,
    }
    let mut entries = HashMap::new();
    loop {
        let m = dealer.recv(secs(10)).await.expect("a snapshot reply");
        assert_eq!(m.len(), 5, "KVSYNC/KTHXBAI are 5 frames: {:?}", text(&m));
        if m[0] == b"KTHXBAI" {
            return (entries, seq_of(&m));
        }
        entries.insert(m[0].clone(), m);
    }
}

fn prop<'a>(m: &'a Frames, name: &str) -> Option<&'a str> {
    std::str::from_utf8(&m[3])
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

async fn stats_until(
    server: &CloneServer,
    what: &str,
    pred: impl Fn(&CloneServerStats) -> bool,
) -> CloneServerStats {
    eventually(secs(20), what, || pred(&server.stats())).await;
    server.stats()
}

/// `clonecli5` (C and Python) against this server: DEALER `ICANHAZ?`
/// `/client/`, SUB to `P+1` (C subscribes `""` and the subtree, Python the
/// subtree only), PUSH to `P+2` with KVSETs carrying `ttl=<seconds>` (C: no
/// UUID; Python: a random one). Each KVSET is sequenced and republished
/// with its relative ttl, an expiring one is deleted everywhere when its
/// ttl runs out, and a late joiner's snapshot has the rest. The 3-frame
/// kvsimple KVSETs of `clonecli3`/`clonecli4` are refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clonecli5_push_clients_are_sequenced_and_republished() {
    trace_init();
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    // C clonecli5: SUB "" and "/client/"; connects before asking.
    let c_sub = Lz::new(zmq::SUB);
    c_sub.subscribe(b"");
    c_sub.subscribe(b"/client/");
    c_sub.connect(&ep.publisher);
    let py_sub = Lz::new(zmq::SUB);
    py_sub.subscribe(b"/client/");
    py_sub.connect(&ep.publisher);
    // A HUGZ proves the C client's subscription is in place; the Python
    // client's subtree-only SUB gets no HUGZ: its client repeats a probe
    // KVSET until the SUB sees it. (PUSH itself has no slow joiner: libzmq
    // queues until connected, so the first KVSET counts.)
    recv_until(&c_sub, "a HUGZ on the C client's SUB", |m| m[0] == b"HUGZ").await;
    let c_push = Lz::new(zmq::PUSH);
    c_push.connect(&ep.collector);
    let py_push = Lz::new(zmq::PUSH);
    py_push.connect(&ep.collector);
    within(secs(20), "the Python client's SUB is subscribed", async {
        loop {
            let probe = kvmsg("/client/probe", 0, &[9u8; 16], "", "p");
            py_push.send_owned(probe).await;
            if py_sub.recv(ms(100)).await.is_some() {
                return;
            }
        }
    })
    .await;
    let (entries, seq0) = snapshot(&ep.snapshot, Some("/client/")).await;
    assert_eq!(entries.len(), 1, "the probe");
    c_push
        .send_owned(kvmsg("/client/4711", 0, b"", "ttl=17\n", "816923"))
        .await;
    let got = recv_until(&c_sub, "C client's KVSET republished", |m| {
        m[0] == b"/client/4711"
    })
    .await;
    assert!(seq_of(&got) > seq0, "sequenced after the snapshot");
    assert_eq!(got[4], b"816923");
    assert_eq!(prop(&got, "ttl"), Some("17"), "published ttl is relative");
    let uuid = [7u8; 16];
    py_push
        .send_owned(kvmsg("/client/42", 0, &uuid, "ttl=0\n", "1234"))
        .await;
    let py = recv_until(&py_sub, "Python client's KVSET republished", |m| {
        m[0] == b"/client/42"
    })
    .await;
    assert_eq!(py[2], uuid, "the UUID travels back");
    assert!(seq_of(&py) > seq_of(&got), "strictly increasing sequence");
    // An ephemeral value expires and its delete reaches every subscriber.
    c_push
        .send_owned(kvmsg("/client/short", 0, b"", "ttl=1\n", "soon gone"))
        .await;
    recv_until(&c_sub, "the ephemeral value", |m| {
        m[0] == b"/client/short" && !m[4].is_empty()
    })
    .await;
    let del = recv_until(&py_sub, "its delete after 1 s", |m| {
        m[0] == b"/client/short" && m[4].is_empty()
    })
    .await;
    assert!(seq_of(&del) > seq_of(&py));
    // clonecli3/4 speak kvsimple: [key][seq][body]. Refused, not stored.
    let bad_before = server.stats().store.bad_kvsets;
    c_push
        .send(&[b"/client/kvsimple", &0u64.to_be_bytes(), b"3 frames"])
        .await;
    let s = stats_until(&server, "the kvsimple KVSET counted", |s| {
        s.store.bad_kvsets > bad_before
    })
    .await;
    assert_eq!(s.collector_push_peers, 2, "{s:?}");
    assert_eq!(s.collector_pub_peers, 0, "{s:?}");
    assert_eq!(s.collector_peers, 2, "{s:?}");
    // A late clonecli5 gets the surviving values in its snapshot.
    let (entries, _) = snapshot(&ep.snapshot, Some("/client/")).await;
    let mut keys: Vec<_> = entries.keys().cloned().collect();
    keys.sort();
    assert_eq!(text(&keys), ["/client/42", "/client/4711", "/client/probe"]);
    server.shutdown().await.unwrap();
}

/// Model 6 and models 3-5 clients at once on one collector: a libzmq
/// client shaped like the Guide's clone agent (`clonecli6`: DEALER, SUB on
/// the subtree and `HUGZ`, PUB to `P+2`), a libzmq PUSH client
/// (`clonecli5`) and this crate's client sending with
/// `CollectorSocket::Push`. Every update of every one is applied and
/// republished, and each sees the others'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pub_and_push_clients_share_one_collector() {
    trace_init();
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    // The agent-style client.
    let agent_sub = Lz::new(zmq::SUB);
    agent_sub.subscribe(b"/client/");
    agent_sub.subscribe(b"HUGZ");
    agent_sub.connect(&ep.publisher);
    recv_until(&agent_sub, "HUGZ", |m| m[0] == b"HUGZ").await;
    let (_, seq0) = snapshot(&ep.snapshot, Some("/client/")).await;
    let agent_pub = Lz::new(zmq::PUB);
    agent_pub.with(|s| s.set_sndhwm(0).unwrap());
    agent_pub.connect(&ep.collector);
    // PUB drops what it sends before the collector's subscription arrives
    // (slow joiner): repeat the agent's first KVSET until it is published.
    within(secs(20), "the agent's PUB is subscribed", async {
        loop {
            let uuid = [1u8; 16];
            agent_pub
                .send_owned(kvmsg("/client/agent", 0, &uuid, "ttl=0\n", "from PUB"))
                .await;
            if let Some(m) = agent_sub.recv(ms(100)).await {
                if m[0] == b"/client/agent" {
                    return;
                }
            }
        }
    })
    .await;
    // The libzmq PUSH client, connected at the same time.
    let push = Lz::new(zmq::PUSH);
    push.connect(&ep.collector);
    push.send_owned(kvmsg("/client/push", 0, b"", "ttl=20\n", "from PUSH"))
        .await;
    // This crate's client, sending with PUSH.
    let config = CloneClientConfig::new().collector_socket(CollectorSocket::Push);
    let client = CloneClient::start(config, &token).await.unwrap();
    client.subtree("/client/").await.unwrap();
    client
        .connect(ServerAddr::from_endpoints(&ep).unwrap())
        .await
        .unwrap();
    within(secs(20), "crate client synced", client.wait_active())
        .await
        .unwrap();
    client
        .set("/client/crate", "from the crate's PUSH", None)
        .await
        .unwrap();
    // Everything reaches the agent-style subscriber, sequenced (the
    // agent's own value was seen above).
    let mut seen = HashMap::from([(b"/client/agent".to_vec(), b"from PUB".to_vec())]);
    within(secs(20), "all three writers republished", async {
        while seen.len() < 3 {
            if let Some(m) = agent_sub.recv(ms(200)).await {
                if m[0] != b"HUGZ" {
                    assert!(seq_of(&m) > seq0);
                    seen.insert(m[0].clone(), m[4].clone());
                }
            }
        }
    })
    .await;
    assert_eq!(seen[&b"/client/push"[..]], b"from PUSH");
    assert_eq!(seen[&b"/client/crate"[..]], b"from the crate's PUSH");
    // ... and the crate's client has the libzmq clients' values.
    for (key, value) in [("/client/agent", "from PUB"), ("/client/push", "from PUSH")] {
        within(secs(20), key, async {
            while client.get(key).await.unwrap().as_deref() != Some(value.as_bytes()) {
                tokio::time::sleep(ms(20)).await;
            }
        })
        .await;
    }
    let s = stats_until(&server, "both kinds of peer counted", |s| {
        s.collector_pub_peers >= 1 && s.collector_push_peers >= 2
    })
    .await;
    assert_eq!(s.collector_refused, 0, "{s:?}");
    assert_eq!(s.store.bad_kvsets, 0, "{s:?}");
    client.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// A libzmq server with the Guide's `clonesrv5` semantics (C flavour):
/// ROUTER at `P`, PUB at `P+1`, PULL at `P+2`, one thread. A KVSET gets
/// `++sequence` and is published as received (relative ttl), then stored
/// with its ttl made absolute (ms since the epoch), an empty body
/// deleting; a flush every second publishes a delete for each expired key;
/// `ICANHAZ?` gets the subtree's entries then `KTHXBAI` with an empty body;
/// a bad request gets no reply. No HUGZ (model 5 has none).
struct Clonesrv5 {
    stop: Arc<AtomicBool>,
    addr: ServerAddr,
    thread: Option<std::thread::JoinHandle<HashMap<Vec<u8>, Frames>>>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn ttl_of(m: &Frames) -> u64 {
    prop(m, "ttl").and_then(|t| t.parse().ok()).unwrap_or(0)
}

fn with_prop(m: &mut Frames, name: &str, value: &str) {
    let props = String::from_utf8_lossy(&m[3]).into_owned();
    let mut lines: Vec<String> = props
        .lines()
        .filter(|l| !l.starts_with(&format!("{name}=")))
        .map(str::to_owned)
        .collect();
    lines.push(format!("{name}={value}"));
    m[3] = lines
        .iter()
        .map(|l| format!("{l}\n"))
        .collect::<String>()
        .into();
}

impl Clonesrv5 {
    fn start() -> Self {
        let router = lz_ctx().socket(zmq::ROUTER).unwrap();
        let publisher = lz_ctx().socket(zmq::PUB).unwrap();
        let collector = lz_ctx().socket(zmq::PULL).unwrap();
        let mut eps = Vec::new();
        for s in [&router, &publisher, &collector] {
            s.set_linger(0).unwrap();
            s.bind("tcp://127.0.0.1:*").unwrap();
            eps.push(s.get_last_endpoint().unwrap().unwrap());
        }
        let addr = ServerAddr::new(&eps[0], &eps[1], &eps[2]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut map: HashMap<Vec<u8>, Frames> = HashMap::new();
            let mut sequence = 0u64;
            let mut next_flush = Instant::now() + Duration::from_secs(1);
            while !flag.load(Ordering::Relaxed) {
                let mut items = [
                    router.as_poll_item(zmq::POLLIN),
                    collector.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, 100).unwrap();
                if items[0].is_readable() {
                    let req = router.recv_multipart(0).unwrap();
                    if req.len() == 3 && req[1] == b"ICANHAZ?" {
                        for (_, m) in map.iter().filter(|(k, _)| k.starts_with(&req[2])) {
                            let mut f = vec![req[0].clone()];
                            f.extend(m.iter().cloned());
                            router.send_multipart(f, 0).unwrap();
                        }
                        let mut end = vec![req[0].clone()];
                        end.extend(kvmsg("KTHXBAI", sequence, b"", "", ""));
                        router.send_multipart(end, 0).unwrap();
                    } else {
                        eprintln!("E: bad request, aborting");
                    }
                }
                if items[1].is_readable() {
                    let mut m = collector.recv_multipart(0).unwrap();
                    if m.len() == 5 {
                        sequence += 1;
                        m[1] = sequence.to_be_bytes().to_vec();
                        publisher.send_multipart(m.clone(), 0).unwrap();
                        let ttl = ttl_of(&m);
                        if ttl > 0 {
                            with_prop(&mut m, "ttl", &(epoch_ms() + ttl * 1000).to_string());
                        }
                        if m[4].is_empty() {
                            map.remove(&m[0]);
                        } else {
                            map.insert(m[0].clone(), m);
                        }
                    }
                }
                if Instant::now() >= next_flush {
                    let now = epoch_ms();
                    let expired: Vec<_> = map
                        .iter()
                        .filter(|(_, m)| ttl_of(m) != 0 && now >= ttl_of(m))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in expired {
                        let mut m = map.remove(&k).unwrap();
                        sequence += 1;
                        m[1] = sequence.to_be_bytes().to_vec();
                        m[4].clear();
                        publisher.send_multipart(m, 0).unwrap();
                    }
                    next_flush = Instant::now() + Duration::from_secs(1);
                }
            }
            map
        });
        Self {
            stop,
            addr,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> HashMap<Vec<u8>, Frames> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

/// This crate's client against the Guide's `clonesrv5` (a libzmq PULL
/// collector) with `CollectorSocket::Push`: its sets reach the server, come
/// back sequenced (the client's sequence follows the server's), an
/// ephemeral one is deleted by the server's flush, and the server's map
/// holds the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_client_works_with_a_libzmq_clonesrv5() {
    trace_init();
    let token = CancellationToken::new();
    let server = Clonesrv5::start();
    let config = CloneClientConfig::new().collector_socket(CollectorSocket::Push);
    let client = CloneClient::start(config, &token).await.unwrap();
    // clonesrv5.py does not answer an empty subtree: use one, as clonecli5.
    client.subtree("/client/").await.unwrap();
    client.connect(server.addr.clone()).await.unwrap();
    within(secs(20), "synced from clonesrv5", client.wait_active())
        .await
        .unwrap();
    client.set("/client/a", "alpha", None).await.unwrap();
    client.set("/client/b", "beta", None).await.unwrap();
    client.set("/client/a", "", None).await.unwrap();
    client
        .set("/client/eph", "brief", Some(secs(1)))
        .await
        .unwrap();
    // Four KVSETs came back with the server's sequences 1..4; the flush's
    // delete of the ephemeral key is the fifth.
    within(secs(20), "the sets' echoes and the ttl delete", async {
        while !matches!(client.phase(), Phase::Active { seq: 5.., .. }) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    assert_eq!(client.get("/client/eph").await.unwrap(), None);
    assert_eq!(
        client.get("/client/b").await.unwrap().as_deref(),
        Some(&b"beta"[..])
    );
    let map = server.stop();
    let keys: Vec<_> = map.keys().cloned().collect();
    assert_eq!(text(&keys), ["/client/b"], "alpha deleted, eph expired");
    assert_eq!(map[&b"/client/b"[..]][4], b"beta");
    client.shutdown().await.unwrap();
}

/// Models 1 and 2 as socket patterns: a SUB alone on the update port (what
/// `clonecli1` is, pointed at `P+1` where this server publishes; model 1's
/// server publishes at `P`) sees every update in sequence order, and a
/// one-frame `ICANHAZ?` (`clonecli2`, no subtree) is answered with the
/// whole map. The Guide's own programs still cannot read this server: they
/// read kvsimple's three frames (`kvsimple.c` checks that frame 2 ends the
/// message; the Python one unpacks exactly three), and every message here
/// is five frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_1_and_2_socket_patterns_and_the_kvsimple_mismatch() {
    trace_init();
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(&ep.publisher);
    recv_until(&sub, "HUGZ", |m| m[0] == b"HUGZ").await;
    let push = Lz::new(zmq::PUSH);
    push.connect(&ep.collector);
    for i in 0..20 {
        push.send_owned(kvmsg(&format!("{i}"), 0, b"", "", &format!("{}", i * 7)))
            .await;
    }
    let mut last = 0;
    let mut got = Vec::new();
    within(secs(20), "the 20 updates", async {
        while got.len() < 20 {
            let Some(m) = sub.recv(ms(200)).await else {
                continue;
            };
            // What kvsimple's recv would see: a fourth frame where it wants
            // the message to end.
            assert_eq!(m.len(), 5, "{:?}", text(&m));
            if m[0] == b"HUGZ" {
                continue;
            }
            let seq = seq_of(&m);
            assert!(seq > last, "strictly increasing: {seq} after {last}");
            last = seq;
            got.push(m[0].clone());
        }
    })
    .await;
    let want: Vec<Vec<u8>> = (0..20).map(|i| format!("{i}").into_bytes()).collect();
    assert_eq!(got, want, "in the order sent by one PUSH client");
    // Model 2: a lone ICANHAZ? is the whole map, and KTHXBAI's sequence is
    // the last update's, so "apply seq > snapshot" loses nothing.
    let (entries, seq) = snapshot(&ep.snapshot, None).await;
    assert_eq!(entries.len(), 20);
    assert_eq!(seq, last);
    assert_eq!(entries[&b"3"[..]][4], b"21");
    server.shutdown().await.unwrap();
}

/// Hostile collector peers while a good PUSH client is served: a libzmq
/// PUSH sends messages over `max_message` and over `max_frames` (each
/// skipped unread and counted; its connection stays, so its next valid
/// KVSET is published), and a libzmq DEALER is refused at the handshake for
/// its socket type (counted each time it reconnects).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_collector_peers_are_refused_and_counted() {
    trace_init();
    let token = CancellationToken::new();
    let limits = CollectorLimits::new().max_message(1 << 20).max_frames(8);
    let config = CloneServerConfig::loopback().collector_limits(limits);
    let server = CloneServer::start(config, &token).await.unwrap();
    let ep = server.endpoints().clone();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(&ep.publisher);
    recv_until(&sub, "HUGZ", |m| m[0] == b"HUGZ").await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&ep.collector);
    let hostile = Lz::new(zmq::PUSH);
    hostile.connect(&ep.collector);
    let huge = "x".repeat(3 << 20);
    for i in 0..3 {
        hostile
            .send_owned(kvmsg(&format!("/hostile/{i}"), 0, b"", "", &huge))
            .await;
    }
    hostile.send_owned(vec![b"f".to_vec(); 9]).await;
    hostile
        .send_owned(kvmsg("/hostile/small", 0, b"", "", "still heard"))
        .await;
    let good = Lz::new(zmq::PUSH);
    good.connect(&ep.collector);
    good.send_owned(kvmsg("/good", 0, b"", "", "served")).await;
    let mut seen = Vec::new();
    within(secs(20), "the good and the small hostile KVSET", async {
        while seen.len() < 2 {
            if let Some(m) = sub.recv(ms(200)).await {
                if m[0] != b"HUGZ" {
                    seen.push(m[0].clone());
                }
            }
        }
    })
    .await;
    seen.sort();
    assert_eq!(text(&seen), ["/good", "/hostile/small"]);
    let s = stats_until(&server, "refusals counted", |s| {
        s.collector_oversized == 3
            && s.collector_too_many_frames == 1
            && s.collector_wrong_socket_type >= 1
    })
    .await;
    assert_eq!(
        s.store.oversized_kvsets, 3,
        "folded into the store's: {s:?}"
    );
    assert_eq!(s.store.bad_kvsets, 1, "{s:?}");
    assert_eq!(s.collector_push_peers, 2, "{s:?}");
    assert!(
        s.collector_refused >= s.collector_wrong_socket_type,
        "{s:?}"
    );
    assert_eq!(s.keys, 2, "nothing of the refused messages kept: {s:?}");
    assert!(s.bytes < 4096, "{s:?}");
    server.shutdown().await.unwrap();
}

/// Connections that never complete a handshake hold collector slots only
/// for `handshake_timeout`, and at most `max_connections` at once: one more
/// is closed at once and counted. A PUSH client that comes after them is
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_bounded_by_max_connections_and_the_handshake_timeout() {
    trace_init();
    let token = CancellationToken::new();
    let limits = CollectorLimits::new()
        .max_connections(4)
        .handshake_timeout(ms(300));
    let config = CloneServerConfig::loopback().collector_limits(limits);
    let server = CloneServer::start(config, &token).await.unwrap();
    let ep = server.endpoints().clone();
    let target = ep.collector.strip_prefix("tcp://").unwrap().to_owned();
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(tokio::net::TcpStream::connect(&target).await.unwrap());
    }
    let s = stats_until(&server, "the fifth refused, four timed out", |s| {
        s.collector_connections_refused >= 1 && s.collector_refused >= 4
    })
    .await;
    assert_eq!(s.collector_wrong_socket_type, 0, "{s:?}");
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"/after");
    sub.connect(&ep.publisher);
    let push = Lz::new(zmq::PUSH);
    push.connect(&ep.collector);
    // The SUB may join after the first copy went out: repeat the (same)
    // update until it is seen.
    within(
        secs(20),
        "a PUSH client served after the silent ones",
        async {
            loop {
                push.send_owned(kvmsg("/after", 0, b"", "", "ok")).await;
                if sub.recv(ms(200)).await.is_some() {
                    return;
                }
            }
        },
    )
    .await;
    drop(silent);
    server.shutdown().await.unwrap();
}

/// The `zeromq` crate's PUSH never reconnects: the client's PUSH publisher
/// recreates its socket when the server goes away, so a restarted server
/// (same ports) gets the client's later sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_publisher_reconnects_to_a_restarted_server() {
    trace_init();
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    let config = CloneClientConfig::new().collector_socket(CollectorSocket::Push);
    let client = CloneClient::start(config, &token).await.unwrap();
    client
        .connect(ServerAddr::from_endpoints(&ep).unwrap())
        .await
        .unwrap();
    client.set("/before", "1", None).await.unwrap();
    eventually(secs(20), "the first set applied", || {
        server.stats().keys == 1
    })
    .await;
    server.shutdown().await.unwrap();
    let spec = |e: &str| zpatterns::endpoint::EndpointSpec::bind(e).unwrap();
    let again = within(secs(10), "rebind the same ports", async {
        loop {
            let config = CloneServerConfig::new(
                spec(&ep.snapshot),
                spec(&ep.publisher),
                spec(&ep.collector),
            );
            match CloneServer::start(config, &token).await {
                Ok(s) => return s,
                Err(e) => eprintln!("rebind: {e}"),
            }
            tokio::time::sleep(ms(100)).await;
        }
    })
    .await;
    // The first writes after the restart may go to the dead connection
    // (PUSH notices it only when a write fails): keep writing until one
    // arrives.
    within(secs(20), "a set reaches the restarted server", async {
        for i in 0.. {
            client.set("/after", format!("{i}"), None).await.unwrap();
            if again.stats().keys > 0 {
                return;
            }
            tokio::time::sleep(ms(50)).await;
        }
    })
    .await;
    client.shutdown().await.unwrap();
    again.shutdown().await.unwrap();
}
