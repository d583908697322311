//! Listening and connecting for the ZMTP servers: a TCP accept loop that
//! caps live connections (one over the cap is accepted and closed at once,
//! and reported), and a connect loop that reconnects with exponential
//! backoff.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::conn::{self, Limits, Up};
use crate::endpoint::{Attach, EndpointError, EndpointSpec};
use crate::ratelog::LogLimiter;

pub(crate) fn bind_error(spec: &EndpointSpec, e: std::io::Error) -> EndpointError {
    EndpointError::Bind {
        endpoint: spec.endpoint().to_owned(),
        source: zeromq::ZmqError::Network(e),
    }
}

pub(crate) fn tcp_target(spec: &EndpointSpec) -> Result<String, EndpointError> {
    // `host:port`, `[v6]:port` and `name:port` are what tokio resolves.
    spec.endpoint()
        .strip_prefix("tcp://")
        .map(str::to_owned)
        .ok_or_else(|| EndpointError::UnsupportedTransport(spec.endpoint().to_owned()))
}

pub(crate) async fn bind(spec: &EndpointSpec) -> Result<TcpListener, EndpointError> {
    let target = tcp_target(spec)?;
    TcpListener::bind(&target)
        .await
        .map_err(|e| bind_error(spec, e))
}

static NEXT_PEER: AtomicU64 = AtomicU64::new(1);

/// A fresh peer id, unique in the process.
pub(crate) fn next_peer() -> u64 {
    NEXT_PEER.fetch_add(1, Ordering::Relaxed)
}

/// Decrements the live-connection count when a connection task ends.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a server reaches its peers: its listener's or connection's tunables.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reach {
    /// Live connections at most, when bound.
    pub(crate) max_connections: usize,
    /// First reconnect delay, when connecting.
    pub(crate) reconnect: Duration,
    /// Longest reconnect delay, when connecting.
    pub(crate) reconnect_max: Duration,
}

/// Binds (and spawns the accept loop) or spawns the connect loop for
/// `spec`, as it asks; returns the endpoint (resolved, when bound).
pub(crate) async fn attach(
    spec: &EndpointSpec,
    limits: Limits,
    reach: Reach,
    up: mpsc::Sender<Up>,
    cancel: &CancellationToken,
) -> Result<String, EndpointError> {
    Ok(match spec.attach() {
        Attach::Bind => {
            let listener = bind(spec).await?;
            let local = listener.local_addr().map_err(|e| bind_error(spec, e))?;
            tokio::spawn(accept_loop(
                listener,
                limits,
                reach.max_connections,
                up,
                cancel.clone(),
            ));
            format!("tcp://{local}")
        }
        Attach::Connect => {
            let target = tcp_target(spec)?;
            tokio::spawn(connect_loop(
                target,
                reach.reconnect,
                reach.reconnect_max,
                limits,
                up,
                cancel.clone(),
            ));
            spec.endpoint().to_owned()
        }
    })
}

/// Accepts connections until cancelled, at most `max_connections` at once.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    limits: Limits,
    max_connections: usize,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) {
    let live = Arc::new(AtomicUsize::new(0));
    let mut log = LogLimiter::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = cancel.cancelled() => return,
        };
        match accepted {
            Ok((stream, remote)) => {
                if live.load(Ordering::Relaxed) >= max_connections {
                    drop(stream);
                    if let Some(suppressed) = log.check(Instant::now()) {
                        warn!(%remote, max_connections, suppressed, "connection limit reached: closing new connection");
                    }
                    // Awaited: a connection flood is slowed to the pace at
                    // which the server takes these reports.
                    if up.send(Up::Refused { remote }).await.is_err() {
                        return;
                    }
                    continue;
                }
                live.fetch_add(1, Ordering::Relaxed);
                let guard = Live(live.clone());
                let (up, cancel, limits) = (up.clone(), cancel.clone(), limits.clone());
                tokio::spawn(async move {
                    let _guard = guard;
                    conn::serve(stream, remote, next_peer(), limits, up, cancel).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                if let Some(suppressed) = log.check(Instant::now()) {
                    warn!(error = %e, suppressed, "accept failed; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Keeps one connection to `target` up: after a connection ends (or fails)
/// waits `first`, doubling up to `max` while attempts keep failing, and
/// back to `first` after a connection that completed its handshake.
pub(crate) async fn connect_loop(
    target: String,
    first: Duration,
    max: Duration,
    limits: Limits,
    up: mpsc::Sender<Up>,
    cancel: CancellationToken,
) {
    let mut delay = first;
    while !cancel.is_cancelled() {
        // Bounded: a connect to an address that never answers (a black hole)
        // is retried instead of hanging for the kernel's SYN timeout.
        let attempt = tokio::time::timeout(limits.handshake_timeout, TcpStream::connect(&target));
        let attempt = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
            _ = cancel.cancelled() => return,
        };
        let connected = match attempt {
            Ok(stream) => {
                let remote = stream
                    .peer_addr()
                    .unwrap_or_else(|_| ([0, 0, 0, 0], 0).into());
                conn::serve(
                    stream,
                    remote,
                    next_peer(),
                    limits.clone(),
                    up.clone(),
                    cancel.clone(),
                )
                .await
            }
            Err(e) => {
                debug!(%target, error = %e, "connect failed; retrying");
                false
            }
        };
        let wait = if connected { first } else { delay };
        delay = if connected {
            first
        } else {
            (delay * 2).min(max.max(first))
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = cancel.cancelled() => return,
        }
    }
}
