//! The per-peer link of [`ZmqTransport`](super::ZmqTransport): one DEALER,
//! on this crate's own ZMTP connection ([`crate::zmtp`]), to one peer's
//! ROUTER. The connect loop connects in the background with a bounded
//! timeout and backoff and reconnects whenever the connection ends (the
//! peer restarted); this task moves the node's messages to the connection
//! while it is up. What the peer sends back goes from the connection's
//! reader straight to the node ([`ToNode`]).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::{Counters, Inbound, ToNode, ZmqConfig};
use crate::transport::NodeId;
use crate::zmtp::conn::{Deliver, Limits, Out, Role, Up};
use crate::zmtp::net;

/// Everything a link needs.
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

/// Keeps the DEALER connected and pumps messages both ways until cancelled.
pub(crate) async fn supervise(mut link: PeerLink) {
    let Some(target) = link.endpoint.strip_prefix("tcp://").map(str::to_owned) else {
        warn!("only tcp:// endpoints are supported; this peer is unreachable");
        return;
    };
    let to_node = Arc::new(ToNode::new(
        link.inbound.clone(),
        link.counters.clone(),
        Some(link.peer),
    ));
    let limits = Limits {
        direct: to_node.direct(),
        role: Role::Dealer,
        identity: link.me.identity(),
        ..super::connection_limits(&link.cfg, link.cfg.connect_timeout)
    };
    let (up_tx, mut up) = mpsc::channel(super::UP_QUEUE);
    let connector = tokio::spawn(
        net::connect_loop(
            target,
            link.cfg.backoff_min,
            link.cfg.backoff_max,
            limits,
            up_tx,
            link.cancel.clone(),
        )
        .in_current_span(),
    );
    let mut conn: Option<(u64, mpsc::Sender<Out>)> = None;
    let mut pending: Option<Bytes> = None;
    loop {
        // The connection's sender, only while a message waits for room.
        let writer = pending
            .as_ref()
            .and(conn.as_ref())
            .map(|(_, tx)| tx.clone());
        tokio::select! {
            biased;
            _ = link.cancel.cancelled() => break,
            event = up.recv() => match event {
                None => break,
                Some(Up::Connected { peer, tx, .. }) => {
                    Counters::bump(&link.counters.connects);
                    info!("connected");
                    conn = Some((peer, tx));
                }
                // Only without direct delivery; the same handling.
                Some(Up::Batch { msgs, skipped, .. }) => to_node.deliver(&Bytes::new(), msgs, skipped),
                Some(Up::Closed { peer, reason, .. }) => {
                    if conn.as_ref().is_some_and(|(p, _)| *p == peer) {
                        conn = None;
                        info!(%reason, "connection lost; reconnecting");
                    }
                }
                Some(Up::Rejected { reason, .. }) => debug!(%reason, "handshake failed; retrying"),
                Some(Up::Refused { .. }) => {}
            },
            msg = link.outgoing.recv(), if conn.is_some() && pending.is_none() => match msg {
                Some(payload) => pending = Some(payload),
                None => break,
            },
            permit = reserve(writer), if pending.is_some() => {
                if let (Some(permit), Some(payload)) = (permit, pending.take()) {
                    permit.send(Out::One(Arc::from([payload])));
                    Counters::bump(&link.counters.sent);
                }
            }
        }
    }
    // The link's own token (a child of the transport's): the connector
    // stops too; wait so that shutdown returns with every connection of
    // this link closed.
    link.cancel.cancel();
    let _ = connector.await;
}

/// Room in the connection's writer queue, when there is a connection.
async fn reserve(tx: Option<mpsc::Sender<Out>>) -> Option<mpsc::OwnedPermit<Out>> {
    match tx {
        Some(tx) => tx.reserve_owned().await.ok(),
        None => std::future::pending().await,
    }
}
