//! Clone / CHP against real libzmq 4.3 peers: a libzmq CHP client against
//! this crate's server, this crate's client against a minimal libzmq CHP
//! server, and large snapshots arriving whole at a libzmq client. Frames are
//! built by hand here (not with this crate's codec) so the wire format is
//! checked independently.

mod common;
use common::chp::{kvmsg, recv_until, seq_of, Frames};
use common::*;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::clone::{
    CloneClient, CloneClientConfig, CloneServer, CloneServerConfig, KvMsg, Phase, ServerAddr,
    StoreConfig,
};

/// A KVSET with a UUID of its own (servers drop a UUID they applied
/// recently as a re-sent duplicate).
fn kvset(key: &str, value: &str, props: &str) -> Frames {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut uuid = vec![0xAB; 8];
    uuid.extend_from_slice(&n.to_be_bytes());
    kvmsg(key, 0, &uuid, props, value)
}

/// A libzmq PUB connected to the collector, proven live: it repeats a probe
/// KVSET until the server publishes it.
async fn live_publisher(collector: &str, updates: &Lz) -> Lz {
    let publisher = Lz::new(zmq::PUB);
    // CHP sends KVSETs over PUB, which drops at the HWM (reference bug 10):
    // no HWM here, so the tests see what the server does with every update
    // rather than what a busy machine let libzmq drop.
    publisher.with(|s| s.set_sndhwm(0).unwrap());
    publisher.connect(collector);
    within(secs(20), "collector subscription", async {
        loop {
            publisher.send_owned(kvset("/client/probe", "p", "")).await;
            if let Some(m) = updates.recv(ms(100)).await {
                if m[0] == b"/client/probe" {
                    return;
                }
            }
        }
    })
    .await;
    publisher
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libzmq_chp_client_against_this_server() {
    trace_init();
    let token = CancellationToken::new();
    let server = CloneServer::start(CloneServerConfig::loopback(), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    // CHP client: SUB first (subtree + HUGZ), as clonecli4/5 should.
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"/client/");
    sub.subscribe(b"HUGZ");
    sub.connect(&ep.publisher);
    let hugz = recv_until(&sub, "HUGZ", |m| m[0] == b"HUGZ").await;
    assert_eq!(hugz.len(), 5);
    assert!(hugz[2].is_empty() && hugz[4].is_empty());
    // Frame 3 names the server instance (an extension; CHP leaves it empty).
    assert!(hugz[3].starts_with(b"instance=") && hugz[3].ends_with(b"\n"));
    let publisher = live_publisher(&ep.collector, &sub).await;

    publisher.send_owned(kvset("/other/x", "hidden", "")).await;
    let sent_a = kvset("/client/a", "1", "");
    publisher.send_owned(sent_a.clone()).await;
    publisher
        .send_owned(kvset("/client/eph", "brief", "ttl=1\n"))
        .await;
    let a = recv_until(&sub, "/client/a", |m| m[0] == b"/client/a").await;
    let eph = recv_until(&sub, "/client/eph", |m| m[0] == b"/client/eph").await;
    assert_eq!(a[2], sent_a[2], "the writer's UUID is propagated");
    assert_eq!(eph[3], b"ttl=1\n", "KVPUB carries the relative ttl");
    assert_eq!(seq_of(&eph), seq_of(&a) + 1);
    assert!(server.stats().sequence >= seq_of(&eph));

    // Snapshot of the subtree only, KTHXBAI carrying the subtree.
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&ep.snapshot);
    dealer.send(&[b"ICANHAZ?", b"/client/"]).await;
    let mut snapshot = HashMap::new();
    let end = loop {
        let m = dealer.recv(secs(10)).await.expect("snapshot");
        assert_eq!(m.len(), 5);
        if m[0] == b"KTHXBAI" {
            break m;
        }
        snapshot.insert(String::from_utf8(m[0].clone()).unwrap(), m);
    };
    assert_eq!(end[4], b"/client/");
    assert!(seq_of(&end) >= seq_of(&eph));
    let mut keys: Vec<_> = snapshot.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["/client/a", "/client/eph", "/client/probe"]);
    let ttl = String::from_utf8(snapshot["/client/eph"][3].clone()).unwrap();
    assert_eq!(ttl, "ttl=1\n", "remaining seconds, not an epoch");

    // Expiry: a delete (empty body) with a new sequence.
    let del = recv_until(&sub, "expiry delete", |m| m[0] == b"/client/eph").await;
    assert!(del[4].is_empty());
    assert!(seq_of(&del) > seq_of(&eph));

    // Garbage is counted, not fatal.
    publisher.send(&[b"/client/bad", b"short"]).await;
    dealer.send(&[b"GIMME", b""]).await;
    publisher.send_owned(kvset("/client/after", "ok", "")).await;
    let after = recv_until(&sub, "server still works", |m| m[0] == b"/client/after").await;
    eventually(secs(10), "bad input counted", || {
        let s = server.stats();
        s.store.bad_kvsets == 1 && s.store.bad_requests == 1
    })
    .await;
    // Subtree filtering: everything this SUB receives, up to a marker sent
    // after one more update outside the subtree, is in the subtree or HUGZ.
    publisher.send_owned(kvset("/other/y", "hidden", "")).await;
    publisher.send_owned(kvset("/client/marker", "m", "")).await;
    let mut seen = Vec::new();
    let marker = recv_until(&sub, "the marker", |m| {
        seen.push(m[0].clone());
        m[0] == b"/client/marker"
    })
    .await;
    assert!(
        seen.iter()
            .all(|k| k.starts_with(b"/client/") || k == b"HUGZ"),
        "subtree filtering: {:?}",
        text(&seen)
    );
    assert_eq!(
        seq_of(&marker),
        seq_of(&after) + 2,
        "/other/y was sequenced (and filtered) in between"
    );
    server.shutdown().await.unwrap();
}

