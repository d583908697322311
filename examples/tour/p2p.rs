//! Tour section: P2P file sharing over ZeroMQ on loopback. Nodes in a
//! cycle, each sharing its own temporary directory: a `hello` is answered
//! by the peer adding the sender, so links go both ways, and a cycle of
//! three would be a triangle where everyone is one hop away; the ring has
//! four nodes (A - B - C - D - A) so the file on C is two hops from A
//! whichever way the query goes, and the query comes back around the
//! cycle (each node handles its id once). The file is fetched in verified
//! chunks and the stored copy's SHA-256 checked again here; then a
//! path-traversal name is refused exactly like a name that does not
//! exist, on A's writing side and on C's serving side (asked by a raw
//! ZeroMQ DEALER speaking the documented frames), so the refusal reveals
//! nothing.

use std::path::Path;

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use zeromq::{Socket, SocketRecv, SocketSend};
use zpatterns::p2p::msg::Msg;
use zpatterns::p2p::{node_id_for_url, DirShare, Hash, Key, P2p, P2pConfig};

const SECRET: &str = "tour-secret";

async fn node(dir: &Path, parent: &CancellationToken) -> anyhow::Result<P2p> {
    let cfg = P2pConfig::new("tcp://127.0.0.1:0", SECRET).chunk_size(64 << 10);
    Ok(P2p::start(cfg, Box::new(DirShare::new(dir)?), parent).await?)
}

