//! `bstarcli`: the Guide's Binary Star client (ch. 4, `bstarcli`): a REQ
//! socket that sends a sequence number once a second and expects it back;
//! after a timeout with no reply it closes the socket, waits a settle
//! delay and votes at the other server (Lazy Pirate failover).
//!
//! ```sh
//! cargo run --example bstarcli
//! cargo run --example bstarcli -- --count 5 --interval-ms 100
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use zeromq::prelude::*;
use zeromq::{ReqSocket, SocketOptions, ZmqMessage};
use zpatterns::endpoint::{Attach, EndpointError, EndpointSpec};

/// Binary Star client: fails over between the primary and the backup.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The primary's voter.
    #[arg(long, default_value = "tcp://localhost:5001", value_parser = connect_spec)]
    primary: EndpointSpec,
    /// The backup's voter.
    #[arg(long, default_value = "tcp://localhost:5002", value_parser = connect_spec)]
    backup: EndpointSpec,
    /// Milliseconds to wait for a reply before failing over.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Milliseconds to wait before voting at the other server.
    #[arg(long, default_value_t = 2000)]
    settle_ms: u64,
    /// Milliseconds between requests.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Stop after this many replies (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

fn connect_spec(s: &str) -> Result<EndpointSpec, EndpointError> {
    EndpointSpec::parse(s, Attach::Connect)
}

async fn open(endpoint: &str, timeout: Duration) -> Option<ReqSocket> {
    let mut options = SocketOptions::default();
    options.connect_timeout(timeout);
    let mut req = ReqSocket::with_options(options);
    match tokio::time::timeout(timeout, req.connect(endpoint)).await {
        Ok(Ok(())) => Some(req),
        _ => None,
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

fn main() -> anyhow::Result<()> {
    common::init_logging("warn");
    let args = Args::parse();
    if args.primary.attach() != Attach::Connect || args.backup.attach() != Attach::Connect {
        anyhow::bail!("the client connects: give the servers as >tcp://HOST:PORT");
    }
    let servers = [
        args.primary.endpoint().to_owned(),
        args.backup.endpoint().to_owned(),
    ];
    let timeout = Duration::from_millis(args.timeout_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut server = 0;
        println!("I: connecting to server at {}...", servers[server]);
        let mut client = open(&servers[server], timeout).await;
        let mut sequence: u64 = 0;
        let mut replies: u64 = 0;
        let mut last_reply: Option<Instant> = None;
        let mut failed_over = false;
        loop {
            sequence += 1;
            let request = sequence.to_string();
            loop {
                let reply = match client.as_mut() {
                    Some(req) => {
                        let msg = ZmqMessage::from(request.clone());
                        match req.send(msg).await {
                            Ok(()) => tokio::time::timeout(timeout, req.recv()).await.ok(),
                            Err(_) => None,
                        }
                    }
                    None => None,
                };
                match reply {
                    Some(Ok(msg)) => {
                        let body = msg.get(0).map(|f| String::from_utf8_lossy(f).into_owned());
                        if body.as_deref() == Some(request.as_str()) {
                            println!("I: server replied OK ({request})");
                            if failed_over {
                                if let Some(last) = last_reply {
                                    println!(
                                        "I: failover to {} took {} ms since the last reply (unix_ms={})",
                                        servers[server],
                                        last.elapsed().as_millis(),
                                        unix_ms()
                                    );
                                }
                                failed_over = false;
                            }
                            last_reply = Some(Instant::now());
                            replies += 1;
                            break;
                        }
                        println!("E: bad reply from server: {body:?}");
                    }
                    _ => {
                        println!("W: no response from server, failing over");
                        drop(client.take());
                        server = (server + 1) % 2;
                        failed_over = true;
                        tokio::time::sleep(Duration::from_millis(args.settle_ms)).await;
                        println!("I: connecting to server at {}...", servers[server]);
                        client = open(&servers[server], timeout).await;
                    }
                }
            }
            if args.count.is_some_and(|n| replies >= n) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
        }
    })
}
