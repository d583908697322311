//! Throughput and latency, side by side: this crate (the `zeromq` crate and
//! the `zpatterns` proxies) against libzmq 4.3, over TCP on 127.0.0.1, with
//! sender, receiver and proxy in separate processes.
//!
//! ```text
//! cargo run --release --example throughput -- --quick            # about a minute
//! cargo run --release --example throughput -- --runs 3 --out t.json --plot t.svg
//! cargo run --release --example throughput -- --patterns proxy,lvc --sizes 256 --secs 5
//! ```
//!
//! The orchestrator spawns this same binary with `--role send|recv|proxy`
//! (see `orchestrate.rs` for the protocol), prints progress on stderr, an
//! aligned table on stdout, and writes JSON (`--out`) and an SVG chart
//! (`--plot`). Method and results: `patterns/throughput.md`.

#[path = "../common/mod.rs"]
mod common;

mod cases;
mod chart;
mod lz;
mod lzproxy;
mod machine;
mod orchestrate;
mod proto;
mod report;
mod zproxy;
mod zrs;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, ValueEnum};

use cases::{plan, Impl, Mode, Pattern, Topology};
use orchestrate::Settings;

/// Throughput (msgs/s, MB/s) and request-reply latency of this crate's
/// paths beside libzmq's, measured in separate processes over loopback TCP.
///
/// Without `--role` it orchestrates a whole comparison on this machine.
/// With `--role` it is one process of a measurement, started by hand (e.g.
/// on different hosts, as libzmq's local_thr / remote_thr):
///
///   host A: throughput --role recv --bind tcp://*:5555 --pattern pubsub --impl libzmq --size 16 --count 1000000
///   host B: throughput --role send --connect tcp://hostA:5555 --pattern pubsub --impl libzmq --size 16 --count 1000000
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Short runs of 16 B, 256 B and 4 KiB: the whole comparison in a few minutes.
    #[arg(long)]
    quick: bool,
    /// Payload sizes in bytes, comma-separated, `k` = KiB [default: 16,256,4096,65536; --quick: 16,256,4096].
    #[arg(long, value_delimiter = ',', value_parser = parse_size)]
    sizes: Option<Vec<usize>>,
    /// Patterns to measure, comma-separated [default: all].
    #[arg(long, value_delimiter = ',', value_enum)]
    patterns: Option<Vec<Pattern>>,
    /// Stacks of the publisher and subscriber (sender and receiver),
    /// comma-separated [default: both]. Proxied patterns run every
    /// --peers x --impls pair, so the same peers meet each proxy.
    #[arg(long, value_delimiter = ',', value_enum)]
    peers: Option<Vec<Impl>>,
    /// Implementations of the proxies (the middle of proxied patterns),
    /// comma-separated [default: both]; direct patterns follow --peers.
    #[arg(long = "impls", value_delimiter = ',', value_enum)]
    impls: Option<Vec<Impl>>,
    /// The old, lossy comparison: libzmq at its default HWM 1000 (PUB and
    /// XPUB drop when full), the proxies in `SlowPolicy::Drop`. Default:
    /// lossless (libzmq HWM 0 on the whole pub-sub path, proxies in
    /// `SlowPolicy::Block`).
    #[arg(long)]
    lossy: bool,
    /// Seconds each sender sends [default: 2; --quick: 1; --role: 2, or
    /// unlimited with --count].
    #[arg(long, value_parser = parse_secs)]
    secs: Option<f64>,
    /// Repetitions of every case (interleaved); the table shows the median run.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=99))]
    runs: u32,
    /// Write the rows as a JSON list to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Draw msgs/s per pattern and size as an SVG bar chart in FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Measure nothing: print the table (and --plot) of an earlier --out FILE.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["out", "runs", "quick"])]
    from: Option<PathBuf>,
    /// tokio runtime of the zeromq-crate processes.
    #[arg(long, value_enum, default_value_t = Runtime::Ct)]
    rt: Runtime,
    /// zeromq-crate senders yield to the runtime every N sends (0 = never).
    #[arg(long, default_value_t = 256)]
    yield_every: u64,
    /// At most this many MB of payload per run (bounds the zeromq crate's
    /// 100,000-message queues at large sizes).
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    max_mb: u64,
    /// Measure on a quiet machine: before each run wait until other
    /// programs use less than PCT % of one core, and repeat a run (twice at
    /// most) when they used more during it.
    #[arg(long, value_name = "PCT")]
    guard: Option<f64>,

    /// Run as one process of a measurement (by hand, e.g. on another host).
    #[arg(
        long,
        value_enum,
        help_heading = ROLES,
        requires_all = ["imp", "pattern"],
        conflicts_with_all = ["quick", "sizes", "patterns", "peers", "impls", "runs", "out", "plot", "from", "guard"]
    )]
    role: Option<Role>,
    /// The implementation of this process (with --role).
    #[arg(long = "impl", value_enum, help_heading = ROLES, requires = "role")]
    imp: Option<Impl>,
    /// The pattern of this process (with --role); the peers of a proxied
    /// pattern use the same name (e.g. --pattern lvc for sender, proxy and
    /// receiver).
    #[arg(long, value_enum, help_heading = ROLES, requires = "role")]
    pattern: Option<Pattern>,
    /// The payload size (with --role send|recv), e.g. 16 or 4k.
    #[arg(long, help_heading = ROLES, value_parser = parse_size, requires = "role")]
    size: Option<usize>,
    /// send / recv: connect to this endpoint (a receiver behind a proxy
    /// connects to its backend, a sender to its frontend).
    #[arg(long, value_name = "EP", help_heading = ROLES, requires = "role")]
    connect: Option<String>,
    /// send / recv: bind this endpoint, e.g. tcp://*:5555.
    #[arg(long, value_name = "EP", help_heading = ROLES, requires = "role", conflicts_with = "connect")]
    bind: Option<String>,
    /// proxy: the publishers' side, `@EP` to bind (default) or `>EP` to
    /// connect [default: @tcp://127.0.0.1:0].
    #[arg(long, value_name = "[@|>]EP", help_heading = ROLES, requires = "role")]
    frontend: Option<String>,
    /// proxy: the subscribers' side, `@EP` or `>EP` [default: @tcp://127.0.0.1:0].
    #[arg(long, value_name = "[@|>]EP", help_heading = ROLES, requires = "role")]
    backend: Option<String>,
    /// send: data messages to send; recv: stop after this many (or at the
    /// sender's end marker, whichever comes first).
    #[arg(long, help_heading = ROLES, requires = "role", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
    /// send: seconds of one-byte warm-up messages before the data, so that
    /// subscriptions are in place (start the receiver first).
    #[arg(long, value_name = "SECS", help_heading = ROLES, default_value_t = 1.0, value_parser = parse_secs_or_zero)]
    warmup: f64,
    /// Seconds after which this process exits whatever happens [default:
    /// none; the orchestrator gives its children one].
    #[arg(long, value_name = "SECS", help_heading = ROLES, value_parser = parse_secs)]
    deadline: Option<f64>,
    /// Internal: the orchestrator steers this child over stdin/stdout.
    #[arg(long, hide = true, requires = "role")]
    orchestrated: bool,
}

