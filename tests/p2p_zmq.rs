//! The P2P node over ZeroMQ on loopback: three nodes with `DirShare`s in
//! temporary directories (a fetch two hops away, hash verified), and a
//! libzmq peer speaking the documented frames that queries and fetches
//! from a node, is refused a wrong secret, and serves a file to a node.
//! And a hostile libzmq peer refused at every per-peer limit (message
//! size, query rate and concurrency, transfers, peers) while a
//! well-behaved node fetches.

mod common;
use common::*;

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use zpatterns::p2p::msg::{Hit, Msg};
use zpatterns::p2p::{
    code, node_id_for_url, DirShare, FileInfo, Hash, Key, P2p, P2pConfig, P2pError,
};

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2p-zmq-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn node(dir: &PathBuf, secret: &'static [u8], stop: &CancellationToken) -> P2p {
    let cfg = P2pConfig::new("tcp://127.0.0.1:0", Bytes::from_static(secret))
        .query_timeout(Duration::from_secs(2))
        .chunk_size(64 << 10);
    P2p::start(cfg, Box::new(DirShare::new(dir).unwrap()), stop)
        .await
        .unwrap()
}

async fn knows(n: &P2p, url: &str) {
    within(secs(10), "peer known", async {
        loop {
            if n.peers().await.unwrap().iter().any(|(_, u)| u == url) {
                return;
            }
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await;
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fetch_a_file_two_hops_away() {
    trace_init();
    let stop = CancellationToken::new();
    let dirs = [tempdir("a"), tempdir("b"), tempdir("c")];
    let content = pattern(1_000_000);
    std::fs::write(dirs[2].join("far.bin"), &content).unwrap();
    let a = node(&dirs[0], b"sa", &stop).await;
    let b = node(&dirs[1], b"sb", &stop).await;
    let c = node(&dirs[2], b"sc", &stop).await;
    a.hello(b.url()).await.unwrap();
    b.hello(c.url()).await.unwrap();
    knows(&b, a.url()).await;
    knows(&c, b.url()).await;
    assert!(matches!(
        a.fetch("far.bin", b"wrong").await,
        Err(P2pError::AccessDenied)
    ));
    let done = within(secs(30), "fetch", a.fetch("far.bin", b"sa"))
        .await
        .unwrap();
    assert_eq!(done.from, c.url());
    assert_eq!(done.info.hash, Hash::of(&content));
    assert_eq!(std::fs::read(dirs[0].join("far.bin")).unwrap(), content);
    assert!(!dirs[0].join("far.bin.part").exists());
    assert!(matches!(
        a.fetch("nowhere", b"sa").await,
        Err(P2pError::Unhandled)
    ));
    assert!(matches!(
        a.fetch("../x", b"sa").await,
        Err(P2pError::BadPath)
    ));
    assert_eq!(a.peers().await.unwrap().len(), 1);
    let sc = c.shutdown().await.unwrap();
    assert!(sc.chunks_served >= 16, "{sc:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    for d in dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

fn decode(frame: &[u8]) -> Msg {
    Msg::decode(&Bytes::copy_from_slice(frame)).expect("a valid P2P frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_peer_queries_fetches_and_serves() {
    trace_init();
    let stop = CancellationToken::new();
    let dir = tempdir("lz");
    let content = pattern(300_000);
    std::fs::write(dir.join("n.txt"), &content).unwrap();
    let n = node(&dir, b"secret", &stop).await;

    // The libzmq peer: a ROUTER at its URL, a DEALER with the identity its
    // URL gives (`n` + the first four bytes of SHA-256(url), big-endian).
    let router = Lz::new(zmq::ROUTER);
    let purl = router.bind_loopback();
    let pid = node_id_for_url(&purl);
    let dealer = Lz::new(zmq::DEALER);
    dealer.with(|s| s.set_identity(format!("n{}", pid.0).as_bytes()).unwrap());
    dealer.connect(n.url());

    // Query by name.
    let q = Msg::Query {
        qid: 42,
        budget_ms: 1000,
        key: Key::Name("n.txt".into()),
        history: vec![purl.clone()],
    };
    dealer.send(&[&q.encode()]).await;
    let got = dealer.recv(secs(10)).await.expect("hits");
    let Msg::Hits { qid: 42, hits } = decode(&got[0]) else {
        panic!("{got:?}")
    };
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].url, n.url());
    let hash = hits[0].info.hash;
    assert_eq!(hash, Hash::of(&content));
    // Manifest and chunks.
    let getm = Msg::GetManifest {
        req: 1,
        hash,
        chunk_size: 100_000,
    };
    dealer.send(&[&getm.encode()]).await;
    let got = dealer.recv(secs(10)).await.expect("manifest");
    let Msg::Manifest {
        chunks,
        size,
        chunk_size,
        ..
    } = decode(&got[0])
    else {
        panic!("{got:?}")
    };
    assert_eq!((size, chunk_size, chunks.len()), (300_000, 100_000, 3));
    let mut body = Vec::new();
    for (i, want) in chunks.iter().enumerate() {
        let get = Msg::Get {
            req: 1,
            hash,
            index: i as u32,
            chunk_size,
        };
        dealer.send(&[&get.encode()]).await;
        let got = dealer.recv(secs(10)).await.expect("chunk");
        let Msg::Chunk { index, data, .. } = decode(&got[0]) else {
            panic!("{got:?}")
        };
        assert_eq!(index as usize, i);
        assert_eq!(Hash::of(&data), *want);
        body.extend_from_slice(&data);
    }
    assert_eq!(Hash::of(&body), hash);
    // A wrong secret on the FETCH command: 200, and the peer stays.
    let f = Msg::Fetch {
        req: 5,
        secret: Bytes::from_static(b"guess"),
        key: Key::Name("x".into()),
    };
    dealer.send(&[&f.encode()]).await;
    let got = dealer.recv(secs(10)).await.expect("error");
    assert!(matches!(
        decode(&got[0]),
        Msg::Error {
            id: 5,
            code: 200,
            ..
        }
    ));

    // Now the libzmq peer serves a file to the node: HELLO, then answer
    // the node's QUERY, GETM and GETs on the ROUTER.
    let served = pattern(150_000).into_iter().rev().collect::<Vec<u8>>();
    let shash = Hash::of(&served);
    dealer
        .send(&[&Msg::Hello { url: purl.clone() }.encode()])
        .await;
    knows(&n, &purl).await;
    let server = {
        let router = router.clone();
        let served = served.clone();
        let purl = purl.clone();
        tokio::spawn(async move {
            let mut answered = 0;
            while let Some(m) = router.recv(ms(1500)).await {
                let (who, msg) = (m[0].clone(), decode(&m[1]));
                let reply = match msg {
                    Msg::Query { qid, .. } => Msg::Hits {
                        qid,
                        hits: vec![Hit {
                            info: FileInfo {
                                name: "from-libzmq.bin".into(),
                                size: served.len() as u64,
                                hash: Hash::of(&served),
                            },
                            url: purl.clone(),
                        }],
                    },
                    Msg::GetManifest {
                        req, chunk_size, ..
                    } => Msg::Manifest {
                        req,
                        size: served.len() as u64,
                        chunk_size,
                        chunks: served.chunks(chunk_size as usize).map(Hash::of).collect(),
                    },
                    Msg::Get {
                        req,
                        index,
                        chunk_size,
                        ..
                    } => {
                        let cs = chunk_size as usize;
                        let start = index as usize * cs;
                        let end = (start + cs).min(served.len());
                        Msg::Chunk {
                            req,
                            index,
                            data: Bytes::copy_from_slice(&served[start..end]),
                        }
                    }
                    _ => continue,
                };
                router.send(&[&who, &reply.encode()]).await;
                answered += 1;
            }
            answered
        })
    };
    let done = within(
        secs(30),
        "fetch from libzmq",
        n.fetch("from-libzmq.bin", b"secret"),
    )
    .await
    .unwrap();
    assert_eq!(done.from, purl);
    assert_eq!(done.info.hash, shash);
    assert_eq!(std::fs::read(dir.join("from-libzmq.bin")).unwrap(), served);
    let stats = n.shutdown().await.unwrap();
    assert_eq!(stats.access_denied, 1);
    assert!(stats.chunks_received >= 3);
    assert!(server.await.unwrap() >= 5);
    let _ = std::fs::remove_dir_all(dir);
}

/// A libzmq DEALER whose routing identity is the one `url` gives.
fn dealer_as(url: &str, to: &str) -> Lz {
    let d = Lz::new(zmq::DEALER);
    let id = node_id_for_url(url);
    d.with(|s| s.set_identity(format!("n{}", id.0).as_bytes()).unwrap());
    d.connect(to);
    d
}

/// Sends every frame in one blocking task: a flood as fast as libzmq
/// queues it.
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

/// A hostile libzmq peer hits every per-peer limit of a node over ZeroMQ:
/// a frame over `max_message`, a query flood over `query_rate` (RATE 302)
/// and `max_queries_per_peer` (BUSY 301), more transfers at once than
/// `max_transfers_per_peer` (BUSY 301), and HELLOs under many identities
/// over `max_peers`. Every refusal is an ERROR frame, counted; a
/// well-behaved node fetches from the same node meanwhile and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_libzmq_peer_is_refused_at_each_limit_while_a_good_peer_fetches() {
    trace_init();
    const MAX_MESSAGE: usize = 1 << 20;
    const MAX_PEERS: usize = 8;
    const QUERIES: u64 = 100;
    let stop = CancellationToken::new();
    let dir = tempdir("hostile-n");
    let gdir = tempdir("hostile-g");
    let content = pattern(300_000);
    std::fs::write(dir.join("n.txt"), &content).unwrap();
    let small: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i; 1000 + i as usize]).collect();
    for (i, body) in small.iter().enumerate() {
        std::fs::write(dir.join(format!("f{i}.bin")), body).unwrap();
    }
    let cfg = P2pConfig::new("tcp://127.0.0.1:0", Bytes::from_static(b"secret"))
        .query_timeout(Duration::from_secs(2))
        .chunk_size(64 << 10)
        .max_message(MAX_MESSAGE)
        .max_peers(MAX_PEERS);
    let n = P2p::start(cfg, Box::new(DirShare::new(&dir).unwrap()), &stop)
        .await
        .unwrap();
    let g = node(&gdir, b"g", &stop).await;

    // A known peer that never answers, so the node's forwarded queries
    // stay open (they count against the querier's max_queries_per_peer).
    let silent = Lz::new(zmq::ROUTER);
    let silent_url = silent.bind_loopback();
    // (Its DEALER is kept open: LINGER 0 would discard an unsent HELLO.)
    let silent_dealer = dealer_as(&silent_url, n.url());
    silent_dealer
        .send(&[&Msg::Hello {
            url: silent_url.clone(),
        }
        .encode()])
        .await;
    knows(&n, &silent_url).await;

    // The hostile peer: an identity the node has never been told about.
    let hostile_url = "tcp://127.0.0.1:9";
    let hostile = dealer_as(hostile_url, n.url());
    let query = |qid: u64, budget_ms: u32, name: &str| {
        Msg::Query {
            qid,
            budget_ms,
            key: Key::Name(name.into()),
            history: vec![hostile_url.to_owned()],
        }
        .encode()
        .to_vec()
    };

    // 1. A frame over max_message is dropped and counted; the next query
    //    is answered (with the node's own hit, once the silent peer's
    //    share of the budget ran out).
    blast(
        &hostile,
        vec![vec![0u8; MAX_MESSAGE + 1], query(1, 400, "n.txt")],
    )
    .await;
    let got = hostile.recv(secs(10)).await.expect("hits");
    let Msg::Hits { qid: 1, hits } = decode(&got[0]) else {
        panic!("{got:?}")
    };
    assert_eq!(hits.len(), 1);
    assert_eq!(n.stats().garbage, 1);

    // 2. A query flood (rate and concurrency) and six transfers at once.
    let mut frames: Vec<Vec<u8>> = (0..QUERIES)
        .map(|i| query(100 + i, 1500, "nowhere"))
        .collect();
    for (i, body) in small.iter().enumerate() {
        let m = Msg::GetManifest {
            req: 10_000 + i as u64,
            hash: Hash::of(body),
            chunk_size: 4096,
        };
        frames.push(m.encode().to_vec());
    }
    blast(&hostile, frames).await;
    let f5 = small[5].clone();
    let wanted = small.len();
    let answers = {
        let hostile = hostile.clone();
        tokio::spawn(async move {
            let mut queries = std::collections::BTreeMap::new();
            let mut transfers = std::collections::BTreeMap::new();
            while queries.len() < QUERIES as usize || transfers.len() < wanted {
                let Some(m) = hostile.recv(secs(10)).await else {
                    panic!("answers missing: {queries:?} {transfers:?}");
                };
                let (id, answer) = match decode(&m[0]) {
                    Msg::Hits { qid, .. } => (qid, 0),
                    Msg::Manifest { req, .. } => (req, 0),
                    Msg::Error { id, code, .. } => (id, code),
                    other => panic!("{other:?}"),
                };
                let table = if id >= 10_000 {
                    &mut transfers
                } else {
                    &mut queries
                };
                assert!(table.insert(id, answer).is_none(), "{id} answered twice");
            }
            (queries, transfers)
        })
    };
    // A well-behaved node fetches from the same node meanwhile.
    g.hello(n.url()).await.unwrap();
    knows(&n, g.url()).await;
    let done = within(secs(30), "good fetch", g.fetch("n.txt", b"g"))
        .await
        .unwrap();
    assert_eq!(done.info.hash, Hash::of(&content));
    let (queries, transfers) = answers.await.unwrap();

    let count =
        |t: &std::collections::BTreeMap<u64, u32>, c: u32| t.values().filter(|v| **v == c).count();
    let (ok, busy, rate) = (
        count(&queries, 0),
        count(&queries, code::BUSY),
        count(&queries, code::RATE),
    );
    eprintln!("{QUERIES} queries: {ok} handled, {busy} BUSY, {rate} RATE");
    assert_eq!(ok + busy + rate, QUERIES as usize, "{queries:?}");
    assert!(ok <= 16, "{ok} queries worked on at once");
    assert!(busy > 0 && rate > 0, "{queries:?}");
    assert!(
        rate >= QUERIES as usize - 50,
        "a burst of at most 50: {rate} RATE"
    );
    assert_eq!(count(&transfers, 0), 4, "{transfers:?}");
    assert_eq!(count(&transfers, code::BUSY), 2, "{transfers:?}");
    let s = n.stats();
    assert_eq!(s.refused_rate, rate as u64);
    assert_eq!(s.refused_busy, busy as u64 + 2);

    // 3. HELLOs under twelve identities: the node keeps at most
    //    max_peers peers. (The good node is known; the silent peer may
    //    have been dropped by now for its timeouts.)
    let known = n.peers().await.unwrap().len() as u64;
    let fakes: Vec<Lz> = (0..12u16)
        .map(|i| {
            let url = format!("tcp://127.0.0.1:{}", 20_001 + i);
            let d = dealer_as(&url, n.url());
            (d, url)
        })
        .map(|(d, url)| {
            d.with(|s| s.send(Msg::Hello { url }.encode().to_vec(), 0).unwrap());
            d
        })
        .collect();
    eventually(secs(10), "HELLOs refused", || {
        n.stats().peers_refused == 12 - (MAX_PEERS as u64 - known)
    })
    .await;
    assert_eq!(n.peers().await.unwrap().len(), MAX_PEERS);
    // The good node is still served.
    let done = within(secs(30), "good fetch after", g.fetch("f5.bin", b"g"))
        .await
        .unwrap();
    assert_eq!(done.info.hash, Hash::of(&f5));
    drop((fakes, silent_dealer));
    g.shutdown().await.unwrap();
    n.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(gdir);
}

/// A requester that asks for chunks and reads none of them holds at most
/// its share of the node's unsent bytes (the transport's
/// `ZmqConfig::unsent_bytes`, 16 MiB per destination by default), not the
/// 250 MiB it asked for, and a good node fetches from the same node
/// meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_that_never_reads_its_chunks_holds_at_most_its_unsent_share() {
    trace_init();
    const CHUNK: u32 = 64 << 10;
    const GETS: u32 = 4_000;
    const SHARE: u64 = 16 << 20;
    let stop = CancellationToken::new();
    let dir = tempdir("deaf-n");
    let gdir = tempdir("deaf-g");
    let content = pattern(4 << 20);
    std::fs::write(dir.join("n.bin"), &content).unwrap();
    let hash = Hash::of(&content);
    let cfg = P2pConfig::new("tcp://127.0.0.1:0", Bytes::from_static(b"secret")).chunk_size(CHUNK);
    let n = P2p::start(cfg, Box::new(DirShare::new(&dir).unwrap()), &stop)
        .await
        .unwrap();
    let g = node(&gdir, b"g", &stop).await;
    let deaf = dealer_as("tcp://127.0.0.1:9", n.url());
    deaf.with(|s| s.set_rcvhwm(1).unwrap());
    let chunks = (content.len() as u32).div_ceil(CHUNK);
    let gets: Vec<Vec<u8>> = (0..GETS)
        .map(|i| {
            Msg::Get {
                req: u64::from(i),
                hash,
                index: i % chunks,
                chunk_size: CHUNK,
            }
            .encode()
            .to_vec()
        })
        .collect();
    let before = rss_kib();
    let flood = {
        let deaf = deaf.clone();
        tokio::spawn(async move { blast(&deaf, gets).await })
    };
    // A well-behaved node fetches meanwhile.
    g.hello(n.url()).await.unwrap();
    knows(&n, g.url()).await;
    let mut peak = 0;
    let done = {
        let fetch = g.fetch("n.bin", b"g");
        tokio::pin!(fetch);
        within(secs(60), "good fetch", async {
            loop {
                tokio::select! {
                    r = &mut fetch => break r,
                    _ = tokio::time::sleep(ms(5)) => peak = peak.max(n.transport_stats().unsent_bytes),
                }
            }
        })
        .await
        .unwrap()
    };
    assert_eq!(done.info.hash, hash);
    flood.await.unwrap();
    eventually(secs(60), "every GET served", || {
        peak = peak.max(n.transport_stats().unsent_bytes);
        n.stats().chunks_served >= u64::from(GETS)
    })
    .await;
    let grown = rss_kib().saturating_sub(before);
    let t = n.transport_stats();
    eprintln!(
        "{GETS} GETs of {} KiB never read: {:?}; transport {t:?}; peak unsent {peak} B; RSS +{grown} KiB",
        CHUNK >> 10,
        n.stats()
    );
    // The gauge counts every destination: the deaf requester's share plus
    // the good node's chunks in flight (its credit of 8).
    assert!(peak <= SHARE + 8 * u64::from(CHUNK + 64), "peak {peak}");
    assert!(t.dropped > u64::from(GETS) / 2, "{t:?}");
    assert!(grown < 96 << 10, "RSS grew by {grown} KiB");
    drop(deaf);
    g.shutdown().await.unwrap();
    n.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir_all(gdir);
}
