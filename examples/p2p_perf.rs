//! The numbers of `patterns/p2p.md`, measured (run it in release):
//!
//! ```sh
//! cargo build --release --example p2p --example p2p_perf
//! target/release/examples/p2p_perf transfer --mib 256   # p2p vs cp vs raw TCP, peak RSS
//! target/release/examples/p2p_perf search --nodes 20    # search latency, random graph
//! ```
//!
//! `transfer` writes a file of random bytes, times `cp` of it, measures
//! the raw tokio TCP ceiling on loopback (one connection, 256 KiB writes,
//! the same byte count), then starts two `p2p` processes (the `p2p`
//! example next to this binary, each under `/usr/bin/time -f %M` for its
//! peak RSS): one shares the file, the other `--fetch`es it by name and
//! verifies it. `search` starts N nodes in this process over ZeroMQ on
//! loopback, links them as a random connected graph (a ring plus random
//! chords), puts one small file on a random node per search, and times
//! `fetch` of it from another random node (search + one chunk), p50/p99.

#[path = "common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Measures the P2P node: transfer rate and memory, search latency.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One file between two `p2p` processes, next to `cp` and raw TCP.
    Transfer {
        /// File size in MiB.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Working directory (default: a fresh one under the system's
        /// temporary directory, removed afterwards).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Extra flags for both `p2p` processes (e.g. `--chunk-kib 1024`).
        #[arg(long, allow_hyphen_values = true, num_args = 0..)]
        p2p_args: Vec<String>,
    },
    /// Search latency across a random graph of nodes in this process.
    Search {
        /// Nodes.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Random extra links per node (on top of a ring).
        #[arg(long, default_value_t = 2)]
        chords: usize,
        /// Searches timed.
        #[arg(long, default_value_t = 100)]
        searches: usize,
        /// Seed of the graph and of the choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    match Args::parse().cmd {
        Cmd::Transfer { mib, dir, p2p_args } => transfer(mib, dir, &p2p_args),
        Cmd::Search {
            nodes,
            chords,
            searches,
            seed,
        } => search(nodes, chords, searches, seed),
    }
}

/// Writes `mib` MiB of pseudo-random bytes to `path`.
fn write_random(path: &Path, mib: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut rng = fastrand::Rng::with_seed(7);
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..mib {
        rng.fill(&mut block);
        f.write_all(&block)?;
    }
    f.flush()?;
    f.get_ref().sync_all()?;
    Ok(())
}

/// MB/s of `bytes` in `secs`.
fn rate(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

/// Seconds `cp src dst` takes (the destination removed first).
fn time_cp(src: &Path, dst: &Path) -> anyhow::Result<f64> {
    let _ = std::fs::remove_file(dst);
    let t = Instant::now();
    let status = Command::new("cp").arg(src).arg(dst).status()?;
    anyhow::ensure!(status.success(), "cp failed");
    Ok(t.elapsed().as_secs_f64())
}

/// Seconds to move `bytes` through one tokio TCP connection on loopback
/// (256 KiB writes and reads; the receiver counts every byte).
fn time_raw_tcp(bytes: u64) -> anyhow::Result<f64> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let reader = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await?;
            let mut buf = vec![0u8; 256 << 10];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<u64, std::io::Error>(got);
                }
                got += n as u64;
            }
        });
        let t = Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let block = vec![0x5au8; 256 << 10];
        let mut sent = 0u64;
        while sent < bytes {
            let n = (bytes - sent).min(block.len() as u64) as usize;
            s.write_all(&block[..n]).await?;
            sent += n as u64;
        }
        s.shutdown().await?;
        let got = reader.await??;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(got == bytes, "raw TCP moved {got} of {bytes} bytes");
        Ok(secs)
    })
}

/// The `p2p` example next to this binary.
fn p2p_exe() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.with_file_name("p2p");
    if !p.exists() {
        bail!(
            "{} not found: build it with `cargo build --release --example p2p`",
            p.display()
        );
    }
    Ok(p)
}

/// Peak RSS in KiB from `/usr/bin/time -f "maxrss %M"` output.
fn maxrss(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("maxrss ")?.trim().parse().ok())
}