/// The help heading of the role flags.
const ROLES: &str = "One process by hand (--role)";

/// What a child process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Role {
    /// Publisher / sender: connects (or binds), sends, then end markers.
    Send,
    /// Subscriber / receiver: binds (or connects), times first to last message.
    Recv,
    /// The middle of a proxied pattern: binds (or connects) both sides.
    Proxy,
}

impl Role {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Send => "send",
            Role::Recv => "recv",
            Role::Proxy => "proxy",
        }
    }
}

/// The tokio runtime flavour of zeromq-crate processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Runtime {
    /// `current_thread`: one thread (measured fastest on 2 vCPUs).
    Ct,
    /// `multi_thread` with one worker per core.
    Mt,
}

impl Runtime {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Runtime::Ct => "ct",
            Runtime::Mt => "mt",
        }
    }
}

/// What a child needs to know.
#[derive(Debug, Clone)]
pub(crate) struct RoleArgs {
    pub(crate) pattern: Pattern,
    pub(crate) size: usize,
    pub(crate) secs: f64,
    /// send / recv: connect here (else bind `bind`, else loopback).
    pub(crate) connect: Option<String>,
    /// send / recv: bind here.
    pub(crate) bind: Option<String>,
    /// proxy: `[@|>]EP` of each side (default: bind loopback).
    pub(crate) frontend: Option<String>,
    pub(crate) backend: Option<String>,
    /// send: messages to send; recv: stop after this many.
    pub(crate) count: Option<u64>,
    pub(crate) mode: Mode,
    pub(crate) rt: Runtime,
    pub(crate) yield_every: u64,
    pub(crate) max_bytes: u64,
}

