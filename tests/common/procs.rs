//! The examples as child processes: build them once, spawn them, kill them
//! (a `Running` child is killed when dropped), and read what they print.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// Path of a built example, building it (only it, in the test's profile)
/// once if needed: a full `cargo test` has built the examples already, and
/// this makes a single test file work on its own, quickly.
pub fn example(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    // target/<profile>/deps/<test>-*: the examples are in <profile>/examples.
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_owned();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(name) {
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--example", name, "--quiet"]);
        if profile_dir.ends_with("release") {
            cargo.arg("--release");
        }
        let status = cargo
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the {name} example failed");
        built.insert(name.to_owned());
    }
    profile_dir.join("examples").join(name)
}

/// Lossy UTF-8 of a child's output.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh directory `zpatterns-<prefix>-<name>-<pid>` under the system's
/// temporary directory.
pub fn temp_dir(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("zpatterns-{prefix}-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Kills the child when dropped.
#[derive(Debug)]
pub struct Running(pub Child);

impl Running {
    /// `kill -9` now, and reap it.
    pub fn kill9(&mut self) {
        let _ = self.0.kill(); // SIGKILL on Unix
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Spawns an example with stdout and stderr discarded.
pub fn spawn(name: &str, args: &[&str]) -> Running {
    Running(
        Command::new(example(name))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn example"),
    )
}

/// Spawns an example and hands its stdout lines to the returned channel.
pub fn spawn_reading(name: &str, args: &[&str]) -> (Running, mpsc::Receiver<String>) {
    let mut child = Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn example");
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    (Running(child), rx)
}

/// The first line from `lines` that starts with `prefix`, without it.
pub fn line_after(lines: &mpsc::Receiver<String>, prefix: &str, limit: Duration) -> String {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.trim().to_owned();
                }
            }
            Err(_) => panic!("no line starting with {prefix:?} within {limit:?}"),
        }
    }
}

/// Runs an example to completion with stdin closed, killing it after
/// `limit`.
pub fn run(name: &str, args: &[&str], limit: Duration) -> Output {
    let child = Command::new(example(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("{name} {args:?} did not finish within {limit:?}");
        }
    }
}
