//! `bstarsrv` and `bstarcli` as users run them: separate processes, real
//! flags, the Guide's usage line, and a failover after `kill -9`.
//!
//! The servers bind port 0 and print their bound endpoints; each reaches
//! the other's state publisher through a [`Relay`] on a kept ephemeral port
//! (a server needs its peer's address before the peer has bound).

mod common;
use common::procs::{run, spawn_reading, Running};
use common::relay::Relay;

use std::time::{Duration, Instant};

/// Starts `bstarsrv` with `args` and reads its bound state publisher and
/// voter from its stdout (`I: state publisher bound at ...`, `I: voter
/// bound at ...`); stdout is drained until it exits.
fn spawn_server(args: &[&str]) -> (Running, String, String) {
    let (running, rx) = spawn_reading("bstarsrv", args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut state, mut voter) = (None, None);
    while state.is_none() || voter.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|e| panic!("bstarsrv {args:?} printed no endpoints: {e}"));
        if let Some(ep) = line.strip_prefix("I: state publisher bound at ") {
            state = Some(ep.to_owned());
        } else if let Some(ep) = line.strip_prefix("I: voter bound at ") {
            voter = Some(ep.to_owned());
        }
    }
    (running, state.unwrap(), voter.unwrap())
}

#[test]
fn bstarsrv_without_exactly_one_of_p_and_b_prints_the_usage_line() {
    for args in [
        &[][..],
        &["-p", "-b"],
        &["-b", "-p", "--heartbeat-ms", "100"],
    ] {
        let out = run("bstarsrv", args, Duration::from_secs(30));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim(), "Usage: bstarsrv { -p | -b }", "{args:?}");
    }
    let out = run(
        "bstarsrv",
        &["-p", "--voter", "tcp://*:x"],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed endpoint"));
    let out = run("bstarsrv", &["-x"], Duration::from_secs(30));
    assert_ne!(out.status.code(), Some(0));
}

#[test]
fn bstarcli_is_answered_by_the_pair_and_fails_over_after_kill_9() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // `to_primary` forwards to the primary's state publisher (the backup's
    // remote), `to_backup` to the backup's (the primary's remote).
    let (to_primary, to_backup) =
        rt.block_on(async { (Relay::start().await, Relay::start().await) });
    let server = |side: &str, remote: &str| {
        spawn_server(&[
            side,
            "--local",
            "@tcp://127.0.0.1:0",
            "--remote",
            &format!(">{remote}"),
            "--voter",
            "@tcp://127.0.0.1:0",
            "--heartbeat-ms",
            "100",
        ])
    };
    let (mut primary, ps, pv) = server("-p", to_backup.endpoint());
    to_primary.set_target(&ps);
    let (_backup, bs, bv) = server("-b", to_primary.endpoint());
    to_backup.set_target(&bs);
    let client = |count: &str| {
        let out = run(
            "bstarcli",
            &[
                "--primary",
                &pv,
                "--backup",
                &bv,
                "--timeout-ms",
                "500",
                "--settle-ms",
                "300",
                "--interval-ms",
                "50",
                "--count",
                count,
            ],
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
    };
    let first = client("3");
    assert!(first.contains("I: server replied OK (3)"), "{first}");
    primary.0.kill().unwrap();
    primary.0.wait().unwrap();
    let second = client("2");
    assert!(
        second.contains("W: no response from server, failing over"),
        "{second}"
    );
    assert!(
        second.contains(&format!("connecting to server at {bv}")),
        "{second}"
    );
    assert!(second.contains("I: server replied OK (2)"), "{second}");
}
