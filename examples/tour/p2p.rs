//! Tour section: P2P file sharing over ZeroMQ on loopback. Three nodes in
//! a cycle (A knows B, B knows C, C knows A), each sharing its own
//! temporary directory; a file on C is found from A two hops away and
//! fetched in verified chunks, the stored copy's SHA-256 checked again
//! here; then a path-traversal name is refused exactly like a name that
//! does not exist, so the refusal reveals nothing.

use std::path::Path;

use tokio_util::sync::CancellationToken;
use zpatterns::p2p::{DirShare, Hash, P2p, P2pConfig};

const SECRET: &str = "tour-secret";

async fn node(dir: &Path, parent: &CancellationToken) -> anyhow::Result<P2p> {
    let cfg = P2pConfig::new("tcp://127.0.0.1:0", SECRET).chunk_size(64 << 10);
    Ok(P2p::start(cfg, Box::new(DirShare::new(dir)?), parent).await?)
}

async fn scenario(base: &Path) -> anyhow::Result<()> {
    let dirs: Vec<_> = ["a", "b", "c"].iter().map(|n| base.join(n)).collect();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
    }
    // 3 MiB of pseudo-random bytes on C only, and a file outside every
    // share, next to C's directory.
    let mut rng = fastrand::Rng::with_seed(13);
    let mut body = vec![0u8; 3 << 20];
    rng.fill(&mut body);
    std::fs::write(dirs[2].join("report.bin"), &body)?;
    std::fs::write(base.join("secret.txt"), b"not shared")?;
    let want = Hash::of(&body);

    let parent = CancellationToken::new();
    let a = node(&dirs[0], &parent).await?;
    let b = node(&dirs[1], &parent).await?;
    let c = node(&dirs[2], &parent).await?;
    a.hello(b.url()).await?;
    b.hello(c.url()).await?;
    c.hello(a.url()).await?;
    println!(
        "   A {} -> B {} -> C {} -> A (a cycle); report.bin (3 MiB) is on C only",
        a.url(),
        b.url(),
        c.url()
    );

    let done = a.fetch("report.bin", SECRET.as_bytes()).await?;
    anyhow::ensure!(done.from == c.url(), "found at {}, not at C", done.from);
    let stored = std::fs::read(dirs[0].join("report.bin"))?;
    let again = Hash::of(&stored);
    anyhow::ensure!(again == want && done.info.hash == want, "hash mismatch");
    println!(
        "   A fetched report.bin from C, two hops away: {} bytes in {:.3} s ({:.0} MB/s)",
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
    anyhow::ensure!(escape == absent, "the refusal differs: {escape:?} vs {absent:?}");
    anyhow::ensure!(
        !base.join("a").join("secret.txt").exists(),
        "the escape reached A's directory"
    );
    println!(
        "   fetch ../secret.txt (exists, outside the shares): {}",
        escape.unwrap_or_default()
    );
    println!("   fetch ../no-such-file.txt:                        the same answer");
    let (sa, sb, sc) = (a.stats(), b.stats(), c.stats());
    println!(
        "   A: {} chunks received, {} corrupt; B: {} queries forwarded; C: {} chunks served, {} names refused by the path guard",
        sa.chunks_received, sa.corrupt_chunks, sb.queries_forwarded, sc.chunks_served, sa.path_refused + sb.path_refused + sc.path_refused
    );
    for n in [a, b, c] {
        n.shutdown().await?;
    }
    Ok(())
}

pub(crate) fn run() -> anyhow::Result<()> {
    let base = std::env::temp_dir().join(format!("zpatterns-tour-p2p-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let result = crate::block_on(scenario(&base));
    let _ = std::fs::remove_dir_all(&base);
    result?
}
