//! The per-peer supervisor of [`ZmqTransport`](super::ZmqTransport):
//! one DEALER to one peer's ROUTER, connected in the background with
//! backoff and recreated whenever the connection ends.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zeromq::prelude::*;
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, SocketEvent, SocketOptions, ZmqMessage};

use super::{Counters, Inbound, ZmqConfig};
use crate::ratelog::LogLimiter;
use crate::transport::NodeId;
use std::sync::Arc;

/// Everything a supervisor needs.
pub(crate) struct PeerLink {
    pub(crate) me: NodeId,
    pub(crate) peer: NodeId,
    pub(crate) endpoint: String,
    pub(crate) outgoing: mpsc::Receiver<Bytes>,
    pub(crate) inbound: Inbound,
    pub(crate) counters: Arc<Counters>,
    pub(crate) cfg: ZmqConfig,
    pub(crate) cancel: CancellationToken,
}

/// Why a connection ended.
enum End {
    Cancelled,
    Lost,
}

/// Connects, pumps, reconnects, until cancelled.
pub(crate) async fn supervise(mut link: PeerLink) {
    let mut backoff = link.cfg.backoff_min;
    loop {
        let Some(socket) = connect(&link).await else {
            if !sleep_or_cancel(&link.cancel, backoff).await {
                return;
            }
            backoff = (backoff * 2).min(link.cfg.backoff_max);
            continue;
        };
        Counters::bump(&link.counters.connects);
        info!("connected");
        backoff = link.cfg.backoff_min;
        match pump(&mut link, socket).await {
            End::Cancelled => return,
            End::Lost => info!("connection lost; reconnecting"),
        }
        if !sleep_or_cancel(&link.cancel, link.cfg.backoff_min).await {
            return;
        }
    }
}

async fn sleep_or_cancel(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

/// One connection attempt, bounded by the connect timeout.
async fn connect(link: &PeerLink) -> Option<DealerSocket> {
    let mut options = SocketOptions::default();
    options
        .peer_identity(PeerIdentity::try_from(link.me.identity()).ok()?)
        .connect_timeout(link.cfg.connect_timeout);
    let mut socket = DealerSocket::with_options(options);
    let attempt = tokio::time::timeout(link.cfg.connect_timeout, socket.connect(&link.endpoint));
    tokio::select! {
        _ = link.cancel.cancelled() => None,
        r = attempt => match r {
            Ok(Ok(())) => Some(socket),
            Ok(Err(e)) => {
                debug!(cause = %e, "connect failed");
                None
            }
            Err(_) => {
                debug!("connect timed out");
                None
            }
        },
    }
}

/// Moves queued messages to the peer until the connection ends. Anything
/// the peer sends back on this DEALER (a ROUTER answering) is inbound.
async fn pump(link: &mut PeerLink, mut socket: DealerSocket) -> End {
    let mut monitor = socket.monitor();
    let mut log = LogLimiter::default();
    loop {
        tokio::select! {
            _ = link.cancel.cancelled() => return End::Cancelled,
            msg = link.outgoing.recv() => {
                let Some(payload) = msg else { return End::Cancelled };
                match socket.send(ZmqMessage::from(payload)).await {
                    Ok(()) => Counters::bump(&link.counters.sent),
                    Err(e) => {
                        Counters::bump(&link.counters.dropped);
                        warn!(cause = %e, "send failed");
                        return End::Lost;
                    }
                }
            }
            event = monitor.next() => match event {
                Some(SocketEvent::Disconnected(_)) | None => return End::Lost,
                Some(_) => {}
            },
            received = socket.recv() => match received {
                Ok(m) => {
                    let frames = m.into_vec();
                    if frames.len() == 1 {
                        let payload = frames.into_iter().next().unwrap_or_default();
                        link.inbound.offer(link.peer, payload, &mut log);
                    } else {
                        Counters::bump(&link.counters.garbage);
                        if let Some(suppressed) = log.check(std::time::Instant::now()) {
                            warn!(frames = frames.len(), suppressed, "malformed message from peer dropped");
                        }
                    }
                }
                Err(e) => {
                    debug!(cause = %e, "receive ended");
                    return End::Lost;
                }
            },
        }
    }
}
