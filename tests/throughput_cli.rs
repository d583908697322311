//! The `throughput` example, end to end and in its pure parts: a short
//! run of pub-sub, request-reply and the Espresso proxy on both stacks
//! must produce a table, a JSON list of rows with the documented keys and
//! an SVG chart; a receiver and a sender started by hand must measure; bad
//! arguments must fail clearly. Numbers are never checked against a speed,
//! only for being measured at all.
//!
//! The example's report and chart modules are compiled into this test too,
//! so their unit tests (table, JSON, SVG, medians) run in plain `cargo test`.

#[path = "../examples/throughput/report.rs"]
#[allow(dead_code)]
mod report;

#[path = "../examples/throughput/chart.rs"]
#[allow(dead_code)]
mod chart;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// The example binary, (re)built by cargo so it is never stale (a no-op
/// after `cargo test`, which builds the examples first).
fn example_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            // target/<profile>/deps/throughput_cli-<hash> -> target/<profile>/
            let profile_dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
            let mut cargo = Command::new(env!("CARGO"));
            cargo.args(["build", "--quiet", "--example", "throughput"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cargo.arg("--release");
            }
            let status = cargo.status().expect("running cargo");
            assert!(status.success(), "building the throughput example failed");
            profile_dir
                .join("examples")
                .join(format!("throughput{}", std::env::consts::EXE_SUFFIX))
        })
        .clone()
}

fn run(args: &[&str]) -> Output {
    Command::new(example_binary())
        .args(args)
        .output()
        .expect("running the throughput example")
}