async fn scenario(base: &Path) -> anyhow::Result<()> {
    let dirs: Vec<_> = ["a", "b", "c", "d"].iter().map(|n| base.join(n)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    // 3 MiB of pseudo-random bytes on C only, and a file outside every
    // share, next to the shares' directories.
    let mut rng = fastrand::Rng::with_seed(13);
    let mut body = vec![0u8; 3 << 20];
    rng.fill(&mut body);
    std::fs::write(dirs[2].join("report.bin"), &body)?;
    std::fs::write(base.join("secret.txt"), b"not shared")?;
    let want = Hash::of(&body);

    let parent = CancellationToken::new();
    let mut ring = Vec::new();
    for d in &dirs {
        ring.push(node(d, &parent).await?);
    }
    for i in 0..ring.len() {
        ring[i].hello(ring[(i + 1) % ring.len()].url()).await?;
    }
    let [a, b, c, d] = <[P2p; 4]>::try_from(ring).map_err(|_| anyhow::anyhow!("four nodes"))?;
    println!(
        "   a ring: A {} - B {} - C {} - D {} - A",
        a.url(),
        b.url(),
        c.url(),
        d.url()
    );
    println!("   report.bin (3 MiB) is on C only; A's peers are B and D");
    // D's HELLO reaches A over the network: wait for it (at most 5 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let a_peers = loop {
        let peers = a.peers().await?;
        if peers.len() >= 2 || tokio::time::Instant::now() > deadline {
            break peers;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    anyhow::ensure!(
        a_peers.len() == 2 && !a_peers.iter().any(|(_, u)| u == c.url()),
        "A should know only B and D: {a_peers:?}"
    );

    let done = a.fetch("report.bin", SECRET.as_bytes()).await?;
    anyhow::ensure!(done.from == c.url(), "found at {}, not at C", done.from);
    let stored = std::fs::read(dirs[0].join("report.bin"))?;
    let again = Hash::of(&stored);
    anyhow::ensure!(again == want && done.info.hash == want, "hash mismatch");
    println!(
        "   A fetched report.bin from C, two hops away: {} bytes in {:.3} s ({:.0} MB/s, debug builds are slower)",
        done.info.size,
        done.secs,
        done.bytes as f64 / done.secs.max(1e-6) / 1e6
    );
    println!("   sha256 {want}: the hit's, the chunks' and the stored copy's agree");

    let escape = a.fetch("../secret.txt", SECRET.as_bytes()).await;
    let absent = a.fetch("../no-such-file.txt", SECRET.as_bytes()).await;
    let (escape, absent) = (
        escape.err().map(|e| e.to_string()),
        absent.err().map(|e| e.to_string()),
    );
    anyhow::ensure!(escape.is_some(), "../secret.txt was fetched");
    anyhow::ensure!(
        escape == absent,
        "the refusal differs: {escape:?} vs {absent:?}"
    );
    anyhow::ensure!(
        !base.join("a").join("secret.txt").exists(),
        "the escape reached A's directory"
    );
    println!(
        "   A fetch ../secret.txt (exists, outside the shares): {}",
        escape.unwrap_or_default()
    );
    println!("   A fetch ../no-such-file.txt:                        the same answer");
    let (escape, absent) = ask_directly(c.url(), &base.join("secret.txt")).await?;
    anyhow::ensure!(
        escape == absent,
        "C answers differently: {escape} vs {absent}"
    );
    println!("   a raw DEALER asks C itself for ../secret.txt, by name and by its hash: {escape}");
    println!("                                for names and a hash C does not have: the same");
    let all = [&a, &b, &c, &d].map(|n| n.stats());
    let dups: u64 = all.iter().map(|s| s.queries_duplicate).sum();
    println!(
        "   A: {} chunks received, {} corrupt; C: {} chunks served; {} queries came back around the cycle, answered at once as duplicates",
        all[0].chunks_received, all[0].corrupt_chunks, all[2].chunks_served, dups
    );
    for n in [a, b, c, d] {
        n.shutdown().await?;
    }
    Ok(())
}

/// What C answers a raw ZeroMQ DEALER (a program speaking the documented
/// frames, as a Python peer would) that asks it for `outside` by name
/// and by hash, and for a name and a hash it does not have.
async fn ask_directly(url: &str, outside: &Path) -> anyhow::Result<(String, String)> {
    let me = "tcp://127.0.0.1:9"; // never bound: C answers through its ROUTER
    let mut opts = zeromq::SocketOptions::default();
    let identity = node_id_for_url(me).identity();
    opts.peer_identity(zeromq::util::PeerIdentity::try_from(identity.to_vec())?);
    let mut dealer = zeromq::DealerSocket::with_options(opts);
    dealer.connect(url).await?;
    let outside_hash = Hash::of(&std::fs::read(outside)?);
    let mut answers = Vec::new();
    let asks = [
        (Key::Name("../secret.txt".into()), Some(outside_hash)),
        (
            Key::Name("no-such-file.txt".into()),
            Some(Hash::of(b"nothing")),
        ),
    ];
    for (qid, (name, hash)) in (1u64..).zip(asks) {
        let query = Msg::Query {
            qid,
            budget_ms: 300,
            key: name,
            history: vec![me.into()],
        };
        let mut said = vec![answer(&mut dealer, query).await?];
        if let Some(hash) = hash {
            let getm = Msg::GetManifest {
                req: qid,
                hash,
                chunk_size: 64 << 10,
            };
            said.push(answer(&mut dealer, getm).await?);
        }
        answers.push(said.join("; "));
    }
    let absent = answers.pop().unwrap_or_default();
    Ok((answers.pop().unwrap_or_default(), absent))
}

/// Sends `msg` and describes the reply (within 5 s).
async fn answer(dealer: &mut zeromq::DealerSocket, msg: Msg) -> anyhow::Result<String> {
    let kind = match msg {
        Msg::Query { .. } => "QUERY",
        _ => "GETM",
    };
    dealer.send(msg.encode().into()).await?;
    let reply = tokio::time::timeout(Duration::from_secs(5), dealer.recv()).await??;
    let frame = reply.get(0).cloned().unwrap_or_default();
    Ok(match Msg::decode(&frame) {
        Some(Msg::Hits { hits, .. }) => format!("{kind}: {} hits", hits.len()),
        Some(Msg::Error { code, message, .. }) => format!("{kind}: ERROR {code} {message:?}"),
        other => format!("{kind}: {other:?}"),
    })
}

pub(crate) fn run() -> anyhow::Result<()> {
    let base = std::env::temp_dir().join(format!("zpatterns-tour-p2p-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let result = crate::block_on(scenario(&base));
    let _ = std::fs::remove_dir_all(&base);
    result?
}
