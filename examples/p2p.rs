//! A peer-to-peer file-sharing node with a prompt, on `zpatterns::p2p`:
//! the seed's XML-RPC client and server (*Beginning Python*, "file sharing
//! with XML-RPC") as one program over ZeroMQ.
//!
//! The node binds `--url`, shares `--dir` (every read and write goes
//! through the path guard), greets every URL of `--peers`, and then reads
//! commands at the prompt `> `:
//!
//! - `fetch NAME` (or `fetch HASH`): search the network, download the file
//!   into `--dir` chunk by chunk (every chunk verified, written to a
//!   `.part` file, renamed when the whole hash matches); prints where it
//!   was found, its size, hash and the transfer rate, or `Could not find
//!   the file NAME`;
//! - `hello URL`: add a peer; `peers`: the known peers; `ls`: the shared
//!   files with sizes and hashes; `exit` (or end of input): stop.
//!
//! ```sh
//! cargo run --example p2p -- --url tcp://127.0.0.1:6001 --dir /tmp/a
//! echo tcp://127.0.0.1:6001 > peers.txt
//! cargo run --example p2p -- --url tcp://127.0.0.1:6002 --dir /tmp/b --peers peers.txt
//! cargo run --example p2p -- --url tcp://127.0.0.1:6003 --dir /tmp/c \
//!     --peers peers.txt --fetch notes.txt     # exits 0 once fetched
//! ```
//!
//! Without `--secret` a random one is generated: the secret only guards
//! this node's own downloads (the seed's `fetch(name, secret)`), so nobody
//! else can make the node fill its directory.

#[path = "common/mod.rs"]
mod common;
#[path = "p2p_demo/mod.rs"]
mod demo;

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use zpatterns::p2p::{DirShare, P2p, P2pConfig};

/// A peer-to-peer file-sharing node (ZeroMQ) with a prompt.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// This node's ZeroMQ endpoint: it binds it, and peers reach it there
    /// (port 0 picks a free port; the node prints the one it got).
    #[arg(long, default_value = "tcp://127.0.0.1:6001")]
    url: String,
    /// The shared directory (must exist): files are served from it and
    /// downloads are stored in it.
    #[arg(long)]
    dir: PathBuf,
    /// A file of peer URLs, one per line (blank lines and `#` comments are
    /// skipped).
    #[arg(long, value_name = "URLFILE")]
    peers: Option<PathBuf>,
    /// The secret that authorises this node's downloads (default: 32
    /// random letters).
    #[arg(long)]
    secret: Option<String>,
    /// Fetch NAME (or a hash) once, without a prompt, and exit: 0 when the
    /// file is stored and verified, 1 otherwise.
    #[arg(long, value_name = "NAME")]
    fetch: Option<String>,
    /// How long a search waits for answers, in seconds (default: the
    /// library's, 2 s).
    #[arg(long, value_name = "SECS")]
    query_timeout: Option<f64>,
    /// Chunk size of downloads, in KiB (default: the library's, 256).
    #[arg(long, value_name = "KIB")]
    chunk_kib: Option<u32>,
    /// Chunks in flight per download (the credit window; default: the
    /// library's, 8).
    #[arg(long, value_name = "CHUNKS")]
    credit: Option<usize>,
    /// Largest file served or accepted, in MiB (default: the library's,
    /// 1024).
    #[arg(long, value_name = "MIB")]
    max_file_mib: Option<u64>,
}