impl RoleArgs {
    /// True on the lossless path (HWM 0, `SlowPolicy::Block`).
    pub(crate) fn lossless(&self) -> bool {
        self.mode == Mode::Lossless
    }
}

fn parse_size(s: &str) -> Result<usize, String> {
    let (digits, mult) = match s.trim().strip_suffix(['k', 'K']) {
        Some(d) => (d, 1024),
        None => (s.trim(), 1),
    };
    let n = digits
        .parse::<usize>()
        .map_err(|_| format!("{s:?} is not a size in bytes (e.g. 256 or 64k)"))?
        * mult;
    if !(2..=16 << 20).contains(&n) {
        return Err(format!(
            "{n} B is out of range: sizes are 2 B..16 MiB (0 and 1 byte are the end and warm-up markers)"
        ));
    }
    Ok(n)
}

fn parse_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x <= 3600.0 => Ok(x),
        _ => Err(format!(
            "{s:?} is not a duration in seconds (0 < secs <= 3600)"
        )),
    }
}

fn parse_secs_or_zero(s: &str) -> Result<f64, String> {
    if s.trim() == "0" {
        Ok(0.0)
    } else {
        parse_secs(s)
    }
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    match args.role {
        Some(role) => {
            if let Err(msg) = check_role(role, &args) {
                Args::command()
                    .error(clap::error::ErrorKind::MissingRequiredArgument, msg)
                    .exit();
            }
            child(role, &args)
        }
        None => orchestrate(&args),
    }
}

/// The rules clap's derive cannot express: which endpoints each role needs.
fn check_role(role: Role, args: &Args) -> Result<(), String> {
    let has_ep = args.connect.is_some() || args.bind.is_some();
    match role {
        Role::Send | Role::Recv if args.size.is_none() => {
            Err(format!("--role {} needs --size BYTES", role.name()))
        }
        Role::Send | Role::Recv if !has_ep && !args.orchestrated => Err(format!(
            "--role {} needs --connect EP or --bind EP",
            role.name()
        )),
        Role::Send | Role::Recv if args.frontend.is_some() || args.backend.is_some() => {
            Err("--frontend and --backend are for --role proxy; use --connect or --bind".into())
        }
        Role::Proxy if has_ep => Err(
            "--role proxy takes --frontend [@|>]EP and --backend [@|>]EP, not --connect/--bind"
                .into(),
        ),
        Role::Proxy
            if args
                .pattern
                .is_some_and(|p| p.topology() != Topology::Proxied) =>
        {
            Err(format!(
                "--role proxy needs a proxied --pattern (proxy, espresso, lvc), not {}",
                args.pattern.map_or("", Pattern::name)
            ))
        }
        Role::Proxy if args.count.is_some() => Err("--count is for --role send and recv".into()),
        _ => Ok(()),
    }
}

