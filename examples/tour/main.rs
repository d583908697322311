//! `cargo run --release --example tour`: a self-contained run of every
//! pattern in this crate on loopback, printing what each one did.
//!
//! Each section lives in its own file, builds the runtime it was measured to
//! run best on, binds `127.0.0.1` on ephemeral ports, and prints a short
//! report. `--only NAME` runs one section.

#[path = "../common/mod.rs"]
mod common;
#[path = "../common/failover.rs"]
mod failover;

use clap::Parser;

mod blackbox;
mod clone;
mod espresso;
mod lvc;
mod p2p;
mod pair;
mod paxos;
mod raft;
mod slow;
mod snail;

/// A tour of the toolkit: every pattern, on loopback, in one process.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Run only the named section(s) (e.g. `--only lvc`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the sections and exit.
    #[arg(long)]
    list: bool,
}

/// Runs `fut` on a fresh current-thread runtime: the sections measured
/// fastest on one (the `zeromq` crate's tasks stay on one core; waking a
/// thread on the other vCPU costs ~25 us on the reference machine).
fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(fut))
}

type Section = (&'static str, &'static str, fn() -> anyhow::Result<()>);

/// The sections, in the order of the Guide's chapter 5.
const SECTIONS: &[Section] = &[
    (
        "espresso",
        "Espresso: tracing a pub-sub proxy",
        espresso::run,
    ),
    (
        "lvc",
        "Last Value Cache: late joiners get the last value at once",
        lvc::run,
    ),
    (
        "slow",
        "Slow subscribers at a proxy: drop, nodrop, disconnect",
        slow::run,
    ),
    (
        "snail",
        "Suicidal Snail: slow-subscriber detection",
        snail::run,
    ),
    (
        "blackbox",
        "Black Box: sharded high-speed subscriber",
        blackbox::run,
    ),
    (
        "clone",
        "Clone: shared key-value state (CHP server + client agents)",
        clone::run,
    ),
    (
        "pair",
        "Clone pair over Binary Star: the primary killed mid-stream",
        pair::run,
    ),
    (
        "paxos",
        "Multi-Paxos over ZeroMQ: a leader failure, and agreement",
        paxos::run,
    ),
    (
        "raft",
        "Raft over ZeroMQ: a leader failure, a snapshot catch-up, and agreement",
        raft::run,
    ),
    (
        "p2p",
        "P2P file sharing: a cycle, a file two hops away, a path-traversal refused",
        p2p::run,
    ),
];

fn main() -> anyhow::Result<()> {
    // Each section prints its own report (including the snail's croak);
    // library logs are off unless RUST_LOG asks for them.
    common::init_logging("off");
    let args = Args::parse();
    if args.list {
        for (name, title, _) in SECTIONS {
            println!("{name:10} {title}");
        }
        return Ok(());
    }
    for want in &args.only {
        if !SECTIONS.iter().any(|(name, _, _)| name == want) {
            anyhow::bail!("unknown section {want:?}; try --list");
        }
    }
    let mut failed = Vec::new();
    for (name, title, run) in SECTIONS {
        if !args.only.is_empty() && !args.only.iter().any(|w| w == name) {
            continue;
        }
        println!("\n== {title} ==");
        if let Err(e) = run() {
            println!("   FAILED: {e:#}");
            failed.push(*name);
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("sections failed: {}", failed.join(", "));
    }
    Ok(())
}
