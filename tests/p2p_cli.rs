//! The `p2p` example as users run it: separate processes, real flags, a
//! real prompt on stdin. Bad arguments and a missing directory are clear
//! errors; three processes in a line (A knows B, B knows C) find and fetch
//! a file two hops away through the prompt and through `--fetch`, with
//! the stored copy byte-identical; a name nobody has is "Could not find
//! the file NAME" (and a non-zero exit for `--fetch`); a download that
//! lasts over a second shows its progress on stderr; every process is
//! killed when its test ends, pass or fail.

#[allow(dead_code, unreachable_pub)]
#[path = "common/procs.rs"]
mod procs;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use procs::{text, Running};

fn p2p() -> PathBuf {
    procs::example("p2p")
}

/// Runs `p2p args` to completion with stdin closed (killed after 30 s).
fn run(args: &[&str]) -> Output {
    procs::run("p2p", args, Duration::from_secs(30))
}

fn temp_dir(name: &str) -> PathBuf {
    procs::temp_dir("p2p-cli", name)
}

/// A running `p2p` node: its stdin, its stdout lines (the prompt `> `
/// stripped), and the URL it said it listens on.
struct Node {
    proc: Running,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    url: String,
}

impl Node {
    /// Starts `p2p --url tcp://127.0.0.1:0 --dir DIR extra..` and waits
    /// for its "listening on" line.
    fn start(dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(p2p())
            .args(["--url", "tcp://127.0.0.1:0", "--dir", dir.to_str().unwrap()])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn p2p");
        let stdin = child.stdin.take();
        let out = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut l = line.as_str();
                while let Some(rest) = l.strip_prefix("> ") {
                    l = rest;
                }
                if tx.send(l.to_owned()).is_err() {
                    return;
                }
            }
        });
        let mut node = Node {
            proc: Running(child),
            stdin,
            lines,
            url: String::new(),
        };
        let said = node.expect_line(|l| l.contains(" listening on "), 20);
        node.url = said.rsplit(' ').next().unwrap().to_owned();
        assert!(node.url.starts_with("tcp://127.0.0.1:"), "{said}");
        node
    }

    /// Sends one command line to the prompt.
    fn say(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write to the prompt");
        stdin.flush().unwrap();
    }

    /// The first line (within `secs`) for which `want` holds.
    fn expect_line(&self, want: impl Fn(&str) -> bool, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if want(&l) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("no expected line within {secs} s; saw {seen:?}"),
            }
        }
    }

    /// Closes stdin (end of input) and waits for a clean exit.
    fn close_and_wait(mut self) -> std::process::ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.proc.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "p2p did not exit at end of input"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn write_peers(dir: &Path, urls: &[&str]) -> String {
    let p = dir.join("peers.txt");
    let mut body = String::from("# peers\n\n");
    for u in urls {
        body.push_str(u);
        body.push('\n');
    }
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_owned()
}

/// Deterministic content that is not all one byte.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

#[test]
fn bad_arguments_are_clear_errors() {
    let base = temp_dir("bad");
    let dir = base.join("share");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();

    let out = run(&["--url", "tcp://127.0.0.1:0"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--dir"), "{}", text(&out.stderr));

    let missing = base.join("nope");
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        missing.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("the shared directory") && err.contains("nope"),
        "{err}"
    );

    let file = base.join("plain.txt");
    std::fs::write(&file, b"x").unwrap();
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not a directory"),
        "{}",
        text(&out.stderr)
    );

    let no_peers = base.join("no-peers.txt");
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        d,
        "--peers",
        no_peers.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("reading the peer file"),
        "{}",
        text(&out.stderr)
    );

    let junk = base.join("junk.txt");
    std::fs::write(&junk, "tcp://127.0.0.1:7000\nhttp://example.org\n").unwrap();
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        d,
        "--peers",
        junk.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("junk.txt:2") && err.contains("is not a ZeroMQ URL"),
        "{err}"
    );

    let out = run(&["--url", "not-a-url", "--dir", d]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not-a-url"),
        "{}",
        text(&out.stderr)
    );

    let out = run(&["--url", "tcp://127.0.0.1:0", "--dir", d, "--credit", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--credit"),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn three_processes_fetch_two_hops_away_through_the_prompt_and_fetch() {
    let base = temp_dir("line");
    let dirs: Vec<PathBuf> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| {
            let d = base.join(n);
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    // 1 MiB + a bit: several chunks at 64 KiB.
    let body = content((1 << 20) + 12_345, 7);
    std::fs::write(dirs[2].join("notes.bin"), &body).unwrap();

    let c = Node::start(&dirs[2], &[]);
    let b_peers = write_peers(&dirs[1], &[&c.url]);
    let b = Node::start(&dirs[1], &["--peers", &b_peers]);
    let a_peers = write_peers(&dirs[0], &[&b.url]);
    let mut a = Node::start(&dirs[0], &["--peers", &a_peers, "--chunk-kib", "64"]);

    a.say("peers");
    a.expect_line(|l| l.contains(&b.url), 10);

    a.say("fetch notes.bin");
    let line = a.expect_line(|l| l.starts_with("fetched ") || l.contains("notes.bin"), 30);
    assert!(line.starts_with("fetched notes.bin from "), "{line}");
    assert!(line.contains(&format!("{} bytes", body.len())), "{line}");
    assert!(line.contains("MB/s"), "{line}");
    let stored = std::fs::read(dirs[0].join("notes.bin")).expect("stored in A's directory");
    assert!(stored == body, "the stored copy differs from C's file");
    assert!(
        !dirs[0].join("notes.bin.part").exists(),
        "the .part file was renamed"
    );

    a.say("ls");
    a.expect_line(
        |l| l.ends_with(" notes.bin") && l.contains(&body.len().to_string()),
        10,
    );

    a.say("fetch no-such-file.txt");
    let line = a.expect_line(|l| l.contains("no-such-file.txt"), 30);
    assert_eq!(line, "Could not find the file no-such-file.txt");

    // The path guard: a name that leaves the directories is "not found",
    // whether or not the file exists, and nothing is written.
    std::fs::write(base.join("outside.txt"), b"keep out").unwrap();
    a.say("fetch ../outside.txt");
    let line = a.expect_line(|l| l.contains("outside.txt"), 30);
    assert_eq!(line, "Could not find the file ../outside.txt");
    assert_eq!(
        std::fs::read(base.join("outside.txt")).unwrap(),
        b"keep out"
    );
    assert!(!dirs[0].join("outside.txt").exists());

    a.say("hello tcp://127.0.0.1:1");
    a.expect_line(|l| l.starts_with("hello tcp://127.0.0.1:1"), 10);

    a.say("frobnicate");
    a.expect_line(|l| l.starts_with("unknown command"), 10);

    // `--fetch`, for scripts: D knows only B.
    let d_peers = write_peers(&base, &[&b.url]);
    let d = dirs[3].to_str().unwrap();
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        d,
        "--peers",
        &d_peers,
        "--fetch",
        "notes.bin",
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("fetched notes.bin from "),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::read(dirs[3].join("notes.bin")).unwrap() == body);

    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        d,
        "--peers",
        &d_peers,
        "--fetch",
        "absent.txt",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("Could not find the file absent.txt"),
        "{}",
        text(&out.stdout)
    );

    // `exit`, and end of input, stop the nodes cleanly.
    a.say("exit");
    assert!(a.close_and_wait().success());
    assert!(b.close_and_wait().success());
    assert!(c.close_and_wait().success());
    let _ = std::fs::remove_dir_all(&base);
}

