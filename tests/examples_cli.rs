//! The examples as users run them: separate processes, real flags.

mod common;
use common::procs::{run, spawn};

use std::net::TcpListener;
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn bad_arguments_are_clear_errors_with_status_2() {
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "lvcache",
            &["--frontend", "tcp://*:x"],
            "malformed endpoint",
        ),
        ("espresso", &["--frontend", "tcp://*:5"], "wildcard"),
        (
            "lvcache",
            &["--nodrop", "--disconnect-slow", "100"],
            "cannot be used with",
        ),
        ("espresso", &["--disconnect-slow", "soon"], "invalid value"),
        ("pathosub", &["--count", "many"], "invalid value"),
        ("pathopub", &["inproc://x"], "unsupported transport"),
        ("clonesrv", &["--port", "65535"], "invalid value"),
        ("clonesrv", &["-p", "-b"], "exactly one of -p"),
        (
            "clonesrv",
            &["--peer", "tcp://localhost:5566"],
            "exactly one of -p",
        ),
        ("clonecli", &["--server", "tcp://*:5556"], "wildcard"),
        (
            "clonecli",
            &[
                "--server",
                "tcp://a:1",
                "--server",
                "tcp://b:1",
                "--server",
                "tcp://c:1",
            ],
            "max. 2",
        ),
    ];
    for (name, args, says) in cases {
        let out = run(name, args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
        assert!(
            stderr.contains(says),
            "{name} {args:?} should say {says:?}: {stderr}"
        );
    }
}

/// The README's run: `lvcache & pathopub tcp://localhost:5557 & pathosub
/// tcp://localhost:5558` prints "Save Roger" at once (on free ports here).
#[test]
fn lvcache_serves_a_late_pathosub_at_once() {
    let (front, back) = (free_port(), free_port());
    let _cache = spawn(
        "lvcache",
        &[
            "--frontend",
            &format!("tcp://127.0.0.1:{front}"),
            "--backend",
            &format!("tcp://127.0.0.1:{back}"),
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let _publisher = spawn(
        "pathopub",
        &[
            &format!("tcp://127.0.0.1:{front}"),
            "--settle-ms",
            "300",
            "--interval-ms",
            "60000",
        ],
    );
    let started = Instant::now();
    loop {
        let out = run(
            "pathosub",
            &[
                &format!("tcp://127.0.0.1:{back}"),
                "--topic",
                "042",
                "--count",
                "1",
            ],
            Duration::from_secs(30),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.trim() == "Save Roger" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no cached value: {stdout:?} {:?}",
            out.status
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn espresso_demo_shows_subscribes_data_and_unsubscribes() {
    let out = run("espresso", &["--take", "2"], Duration::from_secs(60));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let kinds: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == "subscribe").count(),
        2,
        "{stdout}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "unsubscribe").count(),
        2,
        "{stdout}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "message").count() >= 2,
        "{stdout}"
    );
    assert_eq!(kinds.last(), Some(&"unsubscribe"), "{stdout}");
}

/// The Guide's run: `clonesrv`, a `clonecli` writing random keys under
/// `/client/`, and a second `clonecli` that only watches and prints what
/// the server sends it (snapshot and live updates, with their sequences).
#[test]
fn clonecli_watcher_sees_another_clonecli_writes_through_clonesrv() {
    let port = loop {
        let p = free_port();
        if p < 65533 && (1..=2).all(|i| TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let _server = spawn(
        "clonesrv",
        &["--host", "127.0.0.1", "--port", &port.to_string()],
    );
    let server = format!("tcp://127.0.0.1:{port}");
    let _writer = spawn("clonecli", &["--server", &server, "--interval", "0.05"]);
    let out = run(
        "clonecli",
        &["--server", &server, "--interval", "0", "--count", "5"],
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let from_server = stdout
        .lines()
        .filter(|l| l.starts_with("I: Sync update=") || l.starts_with("I: Live update="))
        .count();
    assert_eq!(from_server, 5, "{stdout}");
    assert!(stdout.contains("/client/"), "{stdout}");
}
