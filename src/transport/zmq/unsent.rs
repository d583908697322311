//! The unsent-bytes ledger of [`ZmqTransport`](super::ZmqTransport): every
//! payload handed to [`Transport::send`](crate::transport::Transport::send)
//! is charged to its destination until the connection's writer has encoded
//! it (or it is dropped on the way), so what a destination that does not
//! read can make the process hold is bounded in bytes, per destination and
//! in total.
//!
//! A charged payload is a [`Bytes`] whose owner releases the charge when
//! the last reference to it goes, wherever that happens (the peer queue,
//! the connection's writer, a dropped send): the ledger cannot leak and
//! needs no cooperation from the code that moves the message.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::transport::NodeId;

/// Bytes charged per destination, and in total.
#[derive(Debug)]
pub(crate) struct Ledger {
    total_limit: u64,
    per_destination: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    total: u64,
    /// Entries are removed at zero: at most one per destination with
    /// bytes outstanding.
    by_destination: HashMap<NodeId, u64>,
}

impl Ledger {
    pub(crate) fn new(total_limit: usize, per_destination: usize) -> Arc<Self> {
        Arc::new(Ledger {
            total_limit: total_limit as u64,
            per_destination: per_destination as u64,
            state: Mutex::default(),
        })
    }

    /// Bytes charged now, over all destinations.
    pub(crate) fn total(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("unsent ledger lock")
    }

    /// Charges `payload` to `to` and returns it wrapped so that the charge
    /// is released when it is gone; `None` (nothing charged) if `to`'s
    /// share or the total would go over its limit. A payload larger than
    /// the limit passes when nothing else is charged, so one message of any
    /// accepted size can always be sent.
    pub(crate) fn charge(self: &Arc<Self>, to: NodeId, payload: Bytes) -> Option<Bytes> {
        let len = payload.len() as u64;
        if len == 0 {
            return Some(payload);
        }
        {
            let mut st = self.lock();
            let mine = st.by_destination.get(&to).copied().unwrap_or(0);
            if (st.total > 0 && st.total + len > self.total_limit)
                || (mine > 0 && mine + len > self.per_destination)
            {
                return None;
            }
            st.total += len;
            *st.by_destination.entry(to).or_insert(0) += len;
        }
        Some(Bytes::from_owner(Charged {
            payload,
            to,
            ledger: self.clone(),
        }))
    }

    fn release(&self, to: NodeId, len: u64) {
        let mut st = self.lock();
        st.total = st.total.saturating_sub(len);
        if let Some(mine) = st.by_destination.get_mut(&to) {
            *mine = mine.saturating_sub(len);
            if *mine == 0 {
                st.by_destination.remove(&to);
            }
        }
    }
}

/// A payload that holds its destination's charge until dropped.
struct Charged {
    payload: Bytes,
    to: NodeId,
    ledger: Arc<Ledger>,
}

impl AsRef<[u8]> for Charged {
    fn as_ref(&self) -> &[u8] {
        &self.payload
    }
}

impl Drop for Charged {
    fn drop(&mut self) {
        self.ledger.release(self.to, self.payload.len() as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_are_released_when_the_last_copy_goes() {
        let l = Ledger::new(100, 60);
        let a = l.charge(NodeId(1), Bytes::from(vec![0u8; 40])).unwrap();
        let a2 = a.slice(10..20);
        assert_eq!(l.total(), 40);
        // Over the destination's share; another destination still fits.
        assert!(l.charge(NodeId(1), Bytes::from(vec![0u8; 30])).is_none());
        let b = l.charge(NodeId(2), Bytes::from(vec![0u8; 50])).unwrap();
        // Over the total.
        assert!(l.charge(NodeId(3), Bytes::from(vec![0u8; 20])).is_none());
        drop(a);
        assert_eq!(l.total(), 90, "a slice still holds the charge");
        drop(a2);
        assert_eq!(l.total(), 50);
        drop(b);
        assert_eq!(l.total(), 0);
        assert!(l.lock().by_destination.is_empty());
        // One message over the limits passes when nothing is charged.
        let big = l.charge(NodeId(1), Bytes::from(vec![0u8; 500])).unwrap();
        assert_eq!(big.len(), 500);
        assert!(l.charge(NodeId(2), Bytes::from_static(b"x")).is_none());
    }
}