/// A share that takes at least 10 ms per chunk read, so a transfer lasts
/// long enough for the progress display whatever the machine's speed.
#[derive(Debug)]
struct SlowShare(zpatterns::p2p::DirShare);

impl zpatterns::p2p::Share for SlowShare {
    fn list(&mut self) -> Vec<zpatterns::p2p::FileInfo> {
        self.0.list()
    }
    fn lookup(&mut self, name: &str) -> Option<zpatterns::p2p::FileInfo> {
        self.0.lookup(name)
    }
    fn read(
        &mut self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<bytes::Bytes, zpatterns::p2p::P2pError> {
        std::thread::sleep(Duration::from_millis(10));
        self.0.read(name, offset, len)
    }
    fn begin(
        &mut self,
        name: &str,
        chunk_size: u32,
        chunks: &[zpatterns::p2p::Hash],
    ) -> Result<u64, zpatterns::p2p::P2pError> {
        self.0.begin(name, chunk_size, chunks)
    }
    fn write(
        &mut self,
        name: &str,
        offset: u64,
        data: &[u8],
    ) -> Result<(), zpatterns::p2p::P2pError> {
        self.0.write(name, offset, data)
    }
    fn finish(
        &mut self,
        name: &str,
        hash: &zpatterns::p2p::Hash,
    ) -> Result<zpatterns::p2p::FileInfo, zpatterns::p2p::P2pError> {
        self.0.finish(name, hash)
    }
    fn by_hash(&mut self, hash: &zpatterns::p2p::Hash) -> Option<zpatterns::p2p::FileInfo> {
        self.0.by_hash(hash)
    }
    fn manifest(
        &mut self,
        info: &zpatterns::p2p::FileInfo,
        chunk_size: u32,
    ) -> Result<Vec<zpatterns::p2p::Hash>, zpatterns::p2p::P2pError> {
        self.0.manifest(info, chunk_size)
    }
}

/// A download that takes more than a second (200 chunks from a provider
/// that reads each in at least 10 ms) shows its progress on stderr, then
/// the usual result line.
#[test]
fn a_long_fetch_shows_its_progress() {
    let base = temp_dir("progress");
    let (src, dst) = (base.join("src"), base.join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::create_dir_all(&dst).unwrap();
    let body = content(200 * 16 * 1024, 3);
    std::fs::write(src.join("slow.bin"), &body).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let provider = rt.block_on(async {
        let cfg = zpatterns::p2p::P2pConfig::new(
            "tcp://127.0.0.1:0",
            bytes::Bytes::from_static(b"provider"),
        );
        let share = SlowShare(zpatterns::p2p::DirShare::new(&src).unwrap());
        zpatterns::p2p::P2p::start(cfg, Box::new(share), &stop)
            .await
            .unwrap()
    });
    let peers = write_peers(&base, &[provider.url()]);
    let started = Instant::now();
    let out = run(&[
        "--url",
        "tcp://127.0.0.1:0",
        "--dir",
        dst.to_str().unwrap(),
        "--peers",
        &peers,
        "--chunk-kib",
        "16",
        "--credit",
        "1",
        "--fetch",
        "slow.bin",
    ]);
    let took = started.elapsed();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        took >= Duration::from_secs(2),
        "the provider's reads alone take 2 s"
    );
    assert!(stdout.contains("fetched slow.bin from "), "{stdout}");
    // `\r  1.2 MiB of 3.1 MiB (38 %), 0.6 MB/s`, rewritten in place.
    let shown: Vec<&str> = stderr
        .split('\r')
        .filter(|l| l.contains(" of 3.1 MiB (") && l.contains("%)") && l.contains("MB/s"))
        .collect();
    assert!(!shown.is_empty(), "no progress line on stderr: {stderr:?}");
    assert!(std::fs::read(dst.join("slow.bin")).unwrap() == body);
    stop.cancel();
    drop(provider);
    let _ = std::fs::remove_dir_all(base);
}