fn child(role: Role, args: &Args) -> anyhow::Result<()> {
    let (Some(imp), Some(pattern)) = (args.imp, args.pattern) else {
        anyhow::bail!("--role needs --impl and --pattern");
    };
    // A proxy forwards whatever comes; only senders and receivers need a size.
    let size = args.size.unwrap_or(2);
    let secs = args.secs.unwrap_or(if args.count.is_some() {
        f64::INFINITY
    } else {
        2.0
    });
    let a = RoleArgs {
        pattern,
        size,
        secs,
        connect: args.connect.clone(),
        bind: args.bind.clone(),
        frontend: args.frontend.clone(),
        backend: args.backend.clone(),
        count: args.count,
        mode: if args.lossy {
            Mode::Lossy
        } else {
            Mode::Lossless
        },
        rt: args.rt,
        yield_every: args.yield_every,
        max_bytes: args.max_mb << 20,
    };
    let deadline = args.deadline.map(Duration::from_secs_f64);
    let label = format!(
        "{} {} {}{}{}",
        role.name(),
        imp.name(),
        pattern.name(),
        args.size
            .map(|s| format!(" {}", report::fmt_size(s)))
            .unwrap_or_default(),
        if args.lossy { " lossy" } else { "" }
    );
    let ctl = if args.orchestrated {
        proto::Control::start(deadline)
    } else {
        proto::Control::manual(label, Duration::from_secs_f64(args.warmup), deadline)
    };
    match imp {
        Impl::Zeromq => zrs::run(role, &a, ctl),
        Impl::Libzmq => lz::run(role, &a, ctl),
    }
}

fn orchestrate(args: &Args) -> anyhow::Result<()> {
    if let Some(path) = &args.from {
        let json = std::fs::read_to_string(path)?;
        let rows: Vec<report::Row> = serde_json::from_str(&json)
            .map_err(|e| anyhow::anyhow!("{}: not a --out file: {e}", path.display()))?;
        return present(&rows, args);
    }
    let sizes = args.sizes.clone().unwrap_or_else(|| {
        if args.quick {
            vec![16, 256, 4096]
        } else {
            vec![16, 256, 4096, 65536]
        }
    });
    let patterns = args
        .patterns
        .clone()
        .unwrap_or_else(|| Pattern::ALL.to_vec());
    let both = || vec![Impl::Libzmq, Impl::Zeromq];
    let peers = args.peers.clone().unwrap_or_else(both);
    let impls = args.impls.clone().unwrap_or_else(both);
    let mode = if args.lossy {
        Mode::Lossy
    } else {
        Mode::Lossless
    };
    let settings = Settings {
        secs: args.secs.unwrap_or(if args.quick { 1.0 } else { 2.0 }),
        rt: args.rt,
        yield_every: args.yield_every,
        max_mb: args.max_mb,
        guard: args.guard,
    };
    let cases = plan(&patterns, &sizes, &peers, &impls, mode, args.runs as usize);
    anyhow::ensure!(!cases.is_empty(), "nothing to measure");
    let started = Instant::now();
    let mut rows = Vec::with_capacity(cases.len());
    for (i, case) in cases.iter().enumerate() {
        eprint!(
            "[{}/{}] {} {} ... ",
            i + 1,
            cases.len(),
            report::path_name(
                case.peers.name(),
                case.imp.name(),
                case.pattern.name(),
                case.pattern.topology() == Topology::Proxied
            ),
            report::fmt_size(case.size)
        );
        let row = orchestrate::run_case(case, &settings);
        if row.ok() {
            let deliv = row
                .delivered_pct
                .map(|d| format!(" ({d:.1}% delivered)"))
                .unwrap_or_default();
            eprintln!("{} msgs/s{deliv}", report::fmt_rate(row.msgs_per_s));
        } else {
            eprintln!("{}", row.status);
        }
        rows.push(row);
    }
    let mut table = report::aggregate(&rows);
    report::add_ratios(&mut table);
    eprintln!(
        "{} runs ({}) in {:.0} s; {} per case: {:.2} s of sending, runtime {}, yield every {}",
        cases.len(),
        mode.name(),
        started.elapsed().as_secs_f64(),
        if args.runs > 1 {
            "median run"
        } else {
            "one run"
        },
        settings.secs,
        settings.rt.name(),
        settings.yield_every
    );
    if let Some(path) = &args.out {
        std::fs::write(path, report::json(&table))?;
        eprintln!("wrote {}", path.display());
    }
    present(&table, args)
}