fn main() -> std::process::ExitCode {
    common::init_logging("warn");
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("p2p: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// The peer URLs of `file`: one per line, blank lines and comments skipped.
fn read_peers(file: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the peer file {}", file.display()))?;
    let mut urls = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if !line.starts_with("tcp://") {
            bail!(
                "{}:{}: {line:?} is not a ZeroMQ URL (tcp://HOST:PORT)",
                file.display(),
                n + 1
            );
        }
        urls.push(line.to_owned());
    }
    Ok(urls)
}

fn config(args: &Args, secret: &str) -> anyhow::Result<P2pConfig> {
    let mut cfg = P2pConfig::new(&args.url, secret.to_owned());
    if let Some(secs) = args.query_timeout {
        if !(secs > 0.0 && secs <= 3600.0) {
            bail!("--query-timeout {secs}: must be more than 0 and at most 3600 seconds");
        }
        cfg = cfg.query_timeout(Duration::from_secs_f64(secs));
    }
    if let Some(kib) = args.chunk_kib {
        if kib == 0 || kib > 4096 {
            bail!("--chunk-kib {kib}: must be between 1 and 4096");
        }
        cfg = cfg.chunk_size(kib << 10);
    }
    if let Some(credit) = args.credit {
        if credit == 0 || credit > 1024 {
            bail!("--credit {credit}: must be between 1 and 1024");
        }
        cfg = cfg.credit(credit);
    }
    if let Some(mib) = args.max_file_mib {
        cfg = cfg.max_file(mib.saturating_mul(1 << 20));
    }
    Ok(cfg)
}

fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("the shared directory {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "the shared directory {} is not a directory",
            args.dir.display()
        );
    }
    let peers = match &args.peers {
        Some(f) => read_peers(f)?,
        None => Vec::new(),
    };
    let secret = args.secret.clone().unwrap_or_else(demo::random_secret);
    let cfg = config(&args, &secret)?;
    let stop = CancellationToken::new();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let on_ctrl_c = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                on_ctrl_c.cancel();
            }
        });
        let share = DirShare::new(&args.dir)
            .with_context(|| format!("the shared directory {}", args.dir.display()))?;
        let node = P2p::start(cfg, Box::new(share), &stop)
            .await
            .with_context(|| format!("starting the node on {}", args.url))?;
        println!("node {} listening on {}", node.id(), node.url());
        for url in &peers {
            node.hello(url)
                .await
                .with_context(|| format!("hello {url}"))?;
        }
        let code = match &args.fetch {
            Some(name) => {
                let ok = demo::fetch_and_report(&node, name, &secret, &stop).await;
                std::process::ExitCode::from(if ok { 0 } else { 1 })
            }
            None => {
                prompt(&node, &secret, &stop).await?;
                std::process::ExitCode::SUCCESS
            }
        };
        node.shutdown().await?;
        Ok(code)
    })
}

/// Lines of stdin, read by a thread (stdin has no async reader that
/// stops cleanly); `None` at end of input.
fn stdin_lines() -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel(1);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn show_prompt() {
    print!("> ");
    let _ = std::io::stdout().flush();
}

/// The command loop, until `exit`, end of input or Ctrl-C.
async fn prompt(node: &P2p, secret: &str, stop: &CancellationToken) -> anyhow::Result<()> {
    let mut lines = stdin_lines();
    loop {
        show_prompt();
        let line = tokio::select! {
            line = lines.recv() => line,
            () = stop.cancelled() => None,
        };
        let Some(line) = line else {
            println!();
            return Ok(());
        };
        let mut words = line.split_whitespace();
        let cmd = words.next().unwrap_or("");
        let rest: Vec<&str> = words.collect();
        match (cmd, rest.as_slice()) {
            ("", _) => {}
            ("exit" | "quit", _) => {
                println!();
                return Ok(());
            }
            ("fetch", [name]) => {
                demo::fetch_and_report(node, name, secret, stop).await;
            }
            ("hello", [url]) => match node.hello(url).await {
                Ok(()) => println!("hello {url}: ok"),
                Err(e) => println!("hello {url}: {e}"),
            },
            ("peers", []) => demo::print_peers(node).await,
            ("ls", []) => demo::print_ls(node).await,
            ("help" | "?", _) => {
                println!("commands: fetch NAME|HASH, hello URL, peers, ls, exit")
            }
            _ => println!("unknown command {line:?}; try: fetch NAME, hello URL, peers, ls, exit"),
        }
    }
}
