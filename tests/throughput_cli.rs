//! The `throughput` example, end to end and in its pure parts: a short
//! run of pub-sub, request-reply and the Espresso proxy on both stacks
//! must produce a table, a JSON list of rows with the documented keys and
//! an SVG chart; bad arguments must fail clearly. Numbers are never checked
//! against a speed, only for being measured at all.
//!
//! The example's report and chart modules are compiled into this test too,
//! so their unit tests (table, JSON, SVG, medians) run in plain `cargo test`.

#[path = "../examples/throughput/report.rs"]
#[allow(dead_code)]
mod report;

#[path = "../examples/throughput/chart.rs"]
#[allow(dead_code)]
mod chart;

use std::path::PathBuf;
use std::process::{Command, Output};
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
    // Progress on stderr, the table on stdout.
    assert!(
        stderr.contains("[1/8]") && stderr.contains("[8/8]"),
        "{stderr}"
    );
    assert!(stdout.starts_with("impl"), "{stdout}");
    assert_eq!(stdout.lines().count(), 9, "{stdout}");

    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json_path).unwrap()).unwrap();
    assert_eq!(rows.len(), 8);
    for r in &rows {
        for key in ["impl", "pattern", "size", "msgs_per_s", "mb_per_s"] {
            assert!(r.get(key).is_some(), "row without {key}: {r}");
        }
        assert_eq!(r["status"], "ok", "{r}");
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
            }
            "pubsub" | "blackbox" => assert!(r["delivered_pct"].as_f64().unwrap() > 0.0, "{r}"),
            other => panic!("unexpected pattern {other}"),
        }
    }
    let impls: Vec<&str> = rows.iter().map(|r| r["impl"].as_str().unwrap()).collect();
    assert_eq!(impls.iter().filter(|i| **i == "zeromq").count(), 4);
    assert_eq!(impls.iter().filter(|i| **i == "libzmq").count(), 4);
    // Every zeromq row is compared with its libzmq twin.
    assert!(rows
        .iter()
        .filter(|r| r["impl"] == "zeromq")
        .all(|r| r["ratio"].as_f64().is_some_and(|x| x > 0.0)));

    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("espresso"));
    assert_eq!(svg.matches("<title>").count(), 8);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_arguments_fail_with_a_clear_message() {
    let out = run(&["--sizes", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("markers"));
    let out = run(&["--patterns", "pubsub,nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}