/// Prints the table, draws the chart, fails if any case failed.
fn present(table: &[report::Row], args: &Args) -> anyhow::Result<()> {
    print!("{}", report::table(table));
    let view = report::proxy_table(table);
    if !view.is_empty() {
        println!();
        print!("{view}");
    }
    if let Some(path) = &args.plot {
        let title =
            "msgs/s delivered, zeromq crate + zpatterns vs libzmq 4.3 (log scale, 127.0.0.1)";
        std::fs::write(path, chart::svg(table, title))?;
        eprintln!("wrote {}", path.display());
    }
    let failed = table.iter().filter(|r| !r.ok()).count();
    anyhow::ensure!(failed == 0, "{failed} case(s) failed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_clear_errors() {
        assert_eq!(parse_size("256"), Ok(256));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert!(parse_size("1").unwrap_err().contains("markers"));
        assert!(parse_size("abc").unwrap_err().contains("not a size"));
        assert!(parse_secs("0").is_err());
        assert_eq!(parse_secs("0.5"), Ok(0.5));
    }

    #[test]
    fn cli_parses_selections() {
        let a = Args::try_parse_from([
            "throughput",
            "--quick",
            "--sizes",
            "16,4k",
            "--patterns",
            "pubsub,dealer-router",
            "--impls",
            "libzmq",
        ])
        .unwrap();
        assert_eq!(a.sizes, Some(vec![16, 4096]));
        assert_eq!(
            a.patterns,
            Some(vec![Pattern::Pubsub, Pattern::DealerRouter])
        );
        assert_eq!(a.impls, Some(vec![Impl::Libzmq]));
        assert!(Args::try_parse_from(["throughput", "--patterns", "nope"]).is_err());
        assert!(Args::try_parse_from(["throughput", "--sizes", "0"]).is_err());
        let a = Args::try_parse_from(["throughput", "--lossy", "--peers", "libzmq"]).unwrap();
        assert!(a.lossy);
        assert_eq!(a.peers, Some(vec![Impl::Libzmq]));
    }

    #[test]
    fn roles_by_hand_need_their_endpoints() {
        let parse = |args: &[&str]| {
            let mut all = vec!["throughput"];
            all.extend_from_slice(args);
            Args::try_parse_from(all)
        };
        let role = ["--role", "recv", "--impl", "libzmq", "--pattern", "pubsub"];
        let a = parse(&[&role[..], &["--size", "16", "--bind", "tcp://*:5555"]].concat()).unwrap();
        assert_eq!(check_role(Role::Recv, &a), Ok(()));
        let a = parse(&[&role[..], &["--size", "16"]].concat()).unwrap();
        assert!(check_role(Role::Recv, &a)
            .unwrap_err()
            .contains("--connect EP or --bind EP"));
        let a = parse(&[&role[..], &["--bind", "tcp://*:1"]].concat()).unwrap();
        assert!(check_role(Role::Recv, &a).unwrap_err().contains("--size"));
        let proxy = [
            "--role",
            "proxy",
            "--impl",
            "zeromq",
            "--pattern",
            "lvc",
            "--frontend",
            "@tcp://*:5556",
            "--backend",
            ">tcp://h:5557",
        ];
        let a = parse(&proxy).unwrap();
        assert_eq!(check_role(Role::Proxy, &a), Ok(()));
        let a = parse(&[&proxy[..], &["--count", "5"]].concat()).unwrap();
        assert!(check_role(Role::Proxy, &a).is_err());
        // Orchestrator flags do not mix with a role; role flags need one.
        assert!(parse(&[&role[..], &["--quick"]].concat()).is_err());
        assert!(parse(&["--bind", "tcp://*:1"]).is_err());
        assert!(parse(&["--role", "send", "--bind", "a", "--connect", "b"]).is_err());
    }
}
