//! The `raft` example as users run it: separate processes, real flags. A
//! malformed or inconsistent configuration is a clear error naming the
//! problem; `raft config` prints a configuration the other subcommands
//! accept; a real 3-process cluster (`raft serve` x3) serves `put`, `get`
//! and `status`, and keeps serving writes after its leader's process is
//! killed.

#[allow(dead_code, unreachable_pub)]
#[path = "common/procs.rs"]
mod procs;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procs::{text, Running};

fn raft() -> PathBuf {
    procs::example("raft")
}

/// Runs `raft args` to completion with stdin closed (killed after 30 s).
fn run(args: &[&str]) -> Output {
    procs::run("raft", args, Duration::from_secs(30))
}

fn temp_dir(name: &str) -> PathBuf {
    procs::temp_dir("raft-cli", name)
}

fn write(dir: &Path, name: &str, contents: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn bad_configurations_are_clear_errors() {
    let dir = temp_dir("bad");
    let d = dir.to_str().unwrap().replace('\\', "/");
    let top = format!(r#""host": "127.0.0.1", "dir": "{d}""#);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "bad json",
            r#"{"host": "127.0.0.1", "nodes": [ "#.into(),
            "malformed configuration",
        ),
        (
            "not an object",
            "[1, 2, 3]".into(),
            "malformed configuration",
        ),
        (
            "empty node list",
            format!(r#"{{{top}, "nodes": []}}"#),
            "the node list is empty",
        ),
        (
            "duplicate id",
            format!(
                r#"{{{top}, "nodes": [{{"id": 1, "port": 7001}}, {{"id": 1, "port": 7002}}]}}"#
            ),
            "duplicate node id 1",
        ),
        (
            "duplicate port",
            format!(
                r#"{{{top}, "nodes": [{{"id": 1, "port": 7001}}, {{"id": 2, "port": 7001}}]}}"#
            ),
            "duplicate port 7001",
        ),
        (
            "port 0",
            format!(r#"{{{top}, "nodes": [{{"id": 1, "port": 0}}]}}"#),
            "port 0 is out of range",
        ),
        (
            "port too large",
            format!(r#"{{{top}, "nodes": [{{"id": 1, "port": 70000}}]}}"#),
            "port 70000 is out of range",
        ),
        (
            "missing port",
            format!(r#"{{{top}, "nodes": [{{"id": 1}}]}}"#),
            "missing field `port`",
        ),
        (
            "missing host",
            format!(r#"{{"dir": "{d}", "nodes": [{{"id": 1, "port": 7001}}]}}"#),
            "missing field `host`",
        ),
        (
            "misspelt field",
            format!(r#"{{{top}, "nodes": [{{"id": 1, "prot": 7001}}]}}"#),
            "unknown field `prot`",
        ),
        (
            "wildcard host",
            format!(r#"{{"host": "*", "dir": "{d}", "nodes": [{{"id": 1, "port": 7001}}]}}"#),
            "is not usable",
        ),
        (
            "unknown node",
            format!(
                r#"{{{top}, "nodes": [{{"id": 1, "port": 7001}}, {{"id": 2, "port": 7002}}]}}"#
            ),
            "unknown node 9",
        ),
    ];
    for (what, contents, says) in &cases {
        let file = write(&dir, "c.json", contents);
        for args in [
            vec!["serve", "--config", &file, "--node", "9"],
            vec!["status", "--config", &file, "--timeout", "0.2"],
        ] {
            if *what == "unknown node" && args[0] == "status" {
                continue; // status has no --node: this file is valid for it
            }
            let out = run(&args);
            let stderr = text(&out.stderr);
            assert!(!out.status.success(), "{what}: {args:?} succeeded");
            assert!(
                stderr.contains(says),
                "{what}: {args:?} should say {says:?}: {stderr}"
            );
            assert!(
                stderr.contains("c.json"),
                "{what}: the error should name the file: {stderr}"
            );
        }
    }
    let out = run(&["get", "--config", "/nonexistent/raft.json", "k"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("reading the configuration /nonexistent/raft.json"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn generated(nodes: u16, base: u16, dir: &Path) -> (String, serde_json::Value) {
    let out = run(&[
        "config",
        "--nodes",
        &nodes.to_string(),
        "--base-port",
        &base.to_string(),
        "--dir",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = text(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(&json).expect("raft config prints JSON");
    (json, v)
}

#[test]
fn generated_configuration_is_valid_and_accepted() {
    let dir = temp_dir("gen");
    let (json, v) = generated(4, 7300, &dir);
    assert_eq!(v["host"], "127.0.0.1", "{json}");
    assert_eq!(v["dir"], dir.to_str().unwrap(), "{json}");
    let nodes = v["nodes"].as_array().expect("a node list");
    let got: Vec<(u64, u64)> = nodes
        .iter()
        .map(|n| (n["id"].as_u64().unwrap(), n["port"].as_u64().unwrap()))
        .collect();
    assert_eq!(got, vec![(1, 7300), (2, 7301), (3, 7302), (4, 7303)]);
    // Accepted: `status` gets past the configuration and finds nobody.
    let file = write(&dir, "raft.json", &json);
    let out = run(&["status", "--config", &file, "--timeout", "0.3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    assert!(stderr.contains("no node answered"), "{stderr}");
    assert_eq!(stdout.matches("unreachable").count(), 4, "{stdout}");
    // A client that finds no leader says so.
    let out = run(&["put", "--config", &file, "k", "v", "--timeout", "0.5"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no leader answered within 0.5 s"),
        "{}",
        text(&out.stderr)
    );
    // Ports past 65535 are refused up front.
    let out = run(&["config", "--nodes", "3", "--base-port", "65534"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--base-port 65534"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `n` consecutive free ports.
fn free_ports(n: u16) -> u16 {
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 65535 - n && (0..n).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// Spawns `raft serve` for node `id` and waits for its "listening" line.
fn serve(config: &str, id: u32) -> Running {
    let mut child = Command::new(raft())
        .args(["serve", "--config", config, "--node", &id.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn raft serve");
    let out = child.stdout.take().expect("piped stdout");
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(&format!("node {id} listening on")) => break,
            Ok(_) => {}
            Err(_) => panic!("node {id} never said it was listening"),
        }
    }
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    running
}

/// The status table's rows that answered: `(id, role)`.
fn roles(config: &str) -> Vec<(u32, String)> {
    let out = run(&["status", "--config", config, "--timeout", "1"]);
    text(&out.stdout)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let id = w.next()?.parse().ok()?;
            Some((id, w.next()?.to_owned()))
        })
        .filter(|(_, role)| role != "unreachable")
        .collect()
}

/// Polls `status` until exactly one node among those answering says it
/// leads, with `answering` nodes answering; returns the leader.
fn one_leader(config: &str, answering: usize) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = roles(config);
        let leaders: Vec<u32> = r
            .iter()
            .filter(|(_, role)| role == "leader")
            .map(|(id, _)| *id)
            .collect();
        if r.len() == answering && leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single leader among {answering} answering nodes: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn put(config: &str, key: &str, value: &str, timeout: &str) -> Output {
    run(&["put", "--config", config, key, value, "--timeout", timeout])
}

#[test]
fn three_process_cluster_survives_its_leader_being_killed() {
    let dir = temp_dir("cluster");
    let base = free_ports(3);
    let (json, _) = generated(3, base, &dir);
    let config = write(&dir, "raft.json", &json);
    let mut nodes: Vec<(u32, Running)> = (1..=3).map(|id| (id, serve(&config, id))).collect();

    // The first write waits for the first election.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = put(&config, "greeting", "hello", "2");
        if out.status.success() {
            assert_eq!(text(&out.stdout).trim(), "OK");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no write succeeded: {}",
            text(&out.stderr)
        );
    }
    let out = run(&["get", "--config", &config, "greeting"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "hello");

    let leader = one_leader(&config, 3);
    let i = nodes.iter().position(|(id, _)| *id == leader).unwrap();
    nodes[i].1.kill9();
    nodes.remove(i);

    // The two survivors elect a new leader; the client finds it.
    let out = put(&config, "after", "failover", "15");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "OK");
    let out = run(&["get", "--config", &config, "after"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "failover",
        "{}",
        text(&out.stderr)
    );
    let out = run(&["get", "--config", &config, "greeting"]);
    assert_eq!(text(&out.stdout).trim(), "hello", "{}", text(&out.stderr));
    let out = run(&["delete", "--config", &config, "greeting"]);
    assert_eq!(text(&out.stdout).trim(), "deleted", "{}", text(&out.stderr));
    let out = run(&["get", "--config", &config, "greeting"]);
    assert_eq!(
        text(&out.stdout).trim(),
        "(not found)",
        "{}",
        text(&out.stderr)
    );

    let new_leader = one_leader(&config, 2);
    assert_ne!(new_leader, leader);
    let out = run(&["status", "--config", &config, "--timeout", "0.5"]);
    let table = text(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.lines().any(|l| l
            .split_whitespace()
            .take(2)
            .eq([leader.to_string().as_str(), "unreachable"])),
        "the killed node should be unreachable: {table}"
    );
    drop(nodes); // kills the survivors
    let _ = std::fs::remove_dir_all(&dir);
}

/// The scenario's output without its wall-clock lines.
fn deterministic_lines(out: &Output) -> Vec<String> {
    text(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("(wall clock"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn sim_scenario_agrees_and_the_same_seed_prints_the_same() {
    let first = run(&["--sim", "3"]);
    assert!(first.status.success(), "{}", text(&first.stderr));
    let lines = deterministic_lines(&first);
    let all = lines.join("\n");
    assert!(all.contains("result: all state machines agree"), "{all}");
    assert!(all.contains("caught up by InstallSnapshot yes"), "{all}");
    assert!(all.contains("restarted from its WAL"), "{all}");
    assert!(all.contains("virtual time:"), "{all}");
    let again = run(&["--sim", "3"]);
    assert_eq!(deterministic_lines(&again), lines);
}

#[test]
fn zeromq_scenario_agrees() {
    let out = run(&["--ops", "600", "--snapshot-every", "20"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("over ZeroMQ on 127.0.0.1, fsynced WALs"),
        "{stdout}"
    );
    assert!(
        stdout.contains("caught up by InstallSnapshot yes"),
        "{stdout}"
    );
    assert!(
        stdout.contains("result: all state machines agree"),
        "{stdout}"
    );
}
