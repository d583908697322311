//! `MemNet`: an in-memory [`Transport`] over tokio channels, for tests and
//! benchmarks of the protocol cores without sockets.
//!
//! Every node gets a bounded inbox; a send to a full inbox or to a node
//! that left is dropped and counted, as on a real network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{NodeId, Transport, TransportStats};

type Registry = HashMap<NodeId, mpsc::Sender<(NodeId, Bytes)>>;

/// A set of in-memory nodes that can reach each other.
#[derive(Debug, Clone, Default)]
pub struct MemNet {
    nodes: Arc<Mutex<Registry>>,
    capacity: usize,
}

impl MemNet {
    /// A network whose inboxes hold `capacity` messages each.
    pub fn new(capacity: usize) -> Self {
        MemNet {
            nodes: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Adds node `id` (replacing a previous one with that id).
    pub fn join(&self, id: NodeId) -> MemTransport {
        let (tx, rx) = mpsc::channel(self.capacity);
        self.registry().insert(id, tx);
        MemTransport {
            id,
            net: self.clone(),
            rx,
            stats: TransportStats::default(),
        }
    }

    /// Removes node `id`: messages to it are dropped from now on.
    pub fn leave(&self, id: NodeId) {
        self.registry().remove(&id);
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One node's end of a [`MemNet`].
#[derive(Debug)]
pub struct MemTransport {
    id: NodeId,
    net: MemNet,
    rx: mpsc::Receiver<(NodeId, Bytes)>,
    stats: TransportStats,
}

impl Transport for MemTransport {
    fn id(&self) -> NodeId {
        self.id
    }

    fn send(&mut self, to: NodeId, msg: Bytes) {
        let tx = self.net.registry().get(&to).cloned();
        match tx.map(|tx| tx.try_send((self.id, msg))) {
            Some(Ok(())) => self.stats.sent += 1,
            _ => self.stats.dropped += 1,
        }
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<(NodeId, Bytes)>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = r {
            self.stats.received += 1;
        }
        r
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::recv;

    #[tokio::test]
    async fn messages_flow_and_losses_are_counted() {
        let net = MemNet::new(2);
        let mut a = net.join(NodeId(1));
        let mut b = net.join(NodeId(2));
        a.send(NodeId(2), Bytes::from_static(b"x"));
        a.send(NodeId(2), Bytes::from_static(b"y"));
        a.send(NodeId(2), Bytes::from_static(b"overflow"));
        a.send(NodeId(9), Bytes::from_static(b"nobody"));
        assert_eq!(
            recv(&mut b).await,
            Some((NodeId(1), Bytes::from_static(b"x")))
        );
        assert_eq!(
            recv(&mut b).await,
            Some((NodeId(1), Bytes::from_static(b"y")))
        );
        assert_eq!((a.stats().sent, a.stats().dropped), (2, 2));
        assert_eq!(b.stats().received, 2);
        net.leave(NodeId(2));
        a.send(NodeId(2), Bytes::from_static(b"gone"));
        assert_eq!(a.stats().dropped, 3);
    }
}
