//! `cargo run --release --example tour`: a self-contained run of every
//! pattern in this crate on loopback, printing what each one did.
//!
//! Each section lives in its own file, builds the runtime it was measured to
//! run best on, binds `127.0.0.1` on ephemeral ports, and prints a short
//! report. `--only NAME` runs one section.

use clap::Parser;

mod paxos;

/// A tour of the toolkit: every pattern, on loopback, in one process.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run only the named section(s) (e.g. `--only lvc`).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// List the sections and exit.
    #[arg(long)]
    list: bool,
}

type Section = (&'static str, &'static str, fn() -> anyhow::Result<()>);

/// The sections, in the order of the Guide's chapter 5.
const SECTIONS: &[Section] = &[(
    "paxos",
    "Multi-Paxos over ZeroMQ: a leader failure, and agreement",
    paxos::run,
)];

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
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
