//! What the `p2p` example's prompt and `--fetch` print, shared with the
//! tour and the measurements (example-private code, not library API).

use std::io::Write;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use zpatterns::p2p::{code, P2p, P2pError};

/// A random secret of 32 lowercase letters (the seed's `randomStr`).
pub(crate) fn random_secret() -> String {
    (0..32).map(|_| fastrand::lowercase()).collect()
}

/// `n` bytes as MiB with one decimal.
pub(crate) fn mib(n: u64) -> String {
    format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64)
}

/// Fetches `name` through `node`, printing the outcome as the prompt
/// does, and progress on stderr while the transfer lasts longer than a
/// second. Returns whether the file is now stored and verified.
pub(crate) async fn fetch_and_report(
    node: &P2p,
    name: &str,
    secret: &str,
    stop: &CancellationToken,
) -> bool {
    let started = Instant::now();
    let fetch = node.fetch(name, secret.as_bytes());
    tokio::pin!(fetch);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut shown = false;
    let result = loop {
        tokio::select! {
            r = &mut fetch => break Some(r),
            () = stop.cancelled() => break None,
            _ = tick.tick() => {
                if started.elapsed() >= Duration::from_secs(1) {
                    shown |= show_progress(node, started).await;
                }
            }
        }
    };
    if shown {
        eprintln!();
    }
    match result {
        None => {
            println!("fetch {name}: interrupted");
            false
        }
        Some(Ok(done)) => {
            let secs = done.secs.max(1e-6);
            let resumed = if done.resumed > 0 {
                format!(", {} resumed from a .part", done.resumed)
            } else {
                String::new()
            };
            println!(
                "fetched {} from {}: {} bytes, sha256 {}, {:.1} MB/s ({:.2} s{resumed})",
                done.info.name,
                done.from,
                done.info.size,
                done.info.hash,
                done.bytes as f64 / secs / 1e6,
                done.secs,
            );
            if done.providers.len() > 1 {
                println!("  chunks came from {}", done.providers.join(", "));
            }
            true
        }
        Some(Err(e)) => {
            print_fetch_error(name, &e);
            false
        }
    }
}

/// The seed's messages: "Could not find the file NAME" when nobody has
/// it (or the path guard refused the name: the same answer), the fault
/// otherwise.
fn print_fetch_error(name: &str, e: &P2pError) {
    if e.code() == code::UNHANDLED {
        println!("Could not find the file {name}");
    } else {
        println!("fetch {name}: {e}");
    }
}

/// Prints the downloads in progress on stderr (`\r`, one line); returns
/// whether it printed.
async fn show_progress(node: &P2p, started: Instant) -> bool {
    let Ok(running) = node.progress().await else {
        return false;
    };
    let (done, total) = running
        .iter()
        .fold((0, 0), |(d, t), (dd, tt)| (d + dd, t + tt));
    if total == 0 {
        return false;
    }
    let rate = done as f64 / started.elapsed().as_secs_f64() / 1e6;
    eprint!(
        "\r  {} of {} ({:.0} %), {rate:.1} MB/s   ",
        mib(done),
        mib(total),
        done as f64 * 100.0 / total as f64
    );
    let _ = std::io::stderr().flush();
    true
}

/// The `peers` command.
pub(crate) async fn print_peers(node: &P2p) {
    match node.peers().await {
        Ok(peers) if peers.is_empty() => println!("no known peers"),
        Ok(peers) => {
            for (id, url) in peers {
                println!("{id} {url}");
            }
        }
        Err(e) => println!("peers: {e}"),
    }
}

/// The `ls` command: the shared directory as the node serves it (through
/// its share, so only names the path guard accepts, with cached hashes).
pub(crate) async fn print_ls(node: &P2p) {
    match node.list().await {
        Ok(files) if files.is_empty() => println!("(no shared files)"),
        Ok(files) => {
            for f in files {
                println!("{:>12}  {}  {}", f.size, f.hash, f.name);
            }
        }
        Err(e) => println!("ls: {e}"),
    }
}
