//! The ROUTER of [`ZmqTransport`](super::ZmqTransport), on this crate's
//! own ZMTP connections ([`crate::zmtp`]): one task that knows each
//! connected DEALER by the `Identity` of its READY and routes the node's
//! answers to the connection of that identity without ever waiting. What
//! the clients send goes from each connection's reader straight to the
//! node ([`ToNode`]).
//!
//! A connection whose writer queue is full (a client that does not read)
//! has its answers dropped and counted; nothing else waits for it. A new
//! connection with the identity of a live one takes it over (the old one
//! is closed): a restarted client is served at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{Counters, ToNode};
use crate::ratelog::LogLimiter;
use crate::transport::NodeId;
use crate::zmtp::conn::{Deliver, Out, Up};

/// One live connection.
struct Conn {
    peer: u64,
    tx: mpsc::Sender<Out>,
    kill: CancellationToken,
}

/// Runs the ROUTER until cancelled: connection events from the accept
/// loop in `up`, the node's answers in `answers`.
pub(crate) async fn route(
    mut up: mpsc::Receiver<Up>,
    mut answers: mpsc::Receiver<(NodeId, Bytes)>,
    to_node: Arc<ToNode>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let mut by_identity: HashMap<Bytes, Conn> = HashMap::new();
    let mut identities: HashMap<u64, Bytes> = HashMap::new();
    let mut log = LogLimiter::default();
    let mut slow = LogLimiter::default();
    loop {
        tokio::select! {
            // Connection events first: a client's request reaches the node
            // straight from its reader, so the node's answer can be queued
            // here before this task has seen the client's `Connected`,
            // which was queued before the request was read. Taking events
            // first, the answer finds the connection.
            biased;
            _ = cancel.cancelled() => return,
            event = up.recv() => match event {
                None => return,
                Some(Up::Connected { peer, remote, identity, tx, kill, .. }) => {
                    debug!(peer, %remote, identity = %crate::frames::render(&identity), "client connected");
                    identities.insert(peer, identity.clone());
                    if let Some(old) = by_identity.insert(identity, Conn { peer, tx, kill }) {
                        identities.remove(&old.peer);
                        old.kill.cancel();
                    }
                }
                // Only without direct delivery; the same handling.
                Some(Up::Batch { peer, msgs, skipped }) => {
                    let identity = identities.get(&peer).cloned().unwrap_or_default();
                    to_node.deliver(&identity, msgs, skipped);
                }
                Some(Up::Closed { peer, reason, .. }) => {
                    debug!(peer, %reason, "client gone");
                    if let Some(identity) = identities.remove(&peer) {
                        if by_identity.get(&identity).is_some_and(|c| c.peer == peer) {
                            by_identity.remove(&identity);
                        }
                    }
                }
                Some(Up::Refused { remote }) => {
                    Counters::bump(&counters.refused);
                    debug!(%remote, "connection over max_connections closed");
                }
                Some(Up::Rejected { remote, reason, .. }) => {
                    Counters::bump(&counters.garbage);
                    if let Some(suppressed) = log.check(Instant::now()) {
                        warn!(%remote, %reason, suppressed, "connection refused in the handshake");
                    }
                }
            },
            answer = answers.recv() => {
                let Some((to, payload)) = answer else { return };
                let queued = by_identity
                    .get(&to.identity()[..])
                    .is_some_and(|c| c.tx.try_send(Out::One(Arc::from([payload]))).is_ok());
                if queued {
                    Counters::bump(&counters.sent);
                } else {
                    Counters::bump(&counters.dropped);
                    if let Some(suppressed) = slow.check(Instant::now()) {
                        debug!(peer = %to, suppressed, "answer dropped: client not connected or not reading");
                    }
                }
            }
        }
    }
}
