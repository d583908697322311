//! `bstarsrv` and `bstarcli` as users run them: separate processes, real
//! flags, the Guide's usage line, and a failover after `kill -9`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Path of a built example, building the two Binary Star examples once.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--example",
                "bstarsrv",
                "--example",
                "bstarcli",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the examples failed");
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().join("examples")
    });
    dir.join(name)
}

/// Kills the child when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(name: &str, args: &[&str]) -> Running {
    Running(
        Command::new(example(name))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn example"),
    )
}

/// Runs to completion, killing it after `limit`.
fn run(name: &str, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{name} {args:?} did not finish within {limit:?}");
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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
    let [ps, bs, pv, bv] = [free_port(), free_port(), free_port(), free_port()];
    let ep = |p: u16| format!("tcp://127.0.0.1:{p}");
    let server = |side: &str, local: u16, remote: u16, voter: u16| {
        spawn(
            "bstarsrv",
            &[
                side,
                "--local",
                &format!("@{}", ep(local)),
                "--remote",
                &format!(">{}", ep(remote)),
                "--voter",
                &format!("@{}", ep(voter)),
                "--heartbeat-ms",
                "100",
            ],
        )
    };
    let mut primary = server("-p", ps, bs, pv);
    let _backup = server("-b", bs, ps, bv);
    let client = |count: &str| {
        let out = run(
            "bstarcli",
            &[
                "--primary",
                &ep(pv),
                "--backup",
                &ep(bv),
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
        second.contains(&format!("connecting to server at {}", ep(bv))),
        "{second}"
    );
    assert!(second.contains("I: server replied OK (2)"), "{second}");
}