#[test]
fn a_short_run_reports_every_case_on_both_stacks() {
    let dir = std::env::temp_dir().join(format!("zpatterns-throughput-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (json_path, svg_path) = (dir.join("rows.json"), dir.join("chart.svg"));
    let out = run(&[
        "--quick",
        "--sizes",
        "16",
        "--patterns",
        "pubsub,reqrep-latency,espresso,blackbox",
        "--secs",
        "0.2",
        "--out",
        json_path.to_str().unwrap(),
        "--plot",
        svg_path.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "failed:\n{stdout}\n{stderr}");
    // 2 pubsub + 2 reqrep + 2 blackbox + espresso for 2 peers x 2 proxies.
    let n = 10;
    // Progress on stderr, the tables on stdout.
    assert!(
        stderr.contains("[1/10]") && stderr.contains("[10/10]"),
        "{stderr}"
    );
    assert!(stdout.starts_with("mode"), "{stdout}");
    let (all, view) = stdout.split_once("\n\n").expect("two tables");
    assert_eq!(all.lines().count(), n + 1, "{stdout}");
    // The same-peers view: direct and both proxies, for each set of peers.
    assert_eq!(view.lines().count(), 1 + 2 * 3, "{stdout}");
    assert!(view.contains("libzmq -> espresso.c -> libzmq"), "{view}");
    assert!(
        view.contains("libzmq -> zpatterns espresso -> libzmq"),
        "{view}"
    );

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(rows.len(), n);
    for r in &rows {
        for key in [
            "impl",
            "peers",
            "mode",
            "pattern",
            "size",
            "msgs_per_s",
            "mb_per_s",
            "cpu_send_us",
            "cpu_recv_us",
        ] {
            assert!(r.get(key).is_some(), "row without {key}: {r}");
        }
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["mode"], "lossless", "{r}");
        assert_eq!(r["size"], 16);
        assert!(r["msgs_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["received"].as_u64().unwrap() > 0, "{r}");
        match r["pattern"].as_str().unwrap() {
            "reqrep-latency" => {
                let (p50, p99) = (r["p50_us"].as_f64().unwrap(), r["p99_us"].as_f64().unwrap());
                assert!(p50 > 0.0 && p99 >= p50, "{r}");
            }
            "espresso" => {
                assert!(r["captured"].as_u64().unwrap() > 0, "{r}");
                assert!(r["cpu_proxy_pct"].is_number(), "{r}");
                assert!(r["vs_direct"].as_f64().is_some_and(|x| x > 0.0), "{r}");
                // Lossless: everything sent arrived.
                assert_eq!(r["delivered_pct"].as_f64(), Some(100.0), "{r}");
            }
            "pubsub" | "blackbox" => assert!(r["delivered_pct"].as_f64().unwrap() > 0.0, "{r}"),
            other => panic!("unexpected pattern {other}"),
        }
    }
    let impls: Vec<&str> = rows.iter().map(|r| r["impl"].as_str().unwrap()).collect();
    assert_eq!(impls.iter().filter(|i| **i == "zeromq").count(), 5);
    assert_eq!(impls.iter().filter(|i| **i == "libzmq").count(), 5);
    // Every zeromq row is compared with its libzmq twin.
    assert!(rows
        .iter()
        .filter(|r| r["impl"] == "zeromq")
        .all(|r| r["ratio"].as_f64().is_some_and(|x| x > 0.0)));

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("espresso"));
    // One bar per row, plus the direct ceiling in each espresso panel.
    assert_eq!(svg.matches("<title>").count(), n + 2);
    std::fs::remove_dir_all(&dir).ok();
}

/// `--role recv` and `--role send` started by hand, as on two hosts: the
/// receiver binds an ephemeral port, the sender (the other stack) connects,
/// both print their summary line and exit by themselves.
#[test]
fn a_receiver_and_a_sender_started_by_hand_measure() {
    let mut recv = Command::new(example_binary())
        .args([
            "--role",
            "recv",
            "--impl",
            "libzmq",
            "--pattern",
            "pubsub",
            "--size",
            "16",
            "--bind",
            "tcp://127.0.0.1:*",
            "--count",
            "2000",
            "--deadline",
            "20",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(recv.stdout.take().unwrap()).lines();
    let ready = lines.next().unwrap().unwrap();
    let ep = ready.strip_prefix("READY ").expect(&ready).to_owned();
    let send = run(&[
        "--role",
        "send",
        "--impl",
        "zeromq",
        "--pattern",
        "pubsub",
        "--size",
        "16",
        "--connect",
        &ep,
        "--count",
        "2000",
        "--warmup",
        "0.3",
        "--deadline",
        "20",
    ]);
    let sent = String::from_utf8_lossy(&send.stdout);
    assert!(
        send.status.success(),
        "{sent}{}",
        String::from_utf8_lossy(&send.stderr)
    );
    assert!(
        sent.contains("send zeromq pubsub 16 B: 2000 msgs in"),
        "{sent}"
    );
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(recv.wait().unwrap().success(), "{rest:?}");
    let summary = rest
        .iter()
        .find(|l| l.starts_with("recv "))
        .expect("a summary line");
    assert!(
        summary.starts_with("recv libzmq pubsub 16 B: 2000 msgs in"),
        "{summary}"
    );
    assert!(
        summary.contains("msgs/s") && summary.contains("us/msg"),
        "{summary}"
    );
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let out = run(&["--sizes", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("markers"));
    let out = run(&["--patterns", "pubsub,nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
    let fails_with = |args: &[&str], needle: &str| {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(
            err.contains("Usage:") || err.contains("--help"),
            "{args:?}: {err}"
        );
    };
    let role = ["--role", "send", "--impl", "libzmq", "--pattern", "pubsub"];
    fails_with(
        &[&role[..], &["--size", "16"]].concat(),
        "needs --connect EP or --bind EP",
    );
    fails_with(&role, "needs --size");
    fails_with(
        &[
            &role[..],
            &[
                "--size",
                "16",
                "--bind",
                "tcp://*:1",
                "--connect",
                "tcp://h:1",
            ],
        ]
        .concat(),
        "cannot be used with",
    );
    fails_with(
        &[
            "--role",
            "proxy",
            "--impl",
            "zeromq",
            "--pattern",
            "pushpull",
        ],
        "proxied --pattern",
    );
    fails_with(&["--role", "recv", "--pattern", "pubsub"], "--impl");
    fails_with(&["--count", "5"], "--role");
    fails_with(
        &[
            "--role",
            "recv",
            "--impl",
            "zeromq",
            "--pattern",
            "pubsub",
            "--runs",
            "3",
        ],
        "cannot be used with",
    );
}