/// A minimal CHP server on libzmq: ROUTER, PUB, SUB in one thread, C-style
/// (KTHXBAI with an empty body, HUGZ with the current sequence).
struct LzServer {
    stop: Arc<AtomicBool>,
    addr: ServerAddr,
    inject: std::sync::mpsc::Sender<Frames>,
    thread: Option<std::thread::JoinHandle<HashMap<Vec<u8>, Vec<u8>>>>,
}

impl LzServer {
    fn start(seed: &[(&str, &str)]) -> Self {
        let router = lz_ctx().socket(zmq::ROUTER).unwrap();
        let publisher = lz_ctx().socket(zmq::PUB).unwrap();
        let collector = lz_ctx().socket(zmq::SUB).unwrap();
        let mut eps = Vec::new();
        for s in [&router, &publisher, &collector] {
            s.set_linger(0).unwrap();
            s.bind("tcp://127.0.0.1:*").unwrap();
            eps.push(s.get_last_endpoint().unwrap().unwrap());
        }
        collector.set_subscribe(b"").unwrap();
        let addr = ServerAddr::new(&eps[0], &eps[1], &eps[2]).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut map: HashMap<Vec<u8>, (u64, Vec<u8>)> = HashMap::new();
        let mut seq = 0u64;
        for (k, v) in seed {
            seq += 1;
            map.insert(k.as_bytes().to_vec(), (seq, v.as_bytes().to_vec()));
        }
        let flag = stop.clone();
        let (inject, injected) = std::sync::mpsc::channel::<Frames>();
        let thread = std::thread::spawn(move || {
            let mut next_hugz = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                // An injected KVSET is handled as if the collector got it.
                while let Ok(mut m) = injected.try_recv() {
                    seq += 1;
                    m[1] = seq.to_be_bytes().to_vec();
                    publisher.send_multipart(m.clone(), 0).unwrap();
                    map.insert(m[0].clone(), (seq, m[4].clone()));
                }
                let mut items = [
                    router.as_poll_item(zmq::POLLIN),
                    collector.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, 100).unwrap();
                if items[0].is_readable() {
                    let req = router.recv_multipart(0).unwrap();
                    if req.len() == 3 && req[1] == b"ICANHAZ?" {
                        for (k, (s, v)) in map.iter().filter(|(k, _)| k.starts_with(&req[2])) {
                            let f: Frames = vec![
                                req[0].clone(),
                                k.clone(),
                                s.to_be_bytes().to_vec(),
                                vec![],
                                vec![],
                                v.clone(),
                            ];
                            router.send_multipart(f, 0).unwrap();
                        }
                        let end: Frames = vec![
                            req[0].clone(),
                            b"KTHXBAI".to_vec(),
                            seq.to_be_bytes().to_vec(),
                            vec![],
                            vec![],
                            vec![],
                        ];
                        router.send_multipart(end, 0).unwrap();
                    }
                }
                if items[1].is_readable() {
                    let mut m = collector.recv_multipart(0).unwrap();
                    if m.len() == 5 {
                        seq += 1;
                        m[1] = seq.to_be_bytes().to_vec();
                        publisher.send_multipart(m.clone(), 0).unwrap();
                        if m[4].is_empty() {
                            map.remove(&m[0]);
                        } else {
                            map.insert(m[0].clone(), (seq, m[4].clone()));
                        }
                    }
                }
                if Instant::now() >= next_hugz {
                    let h: Frames = vec![
                        b"HUGZ".to_vec(),
                        seq.to_be_bytes().to_vec(),
                        vec![],
                        vec![],
                        vec![],
                    ];
                    publisher.send_multipart(h, 0).unwrap();
                    next_hugz = Instant::now() + Duration::from_secs(1);
                }
            }
            map.into_iter().map(|(k, (_, v))| (k, v)).collect()
        });
        Self {
            stop,
            addr,
            inject,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn this_client_against_a_libzmq_chp_server() {
    trace_init();
    let token = CancellationToken::new();
    let server = LzServer::start(&[("/x/1", "one"), ("/x/2", "two"), ("/y/1", "other")]);
    let client = CloneClient::start(CloneClientConfig::new(), &token)
        .await
        .unwrap();
    client.subtree("/x/").await.unwrap();
    client.connect(server.addr.clone()).await.unwrap();
    within(secs(20), "synced from libzmq", client.wait_active())
        .await
        .unwrap();
    let keys: Vec<_> = client.entries().await.unwrap();
    assert_eq!(keys.len(), 2, "subtree only: {keys:?}");
    client.set("/x/3", "three", None).await.unwrap();
    client.set("/x/1", "", None).await.unwrap();
    // The server's echoes carry its sequence: 3 seeded + 2 sets.
    within(secs(20), "echoes applied", async {
        while !matches!(client.phase(), Phase::Active { seq: 5.., .. }) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let map = server.stop();
    assert_eq!(
        map.get(&b"/x/3"[..]).map(Vec::as_slice),
        Some(&b"three"[..])
    );
    assert!(!map.contains_key(&b"/x/1"[..]));
    assert_eq!(
        client.get("/x/3").await.unwrap().as_deref(),
        Some(&b"three"[..])
    );
    token.cancel();
}

fn preloaded(n: usize) -> Vec<KvMsg> {
    preloaded_with(n, 0)
}

fn preloaded_with(n: usize, pad: usize) -> Vec<KvMsg> {
    let padding = "x".repeat(pad);
    (0..n)
        .map(|i| KvMsg::new(format!("/k/{i:07}"), format!("v{i}{padding}")).unwrap())
        .collect()
}

/// Reference bugs 5 and 6: a large snapshot sent in one burst can be dropped
/// at the HWM, and updates during it can overflow the client's queue. Here
/// a libzmq DEALER with default options gets every entry of an N-key
/// snapshot plus KTHXBAI, and the updates published meanwhile are all
/// there afterwards (the client buffers its SUB in memory while it reads).
async fn large_snapshot_reaches_libzmq_whole(n: usize) {
    trace_init();
    let token = CancellationToken::new();
    let started = Instant::now();
    let server = CloneServer::start_preloaded(CloneServerConfig::loopback(), preloaded(n), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(&ep.publisher);
    recv_until(&sub, "HUGZ", |m| m[0] == b"HUGZ").await;
    let publisher = live_publisher(&ep.collector, &sub).await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&ep.snapshot);
    dealer.send(&[b"ICANHAZ?", b""]).await;
    // Updates while the snapshot streams. The writer hands its PUB back:
    // it has LINGER 0, so closing it while the busy collector has not yet
    // read everything would discard the tail of the updates, and the
    // server could never apply them all (this flaked under load).
    let writer = tokio::spawn(async move {
        for i in 0..1000 {
            publisher
                .send_owned(kvset(&format!("/live/{i}"), &format!("u{i}"), ""))
                .await;
        }
        publisher
            .send_owned(kvset("/k/0000000", "changed", ""))
            .await;
        publisher
    });
    let (d, s) = (dealer.clone(), sub.clone());
    let read = tokio::task::spawn_blocking(move || {
        d.with(|dealer| s.with(|sub| read_snapshot_and_updates(dealer, sub)))
    });
    let _publisher = writer.await.unwrap();
    let (map, kthxbai_seq, snapshot_len) = within(secs(170), "snapshot", read).await.unwrap();
    assert!(snapshot_len > n, "every preloaded key (and the probe)");
    assert!(kthxbai_seq >= n as u64);
    eventually(secs(30), "server applied all updates", || {
        server.stats().keys == n + 1001
    })
    .await;
    // The live updates arrive after the snapshot: keep reading until the
    // client's map matches the server's.
    let sub_final = sub.clone();
    let final_map = within(secs(60), "converge", async move {
        let mut map = map;
        let mut last = kthxbai_seq;
        while map.len() < n + 1001
            || map.get(&b"/k/0000000"[..]).map(Vec::as_slice) != Some(b"changed")
        {
            if let Some(m) = sub_final.recv(secs(1)).await {
                apply(&mut map, &mut last, m);
            }
        }
        map
    })
    .await;
    assert_eq!(final_map.len(), n + 1001);
    for i in (0..1000).step_by(97) {
        assert_eq!(
            final_map[format!("/live/{i}").as_bytes()],
            format!("u{i}").into_bytes()
        );
    }
    eprintln!(
        "{n}-key snapshot + 1000 concurrent updates: {:?} total",
        started.elapsed()
    );
    token.cancel();
}

/// Applies a KVPUB with `seq > last` (CHP), checking there is no gap.
fn apply(map: &mut HashMap<Vec<u8>, Vec<u8>>, last: &mut u64, m: Frames) {
    if m[0] == b"HUGZ" || seq_of(&m) <= *last {
        return;
    }
    assert_eq!(seq_of(&m), *last + 1, "no update lost");
    *last = seq_of(&m);
    if m[4].is_empty() {
        map.remove(&m[0]);
    } else {
        map.insert(m[0].clone(), m[4].clone());
    }
}

/// Reads the DEALER to KTHXBAI while buffering the SUB in memory (poll on
/// both), then applies the buffered updates above the snapshot sequence.
fn read_snapshot_and_updates(
    dealer: &zmq::Socket,
    sub: &zmq::Socket,
) -> (HashMap<Vec<u8>, Vec<u8>>, u64, usize) {
    let mut map = HashMap::new();
    let mut buffered = Vec::new();
    let mut entries = 0;
    let seq = loop {
        let mut items = [
            dealer.as_poll_item(zmq::POLLIN),
            sub.as_poll_item(zmq::POLLIN),
        ];
        zmq::poll(&mut items, 30_000).unwrap();
        assert!(
            items[0].is_readable() || items[1].is_readable(),
            "snapshot stalled"
        );
        if items[1].is_readable() {
            buffered.push(sub.recv_multipart(0).unwrap());
        }
        if items[0].is_readable() {
            let m = dealer.recv_multipart(0).unwrap();
            if m[0] == b"KTHXBAI" {
                break seq_of(&m);
            }
            entries += 1;
            map.insert(m[0].clone(), m[4].clone());
        }
    };
    let mut last = seq;
    for m in buffered {
        apply(&mut map, &mut last, m);
    }
    (map, seq, entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_key_snapshot_with_concurrent_updates_reaches_libzmq_whole() {
    large_snapshot_reaches_libzmq_whole(1_000_000).await;
}

/// Reference bug 6's other half: a snapshot must not stall the server. A
/// libzmq client asks for 200,000 keys of 200 bytes (more than every queue
/// and socket buffer on the way holds) and never reads them; meanwhile
/// updates flow and another client gets its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_snapshot_reader_does_not_hold_up_others() {
    trace_init();
    let token = CancellationToken::new();
    let n = 200_000;
    let server = CloneServer::start_preloaded(
        CloneServerConfig::loopback(),
        preloaded_with(n, 200),
        &token,
    )
    .await
    .unwrap();
    let ep = server.endpoints().clone();
    let stalled = Lz::new(zmq::DEALER);
    stalled.connect(&ep.snapshot);
    stalled.send(&[b"ICANHAZ?", b""]).await;
    // Wait until the stalled stream has filled the ROUTER's 100,000-message
    // queue for that peer (and the buffers behind it) and is stuck.
    eventually(secs(60), "the stalled stream filled its queue", || {
        server.stats().kvsyncs_sent >= 100_000
    })
    .await;
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(&ep.publisher);
    let _publisher = live_publisher(&ep.collector, &sub).await;
    let other = Lz::new(zmq::DEALER);
    other.connect(&ep.snapshot);
    other.send(&[b"ICANHAZ?", b"/client/"]).await;
    let got = within(secs(10), "second snapshot", async {
        let mut n = 0;
        loop {
            let m = other.recv(secs(10)).await.expect("snapshot");
            if m[0] == b"KTHXBAI" {
                return n;
            }
            n += 1;
        }
    })
    .await;
    assert_eq!(got, 1, "only /client/probe");
    eventually(secs(10), "second snapshot counted", || {
        server.stats().snapshots_completed == 1
    })
    .await;
    let stats = server.stats();
    assert_eq!(
        stats.snapshots_streaming, 1,
        "the stalled one is still waiting"
    );
    assert!(
        stats.kvsyncs_sent < n as u64 + 1,
        "the stalled one did not finish: {stats:?}"
    );
    drop(stalled);
    token.cancel();
}

/// Limits on the server's inputs: a hostile libzmq PUB sends KVSETs with
/// 32 MiB values to the collector and a hostile libzmq DEALER sends an
/// `ICANHAZ?` with an 8 MiB subtree. Both are dropped and counted, nothing
/// of them is kept, and a well-behaved libzmq client's update is still
/// published and its snapshot still arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_oversized_messages_are_dropped_while_others_are_served() {
    trace_init();
    let token = CancellationToken::new();
    let store = StoreConfig::new().max_kvset_size(1 << 20);
    let server = CloneServer::start(CloneServerConfig::loopback().store(store), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"");
    sub.connect(&ep.publisher);
    let good = live_publisher(&ep.collector, &sub).await;
    let rss_before = rss_kib();
    let hostile = Lz::new(zmq::PUB);
    hostile.with(|s| s.set_sndhwm(0).unwrap());
    hostile.connect(&ep.collector);
    // Wait for the hostile PUB's subscription: its small probe arrives.
    within(secs(20), "hostile collector subscription", async {
        loop {
            hostile.send_owned(kvset("/hostile/probe", "p", "")).await;
            if let Some(m) = sub.recv(ms(100)).await {
                if m[0] == b"/hostile/probe" {
                    return;
                }
            }
        }
    })
    .await;
    let huge = "x".repeat(32 << 20);
    for i in 0..4 {
        hostile
            .send_owned(kvset(&format!("/hostile/{i}"), &huge, ""))
            .await;
    }
    let asker = Lz::new(zmq::DEALER);
    asker.connect(&ep.snapshot);
    asker.send(&[b"ICANHAZ?", &vec![b'/'; 8 << 20]]).await;
    eventually(secs(60), "oversized input counted", || {
        let s = server.stats();
        s.store.oversized_kvsets == 4 && s.store.oversized_requests == 1
    })
    .await;
    let rss_after = rss_kib();
    eprintln!(
        "oversized: VmRSS {rss_before} KiB before, {rss_after} KiB after 4 x 32 MiB KVSETs \
         and an 8 MiB ICANHAZ? (limit 1 MiB)"
    );
    // The well-behaved peers are served.
    good.send_owned(kvset("/client/ok", "fine", "")).await;
    recv_until(&sub, "the good update", |m| m[0] == b"/client/ok").await;
    let dealer = Lz::new(zmq::DEALER);
    dealer.connect(&ep.snapshot);
    dealer.send(&[b"ICANHAZ?", b"/client/"]).await;
    let mut keys = Vec::new();
    loop {
        let m = dealer.recv(secs(10)).await.expect("snapshot");
        if m[0] == b"KTHXBAI" {
            break;
        }
        keys.push(m[0].clone());
    }
    assert_eq!(text(&keys), ["/client/ok", "/client/probe"]);
    let s = server.stats();
    assert_eq!(s.keys, 3, "nothing of the hostile messages kept: {s:?}");
    assert!(s.bytes < 4096, "{s:?}");
    assert_eq!(
        asker.recv(ms(100)).await,
        None,
        "no reply to an oversized request"
    );
    server.shutdown().await.unwrap();
}

/// Store limits: a hostile libzmq PUB floods distinct keys (`max_keys`),
/// then grows its keys' values (`max_store_bytes`). The excess is refused
/// and counted, the store stays within both bounds, and a well-behaved
/// crate client still syncs and updates its own (existing) key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_key_flood_is_bounded_by_the_store_limits() {
    trace_init();
    let token = CancellationToken::new();
    let (max_keys, max_bytes) = (1000, 4 << 20);
    let store = StoreConfig::new()
        .max_keys(max_keys)
        .max_store_bytes(max_bytes);
    let server = CloneServer::start(CloneServerConfig::loopback().store(store), &token)
        .await
        .unwrap();
    let ep = server.endpoints().clone();
    let addr = ServerAddr::from_endpoints(&ep).unwrap();
    let good = CloneClient::start(CloneClientConfig::new(), &token)
        .await
        .unwrap();
    good.subtree("/good/").await.unwrap();
    good.connect(addr.clone()).await.unwrap();
    within(secs(20), "good client active", good.wait_active())
        .await
        .unwrap();
    good.set("/good/mine", "1", None).await.unwrap();
    eventually(secs(20), "the good key stored", || server.stats().keys == 1).await;
    // `live_publisher`'s probe is the second key.
    let sub = Lz::new(zmq::SUB);
    sub.subscribe(b"/client/");
    sub.connect(&ep.publisher);
    let hostile = live_publisher(&ep.collector, &sub).await;
    let rss_before = rss_kib();
    let handled = || {
        let s = server.stats();
        s.store.updates + s.store.kvsets_refused
    };
    let base = handled();
    let flood = 20_000;
    for i in 0..flood {
        hostile
            .send_owned(kvset(&format!("/hostile/{i}"), "v", ""))
            .await;
    }
    eventually(secs(60), "the flood handled", || handled() == base + flood).await;
    let s = server.stats();
    assert_eq!(s.keys, max_keys, "{s:?}");
    assert!(s.store.kvsets_refused >= flood - max_keys as u64, "{s:?}");
    // Now grow the stored hostile keys' values to 64 KiB each.
    let big = "y".repeat(64 << 10);
    let refused_before = s.store.kvsets_refused;
    for i in 0..200 {
        hostile
            .send_owned(kvset(&format!("/hostile/{i}"), &big, ""))
            .await;
    }
    eventually(secs(60), "the growth handled", || {
        handled() == base + flood + 200
    })
    .await;
    let s = server.stats();
    assert!(s.bytes <= max_bytes, "{s:?}");
    assert!(s.store.kvsets_refused > refused_before, "{s:?}");
    eprintln!(
        "key flood: VmRSS {rss_before} KiB before, {} KiB after {flood} keys + 200 x 64 KiB \
         (max_keys {max_keys}, max_store_bytes {max_bytes}): {} keys, {} bytes kept",
        rss_kib(),
        s.keys,
        s.bytes
    );
    // The good client: an update of its existing key is published, and a
    // new client syncs the whole (bounded) store.
    good.set("/good/mine", "2", None).await.unwrap();
    let watcher = CloneClient::start(CloneClientConfig::new(), &token)
        .await
        .unwrap();
    watcher.connect(addr).await.unwrap();
    within(secs(20), "watcher active", watcher.wait_active())
        .await
        .unwrap();
    within(secs(20), "the good update reaches the watcher", async {
        while watcher.get("/good/mine").await.unwrap().as_deref() != Some(&b"2"[..]) {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    assert_eq!(watcher.stats().keys, max_keys);
    server.shutdown().await.unwrap();
}

/// Pending snapshot requests: a hostile libzmq DEALER sends 20 `ICANHAZ?`
/// for a 150,000-key store and never reads. Two stream (and stall on its
/// full queue), the other 18 are refused; a well-behaved libzmq DEALER
/// still gets its snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_snapshot_requests_are_bounded_per_peer() {
    trace_init();
    let token = CancellationToken::new();
    let server =
        CloneServer::start_preloaded(CloneServerConfig::loopback(), preloaded(150_000), &token)
            .await
            .unwrap();
    let ep = server.endpoints().clone();
    let hostile = Lz::new(zmq::DEALER);
    hostile.connect(&ep.snapshot);
    for _ in 0..20 {
        hostile.send(&[b"ICANHAZ?", b""]).await;
    }
    eventually(secs(60), "all 20 requests handled", || {
        let s = server.stats();
        s.store.snapshot_requests + s.store.snapshots_refused == 20
    })
    .await;
    let s = server.stats();
    assert_eq!(s.store.snapshots_refused, 18, "{s:?}");
    let good = Lz::new(zmq::DEALER);
    good.connect(&ep.snapshot);
    good.send(&[b"ICANHAZ?", b"/k/000000"]).await;
    let mut n = 0;
    loop {
        let m = good.recv(secs(10)).await.expect("snapshot");
        if m[0] == b"KTHXBAI" {
            break;
        }
        n += 1;
    }
    assert_eq!(n, 10, "/k/0000000 to /k/0000009");
    let s = server.stats();
    assert!(
        s.snapshots_streaming <= 2 && s.snapshots_queued == 0,
        "{s:?}"
    );
    drop(hostile);
    token.cancel();
}

/// The client's input limit: a libzmq CHP server publishes a 4 MiB update
/// to a client whose `max_message_size` is 1 MiB. It is dropped and
/// counted, and the next update is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_update_is_dropped_by_the_client() {
    trace_init();
    let token = CancellationToken::new();
    let server = LzServer::start(&[("/x/1", "one")]);
    let config = CloneClientConfig::new().max_message_size(1 << 20);
    let client = CloneClient::start(config, &token).await.unwrap();
    client.subtree("/x/").await.unwrap();
    client.connect(server.addr.clone()).await.unwrap();
    within(secs(20), "synced from libzmq", client.wait_active())
        .await
        .unwrap();
    server
        .inject
        .send(kvset("/x/huge", &"z".repeat(4 << 20), ""))
        .unwrap();
    server.inject.send(kvset("/x/after", "small", "")).unwrap();
    within(secs(20), "the update after it applied", async {
        while client.get("/x/after").await.unwrap().is_none() {
            tokio::time::sleep(ms(20)).await;
        }
    })
    .await;
    let stats = client.stats();
    assert_eq!(stats.agent.oversized, 1, "{stats:?}");
    assert_eq!(client.get("/x/huge").await.unwrap(), None);
    let map = server.stop();
    assert!(map.contains_key(&b"/x/huge"[..]), "the server did send it");
    client.shutdown().await.unwrap();
}
