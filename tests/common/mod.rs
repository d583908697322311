//! Shared helpers for the integration tests: libzmq peers (the `zmq` crate
//! with its vendored libzmq 4.3), zeromq-crate sockets, time limits and log
//! capture.
//!
//! A libzmq interop test is a few lines:
//!
//! ```ignore
//! mod common;
//! use common::*;
//!
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn libzmq_pub_reaches_my_pattern() {
//!     trace_init();
//!     let publisher = Lz::new(zmq::PUB);
//!     let ep = publisher.bind_loopback();
//!     // ... start the pattern with `ep` as its frontend ...
//!     publisher.send(&[b"topic", b"value"]).await;
//!     let got = subscriber.recv(secs(5)).await.expect("nothing arrived");
//! }
//! ```
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod chp;
pub mod procs;
pub mod relay;

use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use zeromq::prelude::*;

/// Installs a test-friendly tracing subscriber once (`RUST_LOG` filters).
pub fn trace_init() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
/// Limits are generous hang guards, never performance assertions.
pub async fn within<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}: {what}"),
    }
}

/// Polls `cond` every 10 ms until it holds; panics after `limit`.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    within(limit, what, async {
        while !cond() {
            tokio::time::sleep(ms(10)).await;
        }
    })
    .await
}

/// The process-wide libzmq context (never terminated, so no test can hang
/// in `zmq_ctx_term`).
pub fn lz_ctx() -> &'static zmq::Context {
    static CTX: OnceLock<zmq::Context> = OnceLock::new();
    CTX.get_or_init(zmq::Context::new)
}

fn monitor_endpoint() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "inproc://lz-monitor-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// A libzmq socket monitor and the socket it watches.
///
/// libzmq 4.3 sends monitor events from its I/O thread with a *blocking*
/// send on the monitor's PAIR: once that PAIR's reader is closed, the next
/// event (a disconnect at teardown) blocks the I/O thread for good, and
/// with it every libzmq socket of the process. Dropping a `Monitor`
/// therefore first re-points the watched socket's monitoring at a fresh
/// endpoint with no events (libzmq closes the old monitor), and only then
/// closes the reader.
pub struct Monitor {
    pair: Lz,
    watched: Lz,
}

impl Monitor {
    /// The next event's number, or `None` after `timeout`.
    pub async fn event(&self, timeout: Duration) -> Option<u16> {
        let m = self.pair.recv(timeout).await?;
        Some(u16::from_le_bytes([m[0][0], m[0][1]]))
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let ep = monitor_endpoint();
        self.watched.with(|s| {
            let _ = s.monitor(&ep, 0);
        });
    }
}

/// A libzmq socket usable from async tests: blocking calls run on tokio's
/// blocking pool.
#[derive(Clone)]
pub struct Lz(Arc<Mutex<zmq::Socket>>);

impl Lz {
    /// A new libzmq socket with LINGER 0.
    pub fn new(kind: zmq::SocketType) -> Self {
        let s = lz_ctx().socket(kind).expect("libzmq socket");
        s.set_linger(0).unwrap();
        Lz(Arc::new(Mutex::new(s)))
    }

    /// Runs `f` on the socket (for options: identity, subscribe, ...).
    pub fn with<R>(&self, f: impl FnOnce(&zmq::Socket) -> R) -> R {
        f(&self.0.lock().unwrap())
    }

    /// Binds `tcp://127.0.0.1:*` and returns the resolved endpoint.
    pub fn bind_loopback(&self) -> String {
        self.with(|s| {
            s.bind("tcp://127.0.0.1:*").expect("libzmq bind");
            s.get_last_endpoint().unwrap().unwrap()
        })
    }

    /// Connects (libzmq connects in the background and reconnects).
    pub fn connect(&self, ep: &str) {
        self.with(|s| s.connect(ep).expect("libzmq connect"));
    }

    pub fn subscribe(&self, topic: &[u8]) {
        self.with(|s| s.set_subscribe(topic).unwrap());
    }

    pub fn unsubscribe(&self, topic: &[u8]) {
        self.with(|s| s.set_unsubscribe(topic).unwrap());
    }

    /// Sends one multipart message.
    pub async fn send(&self, frames: &[&[u8]]) {
        let frames: Vec<Vec<u8>> = frames.iter().map(|f| f.to_vec()).collect();
        self.send_owned(frames).await
    }

    pub async fn send_owned(&self, frames: Vec<Vec<u8>>) {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.with(|s| s.send_multipart(frames, 0).expect("libzmq send"))
        })
        .await
        .unwrap()
    }

    /// Receives one multipart message, or `None` after `timeout`.
    pub async fn recv(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.with(|s| {
                s.set_rcvtimeo(timeout.as_millis() as i32).unwrap();
                match s.recv_multipart(0) {
                    Ok(m) => Some(m),
                    Err(zmq::Error::EAGAIN) => None,
                    Err(e) => panic!("libzmq recv: {e}"),
                }
            })
        })
        .await
        .unwrap()
    }

    /// Starts a socket monitor for `events` (`zmq::SocketEvent` bits);
    /// read it with [`Monitor::event`].
    pub fn monitor(&self, events: i32) -> Monitor {
        let ep = monitor_endpoint();
        self.with(|s| s.monitor(&ep, events).expect("libzmq monitor"));
        let pair = Lz::new(zmq::PAIR);
        pair.connect(&ep);
        Monitor {
            pair,
            watched: self.clone(),
        }
    }

    /// Receives until `timeout` passes with nothing new.
    pub async fn drain(&self, quiet: Duration) -> Vec<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        while let Some(m) = self.recv(quiet).await {
            all.push(m);
        }
        all
    }
}

/// Receives from a zeromq-crate socket, or `None` after `timeout`.
pub async fn zrecv<S: SocketRecv>(sock: &mut S, timeout: Duration) -> Option<Vec<Bytes>> {
    match tokio::time::timeout(timeout, sock.recv()).await {
        Ok(Ok(m)) => Some(m.into_vec()),
        Ok(Err(e)) => panic!("zeromq recv: {e}"),
        Err(_) => None,
    }
}

/// A zeromq-crate SUB connected to `ep` and subscribed to `topics`.
pub async fn zsub(ep: &str, topics: &[&str]) -> zeromq::SubSocket {
    let mut s = zeromq::SubSocket::new();
    within(secs(10), "zeromq SUB connect", s.connect(ep))
        .await
        .expect("zeromq SUB connect");
    for t in topics {
        s.subscribe(t).await.unwrap();
    }
    s
}

/// Frames as UTF-8 text, lossily (for readable assertions).
pub fn text(frames: &[impl AsRef<[u8]>]) -> Vec<String> {
    frames
        .iter()
        .map(|f| String::from_utf8_lossy(f.as_ref()).into_owned())
        .collect()
}

/// The process's resident set size in KiB (Linux `/proc/self/status`
/// VmRSS), for the hostile-peer tests.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/self/status")
}