fn transfer(mib: u64, dir: Option<PathBuf>, extra: &[String]) -> anyhow::Result<()> {
    let (base, temporary) = match dir {
        Some(d) => (d, false),
        None => (
            std::env::temp_dir().join(format!("zpatterns-p2p-perf-{}", std::process::id())),
            true,
        ),
    };
    let (src, dst) = (base.join("src"), base.join("dst"));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&src)?;
    std::fs::create_dir_all(&dst)?;
    let bytes = mib << 20;
    let file = src.join("big.bin");
    write_random(&file, mib)?;
    println!("file: {mib} MiB of random bytes in {}", src.display());

    let cp = time_cp(&file, &base.join("copy.bin"))?;
    let _ = std::fs::remove_file(base.join("copy.bin"));
    let tcp = time_raw_tcp(bytes)?;

    let p2p = p2p_exe()?;
    let mut server = Command::new("/usr/bin/time")
        .args(["-f", "maxrss %M"])
        .arg(&p2p)
        .args(["--url", "tcp://127.0.0.1:0", "--dir"])
        .arg(&src)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning /usr/bin/time p2p (is GNU time installed?)")?;
    let mut lines = BufReader::new(server.stdout.take().unwrap()).lines();
    let url = loop {
        let Some(line) = lines.next() else {
            bail!("the serving node exited before listening");
        };
        if let Some((_, url)) = line?.split_once(" listening on ") {
            break url.trim().to_owned();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let peers = base.join("peers.txt");
    std::fs::write(&peers, format!("{url}\n"))?;
    let t = Instant::now();
    let fetch = Command::new("/usr/bin/time")
        .args(["-f", "maxrss %M"])
        .arg(&p2p)
        .args(["--url", "tcp://127.0.0.1:0", "--dir"])
        .arg(&dst)
        .arg("--peers")
        .arg(&peers)
        .args(["--fetch", "big.bin", "--max-file-mib"])
        .arg((mib + 1).to_string())
        .args(extra)
        .stdin(Stdio::null())
        .output()?;
    let wall = t.elapsed().as_secs_f64();
    drop(server.stdin.take()); // end of input: the server exits
    let mut server_err = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut server_err)?;
    server.wait()?;
    let out = String::from_utf8_lossy(&fetch.stdout);
    let err = String::from_utf8_lossy(&fetch.stderr);
    anyhow::ensure!(fetch.status.success(), "the fetch failed:\n{out}\n{err}");
    let same = files_equal(&file, &dst.join("big.bin"))?;
    anyhow::ensure!(same, "the fetched copy differs");

    println!(
        "cp of the file:                {:8.0} MB/s ({cp:.2} s)",
        rate(bytes, cp)
    );
    println!(
        "raw tokio TCP, one connection: {:8.0} MB/s ({tcp:.2} s)",
        rate(bytes, tcp)
    );
    println!(
        "p2p fetch (process start to verified file): {:8.0} MB/s ({wall:.2} s)",
        rate(bytes, wall)
    );
    if let Some(line) = out.lines().find(|l| l.starts_with("fetched ")) {
        println!("  the fetching node said: {line}");
    }
    let kib = |s: &str| maxrss(s).map_or("?".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0));
    println!(
        "peak RSS: serving node {}, fetching node {}",
        kib(&server_err),
        kib(&err)
    );
    if temporary {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}

/// Whether two files have the same bytes (read 1 MiB at a time).
fn files_equal(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// `nodes` nodes over ZeroMQ on loopback in this process, linked as a
/// ring plus `chords` random links each; times `searches` fetches of a
/// fresh 1 KiB file on a random node from another random node.
fn search(nodes: usize, chords: usize, searches: usize, seed: u64) -> anyhow::Result<()> {
    anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
    let base = std::env::temp_dir().join(format!("zpatterns-p2p-search-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(search_on(&base, nodes, chords, searches, seed));
    let _ = std::fs::remove_dir_all(&base);
    result
}

async fn search_on(
    base: &Path,
    n: usize,
    chords: usize,
    searches: usize,
    seed: u64,
) -> anyhow::Result<()> {
    use zpatterns::p2p::{DirShare, P2p, P2pConfig};
    let parent = tokio_util::sync::CancellationToken::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..n {
        let dir = base.join(format!("n{i}"));
        std::fs::create_dir_all(&dir)?;
        // The measurement sends queries back to back: lift the per-peer
        // query rate so the limit does not shape the latency.
        let cfg = P2pConfig::new("tcp://127.0.0.1:0", "perf").query_rate(100_000);
        nodes.push(P2p::start(cfg, Box::new(DirShare::new(&dir)?), &parent).await?);
        dirs.push(dir);
    }
    let mut links = 0;
    for i in 0..n {
        nodes[i].hello(nodes[(i + 1) % n].url()).await?;
        links += 1;
        for _ in 0..chords {
            let j = rng.usize(..n);
            if j != i && j != (i + 1) % n {
                nodes[i].hello(nodes[j].url()).await?;
                links += 1;
            }
        }
    }
    println!("{n} nodes, {links} links (a ring plus random chords, seed {seed}), history limit 6");
    let mut lat = Vec::with_capacity(searches);
    let warmup = 10;
    for k in 0..warmup + searches {
        let p = rng.usize(..n);
        let mut r = rng.usize(..n - 1);
        if r >= p {
            r += 1;
        }
        let name = format!("f{k}.txt");
        std::fs::write(dirs[p].join(&name), vec![b'x'; 1024])?;
        let t = Instant::now();
        let done = nodes[r].fetch(&name, b"perf").await?;
        let d = t.elapsed();
        anyhow::ensure!(done.from == nodes[p].url(), "found at {}", done.from);
        if k >= warmup {
            lat.push(d);
        }
    }
    lat.sort();
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f).round() as usize].as_secs_f64() * 1e3;
    println!(
        "search + fetch of a 1 KiB file, {searches} times: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    let (mut fwd, mut dup) = (0, 0);
    for node in nodes {
        let s = node.shutdown().await?;
        fwd += s.queries_forwarded;
        dup += s.queries_duplicate;
    }
    println!("queries forwarded {fwd}, duplicates answered at once {dup}");
    Ok(())
}
